"""Launched by torchrun in tests/test_ddp.py: only rank 1 gets a signal (at step 3); both ranks
poll a 25-step epoch and write where they agreed to stop (DIR/stops-rankN.json)."""

import json
import os
import signal
import sys
from pathlib import Path

import torch

from alexnet_dali import distributed
from alexnet_dali.train import StepControl

info = distributed.read_env()
distributed.join(info, torch.device("cpu"))
seen = []
with StepControl(0.0, info, torch.device("cpu")) as control:
    for step in range(1, 26):
        if step == 3 and info.rank == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # handled: recorded, acted on at an agreed step
        stop, signum = control.poll(step, 25)
        if stop:
            seen.append([step, signum])
(Path(sys.argv[1]) / f"stops-rank{info.rank}.json").write_text(json.dumps(seen))
