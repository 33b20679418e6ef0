"""`alexnet-dali` and `python -m alexnet_dali`: demo, train, predict, evaluate, check.

Bad input ends with one `error: ...` line per problem and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import typing
from pathlib import Path

from . import __version__
from .config import ConfigError, TrainConfig

EXIT_BAD_INPUT = 2


def add_config_options(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ("data",)) -> None:
    """One option per TrainConfig field, with its type, default and help text."""
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        kind = hints[f.name]
        if kind is bool:
            parser.add_argument(flag, action="store_true", default=f.default, help=help_text)
            continue
        base = next((a for a in typing.get_args(kind) if a is not type(None)), kind)
        parser.add_argument(flag, type=base, default=f.default, metavar=f.name.upper(),
                            help=f"{help_text} (default: {f.default})")


def config_from_args(args: argparse.Namespace, **fixed) -> TrainConfig:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    return TrainConfig.from_dict({**values, **fixed})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alexnet-dali",
        description="Train, evaluate and run the AlexNet of Krizhevsky et al. (2012) fed by NVIDIA DALI.",
        epilog="every local GPU: torchrun --nproc_per_node=gpu -m alexnet_dali train DATA ...",
    )
    parser.add_argument("--version", action="version", version=f"alexnet-dali {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    demo = verbs.add_parser("demo", help="make a small data set, train on it, predict (the embedded default)")
    demo.add_argument("--out", default="alexnet-demo", help="folder for the demo data and run (default: alexnet-demo)")
    demo.add_argument("--epochs", type=int, default=12, help="epochs to train (default: 12)")
    demo.add_argument("--device", default="auto", choices=("auto", "cpu", "gpu"))
    demo.add_argument("--seed", type=int, default=0)

    train = verbs.add_parser("train", help="train on DATA (one process, or one per GPU under torchrun)")
    train.add_argument("data", help="data root or http(s) URL: DATA/train and DATA/val")
    add_config_options(train)

    predict = verbs.add_parser("predict", help="ten-crop predictions for images with a saved model")
    predict.add_argument("model", help="a checkpoint (last.pt, best.pt) or a file from AlexNet.save")
    predict.add_argument("images", nargs="+", help="image files; a folder stands for its images")
    predict.add_argument("--topk", type=int, default=5, help="classes shown per image (default: 5)")
    predict.add_argument("--json", action="store_true", help="print JSON instead of text")
    predict.add_argument("--device", default="auto", choices=("auto", "cpu", "gpu"))
    predict.add_argument("--batch-size", type=int, default=32, help="images per DALI/model batch")

    evaluate = verbs.add_parser("evaluate", help="top-1 / top-5 accuracy and error of a model on a split")
    evaluate.add_argument("model")
    evaluate.add_argument("data", help="data root or http(s) URL (the split is downloaded into the cache)")
    evaluate.add_argument("--split", default="val")
    evaluate.add_argument("--ten-crop", action="store_true", help="average ten views per image (the paper's test)")
    evaluate.add_argument("--labels", default=None)
    evaluate.add_argument("--label-encoding", default=None)
    evaluate.add_argument("--cache-dir", default=None, help=CACHE_HELP)
    evaluate.add_argument("--device", default="auto", choices=("auto", "cpu", "gpu"))
    evaluate.add_argument("--batch-size", type=int, default=32)
    evaluate.add_argument("--json", action="store_true")

    check = verbs.add_parser("check", help="does every image decode, is every image labelled?")
    check.add_argument("data", help="data root or http(s) URL (the splits are downloaded into the cache)")
    check.add_argument("--labels", default=None)
    check.add_argument("--label-encoding", default=None)
    check.add_argument("--cache-dir", default=None, help=CACHE_HELP)
    check.add_argument("--split", action="append", default=None,
                       help="split to check (repeatable; default: every split folder present)")
    check.add_argument("--json", action="store_true", help="print JSON instead of text")
    check.add_argument("--threads", type=int, default=0, help="decoder threads (default: every core)")
    return parser


def main(argv: list[str] | None = None) -> int:
    from .checkpoint import CheckpointError
    from .data import DataError
    from .train import TrainingInterrupted

    args = build_parser().parse_args(argv)
    try:
        return VERBS[args.verb](args)
    except (DataError, CheckpointError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except TrainingInterrupted as e:
        print(str(e), file=sys.stderr)
        return 128 + e.signum


# -- verbs -------------------------------------------------------------------------------------

CACHE_HELP = "where URL data sets are downloaded (default: ~/.cache/alexnet-dali)"


def local_data(args, splits) -> tuple[str, str | None, str | None]:
    """DATA, --labels and --label-encoding on this machine (a URL's splits downloaded). Progress
    goes to stderr, so --json output stays clean."""
    from .remote import local_copy

    return local_copy(args.data, args.labels, args.label_encoding, cache_dir=args.cache_dir, splits=splits,
                      log=lambda *a: print(*a, file=sys.stderr))


def run_train(args) -> int:
    from .train import train

    train(config_from_args(args))
    return 0


def run_demo(args) -> int:
    from .api import AlexNet
    from .checkpoint import BEST
    from .demo import DEMO_OPTIONS, make_demo_dataset

    out = Path(args.out)
    if (out / "run" / "last.pt").exists():
        from .checkpoint import CheckpointError

        raise CheckpointError(f"{out} already holds a demo run; remove it or pass --out for a new one")
    started = time.perf_counter()
    paths = make_demo_dataset(out / "data", seed=args.seed)
    print(f"demo data: {paths['data']} (train/val/test JPEGs, labels.json, label_encoding.json)")
    model = AlexNet(paths["data"], paths["labels"], paths["label_encoding"], device=args.device,
                    out_dir=out / "run", seed=args.seed, **DEMO_OPTIONS)
    history = model.fit(epochs=args.epochs)
    # Predict with the best model, as one would ship it: the last epoch's can be a worse one.
    val = history["val_accuracy"]
    best_epoch = val.index(max(val)) + 1
    best = AlexNet.load(out / "run" / BEST, device=args.device)
    saved = best.save(out / "model.pt")
    tests = sorted((out / "data" / "test").glob("*.jpg"))
    probabilities = best.predict(tests)
    hits = sum(best.classes[int(p.argmax())] in t.name for p, t in zip(probabilities, tests))
    print(f"\nten-crop predictions on the held-out test images by the best model "
          f"(best.pt: epoch {best_epoch}, val top-1 {max(val):.1%}):")
    for path, p in list(zip(tests, probabilities))[:5]:
        print(f"  {path.name:28s} -> {best.classes[int(p.argmax())]} ({p.max():.0%})")
    print(f"  ... {hits}/{len(tests)} test images right")
    print(f"\nvalidation top-1: best {max(val):.1%} (epoch {best_epoch}), final {val[-1]:.1%} after {len(val)} epochs "
          f"(chance: {1 / len(model.classes):.0%}); {time.perf_counter() - started:.0f} s in all")
    print(f"run directory: {model.config.out} (history.json, last.pt, best.pt, tensorboard/)")
    print(f"saved model (the best, epoch {best_epoch}): {saved}; try: alexnet-dali predict {saved} {tests[0]}")
    return 0


def run_predict(args) -> int:
    from .predict import Predictor, expand_paths

    predictor = Predictor.from_checkpoint(args.model, device=args.device, batch_size=args.batch_size)
    paths = expand_paths(args.images)
    probabilities = predictor.predict_files(paths)
    names = dict(zip(predictor.classes, predictor.class_names))
    results = [{"image": path, "top": [{"label": label, "name": names[label], "probability": p}
                                       for label, p in predictor.top(row, args.topk)]}
               for path, row in zip(paths, probabilities)]
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for result in results:
            print(result["image"])
            for entry in result["top"]:
                name = f"  {entry['name']}" if entry["name"] else ""
                print(f"  {entry['probability']:7.2%}  {entry['label']}{name}")
    return 0


def run_evaluate(args) -> int:
    from .data import index_dataset
    from .predict import Predictor, evaluate_split

    predictor = Predictor.from_checkpoint(args.model, device=args.device, batch_size=args.batch_size)
    split = index_dataset(*local_data(args, [args.split]), splits=(args.split,))[args.split]
    if tuple(split.classes) != predictor.classes:
        from .data import DataError

        raise DataError(f"the classes of {args.data} ({len(split.classes)}) differ from the model's "
                        f"({len(predictor.classes)}); pass the label encoding the model was trained with")
    result = evaluate_split(predictor.net, predictor.pca, split, ten_crop=args.ten_crop, device=args.device,
                            batch_size=args.batch_size)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        mode = "ten-crop" if args.ten_crop else "centre crop"
        print(f"{args.split}: {result['images']} images, {mode}")
        print(f"  top-1 accuracy {result['top1']:.2%}  (error {result['top1_error']:.2%})")
        print(f"  top-5 accuracy {result['top5']:.2%}  (error {result['top5_error']:.2%})")
    return 0


def run_check(args) -> int:
    from .check import TRAINING_SPLITS, check_dataset
    from .remote import is_url, url_in

    # A URL has no folder listing to find its splits in: the ones asked for, or training's.
    splits = args.split or (list(TRAINING_SPLITS) if is_url(args.data) else None)
    root, labels, encoding = local_data(args, splits)
    report = check_dataset(root, labels, encoding, splits=splits, threads=args.threads)
    if root != args.data:  # name the files by their URLs, not by their places in the cache
        for problem in report["problems"]:
            problem["path"] = url_in(args.data, root, problem["path"])
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for problem in report["problems"]:
            print(f"{problem['path']}: {problem['reason']}")
        classes = report["classes"]
        if classes:
            print(f"{len(classes)} classes: {'; '.join(classes[:5])}{'; ...' if len(classes) > 5 else ''}")
        counts = ", ".join(f"{name} {n}" for name, n in report["images"].items())
        verdict = "all images decode and are labelled" if report["ok"] else f"{len(report['problems'])} problem(s)"
        print(f"checked {sum(report['images'].values())} images ({counts}): {verdict}")
    return 0 if report["ok"] else 1


VERBS = {"demo": run_demo, "train": run_train, "predict": run_predict, "evaluate": run_evaluate, "check": run_check}
