"""Ten-crop prediction images/sec (each image: 10 views through AlexNet, softmax averaged), with
the real DALI ten-crop pipeline and the Predictor that `alexnet-dali predict` uses.

    python benchmarks/predict.py [--device cpu|gpu|all] [--data DIR] [--images N] [--batch-size B] [--json PATH]
"""

from __future__ import annotations

from pathlib import Path

from common import base_parser, data_files, report, timed, wants

MEAN = (0.485, 0.456, 0.406)


def main(argv=None):
    from alexnet_dali.model import AlexNetModule
    from alexnet_dali.pca import PCA
    from alexnet_dali.predict import Predictor

    parser = base_parser(__doc__.split("\n\n")[0])
    parser.set_defaults(images=128, batch_size=32)
    args = parser.parse_args(argv)
    files = data_files(args)
    blobs = [Path(f).read_bytes() for f in files]  # read once: the rows time decoding and the model
    pca = PCA(MEAN, (0.0, 0.0, 0.0), ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)))
    classes = [str(i) for i in range(1000)]
    rows = []
    plans = []
    if wants(args, "cpu"):
        plans.append(("cpu", "fp32", False))
    if wants(args, "gpu"):
        plans += [("gpu", "fp32", False), ("gpu", "bf16", True)]  # both channels_last (NHWC crops)
    for kind, variant, fast in plans:
        predictor = Predictor(AlexNetModule(1000), pca, classes, device=kind, batch_size=args.batch_size, fast=fast)
        run = lambda: predictor.predict_bytes(blobs)  # noqa: E731
        rows.append({"name": f"ten-crop {variant}", "device": kind, "variant": variant,
                     **timed(run, len(blobs), args.trials, warmup=run)})
    return report("ten-crop prediction", rows, args)


if __name__ == "__main__":
    main()
