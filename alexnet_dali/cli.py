"""`alexnet-dali` and `python -m alexnet_dali`: demo, train, predict, evaluate, check.

Bad input ends with one `error: ...` line per problem and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
import typing

from . import __version__
from .config import ConfigError, TrainConfig

EXIT_BAD_INPUT = 2
FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
DATA_OPTIONS = ("labels", "label_encoding", "cache_dir", "refresh")  # how every verb that reads a data set is told its labels
DEVICE_OPTIONS = ("device", "dali_threads", "hw_decoder_load")  # where every verb decodes and computes


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


class Parser(argparse.ArgumentParser):
    """A usage error in one line, naming the option, the value and where to read more (argparse's
    usage block, forty lines for `train`, would bury it)."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_config_options(parser: argparse.ArgumentParser, names, *, defaults: dict | None = None,
                       only_given: bool = False) -> None:
    """One option per named TrainConfig field, with its type, default and help text (`defaults`
    replaces a field's default for this verb: (value, what to show)). With `only_given`, options
    left out stay out of the parsed arguments (the config's defaults fill them in later), so that
    a resumed run can tell what its command asked for from what it did not say."""
    hints = typing.get_type_hints(TrainConfig)
    for name in names:
        f = FIELDS[name]
        flag = "--" + name.replace("_", "-")
        default, shown = (defaults or {}).get(name, (f.default, f.default))
        if only_given:
            default = argparse.SUPPRESS
        help_text = f.metadata["help"]
        if hints[name] is bool:
            parser.add_argument(flag, action="store_true", default=default, help=help_text)
            continue
        base = next((a for a in typing.get_args(hints[name]) if a is not type(None)), hints[name])
        choices = f.metadata.get("choices")
        if "default" not in help_text and shown is not None:  # None: the help says what happens
            help_text += f" (default: {shown})"
        parser.add_argument(flag, type=base, default=default, choices=choices, help=help_text,
                            metavar=None if choices else name.upper())


def given_options(args: argparse.Namespace) -> set[str]:
    """The TrainConfig fields this command sets (with add_config_options(only_given=True))."""
    return {name for name in vars(args) if name in FIELDS}


def config_from_args(args: argparse.Namespace, **fixed) -> TrainConfig:
    values = {k: v for k, v in vars(args).items() if k in FIELDS}
    return TrainConfig.from_dict({**values, **fixed})


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="alexnet-dali",
        description="Train, evaluate and run the AlexNet of Krizhevsky et al. (2012) fed by NVIDIA DALI.",
        epilog="every local GPU: torchrun --nproc_per_node=gpu -m alexnet_dali train DATA ...",
    )
    parser.add_argument("--version", action="version", version=f"alexnet-dali {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    demo = verbs.add_parser("demo", help="make a small data set, train on it, predict (the embedded default)")
    demo.add_argument("--out", default="alexnet-demo", help="folder for the demo data and run (default: alexnet-demo)")
    demo.add_argument("--epochs", type=positive_int, default=12, help="epochs to train (default: 12)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the data and the run (default: 0)")
    add_config_options(demo, ["device"])

    train = verbs.add_parser("train", help="train on DATA (one process, or one per GPU under torchrun)")
    train.add_argument("data", help="data root, http(s) URL or s3://bucket/prefix: DATA/train and DATA/val")
    add_config_options(train, [name for name in FIELDS if name != "data"], only_given=True)

    # Prediction: the model's own precision unless told; images per batch, not a global batch.
    inference = {"precision": (None, "the precision the model was trained in")}
    compile_help = ("torch.compile the network (ten views an image make the network the likely limit on a GPU: "
                    "benchmarks/predict.py's +compile row); compiling takes a minute at the start")
    predict = verbs.add_parser("predict", help="ten-crop predictions for images with a saved model")
    predict.add_argument("model", help="a checkpoint (last.pt, best.pt) or a file from AlexNet.save")
    predict.add_argument("images", nargs="+", help="image files; a folder stands for its images")
    predict.add_argument("--topk", type=positive_int, default=5, help="classes shown per image (default: 5)")
    predict.add_argument("--json", action="store_true", help="print JSON instead of text")
    add_config_options(predict, [*DEVICE_OPTIONS, "precision"], defaults=inference)
    predict.add_argument("--batch-size", type=positive_int, default=32, help="images per batch (default: 32)")
    predict.add_argument("--compile", action="store_true", help=compile_help)

    evaluate = verbs.add_parser("evaluate", help="top-1 / top-5 accuracy and error of a model on a split")
    evaluate.add_argument("model", help="a checkpoint (last.pt, best.pt) or a file from AlexNet.save")
    evaluate.add_argument("data", help="data root, http(s) URL (the split is downloaded into the cache) or "
                                       "s3://bucket/prefix (read from the bucket)")
    evaluate.add_argument("--split", default="val", help="split to evaluate (default: val)")
    evaluate.add_argument("--ten-crop", action="store_true", help="average ten views per image (the paper's test)")
    evaluate.add_argument("--json", action="store_true", help="print JSON instead of text")
    add_config_options(evaluate, [*DATA_OPTIONS, *DEVICE_OPTIONS, "precision"], defaults=inference)
    evaluate.add_argument("--batch-size", type=positive_int, default=32, help="images per batch (default: 32)")
    evaluate.add_argument("--compile", action="store_true", help=compile_help)

    check = verbs.add_parser("check", help="does every image decode, is every image labelled?")
    check.add_argument("data", help="data root, http(s) URL (the splits are downloaded into the cache) or "
                                    "s3://bucket/prefix (read from the bucket)")
    check.add_argument("--split", action="append", default=None,
                       help="split to check (repeatable; default: every split folder present)")
    check.add_argument("--json", action="store_true", help="print JSON instead of text")
    check.add_argument("--rescan", action="store_true",
                       help="decode every image again, ignoring the cached verdicts (which know a file by its path, "
                            "size and modification time: a file rewritten with both kept passes unseen)")
    add_config_options(check, [*DATA_OPTIONS, "device", "hw_decoder_load"])
    check.add_argument("--threads", type=positive_int, default=None,
                       help="decoder threads (default: every core on a CPU, the training cap on a GPU)")
    return parser


def main(argv: list[str] | None = None) -> int:
    from .checkpoint import CheckpointError
    from .errors import DataError
    from .scan import ScanInterrupted
    from .train import TrainingInterrupted

    args = build_parser().parse_args(argv)
    try:
        return VERBS[args.verb](args)
    except (DataError, CheckpointError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except TrainingInterrupted as e:
        print(f"{e}; run the same command with --resume to continue", file=sys.stderr)
        return 128 + e.signum
    except ScanInterrupted as e:  # Ctrl-C during check's or train's scan: what was checked is cached
        print(str(e), file=sys.stderr)
        return 128 + signal.SIGINT
    except KeyboardInterrupt:
        print("stopped by Ctrl-C", file=sys.stderr)
        return 128 + signal.SIGINT


# -- verbs -------------------------------------------------------------------------------------

def placement_from_args(args, threads: int | None = None):
    from .placement import place

    if getattr(args, "dali_threads", 0) < 0:
        raise ConfigError(f"--dali-threads must not be negative, got {args.dali_threads} (0: chosen for the machine)")
    return place(args.device, threads=threads if threads is not None else args.dali_threads,
                 hw_decoder_load=args.hw_decoder_load)


def local_data(args, splits) -> tuple[str, str | None, str | None]:
    """DATA, --labels and --label-encoding on this machine (a URL's splits downloaded)."""
    from .remote import local_copy

    return local_copy(args.data, args.labels, args.label_encoding, cache_dir=args.cache_dir, splits=splits,
                      refresh=args.refresh)


def run_train(args) -> int:
    from pathlib import Path

    from . import distributed
    from .checkpoint import LAST
    from .log import setup_logging
    from .rundir import hold_run_dir
    from .scan import ScanInterrupted
    from .resume import resume_state, resumed_config
    from .train import start_process, train

    config = config_from_args(args)
    dist, placement = start_process(config)
    setup_logging(dist.rank)
    try:
        with hold_run_dir(config.out, dist):  # before any work: a bad or busy --out stops us here
            state = resume_state(config)
            if state is not None:
                config = resumed_config(state, config, given_options(args), dist.world_size)
            train(config, state, dist=dist, placement=placement)
    except ScanInterrupted:
        raise  # Ctrl-C during the scan: main() says what was checked and cached
    except KeyboardInterrupt:  # a second Ctrl-C: no checkpoint now; a partial one was removed
        last = Path(config.out) / LAST
        kept = (f"{last} holds the last complete checkpoint: run the same command with --resume to continue"
                if last.exists() else "no checkpoint was written")
        print(f"stopped at once by Ctrl-C; {kept}", file=sys.stderr)
        return 128 + signal.SIGINT
    finally:
        distributed.cleanup()
    return 0


def run_demo(args) -> int:
    from .demo import run_demo as demo
    from .log import setup_logging

    setup_logging(0)
    return demo(args.out, epochs=args.epochs, device=args.device, seed=args.seed)


def run_predict(args) -> int:
    from .log import setup_logging
    from .predict import Predictor, expand_paths

    setup_logging(0, "stderr")
    predictor = Predictor.from_checkpoint(args.model, placement_from_args(args), batch_size=args.batch_size,
                                          precision=args.precision, compile=args.compile)
    paths = expand_paths(args.images)
    probabilities = predictor.predict_files(paths)
    names = dict(zip(predictor.classes, predictor.bundle.class_names))
    results = [{"image": path, "precision": predictor.precision,
                "top": [{"label": label, "name": names[label], "probability": p}
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
    from .errors import DataError
    from .evaluate import evaluate_split
    from .log import setup_logging
    from .state import load_state

    setup_logging(0, "stderr")
    placement = placement_from_args(args)
    bundle = load_state(args.model).bundle
    root, labels, encoding = local_data(args, [args.split])
    split = index_dataset(root, labels, encoding, splits=(args.split,))[args.split]
    bad = scan_split(split, root, placement)
    if bad:  # a bad file would stop DALI mid-pass: name them all first, as train does
        raise DataError(bad, f"{len(bad)} image(s) in {args.split!r} cannot be decoded")
    if split.classes != bundle.classes:
        raise DataError(f"the classes of {args.data} ({len(split.classes)}) differ from the model's "
                        f"({len(bundle.classes)}); pass the label encoding the model was trained with")
    result = evaluate_split(bundle, split, placement, ten_crop=args.ten_crop, batch_size=args.batch_size,
                            precision=args.precision, compile=args.compile)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        mode = "ten-crop" if args.ten_crop else "centre crop"
        compiled = ", compiled" if result["compiled"] else ""
        print(f"{args.split}: {result['images']} images, {mode}, {result['precision']}{compiled}")
        print(f"  top-1 accuracy {result['top1']:.2%}  (error {result['top1_error']:.2%})")
        print(f"  top-5 accuracy {result['top5']:.2%}  (error {result['top5_error']:.2%})")
    return 0


def scan_split(split, root: str, placement) -> list:
    """The split's undecodable images, with the scan cache train and check use for local data."""
    from .s3 import is_s3_url
    from .scan import CACHE_NAME, data_cache_dir, scan_images

    cache = None if is_s3_url(root) else data_cache_dir(root) / CACHE_NAME  # never in a bucket
    return scan_images(list(split.files), placement, cache_path=cache)


def run_check(args) -> int:
    from .check import TRAINING_SPLITS, check_dataset
    from .log import setup_logging
    from .placement import cpu_count
    from .remote import is_url, url_in

    setup_logging(0, "stderr")
    placement = placement_from_args(args, threads=args.threads or 0)
    if not args.threads and not placement.on_gpu:  # nothing else runs beside the check: every core
        placement = dataclasses.replace(placement, threads=cpu_count())
    # A URL has no folder listing to find its splits in: the ones asked for, or training's.
    splits = args.split or (list(TRAINING_SPLITS) if is_url(args.data) else None)
    root, labels, encoding = local_data(args, splits)
    report = check_dataset(root, labels, encoding, placement, splits=splits, rescan=args.rescan)
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
