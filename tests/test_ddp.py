"""DistributedDataParallel under real `torchrun --standalone --nproc_per_node=2` on the CPU (gloo)."""

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from alexnet_dali.config import ConfigError, TrainConfig
from alexnet_dali.distributed import DistInfo
from alexnet_dali.evaluate import evaluate_split
from alexnet_dali.loader import training_loader
from alexnet_dali.model import AlexNetModule
from alexnet_dali.dataset import load_training_data
from alexnet_dali.schedule import batch_plan
from conftest import cpu_placement, make_original_layout, tiny_config, torchrun

HERE = Path(__file__).resolve().parent


def cpu_rank(rank: int, world: int) -> DistInfo:
    return DistInfo(rank, rank, world, world)


def config_for(layout, out, **changes) -> TrainConfig:
    return tiny_config(layout, out, **{"epochs": 1, "lr": 3e-4, **changes})


@pytest.fixture(scope="module")
def uneven(tmp_path_factory):
    """11 training and 5 validation images: neither splits evenly over 2 processes."""
    return make_original_layout(tmp_path_factory.mktemp("ddp") / "data", per_split={"train": 11, "val": 5})


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, uneven):
    root = tmp_path_factory.mktemp("ddp-run")
    # no dropout, so one process can reproduce the gradients exactly from the same global batches
    config = config_for(uneven, root / "run", epochs=2, dropout=0.0)
    (root / "config.json").write_text(json.dumps(config.to_dict()))
    result = torchrun(HERE / "ddp_driver.py", root / "config.json", root)
    assert result.returncode == 0, result.stderr[-4000:]
    return config, root, result


def global_batches(config: TrainConfig, world: int, epochs: int):
    """The batches each rank's real DALI loader yields, joined rank by rank into global batches."""
    data = load_training_data(config, cpu_rank(0, 1), cpu_placement())
    per_process, _, _ = batch_plan(config, world)
    loaders = [training_loader(data.train, data.pca, cpu_placement(), cpu_rank(r, world), batch_size=per_process,
                               seed=config.seed, lighting=config.lighting, prefetch=config.prefetch)
               for r in range(world)]
    steps = []
    for _ in range(epochs):
        per_rank = [[(x.clone(), y.clone()) for x, y in loader] for loader in loaders]
        assert len({len(batches) for batches in per_rank}) == 1  # every rank takes the same number of steps
        for parts in zip(*per_rank):
            steps.append((torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])))
    return steps


def test_ranks_hold_identical_weights_equal_to_one_process_on_the_same_global_batches(ddp_run):
    config, root, _ = ddp_run
    rank0 = torch.load(root / "weights-rank0.pt", weights_only=True)
    rank1 = torch.load(root / "weights-rank1.pt", weights_only=True)
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)  # bit-identical across ranks
    torch.manual_seed(config.seed)  # train() builds its network right after this seed
    net = AlexNetModule(2, dropout=0.0)
    optimizer = torch.optim.SGD(net.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    steps = global_batches(config, world=2, epochs=2)
    assert len(steps) == 6  # 11 images -> shards of 6 (padded) -> 3 steps of 2 per rank, twice
    initial = {k: v.clone() for k, v in net.state_dict().items()}
    for images, labels in steps:
        loss = torch.nn.functional.cross_entropy(net(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for key, value in net.state_dict().items():
        moved = (rank0[key] - initial[key]).abs().max().item()
        assert moved > 0, key
        # within 1% of how far training moved the weights, or a few float32 ulps of the value (the
        # biases start at 1.0): the rest is float summation order
        ulps = 4 * torch.finfo(torch.float32).eps * value.abs()
        assert torch.all((rank0[key] - value).abs() <= 0.01 * moved + ulps), key


def test_each_epoch_covers_every_image_across_ranks(uneven, tmp_path):
    config = config_for(uneven, tmp_path / "run")
    data = load_training_data(config, cpu_rank(0, 1), cpu_placement())
    path_of = dict(enumerate(data.train.files))
    # label each image by its index so the batches tell which images they hold
    from alexnet_dali.data import Split

    indexed = Split("train", data.train.files, tuple(range(len(data.train.files))), data.train.classes)
    loaders = [training_loader(indexed, data.pca, cpu_placement(), cpu_rank(r, 2), batch_size=2, seed=config.seed,
                               lighting=0.1, prefetch=2) for r in range(2)]
    for epoch in range(3):
        seen = [[int(i) for _, y in loader for i in y] for loader in loaders]
        assert len(seen[0]) == len(seen[1]) == 6  # same steps per rank: 3 × 2
        assert set(seen[0]) | set(seen[1]) == set(path_of)  # all 11 images, every epoch
        assert len(set(seen[0]) & set(seen[1])) == 0  # disjoint shards; the one repeat fills a batch



@pytest.mark.parametrize("world, batch", [(2, 4), (3, 2)])
def test_own_images_are_each_shards_images_once_and_the_rest_repeats(uneven, world, batch):
    """11 images: shards of 5 and 6 (2 steps of 4), or of 3, 4 and 4 (2 steps of 2, the first
    shard's last step one image and a repeat). The rows own_images counts are every image once."""
    from alexnet_dali.data import Split
    from alexnet_dali.loader import shard_size
    from alexnet_dali.pca import PCA

    files = tuple(sorted(str(p) for p in (uneven["data"] / "train").iterdir()))
    indexed = Split("train", files, tuple(range(len(files))), ("cat", "dog"))
    pca = PCA((0.5, 0.5, 0.5), (0.0, 0.0, 0.0), ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)))
    owned = []
    for rank in range(world):
        loader = training_loader(indexed, pca, cpu_placement(), cpu_rank(rank, world), batch_size=batch, seed=0,
                                 lighting=0.0, prefetch=2)
        mine = []
        for step, (_, labels) in enumerate(loader):
            own = loader.own_images(step)
            mine += labels[:own].tolist()
            assert set(labels[own:].tolist()) <= {mine[-1]}  # the rest repeat the shard's last image
        assert len(mine) == len(set(mine)) == shard_size(len(files), rank, world)
        owned += mine
    assert sorted(owned) == list(range(len(files)))


def test_validation_under_two_processes_equals_one_process(ddp_run, uneven):
    config, root, _ = ddp_run
    history = json.loads((Path(config.out) / "history.json").read_text())
    from alexnet_dali.data import index_dataset
    from alexnet_dali.state import load_state

    bundle = load_state(Path(config.out) / "last.pt").bundle
    val = index_dataset(uneven["data"], uneven["labels"], uneven["label_encoding"], splits=("val",))["val"]
    single = evaluate_split(bundle, val, cpu_placement(), ten_crop=False, batch_size=2, precision=None)
    assert single["images"] == 5
    assert history["val_accuracy"][-1] == pytest.approx(single["top1"])
    assert history["val_top5"][-1] == pytest.approx(single["top5"])
    assert history["val_loss"][-1] == pytest.approx(single["loss"], rel=1e-4)


def test_pca_split_over_two_processes_equals_one_process(ddp_run):
    """Each rank sums half of the training images; the all-reduced sums give the same PCA."""
    from alexnet_dali.pca import PCA, compute_pca

    config, _, _ = ddp_run
    state = torch.load(Path(config.out) / "last.pt", weights_only=True)
    data = load_training_data(config, cpu_rank(0, 1), cpu_placement())
    single = compute_pca(data.train.files, cpu_placement())
    two = PCA.from_dict(state["pca"])
    assert two.images == single.images == 11
    np.testing.assert_allclose(two.mean, single.mean, rtol=1e-12)
    np.testing.assert_allclose(two.eigval, single.eigval, rtol=1e-9)


def test_only_rank_zero_writes_and_logs(ddp_run):
    config, root, result = ddp_run
    out = Path(config.out)
    # the data folder is writable, so the scan and PCA caches live beside the data, not in the run
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "config.json", "history.json", "last.pt",
                                                     "previous.pt", "tensorboard"]
    assert (Path(config.data) / ".alexnet-dali").is_dir()
    assert len(list((out / "tensorboard").iterdir())) == 1  # one SummaryWriter: rank 0's
    assert result.stdout.count("epoch 1/2:") == 1 and result.stdout.count("training on 11 images") == 1
    saved = json.loads((out / "config.json").read_text())
    assert (saved["world_size"], saved["global_batch"], saved["batch_per_process"]) == (2, 4, 2)
    state = torch.load(out / "last.pt", weights_only=True)
    assert len(state["ranks"]) == 2 and state["world_size"] == 2


def test_batch_size_is_global_unless_per_gpu():
    config = TrainConfig(batch_size=128, lr=0.01)
    assert batch_plan(config, 1) == (128, 128, 0.01)
    assert batch_plan(config, 4) == (32, 128, 0.01)
    per_gpu = config.replace(per_gpu_batch=True)
    assert batch_plan(per_gpu, 4) == (128, 512, pytest.approx(0.04))  # linear lr scaling
    with pytest.raises(ConfigError, match="does not split evenly over 3"):
        batch_plan(config.replace(batch_size=100), 3)


def test_dali_threads_share_the_cores_and_cap_gpu_pipelines(monkeypatch):
    import alexnet_dali.placement as placement

    monkeypatch.setattr(placement, "cpu_count", lambda: 64)
    # 4 processes on a 64-core node: 16 cores each
    assert placement.default_threads(on_gpu=False, local_world_size=4) == 8  # half: the model needs the cores too
    assert placement.default_threads(on_gpu=True, local_world_size=4) == placement.MAX_GPU_PIPELINE_THREADS == 8
    assert placement.default_threads(on_gpu=True, local_world_size=16) == 3  # 4 cores, one for torch
    assert placement.place("cpu", threads=5, hw_decoder_load=0.65, local_world_size=4).threads == 5  # asked for


def test_ranks_agree_on_a_signal_only_one_of_them_received(tmp_path):
    """Rank 1 alone gets SIGTERM at step 3; both stop together at the next agreed step (10), and
    at the epoch's last step (25), never in between: no rank leaves the other in a collective."""
    from alexnet_dali.train import SYNC_EVERY

    result = torchrun(HERE / "poll_driver.py", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    stops = [json.loads((tmp_path / f"stops-rank{rank}.json").read_text()) for rank in (0, 1)]
    agreed = [step for step in range(1, 26) if step % SYNC_EVERY == 0 and step >= 3] + [25]
    assert stops == [[[step, signal.SIGTERM] for step in dict.fromkeys(agreed)]] * 2


def worker_pids(agent_pid: int) -> list[int]:
    children = Path(f"/proc/{agent_pid}/task/{agent_pid}/children")
    return [int(p) for p in children.read_text().split()] if children.exists() else []


def test_torchrun_restart_resumes_from_the_last_checkpoint(tmp_path, uneven):
    """Kill a worker (SIGKILL) right after the first checkpoint; torchrun --max-restarts 1 starts
    both again with the same command line and they resume by themselves (two epochs: the second
    is left to the restarted workers)."""
    out = tmp_path / "run"
    args = ["-m", "alexnet_dali", "train", uneven["data"], "--labels", uneven["labels"], "--label-encoding",
            uneven["label_encoding"], "--epochs", "2", "--batch-size", "4", "--lr", "3e-5", "--out", out,
            "--device", "cpu", "--dali-threads", "1"]
    agent = torchrun(*args, max_restarts=1, popen=True)
    deadline = time.monotonic() + 240
    while not (out / "last.pt").exists():
        assert agent.poll() is None and time.monotonic() < deadline, "training ended before its first checkpoint"
        time.sleep(0.05)
    victims = worker_pids(agent.pid)
    assert len(victims) == 2
    os.kill(victims[1], signal.SIGKILL)
    stdout, stderr = agent.communicate(timeout=240)
    assert agent.returncode == 0, stderr[-3000:]
    assert "resuming" in stdout and "at epoch 2" in stdout
    history = json.loads((out / "history.json").read_text())
    assert len(history["loss"]) == 2  # every epoch exactly once
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 2
