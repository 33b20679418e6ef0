"""Runs and resume: a run directory is checked before any work, held by one run at a time and
never left half-written; resume continues the same run or says why it cannot; a checkpoint that
cannot be loaded is named for what it is; bad numbers are usage errors."""

import json
import os
import pickle
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from alexnet_dali.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from alexnet_dali.config import ConfigError
from conftest import layout_args, make_original_layout, run_cli, run_main, tiny_config, train_args, write_image

TIMEOUT = 600  # seconds: a generous bound for a step on a loaded two-core machine, not a pace


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    return make_original_layout(tmp_path_factory.mktemp("runs") / "data")


@pytest.fixture(scope="module")
def one_epoch(layout, tmp_path_factory):
    """A run directory after one epoch (2 steps) of `train_args`."""
    out = tmp_path_factory.mktemp("one") / "run"
    run_main(*train_args(layout, out, "--epochs", "1"), check=True)
    return out


def copy_run(run: Path, to: Path) -> Path:
    """A copy of a run directory made of hard links: every write in a run replaces a file by
    renaming over it, so the copies never change each other."""
    shutil.copytree(run, to, copy_function=os.link)
    return to


def messages(stderr: str) -> list[str]:
    """What a person reads on stderr, less tqdm's progress bar updates."""
    return [line for line in re.split(r"[\r\n]", stderr) if line.strip() and not re.match(r"epoch \d+/\d+:", line)]


def partial_files(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if ".tmp" in p.name)


# -- 1. classes ------------------------------------------------------------------------------

def test_resume_with_a_permuted_label_encoding_is_refused_naming_the_moved_classes(layout, one_epoch, tmp_path, capfd):
    """Same two classes, other indices: every label would be scrambled."""
    out = copy_run(one_epoch, tmp_path / "run")
    permuted = tmp_path / "permuted.json"
    permuted.write_text(json.dumps({"dog": 0, "cat": 1}))
    args = train_args(layout, out, "--epochs", "2", "--resume")
    args[args.index("--label-encoding") + 1] = permuted
    result = run_main(*args, capfd=capfd)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "'cat' 0 -> 1" in result.stderr and "'dog' 1 -> 0" in result.stderr
    assert "label encoding" in result.stderr
    assert load_checkpoint(out / "last.pt")["epoch"] == 1


# -- 2. one run per directory -----------------------------------------------------------------

HOLD = ("import sys; from alexnet_dali.rundir import RunLock; lock = RunLock(sys.argv[1]); print('held', flush=True); "
        "sys.stdin.read()")


def test_a_second_train_into_a_held_run_directory_is_refused_naming_the_holder(layout, tmp_path, capfd):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, out], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert f"pid {holder.pid}" in (out / ".lock").read_text()
        result = run_main(*train_args(layout, out, "--epochs", "1"), capfd=capfd)
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert result.returncode == 2, result.stderr[-2000:]
    assert messages(result.stderr) == [f"error: {out} is in use by another training run (pid {holder.pid} on "
                                       f"{os.uname().nodename} holds {out / '.lock'}); wait for it to end, or pass "
                                       "another --out"]
    assert "training on" not in result.stdout and not (out / "last.pt").exists()
    assert not (out / ".lock").exists()  # the holder removed it as it let go


def test_the_lock_removes_partial_files_a_dead_run_left(tmp_path):
    from alexnet_dali.rundir import RunLock

    out = tmp_path / "run"
    out.mkdir()
    stale = ["last.pt.tmp", "last.pt.tmp4242", "previous.pt.tmp17", "history.json.tmp99"]
    for name in stale:
        (out / name).write_bytes(b"x" * 100)
    for name in ("notes.txt", "last.pt"):
        (out / name).write_text("kept")
    with RunLock(out):
        assert sorted(p.name for p in out.iterdir()) == [".lock", "last.pt", "notes.txt"]
    assert sorted(p.name for p in out.iterdir()) == ["last.pt", "notes.txt"]
    with RunLock(tmp_path / "new" / "run"):  # made for the run ...
        assert (tmp_path / "new" / "run").is_dir()
    assert not (tmp_path / "new" / "run").exists()  # ... and removed again, as nothing was written in it


def test_the_api_holds_its_run_directory_for_the_object_life(layout, tmp_path):
    """AlexNet locks out_dir at its first fit and keeps it until the object is gone: between two
    fits, no other run writes into it."""
    import gc

    from alexnet_dali import AlexNet

    out = tmp_path / "run"
    model = AlexNet(layout["data"], layout["labels"], layout["label_encoding"], batch_size=4, lr=3e-5, device="cpu",
                    dali_threads=1, out_dir=out, verbose=False)
    assert not out.exists()  # nothing made before fit
    model.fit(epochs=1)
    other = run_cli(*train_args(layout, out, "--epochs", "2", "--resume"))
    assert other.returncode == 2 and f"pid {os.getpid()} on" in other.stderr, other.stderr[-2000:]
    with pytest.raises(ConfigError, match="in use by another training run .this process"):
        AlexNet.load(out / "last.pt", device="cpu", out_dir=out, verbose=False).fit(epochs=1)
    del model
    gc.collect()
    assert not (out / ".lock").exists()


# -- 3. --resume needs a checkpoint -------------------------------------------------------------

def test_resume_without_a_checkpoint_is_an_error(layout, tmp_path, capfd):
    """A typo in --out must not start a new run from scratch."""
    out = tmp_path / "typo"
    result = run_main(*train_args(layout, out, "--epochs", "1", "--resume"), capfd=capfd)
    assert result.returncode == 2, result.stderr[-2000:]
    assert messages(result.stderr) == [f"error: --resume was given, but {out} holds no checkpoint (last.pt or "
                                       "previous.pt); check --out, or leave out --resume to start a new run"]
    assert "training on" not in result.stdout and not out.exists()


def test_a_torchrun_restart_before_the_first_checkpoint_starts_afresh(layout, tmp_path, monkeypatch):
    from alexnet_dali.resume import resume_state

    config = tiny_config(layout, tmp_path / "run", resume=True)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert resume_state(config) is None
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        resume_state(config)


# -- 4. options on resume ----------------------------------------------------------------------

def test_resume_refuses_options_that_would_make_another_run(layout, one_epoch, tmp_path, capfd):
    out = copy_run(one_epoch, tmp_path / "run")
    result = run_main(*train_args(layout, out, "--epochs", "2", "--resume", "--seed", "1", "--lighting", "0"),
                      capfd=capfd)
    assert result.returncode == 2, result.stderr[-2000:]
    (line,) = messages(result.stderr)
    assert "--seed: 0 -> 1" in line and "--lighting: 0.1 -> 0.0" in line and "--out" in line
    assert "training on" not in result.stdout and load_checkpoint(out / "last.pt")["epoch"] == 1


def test_every_option_has_a_resume_rule_and_readme_lists_them_as_the_code_does():
    """The rules come from each TrainConfig field's metadata; README's list is generated from them."""
    import dataclasses

    from alexnet_dali.config import CHANGES, COMMAND, FIXES, TrainConfig, with_resume_rule
    from alexnet_dali.resume import RESUME_CHANGES, RESUME_INVOCATION, readme_rules

    by_rule = {rule: set(with_resume_rule(rule)) for rule in (CHANGES, COMMAND, FIXES)}
    assert sum(map(len, by_rule.values())) == len(dataclasses.fields(TrainConfig))
    assert set().union(*by_rule.values()) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert (set(RESUME_CHANGES), set(RESUME_INVOCATION)) == (by_rule[CHANGES], by_rule[COMMAND])
    assert {"init_bias", "warmup_epochs", "groups", "seed"} <= by_rule[FIXES]
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert readme_rules() in readme, "README's resume rules are stale: paste `python -m alexnet_dali.resume`"
    assert "`--init-bias`" in readme_rules() and "`--warmup-epochs`" in readme_rules()


def test_a_field_without_a_resume_rule_is_refused_when_the_config_is_defined():
    from dataclasses import make_dataclass

    from alexnet_dali.config import CHANGES, _opt, check_resume_rules

    check_resume_rules(make_dataclass("Ruled", [("epochs", int, _opt(1, "epochs", resume=CHANGES))]))
    forgotten = make_dataclass("Forgotten", [("epochs", int, _opt(1, "epochs", resume=CHANGES)),
                                             ("colour", str, _opt("red", "a new option"))])
    with pytest.raises(TypeError, match="^Forgotten fields without a resume rule: colour$"):
        check_resume_rules(forgotten)


def test_resume_applies_what_may_change_and_config_json_tells_the_truth(layout, one_epoch, tmp_path, capfd):
    """The command gives a new lr, momentum and patience and leaves out the batch size and the
    lighting: the changes take effect (the optimiser and schedule really use them), the rest
    comes from the checkpoint, and config.json and the next checkpoint record what was used.
    The data moved and gained a red image: the model keeps the RGB PCA it was trained with (its
    inputs' mean), where it used to take the new data's."""
    out = copy_run(one_epoch, tmp_path / "run")
    moved = dict(layout, data=tmp_path / "moved", labels=tmp_path / "labels.json")
    shutil.copytree(layout["data"], moved["data"], ignore=shutil.ignore_patterns(".alexnet-dali"))
    write_image(moved["data"] / "train" / "train_red.jpg", 96, 80, array=np.full((80, 96, 3), (250, 0, 0), np.uint8))
    labels = json.loads(Path(layout["labels"]).read_text())
    moved["labels"].write_text(json.dumps({**labels, "train_red": "cat"}))
    result = run_main("train", *layout_args(moved), "--out", out, "--resume", "--device", "cpu", "--dali-threads", "1",
                      "--epochs", "2", "--lr", "1e-4", "--momentum", "0.5", "--lr-patience", "3", capfd=capfd,
                      check=True)
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("changed on resume")]
    for change in ("--epochs: 1 -> 2", "--lr: 3e-05 -> 0.0001", "--momentum: 0.9 -> 0.5", "--lr-patience: 5 -> 3",
                   f"DATA: {layout['data']} -> {moved['data']}"):
        assert change in line
    assert "training on 9 images" in result.stdout and "the model's RGB PCA (mean" in result.stdout
    assert load_checkpoint(out / "last.pt")["pca"] == load_checkpoint(one_epoch / "last.pt")["pca"]
    assert "resuming" in result.stdout and "lr 0.0001" in result.stdout
    config = json.loads((out / "config.json").read_text())
    assert {k: config[k] for k in ("epochs", "lr", "momentum", "lr_patience", "batch_size", "global_batch",
                                   "lighting")} == {"epochs": 2, "lr": 1e-4, "momentum": 0.5, "lr_patience": 3,
                                                    "batch_size": 4, "global_batch": 4, "lighting": 0.1}
    assert json.loads((out / "history.json").read_text())["lr"] == [3e-5, 1e-4]
    state = load_checkpoint(out / "last.pt")
    assert state["epoch"] == 2 and state["config"]["lr"] == 1e-4 and state["config"]["momentum"] == 0.5
    assert state["optimizer"]["param_groups"][0]["lr"] == 1e-4 and state["optimizer"]["param_groups"][0]["momentum"] == 0.5
    assert state["scheduler"]["patience"] == 3


# -- 5. --out before any work -------------------------------------------------------------------

def test_an_out_that_is_a_file_is_named_before_any_work(layout, tmp_path, capfd):
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    for out, expected in ((a_file, f"--out {a_file} is a file, not a folder"),
                          (a_file / "run", f"--out {a_file / 'run'} cannot be made: {a_file} is a file")):
        result = run_main(*train_args(layout, out, "--epochs", "1"), capfd=capfd)
        assert result.returncode == 2, result.stderr[-2000:]
        (line,) = messages(result.stderr)
        assert line.startswith(f"error: {expected}")
        assert "training on" not in result.stdout


def unprivileged(command: list) -> list:
    """`command` run so that file permissions bind it: root ignores them, but not inside a new user
    namespace, where it holds no rights over the machine's files."""
    if os.geteuid() != 0:
        return command
    if shutil.which("unshare") is None or subprocess.run(["unshare", "--user", "true"]).returncode != 0:
        pytest.skip("running as root without user namespaces: a read-only folder cannot be made")
    return ["unshare", "--user", *command]


def test_a_read_only_out_is_named_before_any_work(layout, tmp_path):
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        for out, expected in ((read_only, f"--out {read_only} is read-only"),
                              (read_only / "run", f"--out {read_only / 'run'} cannot be made: {read_only} is read-only")):
            command = [sys.executable, "-m", "alexnet_dali", *map(str, train_args(layout, out, "--epochs", "1"))]
            result = subprocess.run(unprivileged(command), capture_output=True, text=True, timeout=TIMEOUT)
            assert result.returncode == 2, result.stderr[-2000:]
            (line,) = messages(result.stderr)
            assert line.startswith(f"error: {expected}")
            assert "training on" not in result.stdout
    finally:
        read_only.chmod(0o755)


def test_the_api_checks_out_dir_before_the_scan(tmp_path):
    from alexnet_dali import AlexNet

    fresh = make_original_layout(tmp_path / "data")  # nothing scanned yet: the scan would cache its results
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    with pytest.raises(ConfigError, match=f"out_dir {a_file} is a file"):
        AlexNet(fresh["data"], fresh["labels"], fresh["label_encoding"], device="cpu", out_dir=a_file, verbose=False)
    assert not (fresh["data"] / ".alexnet-dali").exists()


# -- 6, 7. a checkpoint that cannot be finished ----------------------------------------------------

def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_last(layout, one_epoch, tmp_path):
    """The write of the epoch-2 checkpoint fails as on a full disk: the process may write no file
    beyond 64 MB (RLIMIT_FSIZE; the write gets EFBIG, as a full disk gives ENOSPC), and a
    checkpoint is 466 MB."""
    out = copy_run(one_epoch, tmp_path / "run")
    (out / "last.pt.tmp").write_bytes(b"\0" * 1000)  # what an earlier run left: cleaned at start
    kept = os.stat(out / "last.pt")
    limit = 64 << 20

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    command = [sys.executable, "-m", "alexnet_dali", *map(str, train_args(layout, out, "--epochs", "2", "--resume"))]
    result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, preexec_fn=small_files)
    assert result.returncode == 2, result.stderr[-3000:]
    warning, line = messages(result.stderr)  # the clean-up at start, then the error
    assert line.startswith(f"error: cannot write {out / 'last.pt'}: File too large") and "--resume" in line
    assert warning.startswith("warning: removed 1 partial file(s)") and "last.pt.tmp" in warning
    assert partial_files(out) == []
    assert os.stat(out / "last.pt").st_ino == kept.st_ino and load_checkpoint(out / "last.pt")["epoch"] == 1



def test_a_history_that_cannot_be_written_is_one_line_after_the_checkpoint(layout, one_epoch, tmp_path, capfd):
    """history.json is written after the epoch's checkpoint; when that write fails (here the name
    is taken by a folder, which os.replace cannot replace, as a full disk would fail it) the run
    stops with one line naming the file and saying that last.pt holds the epoch. It used to end in a
    traceback."""
    out = copy_run(one_epoch, tmp_path / "run")
    (out / "history.json").unlink()
    (out / "history.json").mkdir()
    result = run_main(*train_args(layout, out, "--epochs", "2", "--resume"), capfd=capfd)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    (line,) = messages(result.stderr)
    assert line.startswith(f"error: cannot write {out / 'history.json'}: Is a directory")
    assert line.endswith("run again with --resume (last.pt holds the epoch)")
    assert load_checkpoint(out / "last.pt")["epoch"] == 2 and partial_files(out) == []


class Output:
    """A process's stdout and stderr as they arrive (tqdm ends its updates with \\r, not \\n)."""

    def __init__(self, process: subprocess.Popen):
        self.process, self.text = process, {"stdout": "", "stderr": ""}
        self.threads = [threading.Thread(target=self._read, args=(name,), daemon=True) for name in self.text]
        for thread in self.threads:
            thread.start()

    def _read(self, name: str) -> None:
        stream = getattr(self.process, name)
        while chunk := os.read(stream.fileno(), 1 << 16):
            self.text[name] += chunk.decode(errors="replace")

    def wait_for(self, name: str, text: str) -> None:
        deadline = time.monotonic() + TIMEOUT
        while text not in self.text[name]:
            assert self.process.poll() is None, f"exited {self.process.returncode} first:\n{self.text['stderr'][-3000:]}"
            assert time.monotonic() < deadline, f"no {text!r} after {TIMEOUT} s"
            time.sleep(0.05)

    def finish(self) -> None:
        self.process.wait(timeout=TIMEOUT)
        for thread in self.threads:
            thread.join(timeout=60)


class PipeReader:
    """Reads a named pipe that a checkpoint is written through: the test sees the write begin and
    holds it there (a full pipe blocks the writer) until it lets the rest through."""

    def __init__(self, path: Path):
        self.path, self.began, self.go_on = path, threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        with open(self.path, "rb", buffering=0) as pipe:  # blocks until the writer opens it
            if pipe.read(1 << 16):
                self.began.set()
            self.go_on.wait()
            while pipe.read(1 << 20):
                pass

    def wait_until_writing(self, process: subprocess.Popen) -> None:
        deadline = time.monotonic() + TIMEOUT
        while not self.began.wait(0.05):
            if process.poll() is not None or time.monotonic() > deadline:
                self.unblock()
                pytest.fail(f"the checkpoint was not written through {self.path} (exit {process.returncode})")

    def unblock(self) -> None:
        self.go_on.set()
        try:  # a reader still waiting for a writer: be that writer, with nothing to say
            os.close(os.open(self.path, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
        self.thread.join(timeout=60)


def test_a_second_ctrl_c_while_a_checkpoint_is_written_exits_130_and_keeps_last(layout, one_epoch, tmp_path):
    """Ctrl-C in epoch 2 starts a checkpoint; a second one while it is being written stops at
    once: exit 130, one line, no partial file, and last.pt (epoch 1) as it was. The checkpoint is
    written through a named pipe at its temporary name (made before the process runs; the clean-up
    at start removes only regular files), so the test sees the write begin and sends the second
    signal while it is in progress, whatever the speed of the machine. While the run is going, a
    second `train` into the same directory is refused."""
    out = copy_run(one_epoch, tmp_path / "run")
    kept = os.stat(out / "last.pt")

    def pipe_at_the_temporary_name():  # in the child before it runs: its pid is known, no step has begun
        os.mkfifo(out / f"last.pt.tmp{os.getpid()}")

    process = subprocess.Popen([sys.executable, "-m", "alexnet_dali",
                                *map(str, train_args(layout, out, "--epochs", "2", "--resume"))],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=pipe_at_the_temporary_name)
    output = Output(process)
    reader = PipeReader(out / f"last.pt.tmp{process.pid}")
    try:
        output.wait_for("stderr", "epoch 2/2")  # the progress bar: training began, Ctrl-C is handled
        second = run_cli(*train_args(layout, out, "--epochs", "2", "--resume"))
        assert second.returncode == 2 and f"in use by another training run (pid {process.pid} on" in second.stderr
        process.send_signal(signal.SIGINT)  # the first: finish the step, write a checkpoint, stop
        output.wait_for("stderr", "Ctrl-C again stops at once")  # handled (two signals at once would count as one)
        reader.wait_until_writing(process)
        process.send_signal(signal.SIGINT)  # the second, in the middle of the write
        reader.unblock()
        output.finish()
    finally:
        if process.poll() is None:
            process.kill()
            reader.unblock()
    stderr = output.text["stderr"]
    assert process.returncode == 128 + signal.SIGINT, stderr[-3000:]
    assert messages(stderr) == ["SIGINT: stopping after this step, with a checkpoint; Ctrl-C again stops at once, "
                                "without it",
                                f"stopped at once by Ctrl-C; {out / 'last.pt'} holds the last complete checkpoint: "
                                "run the same command with --resume to continue"]
    assert partial_files(out) == [] and not (out / ".lock").exists()
    assert os.stat(out / "last.pt").st_ino == kept.st_ino and load_checkpoint(out / "last.pt")["epoch"] == 1


# -- 16. numbers that make no sense ---------------------------------------------------------------

@pytest.mark.parametrize("argv, option", [
    (["predict", "m.pt", "a.jpg", "--batch-size", "-1"], "--batch-size"),
    (["predict", "m.pt", "a.jpg", "--batch-size", "0"], "--batch-size"),
    (["evaluate", "m.pt", "data", "--batch-size", "0"], "--batch-size"),
    (["check", "data", "--threads", "-1"], "--threads"),
    (["predict", "m.pt", "a.jpg", "--topk", "0"], "--topk"),
    (["predict", "m.pt", "a.jpg", "--topk", "-1"], "--topk"),
    (["train", "data", "--epochs", "x"], "--epochs"),
])
def test_bad_numbers_are_usage_errors_in_one_line(argv, option, capsys):
    from alexnet_dali.cli import main

    with pytest.raises(SystemExit) as exit_status:
        main(argv)
    assert exit_status.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert f"alexnet-dali {argv[0]}: error: argument {option}" in captured.err and f"{argv[0]} --help" in captured.err


def test_the_cli_catches_one_base_for_user_errors_and_a_divergence_is_not_a_config_error():
    import inspect

    from alexnet_dali import cli
    from alexnet_dali.errors import DataError, UserError
    from alexnet_dali.schedule import TrainingDiverged

    assert all(issubclass(error, UserError) for error in (ConfigError, DataError, CheckpointError, TrainingDiverged))
    assert not issubclass(TrainingDiverged, ConfigError)
    assert "except UserError as e:" in inspect.getsource(cli.main)


def test_negative_dali_threads_for_prediction_is_an_error(capsys):
    from alexnet_dali.cli import main

    assert main(["predict", "m.pt", "a.jpg", "--dali-threads", "-1"]) == 2
    assert capsys.readouterr().err == "error: --dali-threads must not be negative, got -1 (0: chosen for the machine)\n"


def test_the_api_refuses_numbers_that_make_no_sense(layout, one_epoch):
    from alexnet_dali import AlexNet
    from alexnet_dali.predict import Predictor

    model = AlexNet.load(one_epoch / "last.pt", device="cpu", verbose=False)
    image = layout["data"] / "val" / "val_000.jpg"
    for n in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="n must be a positive integer"):
            model.predict_n(image, n=n)
    for epochs in (0, -1):
        with pytest.raises(ValueError, match="epochs must be at least 1"):
            model.fit(epochs=epochs)
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        Predictor(model.state.bundle, model._placement, batch_size=0)
    with pytest.raises(ValueError, match="batch_size must be positive"):
        AlexNet(layout["data"], layout["labels"], layout["label_encoding"], batch_size=-1, device="cpu")


# -- 17. files that are no checkpoint ----------------------------------------------------------------

class RunsCode:
    def __reduce__(self):
        return (os.system, ("true",))


def unreadable_files(folder: Path) -> dict[str, str]:
    """name -> what the error must call it."""
    from alexnet_dali.pca import PCA

    pca = PCA((0.5,) * 3, (0.0,) * 3, ((1.0, 0.0, 0.0),) * 3).to_dict()
    good = save_checkpoint({"model": {"w": torch.zeros(200_000)}, "classes": ["a"], "pca": pca}, folder / "good.pt")
    (folder / "random.bin").write_bytes(b"\x13" + np.random.default_rng(0).bytes(4095))
    (folder / "notes.txt").write_text("epoch 1: loss 0.5\n")
    (folder / "empty.pt").write_bytes(b"")
    (folder / "truncated.pt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    torch.save({"model": RunsCode()}, folder / "code.pt")
    (folder / "code.pkl").write_bytes(pickle.dumps({"format": "alexnet-dali-checkpoint", "model": RunsCode()}))
    save_checkpoint({"model": {}, "pca": pca}, folder / "missing.pt")
    return {
        "random.bin": "is not a checkpoint: neither a zip archive (torch.save's format) nor a pickle",
        "notes.txt": "is a text file, not a checkpoint (it begins 'epoch 1: loss 0.5')",
        "empty.pt": "is an empty file (0 bytes), not a checkpoint",
        "truncated.pt": "is a truncated checkpoint",
        "code.pt": f"was refused: it is a pickle that asks to run code or build objects when loaded (it names "
                   f"{os.system.__module__}.system)",
        "code.pkl": f"was refused: it is a pickle that asks to run code or build objects when loaded (it names "
                    f"{os.system.__module__}.system)",
        "missing.pt": "is a checkpoint missing keys (classes)",
    }


def test_each_unloadable_file_is_named_for_what_it_is(tmp_path):
    from alexnet_dali.state import load_state

    for name, what in unreadable_files(tmp_path).items():
        with pytest.raises(CheckpointError) as error:
            load_state(tmp_path / name)
        message = str(error.value)
        assert message.startswith(f"{tmp_path / name} {what}"), message
        assert "\n" not in message and "weights_only" not in message and "add_safe_globals" not in message


def test_resume_and_predict_name_an_unloadable_checkpoint(layout, tmp_path, capfd):
    unreadable_files(tmp_path)
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(tmp_path / "missing.pt", out / "last.pt")
    resumed = run_main(*train_args(layout, out, "--epochs", "1", "--resume"), capfd=capfd)
    assert resumed.returncode == 2 and messages(resumed.stderr) == [
        f"error: {out / 'last.pt'} is a checkpoint missing keys (classes): it is incomplete or was edited; use "
        "another checkpoint (last.pt, previous.pt, best.pt)"], resumed.stderr[-2000:]
    predicted = run_main("predict", tmp_path / "notes.txt", layout["data"] / "val" / "val_000.jpg", capfd=capfd)
    assert predicted.returncode == 2 and messages(predicted.stderr) == [
        f"error: {tmp_path / 'notes.txt'} is a text file, not a checkpoint (it begins 'epoch 1: loss 0.5')"]
