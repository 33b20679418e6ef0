"""The whole acceptance run of a machine in one command: the GPU tests, then every benchmark at the
device's sizes, every JSON into one folder, and one summary table.

    python benchmarks/suite.py --device gpu --out DIR [--images N] [--batch-size B] [--trials T]
                               [--data DIR] [--hw-decoder-load 0,0.65,1] [--threads 4,8,16] [--no-tests] [--profile]

DIR receives test_gpu.log (pytest's output for tests/test_gpu.py), pipeline.json, train.json and
predict.json with a .log beside each, and summary.txt (the table printed at the end). --images and
--batch-size replace every benchmark's per-device defaults; --hw-decoder-load and --threads go to
benchmarks/pipeline.py. --profile adds one profiled pass per row (torch.profiler: the operators and
kernels that took the time) as DIR/profiles/<row>.txt, and its timeline (a Chrome trace) as
DIR/profiles/<row>.trace.json.gz, for every figure that misses its goal.
`--device cpu` runs the same on the CPU, where the GPU tests are skipped.
A failing test or benchmark does not stop the others; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from common import gpu_present, table

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# most wanted first, in case a lent machine's time runs out (the H100's run stopped in predict)
BENCHMARKS = ("pipeline", "predict", "train")


def run_logged(command: list[str], log: Path) -> int:
    """Run `command` in the repository root; its output goes both to the terminal and to `log`."""
    print(f"\n$ {' '.join(command)}", flush=True)
    with open(log, "w") as file:
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   bufsize=1)
        for line in process.stdout:
            sys.stdout.write(line)
            file.write(line)
        return process.wait()


def run_tests(out: Path) -> tuple[str, str | None]:
    """pytest on tests/test_gpu.py: (pytest's closing line, a failure or None)."""
    log = out / "test_gpu.log"
    if importlib.util.find_spec("pytest") is None:
        log.write_text("pytest is not installed\n")
        return "not run", "tests/test_gpu.py: pytest is not installed here (pip install pytest)"
    # addopts emptied: one file gains nothing from setup.cfg's two xdist workers, whose starts cost
    # seconds, and the option needs pytest-xdist, which a GPU host may lack
    status = run_logged([sys.executable, "-m", "pytest", "-o", "addopts=", "-q", "-ra", "-p", "no:cacheprovider",
                         "tests/test_gpu.py"], log)
    lines = [line.strip("= \n") for line in log.read_text().splitlines() if line.strip()]
    outcome = lines[-1] if lines else "no output"
    return outcome, None if status == 0 else f"tests/test_gpu.py (exit {status}, see {log})"


def benchmark_command(name: str, args, out: Path) -> list[str]:
    command = [sys.executable, str(HERE / f"{name}.py"), "--device", args.device, "--trials", str(args.trials),
               "--json", str(out / f"{name}.json")]
    profile = out / "profiles" if args.profile else None
    for option, value in (("--images", args.images), ("--batch-size", args.batch_size), ("--data", args.data),
                          ("--profile", profile)):
        if value is not None:
            command += [option, str(value)]
    if name == "pipeline":
        for option, value in (("--hw-decoder-load", args.hw_decoder_load), ("--threads", args.threads)):
            if value is not None:
                command += [option, value]
    return command


def summary(out: Path, tests: str) -> str:
    """One table of every row of every benchmark's JSON in `out`, then each benchmark's notes."""
    results = [json.loads(path.read_text()) for name in BENCHMARKS if (path := out / f"{name}.json").exists()]
    lines = ["", f"summary ({out})", f"GPU tests (tests/test_gpu.py): {tests}"]
    if results:
        machine = results[0]["machine"]
        lines.append(f"machine: {machine['cpu']}, {machine['cpu_cores']} cores, GPU: {machine['gpu'] or 'none'}, "
                     f"torch {machine['torch']}, DALI {machine['dali']}")
        rows = [{**row, "benchmark": result["benchmark"]} for result in results for row in result["rows"]]
        lines.append(table(rows, first="benchmark"))
        lines += [note for result in results for note in result["notes"]]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "gpu", "all"), default="all",
                        help="which rows every benchmark runs (all: the CPU rows, and the GPU rows where a GPU is present)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the logs, the JSON files and the summary")
    parser.add_argument("--images", type=int, default=None, help="images per trial (default: each benchmark's, per device)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per batch (default: each benchmark's, per device)")
    parser.add_argument("--trials", type=int, default=3, help="timed trials per row")
    parser.add_argument("--data", type=Path, default=None, help="a folder of JPEGs (default: the generated set)")
    parser.add_argument("--hw-decoder-load", default=None, help="pipeline.py's sweep of the hardware decoder's share")
    parser.add_argument("--threads", default=None, help="pipeline.py's sweep of DALI threads")
    parser.add_argument("--no-tests", action="store_true", help="skip tests/test_gpu.py")
    parser.add_argument("--profile", action="store_true",
                        help="one profiled pass per row into OUT/profiles/<row>.txt (torch.profiler's table) "
                             "and <row>.trace.json.gz (its timeline)")
    args = parser.parse_args(argv)
    if args.device == "gpu" and not gpu_present():
        parser.error("--device gpu: torch sees no CUDA GPU on this machine")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    failures = []
    tests = "not run (--no-tests)"
    if not args.no_tests:
        tests, failure = run_tests(out)
        failures += [failure] if failure else []
    for name in BENCHMARKS:
        (out / f"{name}.json").unlink(missing_ok=True)  # the summary shows this run's results only
        status = run_logged(benchmark_command(name, args, out), out / f"{name}.log")
        if status != 0:
            failures.append(f"benchmarks/{name}.py (exit {status}, see {out / (name + '.log')})")
    text = summary(out, tests)
    (out / "summary.txt").write_text(text.lstrip("\n") + "\n")
    print(text)
    for failure in failures:
        print(f"FAILED: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
