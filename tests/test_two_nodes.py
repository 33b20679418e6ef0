"""Two nodes on one machine: two torchrun agents on loopback (`--nnodes 2`, c10d rendezvous, one CPU
process each, gloo), so that every rank has local rank 0 and the agents restart their workers on
their own, as on two real nodes. Also: joining the process group waits a bounded time."""

import json
import threading
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

from alexnet_dali.distributed import ProcessGroupTimeout, join, meeting_store, read_env
from conftest import make_original_layout, run_cli
from two_nodes import HERE, end_agents, free_port, kill_and_resume, start_agents, train_command, wait_agents

EPOCHS = 2  # the kill comes after epoch 1's checkpoint; the restarted workers train epoch 2


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """2 training and 3 validation images (one step per epoch; validation does not split evenly)."""
    return make_original_layout(tmp_path_factory.mktemp("two-nodes") / "data", per_split={"train": 2, "val": 3})


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory, small):
    """Rank 1's worker is SIGKILLed after the first checkpoint while rank 0's worker is held
    (SIGSTOP) until its agent stops it: that agent restarts it for the membership change, which
    torch elastic does not count, while the killed worker's agent counts a restart."""
    root = tmp_path_factory.mktemp("two-nodes-run")
    out = root / "run"
    return kill_and_resume(train_command(small, out, EPOCHS), out, root / "logs", "membership"), out


def test_a_worker_killed_on_one_node_is_restarted_and_the_run_resumes(killed_run):
    outcome, out = killed_run
    assert outcome.codes == [0, 0], "\n".join(log[-3000:] for log in outcome.logs)
    writer = outcome.rank_before.index(0)
    assert f"resuming {out} at epoch 2" in outcome.logs[writer]
    history = json.loads((out / "history.json").read_text())
    assert len(history["loss"]) == len(history["val_accuracy"]) == EPOCHS  # every epoch exactly once
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == EPOCHS


def test_the_other_nodes_worker_restarts_for_the_membership_change_without_failing(killed_run):
    """The two restarted workers saw different TORCHELASTIC_RESTART_COUNTs and still met (issue 17:
    they waited under different store prefixes, or the uncounted one refused to resume)."""
    outcome, _ = killed_run
    survivor = 1 - outcome.victim
    assert outcome.restart_counts[outcome.victim] == 1 and outcome.restart_counts[survivor] == 0
    assert "closing signal SIGTERM" in outcome.logs[survivor]  # its agent stopped it ...
    assert "failed (exitcode" not in outcome.logs[survivor]  # ... and it never failed, in any round
    assert "error:" not in outcome.logs[survivor]


def test_only_global_rank_zero_writes_and_logs(killed_run):
    """Both workers have local rank 0: only the one with global rank 0 may write."""
    outcome, out = killed_run
    writer = outcome.rank_before.index(0)
    assert outcome.logs[writer].count("training on 2 images") == 2  # the first start and the restart
    assert "training on" not in outcome.logs[1 - writer] and "epoch 1/" not in outcome.logs[1 - writer]
    names = {p.name for p in out.iterdir()} - {"cache"}
    assert names == {"best.pt", "config.json", "history.json", "last.pt", "previous.pt", "tensorboard"}
    assert len(list((out / "tensorboard").iterdir())) == 2  # one SummaryWriter per start of rank 0
    assert json.loads((out / "config.json").read_text())["world_size"] == 2


def test_shards_are_disjoint_across_nodes(tmp_path, small):
    """DALI's shard is the global rank: sharded by local rank (0 on both nodes, NVIDIA's ResNet-50
    example), both nodes would read the same images and the rest none."""
    config = {"data": str(small["data"]), "labels": str(small["labels"]),
              "label_encoding": str(small["label_encoding"]), "out": str(tmp_path / "run"), "device": "cpu",
              "dali_threads": 1, "batch_size": 2}  # at most the 2 images of a process's shard
    (tmp_path / "config.json").write_text(json.dumps(config))
    agents = start_agents([HERE / "shard_driver.py", tmp_path / "config.json", tmp_path], tmp_path / "logs")
    try:
        codes = wait_agents(agents, time.monotonic() + 180)
    finally:
        end_agents(agents)
    assert codes == [0, 0], "\n".join((tmp_path / "logs" / f"node{n}.log").read_text()[-2000:] for n in range(2))
    shards = [json.loads((tmp_path / f"shard-rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [s["local_rank"] for s in shards] == [0, 0] and {s["node"] for s in shards} == {0, 1}
    assert [len(s["train"]) for s in shards] == [1, 1] and set(shards[0]["train"]).isdisjoint(shards[1]["train"])
    assert set(shards[0]["train"]) | set(shards[1]["train"]) == {0, 1}
    assert sorted(shards[0]["val"] + shards[1]["val"]) == [0, 1, 2]  # every image once, no padding counted


# -- Joining the process group never waits in silence ------------------------------------------

def test_a_rank_that_waits_for_a_missing_one_stops_with_one_line(tmp_path, small):
    """A world of 2 where only rank 0 starts: after --dist-timeout it names the missing rank, the
    store and the prefix, in one line, and exits 2 (it waited 30 minutes, silent, before)."""
    port = free_port()
    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
    started = time.monotonic()
    result = run_cli("train", small["data"], "--labels", small["labels"], "--label-encoding", small["label_encoding"],
                     "--out", tmp_path / "run", "--device", "cpu", "--dist-timeout", "0.05", env=env, timeout=120)
    assert time.monotonic() - started < 60
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"error: rank 0 waited 0.05 min for rank 1 of 2 to join the process group at store 127.0.0.1:{port}, "
        "prefix alexnet-dali/world2/generation0: start the same command on every node, or give --dist-timeout "
        "more minutes"]
    assert not (tmp_path / "run").exists()


def test_a_rank_whose_store_never_answers_stops_with_one_line(monkeypatch):
    port = free_port()  # nothing listens there
    for name, value in {"RANK": "1", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": str(port), "TORCHELASTIC_USE_AGENT_STORE": "True"}.items():
        monkeypatch.setenv(name, value)
    started = time.monotonic()
    with pytest.raises(ProcessGroupTimeout, match=f"rank 1 waited 0.02 min for the rendezvous store at "
                                                  f"127.0.0.1:{port} .* which never answered"):
        join(read_env(), torch.device("cpu"), timeout_min=0.02)
    assert time.monotonic() - started < 10 and not dist.is_initialized()


def meet(port: int, world_size: int, ranks, timeout_s: float = 20.0) -> dict:
    """Ranks `ranks` of one start call meeting_store at once (threads); each rank r puts `r` under
    its prefix and reads every other rank's: that works only if they all share one prefix."""
    results = {}

    def rank_thread(rank):
        try:
            store, restarted = meeting_store(rank, world_size, timedelta(seconds=timeout_s))
            store.set(f"hello{rank}", str(rank))
            seen = [int(store.get(f"hello{r}")) for r in range(world_size)]
            results[rank] = (restarted, seen)
        except ProcessGroupTimeout as e:
            results[rank] = e

    threads = [threading.Thread(target=rank_thread, args=(r,)) for r in ranks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_the_ranks_of_each_start_meet_in_one_generation_even_after_an_incomplete_one(monkeypatch):
    """An agent-hosted store (as torchrun's) lives through every start. Each start's ranks meet under
    a prefix of their own and know whether workers started before; a start where a rank never came
    times out, and the next start's ranks meet again."""
    agent_store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(agent_store.port))
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    assert meet(agent_store.port, 2, [0, 1]) == {0: (False, [0, 1]), 1: (False, [0, 1])}  # the first start
    assert meet(agent_store.port, 2, [1, 0]) == {0: (True, [0, 1]), 1: (True, [0, 1])}  # a restart
    incomplete = meet(agent_store.port, 2, [1], timeout_s=1.0)[1]  # rank 0 never comes
    assert isinstance(incomplete, ProcessGroupTimeout)
    assert "for rank 0 of 2" in str(incomplete) and "prefix alexnet-dali/world2/generation2" in str(incomplete)
    assert meet(agent_store.port, 2, [0, 1]) == {0: (True, [0, 1]), 1: (True, [0, 1])}
    assert agent_store.check(["alexnet-dali/world2/generation3/hello0"])  # generation 2 was closed


def test_the_timeout_belongs_to_the_command_and_may_differ_on_resume():
    """--dist-timeout is how this command waits, not what the run is: a resume may change it."""
    from alexnet_dali.config import TrainConfig
    from alexnet_dali.model import AlexNetModule
    from alexnet_dali.pca import PCA
    from alexnet_dali.state import ModelBundle, TrainState
    from alexnet_dali.resume import resumed_config

    saved = TrainConfig(batch_size=2)
    pca = PCA((0.5, 0.4, 0.3), (0.1, 0.01, 0.001), ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)))
    state = TrainState(ModelBundle(AlexNetModule(2), pca, ("cat", "dog")), saved.to_dict(), epoch=1, global_batch=2)
    resumed = resumed_config(state, saved.replace(dist_timeout=0.5), {"dist_timeout"}, world_size=2)
    assert resumed.dist_timeout == 0.5
