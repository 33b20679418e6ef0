"""Data that changes under a run (issue 27, point 8): images deleted, or rewritten with the same
size and modification time, after the scan passed them. Each ends in one line naming the file and
what to do (never DALI's "Critical error in pipeline" traceback), the run's progress up to the
last good step is saved, and `--resume` goes on exactly once the file is back. The bucket's case
is in test_s3.py."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import assert_same_run, layout_args, make_original_layout, run_main, train_args, wait_for_progress

# 16 images, batch 2: 8 steps an epoch, so that a reader two batches ahead is still mid-epoch after step 1
ARGS = ("--epochs", "2", "--prefetch", "1", "--batch-size", "2")


@pytest.fixture(scope="module")
def sixteen(tmp_path_factory):
    return make_original_layout(tmp_path_factory.mktemp("changes") / "data", per_split={"train": 16, "val": 4})


@pytest.fixture(scope="module")
def reference(sixteen, tmp_path_factory):
    """The run that nothing stopped."""
    out = tmp_path_factory.mktemp("changes-reference") / "run"
    run_main(*train_args(sixteen, out, *ARGS), check=True)
    return out


def error_line(stderr: str) -> str:
    """The one `error:` line a run ends with; no traceback, nothing of DALI's."""
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr[-3000:]
    assert "Traceback" not in stderr and "Critical error" not in stderr, stderr[-3000:]
    return lines[0]


def zero_keeping_size_and_mtime(path: Path) -> None:
    """What a failing disk or a bad copy can leave: zeros, with the file's size and mtime."""
    before = os.stat(path)
    path.write_bytes(b"\0" * before.st_size)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_images_deleted_mid_epoch_are_named_progress_is_saved_and_resume_is_exact(sixteen, reference, tmp_path, capfd):
    """The training images vanish a step into epoch 1 (the process is paused meanwhile, so the
    reader is at most a few batches ahead): the run stops at the first batch it cannot read,
    with one line naming the file, exit 2, and a checkpoint at the last good step. With the
    files back, --resume gives the uninterrupted run's lr, losses and weights."""
    out, train, moved = tmp_path / "run", sixteen["data"] / "train", tmp_path / "train-moved"
    process = subprocess.Popen([sys.executable, "-m", "alexnet_dali", *map(str, train_args(sixteen, out, *ARGS))],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_progress(process, "| 1/8")
        process.send_signal(signal.SIGSTOP)
        shutil.move(train, moved)
        process.send_signal(signal.SIGCONT)
        _, stderr = process.communicate(timeout=300)
    finally:
        process.kill()
        if moved.exists():
            shutil.move(moved, train)
    assert process.returncode == 2, stderr[-3000:]
    line = error_line(stderr)
    found = re.fullmatch(r"error: training stopped in epoch 1 at step (\d)/8: (\S+): missing: deleted or moved after "
                         r"the run's scan; progress up to that step is saved in (\S+): restore or replace the file "
                         r"and run the same command with --resume, or add --skip-bad to it to train without the file",
                         line)
    assert found, line
    step = int(found[1])
    assert 1 <= step <= 7 and Path(found[2]).parent == train.absolute() and found[3] == str(out / "last.pt")
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["epoch"] == 0 and state["ranks"][0]["step"] == step
    resumed = run_main(*train_args(sixteen, out, *ARGS, "--resume"), capfd=capfd, check=True)
    assert f"at epoch 1, step {step}" in resumed.stdout
    assert_same_run(out, reference)


def test_an_image_zeroed_between_runs_is_found_by_decoding_and_resume_is_exact(sixteen, reference, tmp_path, capfd):
    """Epoch 1 trains; then an image becomes zeros with its size and mtime kept, so the cached
    scan and the cached PCA pass it, and DALI stops epoch 2 naming no file. The run decodes the
    split again, names the file, and records the verdict in the scan cache (the next start
    refuses it; --skip-bad leaves it out, and that epoch's data order starts again). With the file
    restored, --resume is exact."""
    out = tmp_path / "run"
    run_main(*train_args(sixteen, out, *ARGS, "--epochs", "1"), capfd=capfd, check=True)  # the last --epochs counts
    victim = sixteen["data"] / "train" / "train_005.jpg"
    good = victim.read_bytes()
    zero_keeping_size_and_mtime(victim)
    try:
        stopped = run_main(*train_args(sixteen, out, *ARGS, "--resume"), capfd=capfd)
        assert stopped.returncode == 2, stopped.stderr[-3000:]
        line = error_line(stopped.stderr)
        assert "decoding the pass's 16 images again" in stopped.stdout
        found = re.fullmatch(r"error: training stopped in epoch 2 at step (\d)/8: (\S+): not an image: unrecognised "
                             r"content \(starts with b'\\x00.*'\); (.*)", line)
        assert found and found[2] == str(victim.absolute()), line
        step = int(found[1])
        saved = torch.load(out / "last.pt", weights_only=True)
        if step:  # the batches before the zeroed file's trained: a checkpoint holds them
            assert found[3].startswith(f"progress up to that step is saved in {out / 'last.pt'}")
            assert (saved["epoch"], saved["ranks"][0]["step"]) == (1, step)
        else:
            assert found[3].startswith(f"{out / 'last.pt'} holds the run as of its last checkpoint")
            assert saved["epoch"] == 1 and not saved["ranks"][0]["step"]
        refused = run_main(*train_args(sixteen, out, *ARGS, "--resume"), capfd=capfd)  # the cache now knows the file
        assert refused.returncode == 2 and "train_005.jpg: not an image" in error_line(refused.stderr)
        without = tmp_path / "without"  # --skip-bad leaves it out: that epoch's data order starts again
        shutil.copytree(out, without)
        skipped = run_main(*train_args(sixteen, without, *ARGS, "--resume", "--skip-bad"), capfd=capfd, check=True)
        assert "--skip-bad left out 1 undecodable image(s)" in skipped.stderr and "training on 15 images" in skipped.stdout
        if step:
            assert (f"the training files differ from those of the checkpoint (left out by --skip-bad, or changed): "
                    f"epoch 2 starts its data order again from the weights of step {step}") in skipped.stderr
        assert len(json.loads((without / "history.json").read_text())["loss"]) == 2
        assert list(json.loads((without / "excluded.json").read_text())) == [str(victim.absolute())]
    finally:
        victim.write_bytes(good)  # restored: a new mtime, so the scan decodes it again
    resumed = run_main(*train_args(sixteen, out, *ARGS, "--resume"), capfd=capfd, check=True)
    assert "checking that 1 images decode" in resumed.stdout
    assert_same_run(out, reference)


def test_the_pca_pass_names_an_image_zeroed_after_check_and_skip_bad_leaves_it_out(tmp_path, capfd):
    layout = make_original_layout(tmp_path / "data", per_split={"train": 8, "val": 4})
    assert run_main("check", *layout_args(layout), capfd=capfd).returncode == 0
    victim = layout["data"] / "train" / "train_003.jpg"
    zero_keeping_size_and_mtime(victim)
    stopped = run_main(*train_args(layout, tmp_path / "run", "--epochs", "1"), capfd=capfd)
    assert stopped.returncode == 2
    assert error_line(stopped.stderr) == (
        f"error: the RGB PCA pass stopped: {victim.absolute()}: not an image: unrecognised content (starts with "
        r"b'\x00\x00\x00\x00\x00\x00\x00\x00'); restore or replace it and run the same command again, or add "
        "--skip-bad to train without it")
    assert not (tmp_path / "run" / "last.pt").exists()
    skipped = run_main(*train_args(layout, tmp_path / "run", "--epochs", "1", "--skip-bad"), capfd=capfd, check=True)
    assert "training on 7 images" in skipped.stdout
    assert list(json.loads((tmp_path / "run" / "excluded.json").read_text())) == [str(victim.absolute())]


def test_check_rescan_decodes_what_the_cache_would_pass(tmp_path, capfd):
    """The cache knows a file by path, size and mtime: zeros written over an image with both kept
    pass a cached `check`; `check --rescan` decodes every file again and names it."""
    layout = make_original_layout(tmp_path / "data", per_split={"train": 4, "val": 2})
    assert run_main("check", *layout_args(layout), capfd=capfd).returncode == 0
    victim = layout["data"] / "train" / "train_001.jpg"
    zero_keeping_size_and_mtime(victim)
    cached = run_main("check", *layout_args(layout), capfd=capfd)
    assert cached.returncode == 0 and "all images decode" in cached.stdout  # what the cache cannot see
    rescanned = run_main("check", *layout_args(layout), "--rescan", capfd=capfd)
    assert rescanned.returncode == 1
    assert f"{victim.absolute()}: not an image" in rescanned.stdout and "1 problem(s)" in rescanned.stdout
    again = run_main("check", *layout_args(layout), capfd=capfd)  # the new verdict is cached
    assert again.returncode == 1 and f"{victim.absolute()}: not an image" in again.stdout


def test_dalis_error_text_gives_the_file_and_the_reason_where_it_has_them():
    """DALI 2.4's words for a local file its reader cannot open (a path may hold spaces, and a
    shorter path inside the named one is not named), and for a deleted s3:// object (none)."""
    from alexnet_dali.pipeline_errors import dali_reason, is_pipeline_error, named_files

    local = ("Critical error in pipeline:\nError in CPU operator `nvidia.dali.fn.readers.file`,\nwhich was used in "
             "the pipeline definition with the following traceback:\n\n  File \"/x/pipelines/common.py\", line 37\n\n"
             "encountered:\n\nFile mapping failed: /d/train/a b.jpg\nC++ context: [/opt/dali/dali/util/mmaped_file.cc:105]"
             " \nCurrent pipeline object is no longer valid.")
    files = ["/d/train/a", "/d/train/a b.jpg", "/d/train/b.jpg"]
    assert is_pipeline_error(RuntimeError(local)) and not is_pipeline_error(RuntimeError("CUDA out of memory"))
    assert named_files(local, files) == ["/d/train/a b.jpg"]
    assert dali_reason(local) == "File mapping failed: /d/train/a b.jpg"
    bucket = "Critical error in pipeline:\nError in CPU operator `nvidia.dali.fn.readers.file`,\n\nencountered:\n\n: \n"
    assert named_files(bucket, ["s3://data/train/a.jpg"]) == [] and dali_reason(bucket) == ""
