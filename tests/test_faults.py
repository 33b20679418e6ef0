"""Bad input, crashes and resume, through the CLI where a user would meet them: its main() in
this process, a real process where the process is the point (a kill)."""

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from alexnet_dali.checkpoint import CheckpointError, load_checkpoint
from conftest import layout_args, make_original_layout, run_main, train_args, write_image


@pytest.fixture
def damaged(tmp_path):
    """A labelled set with one truncated, one empty, one non-image and one unlabelled file."""
    layout = make_original_layout(tmp_path / "data", per_split={"train": 8, "val": 4})
    train = layout["data"] / "train"
    whole = (train / "train_001.jpg").read_bytes()
    (train / "train_001.jpg").write_bytes(whole[: len(whole) // 2])
    (train / "train_002.jpg").write_bytes(b"")
    (layout["data"] / "val" / "val_003.jpg").write_text("this is not a picture")
    return layout


EXPECTED_REASONS = {"train_001.jpg": "truncated JPEG", "train_002.jpg": "empty file",
                    "val_003.jpg": "not an image"}


def test_check_names_every_bad_file(damaged, capfd):
    write_image(damaged["data"] / "train" / "stray.jpg", 64, 64)  # decodes, but has no label
    result = run_main("check", *layout_args(damaged), "--json", capfd=capfd)
    assert result.returncode == 1
    report = json.loads(result.stdout)
    reasons = {Path(p["path"]).name: p["reason"] for p in report["problems"]}
    for name, reason in EXPECTED_REASONS.items():
        assert reason in reasons[name]
    assert "unlabelled" in reasons["stray.jpg"]
    text = run_main("check", *layout_args(damaged), capfd=capfd)
    assert text.returncode == 1 and "4 problem(s)" in text.stdout
    for name in (*EXPECTED_REASONS, "stray.jpg"):
        assert name in text.stdout


def test_check_passes_a_clean_set(original_layout, capfd):
    result = run_main("check", *layout_args(original_layout), capfd=capfd)
    assert result.returncode == 0 and "all images decode and are labelled" in result.stdout


def test_train_refuses_before_any_step_and_skip_bad_trains_on_the_rest(damaged, tmp_path, capfd):
    refused = run_main(*train_args(damaged, tmp_path / "run", "--epochs", "1"), capfd=capfd)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    for name, reason in EXPECTED_REASONS.items():
        assert name in refused.stderr and reason in refused.stderr
    assert "--skip-bad" in refused.stderr
    assert "epoch 1/1" not in refused.stdout and not (tmp_path / "run" / "last.pt").exists()
    skipped = run_main(*train_args(damaged, tmp_path / "run", "--epochs", "1", "--skip-bad"), capfd=capfd, check=True)
    assert "warning: --skip-bad left out 3 undecodable image(s)" in skipped.stderr
    assert "training on 6 images" in skipped.stdout and "validating on 3" in skipped.stdout
    excluded = json.loads((tmp_path / "run" / "excluded.json").read_text())
    assert {Path(p).name for p in excluded} == set(EXPECTED_REASONS)
    # the scan is cached by (path, size, mtime): a second start decodes nothing ...
    again = run_main(*train_args(damaged, tmp_path / "run2", "--epochs", "1"), capfd=capfd)
    assert again.returncode == 2 and "checking that" not in again.stdout
    # ... until a file changes
    write_image(damaged["data"] / "train" / "train_002.jpg", 64, 64)
    changed = run_main(*train_args(damaged, tmp_path / "run3", "--epochs", "1"), capfd=capfd)
    assert "checking that 1 images decode" in changed.stdout and "train_002" not in changed.stderr


def remove_val(layout) -> None:
    import shutil

    shutil.rmtree(layout["data"] / "val")
    assert not (layout["data"] / "val").exists()


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d["data"] / "train" / "new.jpg").write_bytes((d["data"] / "train" / "train_000.jpg").read_bytes()),
     "new.jpg: unlabelled"),
    (lambda d: d["labels"].write_text(json.dumps({**json.loads(d["labels"].read_text()), "train_000": "wolf"})),
     "label 'wolf' is not in the label encoding"),
    (lambda d: (d["data"] / "train" / "train_000.png").write_bytes(b"x"), "duplicate image id 'train_000'"),
    (lambda d: d["label_encoding"].write_text("{'cat': 0}"), "malformed JSON"),
    (remove_val, "missing split 'val'"),
])
def test_label_and_layout_problems_are_clear_errors(original_layout, tmp_path, damage, message, capfd):
    damage(original_layout)
    for verb in ("check", "train"):
        args = ["check", *layout_args(original_layout)] if verb == "check" else train_args(original_layout, tmp_path / "r")
        result = run_main(*args, capfd=capfd)
        assert result.returncode in (1, 2), verb
        assert message in result.stderr + result.stdout, verb
        assert "Traceback" not in result.stderr, verb


def start_training(layout, out, *extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "alexnet_dali", *map(str, train_args(layout, out, *extra))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def sixteen(tmp_path_factory):
    return make_original_layout(tmp_path_factory.mktemp("faults") / "data", per_split={"train": 16, "val": 4})


def test_sigkill_right_after_a_checkpoint_then_resume(sixteen, tmp_path):
    """Two epochs: the first checkpoint is written, the kill lands in the second, the resume
    finishes it."""
    out = tmp_path / "run"
    process = start_training(sixteen, out, "--epochs", "2")
    deadline = time.monotonic() + 120
    while not (out / "last.pt").exists():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL  # killed, not finished before the signal came
    state = load_checkpoint(out / "last.pt")  # loadable: written atomically
    assert state["epoch"] >= 1
    run_main(*train_args(sixteen, out, "--epochs", "2", "--resume"), check=True)
    history = json.loads((out / "history.json").read_text())
    assert {k: len(v) for k, v in history.items()} == {k: 2 for k in history}
    assert load_checkpoint(out / "last.pt")["epoch"] == 2


def weights(path):
    return torch.load(path, weights_only=True)["model"]


def test_resume_reproduces_the_lr_schedule_and_epoch_count(sixteen, tmp_path):
    """Stopping at epoch 1 and resuming to 3 equals running 3: same lr schedule (patience 0 makes
    the plateau rule act: measured, lr 1e-3, 1e-3, 1e-4, the cut made after the resume from the
    state saved before it), same history, same weights."""
    common = ("--lr-patience", "0", "--lr", "1e-3")
    reference, out = tmp_path / "reference", tmp_path / "run"
    run_main(*train_args(sixteen, reference, "--epochs", "3", *common), check=True)
    run_main(*train_args(sixteen, out, "--epochs", "1", *common), check=True)
    run_main(*train_args(sixteen, out, "--epochs", "3", "--resume", *common), check=True)
    ours = json.loads((out / "history.json").read_text())
    uninterrupted = json.loads((reference / "history.json").read_text())
    assert len(ours["lr"]) == 3 and ours["lr"] == uninterrupted["lr"]
    assert min(ours["lr"]) < 1e-3  # the schedule did reduce lr, so the comparison means something
    assert ours["val_loss"] == pytest.approx(uninterrupted["val_loss"], rel=1e-5)
    mine, theirs = weights(out / "last.pt"), weights(reference / "last.pt")
    for key in theirs:
        torch.testing.assert_close(mine[key], theirs[key], rtol=1e-5, atol=1e-7, msg=key)


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # the raw pickle is the point
def test_malicious_pickle_is_refused_without_running_it(tmp_path, original_layout, capfd):
    marker = tmp_path / "pwned"
    out = tmp_path / "run"
    out.mkdir()
    with open(out / "last.pt", "wb") as f:
        pickle.dump({"format": "alexnet-dali-checkpoint", "payload": RunsCode(marker)}, f)
    torch.save({"model": RunsCode(marker)}, tmp_path / "model.pt")  # torch's own zip format, same trick
    result = run_main(*train_args(original_layout, out, "--epochs", "1", "--resume"), capfd=capfd)
    assert result.returncode == 2 and "refused" in result.stderr and "Traceback" not in result.stderr
    predicted = run_main("predict", tmp_path / "model.pt", original_layout["data"] / "val" / "val_000.jpg", capfd=capfd)
    assert predicted.returncode == 2 and "refused" in predicted.stderr
    from alexnet_dali import AlexNet

    with pytest.raises(CheckpointError, match="refused"):
        AlexNet.load(out / "last.pt")
    assert not marker.exists()


def test_truncated_and_foreign_checkpoints_are_named(tmp_path, two_run):
    good = two_run / "last.pt"
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="is a truncated checkpoint"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not an alexnet-dali checkpoint"):
        load_checkpoint(foreign)


@pytest.fixture(scope="module")
def two_run(tmp_path_factory, sixteen):
    out = tmp_path_factory.mktemp("two") / "run"
    run_main(*train_args(sixteen, out, "--epochs", "2"), check=True)
    return out


def test_a_damaged_last_checkpoint_falls_back_to_the_previous_with_a_warning(tmp_path, two_run, sixteen, capfd):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(two_run, out)
    (out / "last.pt").write_bytes((out / "last.pt").read_bytes()[:1000])
    result = run_main(*train_args(sixteen, out, "--epochs", "3", "--resume"), capfd=capfd, check=True)
    assert "is a truncated checkpoint" in result.stderr and "previous.pt" in result.stderr
    assert "resuming" in result.stdout and "epoch 2" in result.stdout  # previous.pt holds epoch 1
    assert len(json.loads((out / "history.json").read_text())["loss"]) == 3


def test_resume_with_a_different_set_up_is_refused_with_a_diff(tmp_path, two_run, sixteen, capfd):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(two_run, out)
    args = train_args(sixteen, out, "--epochs", "3", "--resume")
    args[args.index("--batch-size") + 1] = "8"
    result = run_main(*args, "--groups", "2", capfd=capfd)
    assert result.returncode == 2 and "global batch: 4 -> 8" in result.stderr and "groups: 1 -> 2" in result.stderr
