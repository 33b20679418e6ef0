"""Ten-crop prediction images/sec (each image: 10 views through AlexNet, softmax averaged), with
the real DALI ten-crop pipeline and the Predictor that `alexnet-dali predict` uses. Beside each
end-to-end row, its two halves alone: `pipeline-only` (decoding and the ten views, no network) and
`model-only` (the network on views already in memory), so the notes say which one bounds it. On a
GPU: fp32, bf16 and bf16 with the network compiled (Predictor(compile=True)).

Whether decoding the next batch overlaps the network on this one: each end-to-end row's note sets
it against the rate if the halves overlapped fully and the rate one after the other. And
`ten-crop host-wait` drains the pipeline while the host waits, per batch, as long as decoding it
took, with the device left free: whether the Predictor's feeding overlaps at all. (On the H100 the
bf16+compile row did not overlap: if host-wait does there, decoding and the network contend on the
GPU; if it does not, the feeding waits.)

    python benchmarks/predict.py [--device cpu|gpu|all] [--data DIR] [--images N] [--batch-size B] [--json PATH]
                                 [--profile DIR]
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from common import (alexnet, base_parser, data_files, devices, drain, parse, profile_path, report, sizes, sync,
                    ten_crop_predictor, timed, torch_device)


def model_only(predictor, device, batch_size: int, images: int):
    """The Predictor's network and its softmax mean over `images` images' views already on the
    device, in the end-to-end row's batches (the last one partial) and in the layout the pipeline
    delivers (NHWC memory seen as NCHW on the GPU)."""
    from alexnet_dali.evaluate import TEN_VIEWS, mean_log_softmax

    if device.type == "cuda":
        views = (torch.randn(batch_size, TEN_VIEWS, 224, 224, 3, device=device) * 60).movedim(-1, -3)
    else:
        views = torch.randn(batch_size, TEN_VIEWS, 3, 224, 224, device=device) * 60
    batches = [min(batch_size, images - start) for start in range(0, images, batch_size)]

    @torch.inference_mode()
    def run():
        for size in batches:
            mean_log_softmax(predictor.forward, views[:size], predictor.precision).exp()
        sync(device)

    return run


def host_wait(predictor, blobs, kind: str, wait_rate: float):
    """The Predictor's views of `blobs` while the host waits, per batch, as long as `wait_rate`
    images/s take on it, and the device stays free."""
    def run():
        for views in predictor.views(blobs):
            time.sleep(views.shape[0] / wait_rate)
        sync(torch_device(kind))

    return run


def overlap_note(label: str, rate: float, model: dict, pipeline: dict) -> str:
    """`rate` against the consumer (`model`) and the pipeline overlapped fully (the slower one's
    rate) and run one after the other (the harmonic sum)."""
    overlapped = min(model["images_per_sec"], pipeline["images_per_sec"])
    serial = 1.0 / (1.0 / model["images_per_sec"] + 1.0 / pipeline["images_per_sec"])
    if overlapped - serial < 0.1 * overlapped:
        verdict = "the halves are too unequal to tell"
    else:
        verdict = "they overlap" if rate >= (overlapped + serial) / 2 else "they do not overlap"
    return f"{label}: {rate:.1f} images/s; fully overlapped {overlapped:.1f}, one after the other {serial:.1f}: {verdict}"


def limit_note(device: str, variant: str, fed: dict, model: dict, pipeline: dict) -> str:
    slower, rate = min((("the network", model["images_per_sec"]), ("the pipeline", pipeline["images_per_sec"])),
                       key=lambda item: item[1])
    return (f"{device} ten-crop {variant}: {fed['images_per_sec']:.1f} images/s end to end, "
            f"{fed['images_per_sec'] / model['images_per_sec']:.1%} of model-only "
            f"({model['images_per_sec']:.1f}) and {fed['images_per_sec'] / pipeline['images_per_sec']:.1%} of "
            f"pipeline-only ({pipeline['images_per_sec']:.1f}): {slower} bounds it ({rate:.1f} images/s alone)")


def main(argv=None):
    parser = base_parser(__doc__.split("\n\n")[0], cpu=(128, 32), gpu=(2048, 256))
    args = parse(parser, argv)
    files = data_files(args)
    blobs = [Path(f).read_bytes() for f in files]  # read once: the rows time decoding and the model
    rows, notes = [], []
    for kind in devices(args):
        images, batch_size = sizes(args, kind)
        subset, device = blobs[:images], torch_device(kind)
        common = {"device": kind, "images": len(subset), "batch_size": batch_size}
        # the pipeline does not depend on the network's precision: timed once, with the first predictor
        pipeline = None
        # on the GPU every variant is channels_last (the crops arrive NHWC)
        variants = [("fp32", False)] if kind == "cpu" else [("fp32", False), ("bf16", False), ("bf16", True)]
        for precision, compiled in variants:
            variant = precision + ("+compile" if compiled else "")
            predictor = ten_crop_predictor(alexnet(1000, kind), kind, batch_size, precision, compiled)
            if pipeline is None:
                # every batch's views made and handed over, none read by a network
                run = lambda: drain(predictor.views(subset), kind)  # noqa: E731
                pipeline = timed(run, len(subset), args.trials, warmup=run,
                                 profile_to=profile_path(args, "ten-crop pipeline-only"))
                rows.append({"name": "ten-crop pipeline-only", "variant": "pipeline-only", **common, **pipeline})
                run = host_wait(predictor, subset, kind, pipeline["images_per_sec"])
                waited = timed(run, len(subset), args.trials, warmup=run,
                               profile_to=profile_path(args, "ten-crop host-wait"))
                rows.append({"name": "ten-crop host-wait", "variant": "host-wait", **common, **waited})
                notes.append(overlap_note(f"{kind} ten-crop host-wait (the host waits as long as decoding takes, the "
                                          "device is free)", waited["images_per_sec"], pipeline, pipeline))
            run = model_only(predictor, device, batch_size, len(subset))
            model = timed(run, len(subset), args.trials, warmup=run,
                          profile_to=profile_path(args, f"ten-crop model-only {variant}"))
            rows.append({"name": f"ten-crop model-only {variant}", "variant": f"model-only {variant}", **common,
                         **model})
            run = lambda: predictor.predict_bytes(subset)  # noqa: E731
            fed = timed(run, len(subset), args.trials, warmup=run, profile_to=profile_path(args, f"ten-crop {variant}"))
            rows.append({"name": f"ten-crop {variant}", "variant": variant, **common, **fed,
                         "fraction_of_model_only": round(fed["images_per_sec"] / model["images_per_sec"], 3)})
            notes.append(limit_note(kind, variant, fed, model, pipeline))
            notes.append(overlap_note(f"{kind} ten-crop {variant}", fed["images_per_sec"], model, pipeline))
    return report("ten-crop prediction", rows, args, notes)


if __name__ == "__main__":
    main()
