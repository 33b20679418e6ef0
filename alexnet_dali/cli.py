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
from .config import InferenceOptions, TrainConfig, bound_problem
from .errors import UserError

EXIT_BAD_INPUT = 2
FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
DATA_OPTIONS = ("labels", "label_encoding", "cache_dir", "refresh")  # how every verb that reads a data set is told its labels
DEVICE_OPTIONS = ("device", "dali_threads", "hw_decoder_load")  # where every verb decodes and computes


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def bounded(name: str, base=int):
    """An argparse type for an option outside TrainConfig: a number within the bounds of the
    config field `name` (config.BOUNDS)."""
    def parse(text: str):
        value = base(text)
        problem = bound_problem(name, value)
        if problem:
            raise argparse.ArgumentTypeError(problem.split(" ", 1)[1])  # "must be ..., got ...: why"
        return value

    parse.__name__ = base.__name__  # argparse's "invalid int value" for text that is no number
    return parse


class Parser(argparse.ArgumentParser):
    """A usage error in one line, naming the option, the value and where to read more (argparse's
    usage block, forty lines for `train`, would bury it)."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_config_options(parser: argparse.ArgumentParser, names, *, options=TrainConfig, defaults: dict | None = None,
                       only_given: bool = False) -> None:
    """One option per named field of the dataclass `options` (TrainConfig, InferenceOptions), with
    its type, default and help text (`defaults` replaces a field's default for this verb: (value,
    what to show)). With `only_given`, options left out stay out of the parsed arguments (the
    config's defaults fill them in later), so that a resumed run can tell what its command asked
    for from what it did not say."""
    hints = typing.get_type_hints(options)
    fields = {f.name: f for f in dataclasses.fields(options)}
    for name in names:
        f = fields[name]
        flag = "--" + name.replace("_", "-")
        default, shown = (defaults or {}).get(name, (f.default, f.default))
        if only_given:
            default = argparse.SUPPRESS
        help_text = f.metadata["help"]
        if hints[name] is bool:
            parser.add_argument(flag, action="store_true", default=default, help=help_text)
            continue
        base = next((a for a in typing.get_args(hints[name]) if a is not type(None)), hints[name])
        if f.metadata.get("minimum") == 1:
            base = positive_int
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
    demo.add_argument("--epochs", type=bounded("epochs"), default=12, help="epochs to train (default: 12)")
    demo.add_argument("--seed", type=bounded("seed"), default=0, help="seed of the data and the run (default: 0)")
    add_config_options(demo, ["device"])

    train = verbs.add_parser("train", help="train on DATA (one process, or one per GPU under torchrun)")
    train.add_argument("data", help="data root, http(s) URL or s3://bucket/prefix: DATA/train and DATA/val")
    add_config_options(train, [name for name in FIELDS if name != "data"], only_given=True)

    # Prediction: the model's own precision unless told; images per batch, not a global batch.
    inference = {"precision": (None, "the precision the model was trained in")}
    predict = verbs.add_parser("predict", help="ten-crop predictions for images with a saved model")
    predict.add_argument("model", help="a checkpoint (last.pt, best.pt) or a file from AlexNet.save")
    predict.add_argument("images", nargs="+", help="image files; a folder (or an s3:// prefix) stands for its images")
    add_config_options(predict, ["topk", "json"], options=InferenceOptions)
    add_config_options(predict, [*DEVICE_OPTIONS, "precision"], defaults=inference)
    add_config_options(predict, ["batch_size", "compile"], options=InferenceOptions)

    evaluate = verbs.add_parser("evaluate", help="top-1 / top-5 accuracy and error of a model on a split")
    evaluate.add_argument("model", help="a checkpoint (last.pt, best.pt) or a file from AlexNet.save")
    evaluate.add_argument("data", help="data root, http(s) URL (the split is downloaded into the cache) or "
                                       "s3://bucket/prefix (read from the bucket)")
    add_config_options(evaluate, ["split", "ten_crop", "json"], options=InferenceOptions)
    add_config_options(evaluate, [*DATA_OPTIONS, *DEVICE_OPTIONS, "precision"], defaults=inference)
    add_config_options(evaluate, ["batch_size", "compile"], options=InferenceOptions)

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
    check.add_argument("--threads", type=bounded("dali_threads"), default=None,
                       help="decoder threads (default: every core on a CPU, the training cap on a GPU)")

    prepare = verbs.add_parser("prepare", help="store SRC's images as the paper's 256x256 squares in DST, once")
    prepare.add_argument("src", help="data root, http(s) URL or s3://bucket/prefix: anything train reads")
    prepare.add_argument("dst", help="local folder for the prepared set (train, check, evaluate take it as DATA)")
    prepare.add_argument("--split", action="append", default=None,
                         help="split to prepare (repeatable; default: train and val)")
    prepare.add_argument("--quality", type=int, default=90,
                         help="JPEG quality of the stored squares (default: 90, chosen in benchmarks/RESULTS.md)")
    prepare.add_argument("--skip-bad", action="store_true",
                         help="leave out source files that are not images or cannot be decoded, and list them")
    prepare.add_argument("--redo", action="store_true",
                         help="prepare every image again (needed when DST was prepared with other settings)")
    prepare.add_argument("--threads", type=positive_int, default=None,
                         help="DALI threads (default: every core on a CPU, the training cap on a GPU)")
    add_config_options(prepare, [*DATA_OPTIONS, "device", "hw_decoder_load"])
    return parser


def main(argv: list[str] | None = None) -> int:
    from .prepare import PrepareInterrupted
    from .scan import ScanInterrupted
    from .train import TrainingInterrupted

    args = build_parser().parse_args(argv)
    try:
        return VERBS[args.verb](args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except TrainingInterrupted as e:
        print(f"{e}; run the same command with --resume to continue", file=sys.stderr)
        return 128 + e.signum
    except PrepareInterrupted as e:  # Ctrl-C or SIGTERM: what was finished is recorded
        print(str(e), file=sys.stderr)
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

    return place(args.device, threads=threads if threads is not None else args.dali_threads,
                 hw_decoder_load=args.hw_decoder_load)


def local_data(args, splits) -> tuple[str, str | None, str | None]:
    """DATA, --labels and --label-encoding on this machine (a URL's splits downloaded)."""
    from .sources import local_copy

    return local_copy(args.data, args.labels, args.label_encoding, cache_dir=args.cache_dir, splits=splits,
                      refresh=args.refresh)


def run_train(args) -> int:
    from pathlib import Path

    from . import distributed
    from .checkpoint import LAST
    from .log import logger, setup_logging
    from .rundir import check_outside_data, hold_run_dir
    from .scan import ScanInterrupted
    from .resume import nothing_left, resume_state, resumed_config
    from .train import start_process, train

    config = config_from_args(args)
    check_outside_data(config)
    dist, placement = start_process(config)
    setup_logging(dist.rank)
    try:
        with hold_run_dir(config.out, dist):  # before any work: a bad or busy --out stops us here
            state = resume_state(config)
            if state is not None:
                config = resumed_config(state, config, given_options(args), dist.world_size)
                if state.epoch >= config.epochs:  # said before the scan and the PCA pass
                    logger.info(nothing_left(state, config))
                    return 0
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
    from .resume import class_change
    from .state import load_state

    setup_logging(0, "stderr")
    placement = placement_from_args(args)
    bundle = load_state(args.model).bundle
    root, labels, encoding = local_data(args, [args.split])
    split = index_dataset(root, labels, encoding, splits=(args.split,))[args.split]
    if split.classes != bundle.classes:  # named as resume names them: the classes that moved, or differ
        change = class_change(bundle.classes, split.classes)
        advice = "" if "label encoding" in change else "; pass the label encoding the model was trained with"
        raise DataError(f"the classes of {args.data} differ from the model's: {change}{advice}")
    bad = [] if split.prepared else scan_split(split, root, placement)  # prepare verified a prepared set
    if bad:  # a bad file would stop DALI mid-pass: name them all first, as train does
        raise DataError(bad, f"{len(bad)} image(s) in {args.split!r} cannot be decoded")
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
    """The split's undecodable images, with the scan cache train and check use."""
    from .scan import CACHE_NAME, scan_images
    from .sources import cache_folder

    shared = cache_folder(root)  # never in a bucket
    return scan_images(list(split.files), placement, cache_path=shared / CACHE_NAME if shared else None)


def run_check(args) -> int:
    from .check import TRAINING_SPLITS, check_dataset
    from .log import setup_logging
    from .placement import cpu_count
    from .sources import lists_its_root, origin

    setup_logging(0, "stderr")
    placement = placement_from_args(args, threads=args.threads or 0)
    if not args.threads and not placement.on_gpu:  # nothing else runs beside the check: every core
        placement = dataclasses.replace(placement, threads=cpu_count())
    # A URL has no folder listing to find its splits in: the ones asked for, or training's.
    splits = args.split or (None if lists_its_root(args.data) else list(TRAINING_SPLITS))
    root, labels, encoding = local_data(args, splits)
    report = check_dataset(root, labels, encoding, placement, splits=splits, rescan=args.rescan)
    for problem in report["problems"]:  # name the files by their URLs, not by their places in the cache
        problem["path"] = origin(args.data, root, problem["path"])
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


def run_prepare(args) -> int:
    from .log import setup_logging
    from .prepare import prepare_dataset

    setup_logging(0, "stderr")
    report = prepare_dataset(args.src, args.dst, labels=args.labels, label_encoding=args.label_encoding,
                             splits=tuple(args.split) if args.split else None, quality=args.quality,
                             skip_bad=args.skip_bad, redo=args.redo, threads=args.threads or 0, device=args.device,
                             hw_decoder_load=args.hw_decoder_load, cache_dir=args.cache_dir, refresh=args.refresh)
    for path, reason in report.skipped.items():
        print(f"left out {path}: {reason}")
    print(f"{report.dst}: {report.images} images ({report.prepared} prepared now, {report.kept} already there, "
          f"{report.removed} removed, {len(report.skipped)} left out)")
    print(f"train on it with: alexnet-dali train {report.dst}")
    return 0


VERBS = {"prepare": run_prepare, "demo": run_demo, "train": run_train, "predict": run_predict, "evaluate": run_evaluate, "check": run_check}
