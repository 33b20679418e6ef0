"""Launched by two torchrun agents in tests/test_two_nodes.py: the training and validation images
this rank reads in one epoch, as indices into each split (DIR/shard-rankN.json)."""

import dataclasses
import json
import os
import sys
from pathlib import Path

from alexnet_dali import distributed
from alexnet_dali.config import TrainConfig
from alexnet_dali.loader import LoaderSettings, evaluation_loader, training_loader
from alexnet_dali.prepare import prepare_data

config = TrainConfig.from_dict(json.loads(Path(sys.argv[1]).read_text()))
dist_info = distributed.setup("cpu", config.dist_timeout)
data = prepare_data(config, dist_info, log=lambda *a: None)
settings = LoaderSettings(1, 1, 2, config.seed, config.lighting)


def by_index(split):
    """The split with each image labelled by its index, so the batches tell which images they hold."""
    return dataclasses.replace(split, labels=tuple(range(len(split.files))))


train = [int(i) for _, y in training_loader(by_index(data.train), data.pca, settings, dist_info) for i in y]
val = [int(i) for _, y in evaluation_loader(by_index(data.val), data.pca, settings, dist_info) for i in y]
record = {"rank": dist_info.rank, "local_rank": dist_info.local_rank, "node": int(os.environ["GROUP_RANK"]),
          "train": train, "val": val}
(Path(sys.argv[2]) / f"shard-rank{dist_info.rank}.json").write_text(json.dumps(record))
distributed.cleanup()
