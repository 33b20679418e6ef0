"""No run or data set lost or damaged (issue 27, points 1-7): runs that would overwrite another
run or write into the data are refused, a damaged checkpoint is named, and the advice given after
a failure is advice that works."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from alexnet_dali.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from alexnet_dali.config import ConfigError, TrainConfig
from conftest import make_original_layout, run_cli, run_main, train_args
from test_runs import TIMEOUT, copy_run, messages, partial_files


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    return make_original_layout(tmp_path_factory.mktemp("lost") / "data")


@pytest.fixture(scope="module")
def relative_run(tmp_path_factory):
    """One epoch trained from the folder that holds the data, with every data path relative:
    `train data --labels data/labels.json ... --out run`. Returns that folder."""
    here = tmp_path_factory.mktemp("relative")
    make_original_layout(here / "data")
    relative = {"data": "data", "labels": "data/labels.json", "label_encoding": "data/label_encoding.json"}
    run_cli(*train_args(relative, "run", "--epochs", "1"), cwd=here, check=True)
    return here


def unchanged(*paths: Path) -> dict:
    """What tells a file rewritten (or replaced) from one left alone."""
    return {path.name: (os.stat(path).st_ino, os.stat(path).st_mtime_ns, os.stat(path).st_size) for path in paths}


# -- 1. fit after load never writes into the run it came from --------------------------------

def test_fit_after_load_refuses_the_run_directory_it_was_loaded_from(relative_run, tmp_path, monkeypatch, capfd):
    """It used to resume into that run: "resuming RUN at epoch 2", history.json cut, config.json
    rewritten. The CLI refuses the same (train into a run directory with last.pt, no --resume)."""
    from alexnet_dali import AlexNet

    monkeypatch.chdir(relative_run)  # where the run's data is, even where it was recorded as typed
    out = copy_run(relative_run / "run", tmp_path / "run")
    files = [out / name for name in ("last.pt", "best.pt", "history.json", "config.json")]
    before = unchanged(*files)
    model = AlexNet.load(out / "best.pt", device="cpu", out_dir=out, verbose=False)
    with pytest.raises(CheckpointError) as error:
        model.fit(1)
    assert str(error.value).startswith(f"out_dir {out} already holds a training run (last.pt, previous.pt)"
                                       if (out / "previous.pt").exists() else
                                       f"out_dir {out} already holds a training run (last.pt)")
    assert "pass another out_dir" in str(error.value)
    assert unchanged(*files) == before and partial_files(out) == [] and not (out / ".lock").exists()
    cli = run_main(*train_args(json.loads((out / "config.json").read_text()), out, "--epochs", "2"), capfd=capfd)
    assert cli.returncode == 2 and "last.pt exists" in cli.stderr  # the CLI's refusal, for comparison


# -- 2. a run directory or cache inside the data ------------------------------------------------

@pytest.mark.parametrize("option, inside", [("--out", "train/run"), ("--out", "val"), ("--cache-dir", "train/cache")])
def test_an_out_or_cache_dir_inside_a_split_of_data_is_refused_before_any_work(tmp_path, option, inside, capfd):
    """`train DATA --out DATA/train` used to train and write last.pt, config.json and tensorboard/
    into the split; `check` then found a class "tensorboard" and --resume was refused."""
    fresh = make_original_layout(tmp_path / "data")
    out = tmp_path / "run"
    where = fresh["data"] / inside
    args = train_args(fresh, where if option == "--out" else out, "--epochs", "1")
    if option == "--cache-dir":
        args += ["--cache-dir", where]
    result = run_main(*args, capfd=capfd)
    split = inside.split("/")[0]
    assert result.returncode == 2, result.stderr[-2000:]
    assert messages(result.stderr) == [f"error: {option} {where} is inside the {split!r} split of DATA {fresh['data']}: "
                                       f"what a run writes there would be read as images and classes of {split!r}; "
                                       "pass a folder outside DATA's splits"]
    assert not (fresh["data"] / ".alexnet-dali").exists()  # refused before the scan
    assert not (fresh["data"] / "train" / "run").exists() and not (fresh["data"] / "train" / "cache").exists()
    assert not out.exists()


def test_the_api_refuses_an_out_dir_inside_a_split_before_the_scan(tmp_path):
    from alexnet_dali import AlexNet

    fresh = make_original_layout(tmp_path / "data")
    with pytest.raises(ConfigError, match=r"out_dir .*/data/train/run is inside the 'train' split of DATA"):
        AlexNet(fresh["data"], fresh["labels"], fresh["label_encoding"], device="cpu",
                out_dir=fresh["data"] / "train" / "run", verbose=False)
    assert not (fresh["data"] / ".alexnet-dali").exists()


def test_a_run_directory_beside_the_splits_is_accepted():
    """DATA/runs is no split: nothing reads it as images."""
    from alexnet_dali.rundir import check_outside_data

    check_outside_data(TrainConfig(data="/d", out="/d/runs/a", cache_dir="/d/cache"))
    check_outside_data(TrainConfig(data="/d", out="/d/training/a"))  # a name that begins like a split
    with pytest.raises(ConfigError, match="inside the 'val' split"):
        check_outside_data(TrainConfig(data="/d", out="/d/ILSVRC/Data/CLS-LOC/val/run"))  # the ImageNet tree


# -- 3. save into a folder, or a folder that does not exist ------------------------------------

def test_save_to_a_folder_or_into_a_missing_folder_is_one_clear_error(relative_run, tmp_path):
    """model.save("runs") used to end in IsADirectoryError and leave a 233 MB runs.tmp<pid>."""
    from alexnet_dali import AlexNet

    model = AlexNet.load(relative_run / "run" / "best.pt", device="cpu", out_dir=tmp_path / "unused", verbose=False)
    (tmp_path / "runs").mkdir()
    with pytest.raises(CheckpointError) as error:
        model.save(tmp_path / "runs")
    assert str(error.value) == (f"cannot write {tmp_path / 'runs'}: it is a folder; pass a file name, e.g. "
                                f"{tmp_path / 'runs' / 'model.pt'}")
    missing = tmp_path / "no-such-folder" / "model.pt"
    with pytest.raises(CheckpointError) as error:
        model.save(missing)
    assert str(error.value).startswith(f"cannot save to {missing}: the folder {missing.parent} does not exist")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"] and list((tmp_path / "runs").iterdir()) == []
    assert model.save(tmp_path / "runs" / "model.pt").is_file()


# -- 4. a damaged checkpoint is named ------------------------------------------------------------

def flip_bytes_in_largest_tensor(source: Path, target: Path, count: int = 4096) -> None:
    """A copy of `source` with `count` bytes XOR-flipped in the middle of its largest tensor's data
    (a zip member stored uncompressed: its bytes follow the member's local header)."""
    with zipfile.ZipFile(source) as archive:
        member = max(archive.infolist(), key=lambda info: info.file_size)
    data = bytearray(source.read_bytes())
    name_length, extra_length = int.from_bytes(data[member.header_offset + 26:member.header_offset + 28], "little"), \
        int.from_bytes(data[member.header_offset + 28:member.header_offset + 30], "little")
    start = member.header_offset + 30 + name_length + extra_length + member.file_size // 2
    for i in range(start, start + count):
        data[i] ^= 0xFF
    target.write_bytes(bytes(data))


def differing_tensors(a: dict, b: dict, where: str = "") -> list[str]:
    """The independent reference: tensors whose values differ between two plain torch.loads."""
    found = []
    for key, value in a.items():
        name = f"{where}/{key}" if where else str(key)
        if isinstance(value, torch.Tensor):
            if not torch.equal(value, b[key]):
                found.append(name)
        elif isinstance(value, dict):
            found += differing_tensors(value, b[key], name)
    return found


def test_a_damaged_checkpoint_names_the_file_and_the_tensor(relative_run, tmp_path):
    """With 4 KB of the weights flipped, torch.load reads the file silently; it used to load as a
    model whose weights differed by millions in total."""
    from alexnet_dali import AlexNet

    damaged = tmp_path / "best.pt"
    flip_bytes_in_largest_tensor(relative_run / "run" / "best.pt", damaged)
    original = torch.load(relative_run / "run" / "best.pt", weights_only=True)
    silently = torch.load(damaged, weights_only=True)  # no complaint from torch
    (tensor,) = differing_tensors(original, silently)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(damaged)
    assert str(error.value) == (f"{damaged} is damaged: the bytes of tensor {tensor} differ from the CRC-32 recorded "
                                "when it was saved; use another checkpoint (previous.pt, best.pt)")
    with pytest.raises(CheckpointError, match=f"{damaged} is damaged: the bytes of tensor {tensor} "):
        AlexNet.load(damaged, device="cpu", verbose=False)


def test_resume_from_a_damaged_last_checkpoint_falls_back_to_previous(relative_run, tmp_path):
    from alexnet_dali.checkpoint import newest_valid_checkpoint

    out = tmp_path / "run"
    out.mkdir()
    flip_bytes_in_largest_tensor(relative_run / "run" / "last.pt", out / "last.pt")
    os.link(relative_run / "run" / "last.pt", out / "previous.pt")
    state, path = newest_valid_checkpoint(out)
    assert path == out / "previous.pt" and state["epoch"] == 1


def test_every_tensor_is_covered_and_files_without_a_digest_still_load(tmp_path):
    """The digest covers tensors at any depth (weights, the optimiser's momentum, RNG states in
    lists), in any dtype; a file written before the digest loads unchecked, as it did."""
    from alexnet_dali.checkpoint import DIGEST

    state = {"model": {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3).t()},  # not contiguous
             "optimizer": {"state": {0: {"momentum_buffer": torch.ones(3, dtype=torch.bfloat16)}}},
             "ranks": [{"torch_rng": torch.arange(5, dtype=torch.uint8)}], "scalar": torch.tensor(2.5),
             "epoch": 1}
    path = save_checkpoint(state, tmp_path / "new.pt")
    recorded = torch.load(path, weights_only=True)[DIGEST]
    assert sorted(recorded) == ["model/w", "optimizer/state/0/momentum_buffer", "ranks/0/torch_rng", "scalar"]
    loaded = load_checkpoint(path)
    assert DIGEST not in loaded and torch.equal(loaded["model"]["w"], state["model"]["w"])
    old = save_checkpoint(state, tmp_path / "old.pt", digest=False)
    assert DIGEST not in torch.load(old, weights_only=True)
    assert torch.equal(load_checkpoint(old)["optimizer"]["state"][0]["momentum_buffer"],
                       state["optimizer"]["state"][0]["momentum_buffer"])


# -- 5. local data paths are stored absolute ------------------------------------------------------

def test_relative_data_paths_are_recorded_absolute(relative_run, tmp_path, monkeypatch):
    """`"data": "data"` used to be stored as typed: load(...).fit() from another folder then
    failed, or trained on another folder of that name."""
    from alexnet_dali import AlexNet

    expected = {"data": str(relative_run / "data"), "labels": str(relative_run / "data" / "labels.json"),
                "label_encoding": str(relative_run / "data" / "label_encoding.json")}
    config_json = json.loads((relative_run / "run" / "config.json").read_text())
    checkpoint = load_checkpoint(relative_run / "run" / "last.pt")["config"]
    for recorded in (config_json, checkpoint):
        assert {key: recorded[key] for key in expected} == expected
    monkeypatch.chdir(tmp_path)  # another folder, with a data/ of its own
    make_original_layout(tmp_path / "data", classes=("x", "y", "z"))
    model = AlexNet.load(relative_run / "run" / "last.pt", device="cpu", out_dir=tmp_path / "again", verbose=False)
    assert model.config.data == expected["data"]


@pytest.mark.parametrize("location", ["https://example.com/data", "s3://bucket/prefix", "s3://bucket/p/labels.json"])
def test_urls_and_buckets_are_recorded_as_given(location):
    config = TrainConfig(data=location, labels=location, label_encoding=location)
    assert (config.data, config.labels, config.label_encoding) == (location,) * 3


# -- 6. a full disk before the first checkpoint --------------------------------------------------

def test_a_full_disk_before_the_first_checkpoint_advises_a_plain_rerun_that_works(layout, tmp_path, capfd):
    """It used to say "run again with --resume", which then failed: "holds no checkpoint". The
    write fails as on a full disk: no file beyond 64 MB (RLIMIT_FSIZE; a checkpoint is 466 MB)."""
    out = tmp_path / "run"
    limit = 64 << 20

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    command = [sys.executable, "-m", "alexnet_dali", *map(str, train_args(layout, out, "--epochs", "1"))]
    result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, preexec_fn=small_files)
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = messages(result.stderr)
    assert line.startswith(f"error: cannot write {out / 'last.pt'}: File too large")
    assert line.endswith("run the same command again, without --resume: the run holds no checkpoint yet, so it "
                         "starts from the beginning")
    assert partial_files(out) == [] and not (out / "last.pt").exists()
    again = run_main(*train_args(layout, out, "--epochs", "1"), capfd=capfd)  # the advice, followed
    assert again.returncode == 0, again.stderr[-3000:]
    assert load_checkpoint(out / "last.pt")["epoch"] == 1


# -- 7. --resume with nothing left to do -----------------------------------------------------------

@pytest.mark.parametrize("epochs", [1, 0])
def test_resume_with_no_epochs_left_says_so_and_what_would_continue(relative_run, tmp_path, epochs, monkeypatch,
                                                                   capfd):
    """It used to print "resuming ... at epoch 2", train nothing and exit 0 without a word."""
    out = copy_run(relative_run / "run", tmp_path / "run")
    before = unchanged(*(out / name for name in ("last.pt", "history.json", "config.json")))
    relative = {"data": "data", "labels": "data/labels.json", "label_encoding": "data/label_encoding.json"}
    extra = ["--epochs", str(epochs)] if epochs else []  # 0: --epochs left out, the run's 1 kept
    monkeypatch.chdir(relative_run)
    result = run_main(*train_args(relative, out, "--resume", *extra), capfd=capfd)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines() == [
        f"{out} has finished 1 epoch(s), and --epochs is 1: nothing left to do. To train on, pass the total you "
        "want, e.g. --resume --epochs 2 for one more epoch"]
    assert "resuming" not in result.stdout + result.stderr
    assert unchanged(*(out / name for name in ("last.pt", "history.json", "config.json"))) == before
