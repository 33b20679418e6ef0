"""Launched by two torchrun agents in tests/test_two_nodes.py: the training and validation images
this rank reads in one epoch, as indices into each split (DIR/shard-rankN.json)."""

import dataclasses
import json
import os
import sys
from pathlib import Path

from alexnet_dali import distributed
from alexnet_dali.config import TrainConfig
from alexnet_dali.loader import evaluation_loader, training_loader
from alexnet_dali.dataset import load_training_data
from alexnet_dali.train import start_process

config = TrainConfig.from_dict(json.loads(Path(sys.argv[1]).read_text()))
dist, placement = start_process(config)
data = load_training_data(config, dist, placement)


def by_index(split):
    """The split with each image labelled by its index, so the batches tell which images they hold."""
    return dataclasses.replace(split, labels=tuple(range(len(split.files))))


train = [int(i) for _, y in training_loader(by_index(data.train), data.pca, placement, dist, batch_size=1,
                                            seed=config.seed, lighting=config.lighting, prefetch=2) for i in y]
val = [int(i) for _, y in evaluation_loader(by_index(data.val), data.pca, placement, dist, batch_size=1,
                                            prefetch=2) for i in y]
record = {"rank": dist.rank, "local_rank": dist.local_rank, "node": int(os.environ["GROUP_RANK"]),
          "train": train, "val": val}
(Path(sys.argv[2]) / f"shard-rank{dist.rank}.json").write_text(json.dumps(record))
distributed.cleanup()
