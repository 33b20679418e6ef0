"""Ten-crop prediction images/sec (each image: 10 views through AlexNet, softmax averaged), with
the real DALI ten-crop pipeline and the Predictor that `alexnet-dali predict` uses. On a GPU:
fp32, bf16 and bf16 with the network compiled (Predictor(compile=True); ten-crop is ten forward
passes an image, so the network's speed is what bounds it).

    python benchmarks/predict.py [--device cpu|gpu|all] [--data DIR] [--images N] [--batch-size B] [--json PATH]
                                 [--profile DIR]
"""

from __future__ import annotations

from pathlib import Path

from common import (alexnet, base_parser, data_files, devices, parse, profile_path, report, sizes, ten_crop_predictor,
                    timed)


def main(argv=None):
    parser = base_parser(__doc__.split("\n\n")[0], cpu=(128, 32), gpu=(2048, 256))
    args = parse(parser, argv)
    files = data_files(args)
    blobs = [Path(f).read_bytes() for f in files]  # read once: the rows time decoding and the model
    rows = []
    for device in devices(args):
        images, batch_size = sizes(args, device)
        subset = blobs[:images]
        # on the GPU both are channels_last (the crops arrive NHWC)
        variants = [("fp32", False)] if device == "cpu" else [("fp32", False), ("bf16", False), ("bf16", True)]
        for precision, compiled in variants:
            name = f"ten-crop {precision}" + ("+compile" if compiled else "")
            predictor = ten_crop_predictor(alexnet(1000, device), device, batch_size, precision, compiled)
            run = lambda: predictor.predict_bytes(subset)  # noqa: E731
            rows.append({"name": name, "device": device, "variant": name.removeprefix("ten-crop "),
                         "images": len(subset), "batch_size": batch_size,
                         **timed(run, len(subset), args.trials, warmup=run, profile_to=profile_path(args, name))})
    return report("ten-crop prediction", rows, args)


if __name__ == "__main__":
    main()
