"""Launched by torchrun in tests/test_ddp.py: train as the config says, then save this rank's
final weights so the test can compare ranks with each other and with one process."""

import json
import os
import sys
from pathlib import Path

import torch

from alexnet_dali.config import TrainConfig
from alexnet_dali.log import setup_logging
from alexnet_dali.train import train

rank = int(os.environ.get("RANK", 0))
setup_logging(rank)
config = TrainConfig.from_dict(json.loads(Path(sys.argv[1]).read_text()))
state = train(config)
torch.save(state.bundle.net.state_dict(), Path(sys.argv[2]) / f"weights-rank{rank}.pt")
