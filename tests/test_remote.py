"""Data from a URL: a real http.server on 127.0.0.1 serves a tree in the original layout; the
fetched copy indexes exactly like the local tree, is downloaded once, survives a flaky server,
names what it could not get, never keeps a body cut short or an error page, and follows the
server: label files every run, removed files every run, replaced files on --refresh."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from alexnet_dali.cli import build_parser, config_from_args
from alexnet_dali.config import TrainConfig
from alexnet_dali.data import DataError, index_dataset
from alexnet_dali.distributed import DistInfo
from alexnet_dali.dataset import index
from alexnet_dali.remote import FetchPolicy, fetch_dataset, parse_index_page
from alexnet_dali.sources import HttpSite, LocalFolder, cache_folder_name
from conftest import make_original_layout, run_main, smooth_image, write_image

FAST = FetchPolicy(workers=4, attempts=3, timeout_s=5.0, first_wait_s=0.05)


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")  # a proxy from the environment never sees these


class Handler(SimpleHTTPRequestHandler):
    """http.server's own handler (Last-Modified, and 304 to If-Modified-Since), quiet, recording
    every GET path in `requests` and, where given an `answers` list, every (path, status)."""

    answers: list | None = None

    def __init__(self, *args, requests: list, **kwargs):
        self.requests = requests
        super().__init__(*args, **kwargs)

    def log_message(self, *args):
        pass

    def log_request(self, code="-", size="-"):
        if self.answers is not None:
            self.answers.append((self.path, int(code)))

    def send_file(self, body: bytes, **headers) -> None:
        """200 with these bytes and headers (Content-Type guessed from the name unless given)."""
        headers = {"Content-Type": self.guess_type(self.path)} | {k.replace("_", "-"): v for k, v in headers.items()}
        self.send_response(200)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.requests.append(self.path)
        if not self.misbehave():
            super().do_GET()

    def misbehave(self) -> bool:
        """Answer the request some other way and return True (subclasses)."""
        return False


class FlakyHandler(Handler):
    """503 on the first GET of the paths in `fail_once`; 503 always for `fail_always`."""

    fail_once: set = set()
    fail_always: set = set()

    def misbehave(self) -> bool:
        if self.path in self.fail_always or (self.path in self.fail_once and self.requests.count(self.path) == 1):
            self.send_error(503, "Service Unavailable")
            return True
        return False


class TruncatingHandler(Handler):
    """Promises the whole file (Content-Length) but sends half of it, then hangs up: on the first
    GET of `truncate_once`, on every GET of `truncate_always`."""

    truncate_once: set = set()
    truncate_always: set = set()

    def misbehave(self) -> bool:
        if self.path in self.truncate_always or (self.path in self.truncate_once and self.requests.count(self.path) == 1):
            body = Path(self.translate_path(self.path)).read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
            return True
        return False


class StallingHandler(Handler):
    """Says nothing for `stall_s` seconds on the first GET of the paths in `stall_once`."""

    stall_once: set = set()
    stall_s = 3.0

    def misbehave(self) -> bool:
        if self.path in self.stall_once and self.requests.count(self.path) == 1:
            time.sleep(self.stall_s)
            self.close_connection = True
            return True
        return False


class NoListingHandler(Handler):
    """Directory listings disabled, as on many servers: 403 for every folder."""

    def misbehave(self) -> bool:
        if self.path.endswith("/"):
            self.send_error(403, "Forbidden")
            return True
        return False


class NoLengthHandler(Handler):
    """Files with no Content-Length, the body ended by closing the connection (as HTTP/1.0
    allows). A path in `cut_at` gets only its first cut_at[path] bytes: a transfer cut short that
    no header reveals."""

    cut_at: dict = {}

    def misbehave(self) -> bool:
        if self.path.endswith("/"):
            return False
        body = Path(self.translate_path(self.path)).read_bytes()
        self.send_file(body[: self.cut_at.get(self.path, len(body))])
        self.close_connection = True
        return True


class ErrorPageHandler(Handler):
    """200 with an HTML error page, as some proxies and CDNs answer, for the paths in `error_page_for`."""

    error_page_for: set = set()
    PAGE = b"<!DOCTYPE html>\n<html><head><title>Quota exceeded</title></head><body>Try again later.</body></html>"

    def misbehave(self) -> bool:
        if self.path in self.error_page_for:
            self.send_file(self.PAGE, Content_Type="text/html; charset=utf-8", Content_Length=str(len(self.PAGE)))
            return True
        return False


class EtagHandler(Handler):
    """Files with a strong ETag (a hash of the bytes) and no Last-Modified; 304 to a matching
    If-None-Match."""

    def misbehave(self) -> bool:
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            return False
        body = path.read_bytes()
        etag = f'"{hashlib.sha1(body).hexdigest()}"'
        if self.headers.get("If-None-Match") == etag:
            self.send_response(304)
            self.send_header("ETag", etag)
            self.end_headers()
        else:
            self.send_file(body, Content_Length=str(len(body)), ETag=etag)
        return True


class NoValidatorHandler(Handler):
    """Files with a Content-Length but neither ETag nor Last-Modified: nothing to ask "changed?" with."""

    def misbehave(self) -> bool:
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            return False
        body = path.read_bytes()
        self.send_file(body, Content_Length=str(len(body)))
        return True


class SlowHandler(Handler):
    """Waits `delay_s` before answering a file, so a refresh takes a while."""

    delay_s = 0.1

    def misbehave(self) -> bool:
        if not self.path.endswith("/"):
            time.sleep(self.delay_s)
        return False


@contextlib.contextmanager
def serve(root: Path, handler=Handler, **attributes):
    """A real HTTP server on 127.0.0.1 (a free port) serving `root`; yields (base URL, requests)."""
    requests: list[str] = []
    handler_class = type("TestHandler", (handler,), attributes)
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler_class, directory=str(root),
                                                                     requests=requests))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", requests
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def tree(tmp_path) -> dict:
    return make_original_layout(tmp_path / "served")


def image_paths(tree: dict) -> list[str]:
    """URL paths of the images of train and val, as the server sees them."""
    return sorted(f"/{p.parent.name}/{p.name}" for split in ("train", "val") for p in (tree["data"] / split).iterdir())


def names_and_labels(splits: dict) -> dict:
    return {name: ([Path(f).name for f in s.files], list(s.labels), s.classes) for name, s in splits.items()}


def local_index(tree: dict) -> dict:
    return names_and_labels(index_dataset(tree["data"], tree["labels"], tree["label_encoding"]))


def fetch(url: str, cache: Path, labels="labels.json", encoding="label_encoding.json", **options):
    return fetch_dataset(url, url + labels if labels else None, url + encoding if encoding else None,
                         cache_dir=cache, policy=options.pop("policy", FAST), **options)


@pytest.mark.parametrize("labels_as", ["url", "local path"])
def test_url_and_local_runs_give_the_same_files_and_labels(tree, tmp_path, labels_as):
    with serve(tree["data"]) as (url, _):
        if labels_as == "url":
            root, labels, encoding = fetch(url, tmp_path / "cache")
        else:
            root, labels, encoding = fetch_dataset(url, str(tree["labels"]), str(tree["label_encoding"]),
                                                   cache_dir=tmp_path / "cache", policy=FAST)
    assert Path(root) == tmp_path / "cache" / cache_folder_name(url)
    fetched = index_dataset(root, labels, encoding)
    assert names_and_labels(fetched) == local_index(tree)
    assert names_and_labels(fetched)["train"][0]  # not vacuous: the split has files
    for split in fetched.values():
        for path in split.files:
            assert Path(path).read_bytes() == (tree["data"] / split.name / Path(path).name).read_bytes()


def test_a_site_lists_and_reads_its_files_like_the_folder_it_serves(tree):
    """The seam (sources.HttpSite): the same image files, the same bytes, an identity per file
    that follows its content."""
    local = LocalFolder(tree["data"])
    with serve(tree["data"]) as (url, _):
        site = HttpSite(url)
        assert site.entries() == (sorted(["labels.json", "label_encoding.json"]), ["train", "val"])
        assert site.is_dir("train") and site.is_file("train/train_000.jpg") and not site.exists("train/nope.jpg")
        listed = dict(site.image_files())
        assert sorted(listed) == sorted(local.image_paths()) and len(listed) > 4
        for rel in listed:
            assert site.read_file(rel) == local.read_file(rel)
        rel = "train/train_000.jpg"
        before = listed[rel]
        (tree["data"] / rel).write_bytes(local.read_file(rel) + b"\0")  # another length
        assert site.identity(rel) not in (before, None)
        assert site.identity("train/nope.jpg") is None
        with pytest.raises(FileNotFoundError):
            site.read_file("train/nope.jpg")


def test_a_second_run_downloads_nothing(tree, tmp_path):
    answers = []
    with serve(tree["data"], answers=answers) as (url, requests):
        first = fetch(url, tmp_path / "cache")
        assert sorted(p for p in requests if p.endswith(".jpg")) == image_paths(tree)
        answers.clear()
        second = fetch(url, tmp_path / "cache")
        assert second == first
        # The two listings were read and the label files revalidated (304: not sent again); no image.
        assert sorted(answer for answer in answers if not answer[0].endswith("/")) == [
            ("/label_encoding.json", 304), ("/labels.json", 304)]
        (Path(first[0]) / "val" / "val_001.jpg").unlink()
        requests.clear()
        fetch(url, tmp_path / "cache")
        assert [p for p in requests if p.endswith(".jpg")] == ["/val/val_001.jpg"]


def test_a_flaky_server_is_survived(tree, tmp_path):
    every_other = set(image_paths(tree)[::2]) | {"/labels.json", "/train/"}
    with serve(tree["data"], FlakyHandler, fail_once=every_other) as (url, requests):
        root, labels, encoding = fetch(url, tmp_path / "cache")
    assert all(requests.count(path) == 2 for path in every_other)  # each failed once, then came through
    assert names_and_labels(index_dataset(root, labels, encoding)) == local_index(tree)


def test_files_that_always_fail_are_named_and_never_half_cached(tree, tmp_path):
    broken = ["/train/train_003.jpg", "/val/val_000.jpg"]
    failing = set(broken)
    with serve(tree["data"], FlakyHandler, fail_always=failing) as (url, requests):
        with pytest.raises(DataError) as info:
            fetch(url, tmp_path / "cache")
        assert [requests.count(path) for path in broken] == [FAST.attempts] * 2
        message = str(info.value)
        assert "2 of 12 files could not be downloaded" in message
        for path in broken:
            assert f"{url}{path[1:]}: HTTP 503 Service Unavailable (after {FAST.attempts} tries)" in message
        local = tmp_path / "cache" / cache_folder_name(url)
        expected = sorted(p.relative_to(tree["data"]) for s in ("train", "val") for p in (tree["data"] / s).iterdir())
        cached = sorted(p.relative_to(local) for s in ("train", "val") for p in (local / s).iterdir())
        assert cached == [p for p in expected if "/" + str(p) not in broken]  # the rest is kept; no .part left
        failing.clear()  # the server recovers: the next run fetches only what is missing
        requests.clear()
        fetch(url, tmp_path / "cache")
        assert sorted(p for p in requests if p.endswith(".jpg")) == broken
        assert sorted(p.relative_to(local) for s in ("train", "val") for p in (local / s).iterdir()) == expected


def test_a_cut_off_download_is_retried_and_never_counts_as_done(tree, tmp_path):
    cut_once, cut_always = "/train/train_001.jpg", "/val/val_002.jpg"
    with serve(tree["data"], TruncatingHandler, truncate_once={cut_once}, truncate_always={cut_always}) as (url, requests):
        with pytest.raises(DataError) as info:
            fetch(url, tmp_path / "cache")
    assert requests.count(cut_once) == 2
    message = str(info.value)
    assert url + "val/val_002.jpg" in message and "train_001" not in message
    local = tmp_path / "cache" / cache_folder_name(url)
    assert (local / "train" / "train_001.jpg").read_bytes() == (tree["data"] / "train" / "train_001.jpg").read_bytes()
    assert sorted(p.name for p in (local / "val").iterdir()) == ["val_000.jpg", "val_001.jpg", "val_003.jpg"]


def test_a_stalled_answer_times_out_and_is_retried(tree, tmp_path):
    stalled = "/val/val_000.jpg"
    policy = FetchPolicy(workers=4, attempts=3, timeout_s=0.5, first_wait_s=0.05)
    with serve(tree["data"], StallingHandler, stall_once={stalled}) as (url, requests):
        started = time.perf_counter()
        root, labels, encoding = fetch(url, tmp_path / "cache", policy=policy)
        assert time.perf_counter() - started < 2.0  # well before the server would have answered
    assert requests.count(stalled) == 2
    assert names_and_labels(index_dataset(root, labels, encoding)) == local_index(tree)


def test_a_server_without_listings_is_read_through_files_txt(tree, tmp_path):
    for split in ("train", "val"):
        names = sorted(p.name for p in (tree["data"] / split).iterdir())
        (tree["data"] / split / "files.txt").write_text("# the images of this split\n" + "\n".join(names) + "\n")
    with serve(tree["data"], NoListingHandler) as (url, requests):
        root, labels, encoding = fetch(url, tmp_path / "cache")
    assert "/train/files.txt" in requests and "/val/files.txt" in requests
    assert names_and_labels(index_dataset(root, labels, encoding)) == local_index(tree)  # files.txt is no image


def test_no_listing_and_no_files_txt_is_a_clear_error(tree, tmp_path):
    with serve(tree["data"], NoListingHandler) as (url, _):
        with pytest.raises(DataError) as info:
            fetch(url, tmp_path / "cache")
    message = str(info.value)
    assert f"{url}train/" in message and "HTTP 403" in message and "files.txt" in message


def test_a_missing_split_and_missing_labels_are_named(tree, tmp_path):
    with serve(tree["data"]) as (url, _):
        with pytest.raises(DataError, match=f"{url}test/.*HTTP 404"):
            fetch(url, tmp_path / "cache", splits=("train", "test"))
        with pytest.raises(DataError, match=f"{url}nope.json.*HTTP 404"):
            fetch(url, tmp_path / "cache", labels="nope.json")
        with pytest.raises(DataError, match=r"must be in the original layout .*; pass --labels"):
            fetch(url, tmp_path / "cache", labels=None)


def test_an_unlabelled_remote_image_is_named_before_any_download(tree, tmp_path):
    write_image(tree["data"] / "train" / "stray.jpg", 32, 32)
    with serve(tree["data"]) as (url, requests):
        with pytest.raises(DataError, match=f"{url}train/stray.jpg: unlabelled"):
            fetch(url, tmp_path / "cache")
    assert not [p for p in requests if p.endswith(".jpg")]


NGINX_PAGE = """<html>
<head><title>Index of /imagenet/train/</title></head>
<body>
<h1>Index of /imagenet/train/</h1><hr><pre><a href="../">../</a>
<a href="a%20b.jpg">a b.jpg</a>                                            12-Mar-2024 10:00               12345
<a href="c.JPEG">c.JPEG</a>                                             12-Mar-2024 10:00               23456
<a href="nested/">nested/</a>                                            12-Mar-2024 10:00                   -
</pre><hr></body>
</html>"""

APACHE_PAGE = """<!DOCTYPE HTML PUBLIC "-//W3C//DTD HTML 3.2 Final//EN">
<html><head><title>Index of /imagenet/train</title></head><body>
<h1>Index of /imagenet/train</h1>
<table>
<tr><th><img src="/icons/blank.gif" alt="[ICO]"></th><th><a href="?C=N;O=D">Name</a></th><th><a href="?C=M;O=A">Last modified</a></th></tr>
<tr><td><img src="/icons/back.gif" alt="[PARENTDIR]"></td><td><a href="/imagenet/">Parent Directory</a></td></tr>
<tr><td><a href="a%20b.jpg"><img src="/icons/image2.gif" alt="[IMG]"></a></td><td><a href="a%20b.jpg">a b.jpg</a></td></tr>
<tr><td><img src="/icons/image2.gif" alt="[IMG]"></td><td><a href="/imagenet/train/c.JPEG">c.JPEG</a></td></tr>
<tr><td><img src="/icons/folder.gif" alt="[DIR]"></td><td><a href="nested/">nested/</a></td></tr>
<tr><td></td><td><a href="https://elsewhere.example/x.jpg">x.jpg</a></td></tr>
<tr><td></td><td><a href=".hidden.jpg">.hidden.jpg</a></td></tr>
</table><address>Apache/2.4.57 (Debian) Server at example.org Port 80</address></body></html>"""


@pytest.mark.parametrize("page", [NGINX_PAGE, APACHE_PAGE], ids=["nginx", "apache"])
def test_index_pages_of_nginx_and_apache(page):
    files, folders = parse_index_page(page, "http://example.org/imagenet/train/")
    assert files == ["a b.jpg", "c.JPEG"]
    assert folders == ["nested"]


def test_cli_trains_and_evaluates_from_a_url(tree, tmp_path, capfd):
    labels = ("--labels", str(tree["labels"]), "--label-encoding", str(tree["label_encoding"]))
    with serve(tree["data"]) as (url, _):
        result = run_main("train", url, "--labels", url + "labels.json", "--label-encoding", url + "label_encoding.json",
                          "--cache-dir", tmp_path / "cache", "--epochs", "1", "--batch-size", "4", "--lr", "0.001",
                          "--out", tmp_path / "run", "--device", "cpu", "--dali-threads", "1", capfd=capfd, check=True)
        assert "downloading 12 files" in result.stdout and "epoch 1/1" in result.stdout
        assert f"tensorboard --logdir {tmp_path / 'run' / 'tensorboard'}" in result.stdout
        assert (tmp_path / "run" / "last.pt").is_file()
        assert len(list((tmp_path / "cache").glob("*/train/*.jpg"))) == 8
        remote = run_main("evaluate", tmp_path / "run" / "last.pt", url, *labels, "--cache-dir", tmp_path / "cache2",
                          "--device", "cpu", "--json", capfd=capfd, check=True)
    local = run_main("evaluate", tmp_path / "run" / "last.pt", tree["data"], *labels, "--device", "cpu", "--json",
                     capfd=capfd, check=True)
    assert json.loads(remote.stdout) == json.loads(local.stdout)
    assert json.loads(remote.stdout)["images"] == 4
    assert "downloading 4 files" in remote.stderr  # the split evaluated, nothing else
    assert not list((tmp_path / "cache2").glob("*/train/*"))


def test_cli_check_takes_a_url_and_names_bad_files_by_url(tree, tmp_path, capfd):
    train = tree["data"] / "train"
    whole = (train / "train_001.jpg").read_bytes()
    (train / "train_001.jpg").write_bytes(whole[: len(whole) // 2])
    with serve(tree["data"]) as (url, _):
        result = run_main("check", url, "--labels", url + "labels.json", "--cache-dir", tmp_path / "cache", "--json",
                          capfd=capfd)
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["images"] == {"train": 8, "val": 4} and report["classes"] == ["cat", "dog"]
    assert [problem["path"] for problem in report["problems"]] == [url + "train/train_001.jpg"]
    assert report["problems"][0]["reason"].startswith("truncated JPEG")


def test_the_default_cache_is_under_the_user_cache_directory(tree, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    with serve(tree["data"]) as (url, _):
        root, _, _ = fetch_dataset(url, url + "labels.json", None, policy=FAST)
    assert Path(root) == tmp_path / "xdg" / "alexnet-dali" / cache_folder_name(url)
    assert len(list(Path(root).glob("*/*.jpg"))) == 12


def test_the_api_takes_a_url(tree, tmp_path):
    from alexnet_dali import AlexNet

    with serve(tree["data"]) as (url, _):
        model = AlexNet(url, url + "labels.json", url + "label_encoding.json", cache_dir=str(tmp_path / "cache"),
                        batch_size=4, device="cpu", out_dir=tmp_path / "run", verbose=False)
    assert model.classes == ("cat", "dog")
    assert names_and_labels({"train": model.data.train, "val": model.data.val}) == local_index(tree)
    assert all(Path(f).is_relative_to(tmp_path / "cache") for f in model.data.train.files)


# -- A download is verified before it counts as done ----------------------------------------

def encoded(width: int = 160, height: int = 120, seed: int = 0, format: str = "JPEG", **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(smooth_image(width, height, seed)).save(buffer, format, **options)
    return buffer.getvalue()


def add_train_file(tree: dict, name: str, data: bytes) -> None:
    """A file in train/, labelled 'cat' in labels.json."""
    (tree["data"] / "train" / name).write_bytes(data)
    labels = json.loads(tree["labels"].read_text())
    tree["labels"].write_text(json.dumps({**labels, Path(name).stem: "cat"}))


def cut_in_scan_data():
    data = encoded()
    scan = data.index(b"\xff\xda")
    return data, scan + (len(data) - scan) // 2


def cut_after_a_thumbnail():
    """An APP1 segment carrying a whole small JPEG, as an EXIF thumbnail does (the TIFF structure
    around it left out), cut just after it: the bytes end with an end-of-image marker, the
    thumbnail's."""
    segment = b"Exif\0\0" + encoded(32, 24, seed=1)
    data = encoded()
    data = data[:2] + b"\xff\xe1" + (len(segment) + 2).to_bytes(2, "big") + segment + data[2:]
    return data, 2 + 4 + len(segment)


def cut_between_progressive_scans():
    data = encoded(progressive=True)
    return data, data.rindex(b"\xff\xda")  # every scan but the last arrived


def cut_before_png_end():
    data = encoded(format="PNG")
    return data, len(data) - 12  # all pixel data, no IEND chunk


def cut_bmp_in_half():
    data = encoded(format="BMP")
    return data, len(data) // 2


def cut_webp_in_half():
    data = encoded(format="WEBP")
    return data, len(data) // 2


MOTION_PHOTO = encoded(seed=2) + b"\0\0\0\x18ftypmp42" + bytes(range(256)) * 4  # a video after the JPEG's end


@pytest.mark.parametrize("name, make", [
    ("scan.jpg", cut_in_scan_data), ("thumbnail.jpg", cut_after_a_thumbnail),
    ("progressive.jpg", cut_between_progressive_scans), ("image.png", cut_before_png_end),
    ("image.bmp", cut_bmp_in_half), ("image.webp", cut_webp_in_half),
], ids=["jpeg cut in scan data", "jpeg cut after its thumbnail", "progressive jpeg cut between scans",
        "png cut before IEND", "bmp cut in half", "webp cut in half"])
def test_a_body_cut_short_without_a_content_length_is_retried_and_never_cached(tree, tmp_path, name, make):
    data, cut = make()
    add_train_file(tree, name, data)
    add_train_file(tree, "motion.jpg", MOTION_PHOTO)
    path = f"/train/{name}"
    cut_at = {path: cut}
    with serve(tree["data"], NoLengthHandler, cut_at=cut_at) as (url, requests):
        with pytest.raises(DataError) as info:
            fetch(url, tmp_path / "cache")
        assert requests.count(path) == FAST.attempts  # cut short every time
        [problem] = info.value.problems
        assert problem.path == f"{url}train/{name}"
        assert problem.reason.startswith(f"incomplete: {cut} bytes of ")
        assert "the server sent no Content-Length" in problem.reason
        local = tmp_path / "cache" / cache_folder_name(url) / "train"
        assert not (local / name).exists()
        assert (local / "motion.jpg").read_bytes() == MOTION_PHOTO  # whole, though bytes follow its end marker
        cut_at.clear()  # the connection holds: the whole file is kept
        fetch(url, tmp_path / "cache")
        assert (local / name).read_bytes() == data


def test_an_html_error_page_answered_with_200_is_named_and_never_cached(tree, tmp_path):
    broken = "/val/val_002.jpg"
    error_page_for = {broken}
    with serve(tree["data"], ErrorPageHandler, error_page_for=error_page_for) as (url, requests):
        with pytest.raises(DataError) as info:
            fetch(url, tmp_path / "cache")
        assert requests.count(broken) == 1  # a final answer, like a 404: not retried
        message = str(info.value)
        assert f"{url}val/val_002.jpg: not an image: the server answered text/html" in message
        assert "<!DOCTYPE html>" in message and "error page" in message
        local = tmp_path / "cache" / cache_folder_name(url) / "val"
        assert sorted(p.name for p in local.iterdir()) == ["val_000.jpg", "val_001.jpg", "val_003.jpg"]
        error_page_for.clear()
        requests.clear()
        fetch(url, tmp_path / "cache")
        assert [p for p in requests if p.endswith(".jpg")] == [broken]
    assert (local / "val_002.jpg").read_bytes() == (tree["data"] / "val" / "val_002.jpg").read_bytes()


def test_a_label_file_answered_with_an_error_page_is_named_by_its_url_and_never_cached(tree, tmp_path):
    with serve(tree["data"], ErrorPageHandler, error_page_for={"/labels.json"}) as (url, requests):
        with pytest.raises(DataError) as info:
            fetch(url, tmp_path / "cache")
    message = str(info.value)
    assert f"{url}labels.json: labels file cannot be downloaded: not JSON: the server answered text/html" in message
    assert not list((tmp_path / "cache").glob("*/labels-*.json"))
    assert not [p for p in requests if p.endswith(".jpg")]


# -- The cache follows the server ------------------------------------------------------------

def later(path: Path, seconds: float = 10.0) -> None:
    """Move a file's mtime on: Last-Modified counts whole seconds, and a test is faster than that."""
    stamp = path.stat().st_mtime + seconds
    os.utime(path, (stamp, stamp))


def test_the_label_files_are_revalidated_every_run(tree, tmp_path):
    answers = []
    with serve(tree["data"], answers=answers) as (url, _):
        fetch(url, tmp_path / "cache")
        relabelled = {image: "dog" if label == "cat" else "cat" for image, label in
                      json.loads(tree["labels"].read_text()).items()}
        tree["labels"].write_text(json.dumps(relabelled))
        later(tree["labels"])
        answers.clear()
        root, labels, encoding = fetch(url, tmp_path / "cache")
    assert sorted(a for a in answers if a[0].endswith(".json")) == [("/label_encoding.json", 304),
                                                                    ("/labels.json", 200)]
    assert json.loads(Path(labels).read_text()) == relabelled
    assert names_and_labels(index_dataset(root, labels, encoding)) == local_index(tree)


def test_the_cache_holds_what_the_server_lists_now(tree, tmp_path):
    with serve(tree["data"]) as (url, requests):
        root, _, _ = fetch(url, tmp_path / "cache")
        (tree["data"] / "val" / "val_001.jpg").unlink()
        (tree["data"] / "train" / "train_005.jpg").unlink()
        (Path(root) / "train" / ".train_000.jpg.999.1.part").write_bytes(b"half")  # a download killed mid-way
        requests.clear()
        root, labels, encoding = fetch(url, tmp_path / "cache")
        assert not [p for p in requests if p.endswith(".jpg")]
    assert names_and_labels(index_dataset(root, labels, encoding)) == local_index(tree)
    for split in ("train", "val"):
        assert sorted(os.listdir(Path(root) / split)) == sorted(os.listdir(tree["data"] / split))


@pytest.mark.parametrize("validators", ["etag", "last-modified", "none"])
def test_refresh_revalidates_every_cached_image_with_a_conditional_get(tree, tmp_path, validators):
    handler = {"etag": EtagHandler, "last-modified": Handler, "none": NoValidatorHandler}[validators]
    replaced, damaged = "/train/train_002.jpg", "/val/val_000.jpg"
    answers = []
    with serve(tree["data"], handler, answers=answers) as (url, requests):
        root, _, _ = fetch(url, tmp_path / "cache")
        write_image(tree["data"] / replaced[1:], 96, 80, seed=99)  # a new image under the same name
        later(tree["data"] / replaced[1:])
        cached_copy = Path(root) / damaged[1:]
        cached_copy.write_bytes(cached_copy.read_bytes()[:100])  # damaged in the cache, unchanged on the server
        requests.clear()
        fetch(url, tmp_path / "cache")
        assert not [p for p in requests if p.endswith(".jpg")]  # without --refresh no image is asked about
        answers.clear()
        fetch(url, tmp_path / "cache", refresh=True)
    unchanged = 200 if validators == "none" else 304
    expected = {path: unchanged for path in image_paths(tree)} | {replaced: 200, damaged: 200}
    assert sorted(a for a in answers if a[0].endswith(".jpg")) == sorted(expected.items())  # each asked once
    for path in image_paths(tree):
        assert (Path(root) / path[1:]).read_bytes() == (tree["data"] / path[1:]).read_bytes()


def test_processes_that_ask_for_a_refresh_together_revalidate_once(tree, tmp_path):
    """torchrun's ranks each call fetch_dataset with --refresh: the first revalidates, the others
    wait on the cache's lock and find it done since they asked."""
    with serve(tree["data"], SlowHandler) as (url, requests):
        fetch(url, tmp_path / "cache")
        requests.clear()
        together = threading.Barrier(2)

        def rank():
            together.wait()
            return fetch(url, tmp_path / "cache", refresh=True)

        with ThreadPoolExecutor(2) as pool:
            results = [future.result() for future in [pool.submit(rank) for _ in range(2)]]
        assert results[0] == results[1]
        assert sorted(p for p in requests if p.endswith(".jpg")) == image_paths(tree)  # once each, not twice
        requests.clear()
        fetch(url, tmp_path / "cache", refresh=True)  # a later --refresh asks again
        assert sorted(p for p in requests if p.endswith(".jpg")) == image_paths(tree)


def test_refresh_is_an_option_of_train_check_and_evaluate(tree, tmp_path):
    parser = build_parser()
    assert config_from_args(parser.parse_args(["train", "http://x/", "--refresh"])).refresh is True
    assert parser.parse_args(["evaluate", "m.pt", "http://x/", "--refresh"]).refresh is True
    assert parser.parse_args(["check", "http://x/", "--refresh"]).refresh is True
    with serve(tree["data"]) as (url, _):
        config = TrainConfig(data=url, labels=url + "labels.json", cache_dir=str(tmp_path / "cache"))
        _, root, _ = index(config, DistInfo())
        write_image(tree["data"] / "val" / "val_003.jpg", 96, 80, seed=99)
        later(tree["data"] / "val" / "val_003.jpg")
        index(config.replace(refresh=True), DistInfo())  # train's path to the cache
    assert (Path(root) / "val" / "val_003.jpg").read_bytes() == (tree["data"] / "val" / "val_003.jpg").read_bytes()


def test_cli_check_refresh_names_a_file_replaced_on_the_server(tree, tmp_path, capfd):
    with serve(tree["data"]) as (url, _):
        fetch(url, tmp_path / "cache", encoding=None)  # a cache of good files
        replaced = tree["data"] / "train" / "train_001.jpg"
        whole = replaced.read_bytes()
        replaced.write_bytes(whole[: len(whole) // 2])  # served whole (its Content-Length holds): the scan's to name
        later(replaced)
        result = run_main("check", url, "--labels", url + "labels.json", "--cache-dir", tmp_path / "cache", "--json",
                          "--refresh", capfd=capfd)
    assert result.returncode == 1, result.stderr
    assert "--refresh: 1 of 12 cached files had changed" in result.stderr
    report = json.loads(result.stdout)
    assert [problem["path"] for problem in report["problems"]] == [url + "train/train_001.jpg"]
    assert report["problems"][0]["reason"].startswith("truncated JPEG")
