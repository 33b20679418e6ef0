"""The pre-training scan: verdicts from DALI's decoder alone, bounded memory, one cache for check
and train, data-set paths in every message, no native log lines, and Ctrl-C that keeps the work.
Real DALI pipelines, real JPEG files, real subprocesses."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from PIL import Image

from alexnet_dali.scan import MAX_SCAN_PIXELS, ScanCache, decode_check, file_key, pixel_batches, scan_images
from conftest import cpu_placement, make_class_folders, run_cli, run_main, smooth_image, write_image

HUGE_SIDE = 8000  # 64 million pixels: two fill a scan batch (MAX_SCAN_PIXELS)
ANSI_ESCAPE = "\x1b["


def train_args(data, out, *extra):
    return ["train", data, "--out", out, "--epochs", "1", "--batch-size", "4", "--lr", "1e-4", "--device", "cpu",
            "--dali-threads", "1", "--pca-images", "4", *map(str, extra)]


def motion_photo(path: Path, still: Path) -> Path:
    """A valid JPEG followed by more data after its end-of-image marker, as phones' motion photos are."""
    path.write_bytes(still.read_bytes() + b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    return path


def truncated(path: Path, whole: Path) -> Path:
    data = whole.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.fixture(scope="module")
def huge_jpeg(tmp_path_factory) -> Path:
    """An 8000×8000 JPEG of smooth content (under 2 MB on disk), made by enlarging a small image."""
    path = tmp_path_factory.mktemp("huge") / "huge.jpg"
    Image.fromarray(smooth_image(80, 80)).resize((HUGE_SIDE, HUGE_SIDE), Image.BILINEAR).save(path, quality=85)
    return path


# -- 9: a verdict never depends on the neighbours ---------------------------------------------------------

def test_a_files_verdict_does_not_depend_on_its_neighbours(tmp_path):
    still = write_image(tmp_path / "still.jpg", 64, 48)
    motion = motion_photo(tmp_path / "motion.jpg", still)
    bad = truncated(tmp_path / "bad.jpg", write_image(tmp_path / "whole.jpg", 96, 80))
    alone = decode_check([str(motion)], cpu_placement())
    assert alone == {str(motion): None}
    cache_path = tmp_path / "cache" / "scan-cache.json"
    problems = scan_images([str(still), str(motion), str(bad)], cpu_placement(), cache_path=cache_path)
    assert [(Path(p.path).name, p.reason.split(":")[0]) for p in problems] == [("bad.jpg", "truncated JPEG")]
    cached = json.loads(cache_path.read_text())
    assert cached[file_key(str(motion))] == ""  # cached as good, so --skip-bad will never exclude it


# -- 10: memory bounded by pixels ---------------------------------------------------------------

def test_scan_batches_are_bounded_by_pixels_not_count():
    huge = HUGE_SIDE * HUGE_SIDE
    batches = pixel_batches([huge] * 64, max_count=64, max_pixels=MAX_SCAN_PIXELS)
    assert all(len(b) * huge <= MAX_SCAN_PIXELS for b in batches)
    assert [i for b in batches for i in b] == list(range(64))
    small = 500 * 375
    assert [len(b) for b in pixel_batches([small] * 130, 64, MAX_SCAN_PIXELS)] == [64, 64, 2]
    # an image of unknown size (unreadable header) or above the budget is decoded alone
    assert pixel_batches([small, None, small, 2 * MAX_SCAN_PIXELS, small], 64, MAX_SCAN_PIXELS) == [[0], [1], [2], [3], [4]]


PEAK_RSS_SCRIPT = textwrap.dedent("""
    import resource, sys
    from alexnet_dali.config import TrainConfig
    from alexnet_dali.data import Split
    from alexnet_dali.distributed import DistInfo
    from alexnet_dali.placement import place
    from alexnet_dali.dataset import training_pca
    from alexnet_dali.scan import scan_images

    stage, small, huge = sys.argv[1], sys.argv[2], sys.argv[3:]
    placement = place("cpu", threads=2, hw_decoder_load=0.65)
    peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert not scan_images([small], placement)  # DALI loaded and warm
    before = peak()
    if stage == "scan":
        assert not scan_images(huge, placement)
    else:  # the PCA pass of train, as load_training_data runs it
        split = Split("train", tuple(huge), (0,) * len(huge), ("a",))
        training_pca(split, TrainConfig(data="unused", pca_images=0), DistInfo(), placement, None)
    print(peak() - before)
""")


@pytest.mark.parametrize("stage", ["scan", "pca"])
def test_huge_images_are_scanned_and_sampled_in_bounded_memory(tmp_path, huge_jpeg, stage):
    """Eight 64-megapixel JPEGs, 1.5 GB as RGB. Decoded as one batch the scan grew by 2.9 GB and
    the PCA pass by 1.9 GB. Bounded by pixels, a batch holds two of them: the decoder then
    holds at most about 9 bytes per pixel of MAX_SCAN_PIXELS (measured 1.1 GB and 0.7 GB)."""
    copies = []
    for i in range(8):
        copies.append(tmp_path / f"{i}.jpg")
        os.link(huge_jpeg, copies[-1])
    small = write_image(tmp_path / "small.jpg", 64, 48)
    result = subprocess.run([sys.executable, "-c", PEAK_RSS_SCRIPT, stage, str(small), *map(str, copies)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    growth = int(result.stdout.strip().splitlines()[-1])
    assert growth < 10 * MAX_SCAN_PIXELS, f"{stage}: peak RSS grew by {growth / 2**30:.2f} GiB"


# -- 11: check fills the cache that train reads -------------------------------------------------------

def test_train_after_a_passing_check_decodes_nothing_again(tmp_path, capfd):
    data = make_class_folders(tmp_path / "data", per_split={"train": 4, "val": 2})
    checked = run_main("check", data, capfd=capfd)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    trained = run_main(*train_args(data, tmp_path / "run"), capfd=capfd, check=True)
    assert "checking that" not in trained.stdout
    assert "training on 8 images" in trained.stdout


# -- 12 and 13: links and stray files, named as the data set holds them ------------------------------

def test_broken_links_and_stray_files_are_named_and_skip_bad_passes_them(tmp_path, capfd):
    data = make_class_folders(tmp_path / "data", per_split={"train": 4, "val": 2})
    # what operating systems and data sets leave beside images: ignored without a word
    for name in ("Thumbs.db", "desktop.ini", ".DS_Store", "._000.jpg", "README.txt", "LICENSE", "notes.md"):
        (data / "train" / "ant" / name).write_bytes(b"\x00not an image")
    (data / "val" / "bee" / "Thumbs.db").write_bytes(b"\x00")
    clean = run_main("check", data, capfd=capfd)
    assert clean.returncode == 0, clean.stdout + clean.stderr

    link = data / "train" / "bee" / "004.jpg"
    link.symlink_to(tmp_path / "elsewhere" / "gone.jpg")
    stray = data / "train" / "ant" / "boxes.json"
    stray.write_text("{}")
    checked = run_main("check", data, "--json", capfd=capfd)
    assert checked.returncode == 1
    reasons = {p["path"]: p["reason"] for p in json.loads(checked.stdout)["problems"]}
    assert set(reasons) == {str(link), str(stray)}
    assert "broken symbolic link" in reasons[str(link)] and "gone.jpg" in reasons[str(link)]
    assert "not an image" in reasons[str(stray)]

    refused = run_main(*train_args(data, tmp_path / "refused"), capfd=capfd)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert str(stray) in refused.stderr and "--skip-bad" in refused.stderr
    stray.unlink()
    refused = run_main(*train_args(data, tmp_path / "refused2"), capfd=capfd)
    assert refused.returncode == 2 and f"{link}: broken symbolic link" in refused.stderr
    assert "gone.jpg: " not in refused.stderr  # the link, not its target, is the file named
    stray.write_text("{}")

    out = tmp_path / "skipped"
    trained = run_main(*train_args(data, out, "--skip-bad"), capfd=capfd, check=True)
    assert "left out 1 undecodable image(s) and 1 file(s) that are not images" in trained.stderr
    assert "training on 8 images" in trained.stdout
    excluded = json.loads((out / "excluded.json").read_text())
    assert set(excluded) == {str(link), str(stray)}



def test_skip_bad_never_leaves_a_class_without_training_images(tmp_path, capfd):
    """A class whose folder holds only a stray file, or only undecodable images, would keep an
    output no image trains: --skip-bad refuses it by name instead (it trained such a class before)."""
    data = make_class_folders(tmp_path / "data", per_split={"train": 2, "val": 1})
    write_image(data / "val" / "cow" / "000.jpg", 96, 80)
    stray_only = data / "train" / "cow"
    stray_only.mkdir()
    (stray_only / "boxes.json").write_text("{}")
    refused = run_main(*train_args(data, tmp_path / "run1", "--skip-bad"), capfd=capfd)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert f"{stray_only}: class folder with no images, only files that are not images" in refused.stderr

    (stray_only / "boxes.json").unlink()
    (stray_only / "000.jpg").write_bytes(b"\xff\xd8\xff\xe0 not the rest of a JPEG")
    refused = run_main(*train_args(data, tmp_path / "run2", "--skip-bad"), capfd=capfd)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "--skip-bad left class(es) 'cow' without a training image" in refused.stderr
    assert str(stray_only / "000.jpg") in json.loads((tmp_path / "run2" / "excluded.json").read_text())


# -- 18: DALI's own log lines stay out of what the user reads ------------------------------------------

PREDICT_BAD_FILE = textwrap.dedent("""
    import sys
    from alexnet_dali.errors import DataError
    from alexnet_dali.model import AlexNetModule
    from alexnet_dali.pca import PCA
    from alexnet_dali.placement import place
    from alexnet_dali.predict import Predictor
    from alexnet_dali.state import ModelBundle

    pca = PCA((0.5, 0.5, 0.5), (0.1, 0.01, 0.001), ((1, 0, 0), (0, 1, 0), (0, 0, 1)), 1)
    bundle = ModelBundle(AlexNetModule(2), pca, ("a", "b"))
    predictor = Predictor(bundle, place("cpu", threads=1, hw_decoder_load=0.65), batch_size=2)
    try:
        predictor.predict_files(sys.argv[1:])
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
""")


def test_dali_log_lines_stay_out_of_stderr(tmp_path):
    data = make_class_folders(tmp_path / "data", per_split={"train": 2, "val": 1})
    bad = truncated(data / "train" / "ant" / "bad.jpg", data / "train" / "ant" / "000.jpg")
    checked = run_cli("check", data)
    assert checked.returncode == 1 and f"{bad}: truncated JPEG" in checked.stdout
    predicted = subprocess.run([sys.executable, "-c", PREDICT_BAD_FILE, str(data / "val" / "bee" / "000.jpg"), str(bad)],
                               capture_output=True, text=True, timeout=300)
    assert f"{bad}: truncated JPEG" in predicted.stderr
    for result in (checked, predicted):
        assert "[ERROR]" not in result.stderr and ANSI_ESCAPE not in result.stderr, result.stderr



def test_decoder_lines_stay_out_of_checks_output_and_nothing_else_is_hidden(tmp_path, capfd):
    """JPEGs cut at 40 lengths, baseline and progressive, decoded by 2 threads at once: libjpeg-
    turbo's "Input file read error" and nvImageCodec's lines, also where two threads' pieces
    interleave, stay out; every bad file is named; what else reaches fd 2 meanwhile is passed on."""
    from alexnet_dali.scan import quiet_native_log

    data = make_class_folders(tmp_path / "data", per_split={"train": 2, "val": 1})
    cut = []
    for progressive in (False, True):
        whole = write_image(tmp_path / "whole.jpg", 96, 80, progressive=progressive).read_bytes()
        for length in range(2, len(whole), len(whole) // 40):
            cut.append(data / "train" / "ant" / f"cut{int(progressive)}_{length}.jpg")
            cut[-1].write_bytes(whole[:length])
    checked = run_cli("check", data, "--device", "cpu", "--threads", "2")
    assert checked.returncode == 1 and f"checked {len(cut) + 6} images" in checked.stdout
    assert {line.split(": ")[0] for line in checked.stdout.splitlines() if ": " in line} >= set(map(str, cut))
    for native in ("Input file read error", "Could not", "[ERROR]", ANSI_ESCAPE):
        assert native not in checked.stderr, checked.stderr
    capfd.readouterr()
    with quiet_native_log():
        os.write(2, b"Input file read error\n\x1b[0;31m[ERROR] \x1b[0m[jpeg_parser] Invalid marker\n")
        os.write(2, b"a line of ours\n")
        print("warning: one of ours too", file=sys.stderr, flush=True)
    assert sorted(capfd.readouterr().err.splitlines()) == ["a line of ours", "warning: one of ours too"]


# -- 7 (second half): Ctrl-C during the pre-training scan -------------------------------------------------

def test_ctrl_c_during_the_scan_exits_130_with_one_line_and_keeps_what_was_scanned(tmp_path, huge_jpeg):
    data = tmp_path / "data"
    for i in range(64):  # a first batch of small images, done at once ...
        write_image(data / "train" / "a" / f"{i:03d}.jpg", 32, 32, seed=i)
    for i in range(40):  # ... then seconds of huge ones (hard links), interrupted
        (data / "train" / "b").mkdir(parents=True, exist_ok=True)
        os.link(huge_jpeg, data / "train" / "b" / f"{i:03d}.jpg")
    for name in ("a", "b"):
        write_image(data / "val" / name / "000.jpg", 32, 32)
    out = tmp_path / "run"
    # Ctrl-C as a terminal sends it: to a process whose SIGINT is not ignored. A shell without job
    # control starts background commands (`pytest &`) with SIGINT ignored, Python then installs no
    # KeyboardInterrupt, and the signal would be lost (seen in a backgrounded CI run).
    process = subprocess.Popen([sys.executable, "-m", "alexnet_dali", *map(str, train_args(data, out))],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = []
    for line in process.stdout:  # read until the scan starts (a line may carry another's unended text)
        seen.append(line)
        if "checking that 106 images decode" in line:
            break
    assert process.poll() is None, f"the run ended before its scan was seen: stdout {seen}"
    time.sleep(1.5)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, f"stdout before the signal: {seen}\nafter: {stdout}\nstderr: {stderr}"
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines() == [stderr.strip()], stderr  # one line
    assert stderr.startswith("interrupted during the image scan")
    cache_dir = data / ".alexnet-dali"
    assert not [p for root in (cache_dir, out) if root.exists() for p in root.rglob("*tmp*")]  # no partial files
    cache = ScanCache(cache_dir / "scan-cache.json")
    files = sorted(str(p) for p in data.rglob("*.jpg"))
    known = sum(file_key(f) in cache.entries for f in files)
    assert 64 <= known < len(files)
    # the same command again decodes only what was not checked
    again = subprocess.Popen([sys.executable, "-m", "alexnet_dali", *map(str, train_args(data, tmp_path / "again"))],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    first = next(line for line in again.stdout if line.startswith("checking that"))
    again.kill()
    again.wait()
    assert first.strip() == f"checking that {len(files) - known} images decode ({known} known from the cache)"


# -- Image formats DALI cannot decode are named as such (issue 27, point 16) -------------------------

def pil_encoded(kind: str) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(smooth_image(64, 48)).save(buffer, kind)
    return buffer.getvalue()


@pytest.mark.parametrize("name, data", [
    ("GIF", pil_encoded("GIF")),
    ("AVIF", pil_encoded("AVIF")),
    # PIL writes neither: the leading bytes of an iPhone photo and of a JPEG XL file (both forms)
    ("HEIC", b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64),
    ("JPEG XL", b"\xff\x0a\xfa\x7f\x01\x90\x08\x06\x01\x00\x48\x00\x4b" + b"\x00" * 64),
    ("JPEG XL", b"\x00\x00\x00\x0cJXL \r\n\x87\n\x00\x00\x00\x14ftypjxl " + b"\x00" * 64),
], ids=["gif", "avif", "heic", "jxl-codestream", "jxl-container"])
def test_a_format_dali_cannot_decode_is_named_not_called_not_an_image(tmp_path, name, data):
    path = tmp_path / "photo.jpg"  # as a misnamed download would be
    path.write_bytes(data)
    reason = decode_check([str(path)], cpu_placement())[str(path)]
    assert reason.startswith(f"unsupported image format {name}: DALI decodes JPEG, PNG, BMP, TIFF, JPEG 2000, WebP")
