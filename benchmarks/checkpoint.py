"""What the tensor digest costs: save_checkpoint and load_checkpoint of a full training checkpoint
(AlexNet with 1000 classes, its weights and SGD's momentum: 466 MB), with the CRC-32 of every
tensor (as the trainer writes them) and without it (as files written before the digest, which
load unchecked). The rows of one trial run back to back, so that drift on a shared machine falls
on all of them. Loading reads the file just written, from the page cache: the digest's share of
a load from a cold disk is smaller.

    python benchmarks/checkpoint.py [--trials N] [--folder DIR] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from alexnet_dali.checkpoint import load_checkpoint, save_checkpoint, tensor_crc32
from alexnet_dali.model import AlexNetModule
from common import machine

ROWS = ("save", "save-no-digest", "load", "load-no-digest", "digest-only")


def training_state(num_classes: int = 1000) -> dict:
    """What last.pt holds, in size: the weights and one momentum buffer per parameter."""
    torch.manual_seed(0)
    net = AlexNetModule(num_classes)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    for parameter in net.parameters():
        optimizer.state[parameter]["momentum_buffer"] = torch.randn_like(parameter)
    return {"model": net.state_dict(), "optimizer": optimizer.state_dict(), "classes": [str(i) for i in range(num_classes)],
            "epoch": 1}


def seconds(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=5, help="timed trials per row; the median is reported")
    parser.add_argument("--folder", type=Path, default=None, help="where the checkpoints are written (default: a "
                        "temporary folder); the disk matters")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)

    state = training_state()
    with tempfile.TemporaryDirectory(dir=args.folder) as folder:
        with_digest, without = Path(folder) / "with.pt", Path(folder) / "without.pt"
        save_checkpoint(state, with_digest), save_checkpoint(state, without, digest=False)  # warm-up
        size_mb = with_digest.stat().st_size / 1e6
        times = {row: [] for row in ROWS}
        for _ in range(args.trials):
            times["save"].append(seconds(lambda: save_checkpoint(state, with_digest)))
            times["save-no-digest"].append(seconds(lambda: save_checkpoint(state, without, digest=False)))
            times["load"].append(seconds(lambda: load_checkpoint(with_digest)))
            times["load-no-digest"].append(seconds(lambda: load_checkpoint(without)))
            times["digest-only"].append(seconds(lambda: tensor_crc32(state)))

    median = {row: statistics.median(values) for row, values in times.items()}
    rows = [{"row": row, "seconds": round(median[row], 3), "trials": [round(t, 3) for t in times[row]]} for row in ROWS]
    notes = [f"checkpoint: {size_mb:.0f} MB; digest: {median['digest-only']:.2f} s alone "
             f"({size_mb / median['digest-only']:.0f} MB/s)",
             f"save: {median['save']:.2f} s with the digest, {median['save-no-digest']:.2f} s without "
             f"(+{median['save'] / median['save-no-digest'] - 1:.0%})",
             f"load: {median['load']:.2f} s with the check, {median['load-no-digest']:.2f} s without "
             f"(+{median['load'] / median['load-no-digest'] - 1:.0%})"]
    info = machine()
    print(f"checkpoint save and load, {args.trials} trials, in {args.folder or tempfile.gettempdir()} "
          f"({info['cpu']}, {info['cpu_cores']} cores)")
    for row in rows:
        print(f"  {row['row']:<16} {row['seconds']:7.3f} s   trials {row['trials']}")
    for note in notes:
        print(note)
    if args.json:
        args.json.write_text(json.dumps({"benchmark": "checkpoint", "rows": rows, "notes": notes, "machine": info,
                                         "settings": {"trials": args.trials, "size_mb": round(size_mb, 1),
                                                      "folder": str(args.folder or tempfile.gettempdir())}},
                                        indent=2) + "\n")


if __name__ == "__main__":
    main()
