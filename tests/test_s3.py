"""Data in object storage: index, check, train and evaluate straight from s3://, against a real
S3 server (moto's server mode) on loopback.

DALI's S3 client is made once per process from AWS_ENDPOINT_URL, so every test in this process
that reads through DALI shares the one server this module starts."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alexnet_dali import cli, s3
from alexnet_dali.config import ConfigError, TrainConfig
from alexnet_dali.data import index_dataset, index_splits
from alexnet_dali.distributed import DistInfo
from alexnet_dali.errors import DataError
from alexnet_dali.placement import place
from alexnet_dali.dataset import cache_dirs, load_training_data
from alexnet_dali.sources import LocalFolder, S3Bucket, local_copy
from alexnet_dali.scan import CACHE_NAME, ScanCache, scan_images
from alexnet_dali.state import load_state
from alexnet_dali.train import train
from conftest import make_class_folders, make_imagenet, make_original_layout, run_cli, torchrun

HERE = Path(__file__).resolve().parent
BUCKET = "data"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_moto(port: int, **env) -> subprocess.Popen:
    """`moto_server` on 127.0.0.1:port, in its own process (it then never competes with DALI's
    readers in this one for the GIL); returns once it accepts connections."""
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return server
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise RuntimeError(f"moto_server did not start on port {port}")
            time.sleep(0.1)


def stop(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def aws_environment(endpoint: str) -> dict[str, str]:
    """Test credentials for the loopback server, and nothing that could reach further: no
    instance-metadata probe, no ~/.aws files."""
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}


def upload(client, folder: Path, prefix: str) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            client.put_object(Bucket=BUCKET, Key=f"{prefix}/{path.relative_to(folder).as_posix()}", Body=path.read_bytes())


def bucket_keys(client) -> dict[str, str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
    return {item["Key"]: item["ETag"] for page in pages for item in page.get("Contents", [])}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A loopback S3 server with bucket `data`: original/ (the original layout, label JSONs
    beside the splits), folders/ (class folders), broken/ (class folders, one truncated JPEG).
    The local copies are returned beside the client for the tests' references."""
    port = free_port()
    server = start_moto(port)
    endpoint = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as patch:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION"):
            patch.delenv(name, raising=False)
        for name, value in aws_environment(endpoint).items():
            patch.setenv(name, value)
        root = tmp_path_factory.mktemp("s3-local")
        original = make_original_layout(root / "original")
        folders = make_class_folders(root / "folders")
        broken = make_class_folders(root / "broken")
        good = (broken / "train" / "bee" / "001.jpg").read_bytes()
        (broken / "train" / "bee" / "001.jpg").write_bytes(good[: len(good) // 2])
        client = s3.client()
        client.create_bucket(Bucket=BUCKET)
        for folder in ("original", "folders", "broken"):
            upload(client, root / folder, folder)
        yield {"client": client, "endpoint": endpoint, "original": original, "folders": folders, "broken": broken,
               "good_bee": good}
    stop(server)


def cpu():
    return place("cpu", threads=1, hw_decoder_load=0.65)


def load_on_cpu(config: TrainConfig):
    return load_training_data(config, DistInfo(), cpu())


def original_config(out: Path, *, data: str | Path, labels, encoding, **changes) -> TrainConfig:
    values = dict(data=str(data), labels=str(labels), label_encoding=str(encoding), out=str(out), epochs=2,
                  batch_size=4, lr=3e-4, device="cpu", dali_threads=1, seed=3)
    return TrainConfig(**{**values, **changes})


URL = f"s3://{BUCKET}/original"


@pytest.fixture(scope="module")
def trained(store, tmp_path_factory):
    """Two epochs on the original layout, once from the bucket and once from the local copy."""
    root = tmp_path_factory.mktemp("s3-runs")
    keys_before = bucket_keys(store["client"])
    from_s3 = train(original_config(root / "s3", data=URL, labels=f"{URL}/labels.json",
                                    encoding=f"{URL}/label_encoding.json"))
    local = store["original"]
    from_disk = train(original_config(root / "local", data=local["data"], labels=local["labels"],
                                      encoding=local["label_encoding"]))
    return {"root": root, "s3": from_s3, "local": from_disk, "keys_before": keys_before}


# -- Listing ------------------------------------------------------------------------------------

def test_the_bucket_indexes_like_its_local_copy(store):
    local = store["original"]
    from_s3 = index_dataset(URL, f"{URL}/labels.json", f"{URL}/label_encoding.json")
    from_disk = index_dataset(local["data"], local["labels"], local["label_encoding"])
    for split in ("train", "val"):
        assert from_s3[split].classes == from_disk[split].classes
        assert from_s3[split].labels == from_disk[split].labels
        # every file by its URL, in the order of the local paths
        assert from_s3[split].files == tuple(f"{URL}/{Path(f).relative_to(Path(local['data']).absolute()).as_posix()}"
                                             for f in from_disk[split].files)
    folders = index_dataset(f"s3://{BUCKET}/folders")
    assert folders["train"].classes == ("ant", "bee")
    assert folders["train"].files[0] == f"s3://{BUCKET}/folders/train/ant/000.jpg"


def test_imagenet_in_a_bucket_indexes_like_its_local_copy(store, tmp_path):
    """The download's own tree, ILSVRC/Data/CLS-LOC, with LOC_val_solution.csv and
    LOC_synset_mapping.txt beside it: the solution CSV labels val, the mapping names the classes."""
    imagenet = make_imagenet(tmp_path / "imagenet", tree=("ILSVRC", "Data", "CLS-LOC"))
    upload(store["client"], imagenet["root"], "imagenet")
    from_s3 = index_dataset(f"s3://{BUCKET}/imagenet")
    from_disk = index_dataset(imagenet["root"])
    for split in ("train", "val"):
        assert (from_s3[split].labels, from_s3[split].classes, from_s3[split].class_names) == \
            (from_disk[split].labels, from_disk[split].classes, from_disk[split].class_names)
        assert [f.rsplit("/", 1)[1] for f in from_s3[split].files] == [Path(f).name for f in from_disk[split].files]
    assert from_s3["val"].files[0].startswith(f"s3://{BUCKET}/imagenet/ILSVRC/Data/CLS-LOC/val/")


def test_folders_are_built_from_one_paginated_listing(store, monkeypatch):
    """Keys past the first page (a page of 3 here, 1000 on S3) are in the tree too."""
    calls = []
    real_client = s3.client

    def counting_client():
        made = real_client()
        real_paginator = made.get_paginator

        def paginator(name):
            calls.append(name)
            pages = real_paginator(name)
            real_paginate = pages.paginate
            pages.paginate = lambda **kw: real_paginate(**kw, PaginationConfig={"PageSize": 3})
            return pages

        monkeypatch.setattr(made, "get_paginator", paginator)
        return made

    monkeypatch.setattr(s3, "client", counting_client)
    tree = S3Bucket(f"s3://{BUCKET}/folders/")
    assert calls == ["list_objects_v2"]
    local = LocalFolder(store["folders"])
    for folder in ("", "train", "val", "train/ant", "train/bee", "val/bee"):
        assert tree.entries(folder) == local.entries(folder)
    assert tree.is_dir("train/ant") and not tree.is_dir("train/ant/000.jpg") and tree.is_file("val/bee/001.jpg")
    assert tree.name("val/bee/001.jpg") == tree.location("val/bee/001.jpg") == f"s3://{BUCKET}/folders/val/bee/001.jpg"


def test_a_bucket_lists_and_reads_its_images_like_its_local_copy(store):
    """The seam (sources.S3Bucket): the same image files, the same bytes, the listing's ETag and
    size as each file's identity."""
    bucket, local = S3Bucket(f"s3://{BUCKET}/folders"), LocalFolder(store["folders"])
    listed = dict(bucket.image_files())
    assert sorted(listed) == sorted(local.image_paths()) and len(listed) > 4
    for rel, identity in listed.items():
        head = store["client"].head_object(Bucket=BUCKET, Key=f"folders/{rel}")
        assert identity == f"{head['ETag']}\0{head['ContentLength']}"
        assert bucket.read_file(rel) == local.read_file(rel)


def test_a_prefix_takes_only_its_own_folder(store):
    """s3://data/folder must not take in s3://data/folders/...: the prefix is a folder."""
    with pytest.raises(DataError, match=r"s3://data/folder holds no objects:.*prefixes in s3://data/: "
                                        r"(\w+/, )*folders/, (\w+/, )*original/"):
        S3Bucket(f"s3://{BUCKET}/folder")


# -- Errors: one line each, before any work ------------------------------------------------------

def cli_error(args, env) -> str:
    """The one line a real `alexnet-dali` process prints before it exits with status 2."""
    result = run_cli(*args, env=env, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def main_error(args, capsys) -> str:
    """The same in this process (cheaper: no second start of torch and DALI)."""
    capsys.readouterr()
    assert cli.main([str(a) for a in args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_a_wrong_bucket_a_missing_prefix_and_a_bad_endpoint_each_give_one_clear_line(store, tmp_path, monkeypatch,
                                                                                      capsys):
    line = cli_error(["check", "s3://no-such-bucket/original"], aws_environment(store["endpoint"]))
    assert "no such bucket 'no-such-bucket'" in line and store["endpoint"] in line
    line = main_error(["train", f"s3://{BUCKET}/orignal", "--out", tmp_path / "run", "--device", "cpu"], capsys)
    assert "s3://data/orignal holds no objects" in line and "original/" in line
    assert not (tmp_path / "run").exists()  # nothing was started
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    line = main_error(["check", URL, "--labels", f"{URL}/labels.json"], capsys)
    assert f"cannot reach the S3 endpoint {dead}" in line and "could not connect" in line and "AWS_ENDPOINT_URL" in line


def test_no_credentials_and_denied_access_are_named(store, monkeypatch, capsys):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    line = main_error(["check", URL], capsys)
    assert "no AWS credentials to read s3://data/original" in line and "AWS_ACCESS_KEY_ID" in line
    port = free_port()
    guarded = start_moto(port, INITIAL_NO_AUTH_ACTION_COUNT="0")  # a server that checks every key
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "nothing")
    try:
        line = main_error(["check", URL], capsys)
    finally:
        stop(guarded)
    assert "access denied to s3://data/original" in line and "InvalidAccessKeyId" in line


def test_without_boto3_one_line_says_what_to_install(store, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "boto3", None)  # what `import boto3` finds where it is not installed
    s3._client.cache_clear()
    try:
        line = main_error(["check", URL], capsys)
    finally:
        s3._client.cache_clear()
    assert "needs boto3" in line and "pip install 'alexnet-dali[s3]'" in line


def test_a_missing_label_file_in_the_bucket_is_named(store):
    with pytest.raises(DataError, match=r"labels file s3://data/original/nolabels.json does not exist"):
        index_splits(URL, f"{URL}/nolabels.json")


def test_s3_urls_pass_the_http_cache_untouched(tmp_path):
    given = (URL, f"{URL}/labels.json", f"{URL}/label_encoding.json")
    assert local_copy(*given, cache_dir=tmp_path / "cache", splits=("train", "val")) == given
    assert not (tmp_path / "cache").exists()


# -- Check and scan -------------------------------------------------------------------------------

def test_check_names_a_truncated_object_by_its_url(store):
    result = run_cli("check", f"s3://{BUCKET}/broken", "--json", env=aws_environment(store["endpoint"]), timeout=300)
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["images"] == {"train": 8, "val": 4}
    assert [(p["path"], p["reason"].split(":")[0]) for p in report["problems"]] == \
        [(f"s3://{BUCKET}/broken/train/bee/001.jpg", "truncated JPEG")]


def test_train_refuses_a_truncated_object_by_its_url_and_caches_beside_the_run(store, tmp_path):
    config = TrainConfig(data=f"s3://{BUCKET}/broken", out=str(tmp_path / "run"), batch_size=4, device="cpu",
                         dali_threads=1)
    with pytest.raises(DataError, match=r"s3://data/broken/train/bee/001\.jpg: truncated JPEG"):
        load_on_cpu(config)
    assert (tmp_path / "run" / "cache" / CACHE_NAME).is_file()  # the verdicts, kept on this machine


def test_the_scan_cache_follows_each_objects_etag(store, tmp_path):
    """A scanned object is not decoded again, unless it changed (new ETag and size)."""
    client, cache_path = store["client"], tmp_path / CACHE_NAME
    url = f"s3://{BUCKET}/rescan/a.jpg"
    client.put_object(Bucket=BUCKET, Key="rescan/a.jpg", Body=store["good_bee"][: len(store["good_bee"]) // 2])
    S3Bucket(f"s3://{BUCKET}/rescan")  # a run lists the bucket first
    found = scan_images([url], cpu(), cache_path=cache_path)
    assert [p.reason.split(":")[0] for p in found] == ["truncated JPEG"]
    assert ScanCache(cache_path).split([url]) == ({url: found[0].reason}, [])  # known: nothing to decode
    client.put_object(Bucket=BUCKET, Key="rescan/a.jpg", Body=store["good_bee"])  # repaired in place
    S3Bucket(f"s3://{BUCKET}/rescan")  # the next run lists it again
    assert ScanCache(cache_path).split([url]) == ({}, [url])
    assert scan_images([url], cpu(), cache_path=cache_path) == []


def test_a_key_that_dalis_reader_cannot_open_is_named_before_training(store, tmp_path):
    """DALI 2.4 parses '?' and '#' in an s3:// URL as a query and a fragment: the pipeline would fail."""
    store["client"].put_object(Bucket=BUCKET, Key="odd/train/a/h#1.jpg", Body=store["good_bee"])
    url = f"{S3Bucket(f's3://{BUCKET}/odd').location('train/a/h#1.jpg')}"
    assert url == f"s3://{BUCKET}/odd/train/a/h#1.jpg"
    [problem] = scan_images([url], cpu(), cache_path=tmp_path / CACHE_NAME)
    assert problem.path == url and "cannot open a key with '?' or '#'" in problem.reason


def test_caches_for_bucket_data_stay_on_this_machine(tmp_path):
    config = TrainConfig(data=URL, out=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"))
    dirs = cache_dirs(config, URL)
    assert [d.parent for d in dirs] == [tmp_path / "cache", tmp_path / "run"]
    assert cache_dirs(config.replace(cache_dir=None), URL) == [tmp_path / "run" / "cache"]


def test_the_run_directory_may_not_be_in_a_bucket(tmp_path):
    for option, changes in (("--out", {"out": f"s3://{BUCKET}/runs"}), ("--cache-dir", {"cache_dir": f"s3://{BUCKET}/c"})):
        config = TrainConfig(**{"data": URL, "out": str(tmp_path / "run"), **changes})
        with pytest.raises(ConfigError, match=f"{option} s3://data/.* is in a bucket: .*local or shared file system"):
            load_on_cpu(config)
    assert not Path("s3:").exists()


# -- Training and evaluation from the bucket --------------------------------------------------------

def test_two_epochs_from_the_bucket_equal_two_epochs_from_a_local_copy(store, trained):
    """Same bytes, same file order, same seed: the same training, step for step."""
    history_s3, history_local = trained["s3"].history, trained["local"].history
    assert len(history_s3["loss"]) == 2
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert history_s3[key] == pytest.approx(history_local[key], rel=1e-5, abs=1e-6), key
    run = trained["root"] / "s3"
    assert (run / "last.pt").is_file() and json.loads((run / "history.json").read_text())["loss"]
    assert sorted(p.name for p in (run / "cache").iterdir() if p.suffix == ".json")[-1] == CACHE_NAME
    assert any(p.name.startswith("pca-") for p in (run / "cache").iterdir())
    assert bucket_keys(store["client"]) == trained["keys_before"]  # nothing written into the bucket


def test_the_python_api_takes_a_bucket(trained, tmp_path):
    from alexnet_dali import AlexNet

    model = AlexNet(URL, f"{URL}/labels.json", f"{URL}/label_encoding.json", batch_size=4, device="cpu",
                    out_dir=tmp_path / "run", dali_threads=1, verbose=False)
    assert model.classes == ("cat", "dog") and model.data.train.files[0] == f"{URL}/train/train_000.jpg"
    assert model.pca == trained["local"].bundle.pca  # the RGB statistics of the same pixels, read through DALI from S3


def test_ten_crop_evaluation_from_the_bucket_equals_a_local_copy(store, trained, capsys):
    model = trained["root"] / "s3" / "last.pt"
    local = store["original"]
    results = []
    for data, labels, encoding in ((URL, f"{URL}/labels.json", f"{URL}/label_encoding.json"),
                                   (local["data"], local["labels"], local["label_encoding"])):
        assert cli.main(["evaluate", str(model), str(data), "--labels", str(labels), "--label-encoding", str(encoding),
                         "--ten-crop", "--device", "cpu", "--batch-size", "4", "--json"]) == 0
        results.append(json.loads(capsys.readouterr().out))
    assert results[0]["images"] == 4 and results[0]["ten_crop"]
    rates = [{key: value for key, value in result.items() if isinstance(value, float)} for result in results]
    assert rates[0] == pytest.approx(rates[1], rel=1e-6) and set(rates[0]) >= {"loss", "top1", "top5"}
    assert {k: v for k, v in results[0].items() if k not in rates[0]} == {k: v for k, v in results[1].items()
                                                                           if k not in rates[1]}


def test_predict_reads_images_straight_from_the_bucket(store, trained, capsys):
    model = trained["root"] / "s3" / "last.pt"
    local = Path(store["original"]["data"]) / "val"
    names = sorted(p.name for p in local.iterdir())[:3]
    rows = []
    for images in ([f"{URL}/val/{name}" for name in names], [str(local / name) for name in names]):
        assert cli.main(["predict", str(model), *images, "--device", "cpu", "--json"]) == 0
        rows.append(json.loads(capsys.readouterr().out))
    assert [row["image"] for row in rows[0]] == [f"{URL}/val/{name}" for name in names]
    for remote, copy in zip(*rows):
        assert [entry["label"] for entry in remote["top"]] == [entry["label"] for entry in copy["top"]]
        assert [entry["probability"] for entry in remote["top"]] == pytest.approx(
            [entry["probability"] for entry in copy["top"]], rel=1e-6)
    assert cli.main(["predict", str(model), f"{URL}/val/nothing.jpg", "--device", "cpu"]) == 2
    assert "nothing.jpg: no such file" in capsys.readouterr().err


def test_predict_expands_a_prefix_as_it_does_a_local_folder(store, tmp_path, capsys):
    """`predict MODEL s3://bucket/prefix/` predicts the images directly under the prefix, sorted,
    as for a local folder; a prefix without images, or without anything, is named."""
    import torch
    from PIL import Image

    from alexnet_dali.checkpoint import save_checkpoint
    from alexnet_dali.model import AlexNetModule
    from alexnet_dali.pca import PCA

    torch.manual_seed(0)
    pca = PCA(mean=(0.5, 0.4, 0.3), eigval=(0.1, 0.01, 0.001), eigvec=((1, 0, 0), (0, 1, 0), (0, 0, 1)))
    model = str(save_checkpoint({"model": AlexNetModule(2).state_dict(), "classes": ["ant", "bee"],
                                 "pca": pca.to_dict(), "config": {"groups": 1, "dropout": 0.5}}, tmp_path / "m.pt"))
    local = Path(store["folders"]) / "val" / "ant"
    prefix = f"s3://{BUCKET}/folders/val/ant"
    rows = []
    for images in ([prefix + "/"], [prefix], [str(local)]):
        assert cli.main(["predict", model, *images, "--device", "cpu", "--json"]) == 0
        rows.append(json.loads(capsys.readouterr().out))
    names = sorted(p.name for p in local.iterdir())
    assert len(names) == 2
    assert [row["image"] for row in rows[0]] == [row["image"] for row in rows[1]] == [f"{prefix}/{n}" for n in names]
    assert [row["image"] for row in rows[2]] == [str(local / n) for n in names]
    for remote, copy in zip(rows[0], rows[2]):
        assert [e["probability"] for e in remote["top"]] == pytest.approx([e["probability"] for e in copy["top"]])

    assert cli.main(["predict", model, f"s3://{BUCKET}/folders/val/", "--device", "cpu"]) == 2  # folders only
    assert f"s3://{BUCKET}/folders/val/ holds no image files" in capsys.readouterr().err
    assert cli.main(["predict", model, f"s3://{BUCKET}/folders/vall/", "--device", "cpu"]) == 2
    assert "folders/vall/ holds no objects" in capsys.readouterr().err

    gif = tmp_path / "moving.gif"
    Image.new("RGB", (32, 24), (200, 30, 60)).save(gif)
    store["client"].put_object(Bucket=BUCKET, Key="loose/moving.gif", Body=gif.read_bytes())
    try:
        assert cli.main(["predict", model, f"s3://{BUCKET}/loose/moving.gif", "--device", "cpu"]) == 2
        assert f"s3://{BUCKET}/loose/moving.gif: unsupported image format GIF" in capsys.readouterr().err
    finally:
        store["client"].delete_object(Bucket=BUCKET, Key="loose/moving.gif")  # other tests compare the keys


def test_two_torchrun_processes_train_class_folders_from_the_bucket(store, tmp_path):
    """`torchrun ... -m alexnet_dali train s3://...`: each rank lists the bucket and reads its shard."""
    out = tmp_path / "run"
    result = torchrun("-m", "alexnet_dali", "train", f"s3://{BUCKET}/folders", "--epochs", "2", "--batch-size", "4",
                      "--lr", "3e-4", "--device", "cpu", "--dali-threads", "1", "--out", out,
                      env=aws_environment(store["endpoint"]))
    assert result.returncode == 0, result.stderr[-4000:]
    history = json.loads((out / "history.json").read_text())
    assert len(history["loss"]) == 2 and all(loss == loss for loss in history["loss"])
    assert load_state(out / "last.pt").bundle.classes == ("ant", "bee")
    assert (out / "cache" / CACHE_NAME).is_file()


def test_objects_deleted_mid_run_are_named_by_url_and_resume_goes_on(store, tmp_path):
    """The training objects are deleted a step into epoch 1 (the process paused meanwhile). DALI
    names no object (`encountered: : `); the run lists the bucket, names the objects that are gone,
    saves its progress at the last good step and exits 2. Re-uploaded, --resume finishes the run."""
    import re
    import signal

    from conftest import wait_for_progress
    from test_changes import error_line

    local = make_original_layout(tmp_path / "data", per_split={"train": 16, "val": 4})
    upload(store["client"], local["data"], "changing")
    url, out = f"s3://{BUCKET}/changing", tmp_path / "run"
    args = ["train", url, "--labels", f"{url}/labels.json", "--label-encoding", f"{url}/label_encoding.json",
            "--out", out, "--epochs", "2", "--batch-size", "2", "--lr", "3e-5", "--device", "cpu",
            "--dali-threads", "1", "--prefetch", "1"]
    process = subprocess.Popen([sys.executable, "-m", "alexnet_dali", *map(str, args)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, **aws_environment(store["endpoint"])})
    try:
        wait_for_progress(process, "| 1/8")
        process.send_signal(signal.SIGSTOP)
        for key in [k for k in bucket_keys(store["client"]) if k.startswith("changing/train/")]:
            store["client"].delete_object(Bucket=BUCKET, Key=key)
        process.send_signal(signal.SIGCONT)
        _, stderr = process.communicate(timeout=300)
    finally:
        process.kill()
    assert process.returncode == 2, stderr[-3000:]
    line = error_line(stderr)
    found = re.fullmatch(rf"error: training stopped in epoch 1 at step (\d)/8: {url}/train/train_000\.jpg: missing: "
                         rf"deleted or moved after the run's scan; {url}/train/train_001\.jpg: .*; and 13 more file\(s\); "
                         rf"progress up to that step is saved in {out}/last\.pt: .* --resume.*", line)
    assert found, line
    step = int(found[1])
    assert 1 <= step <= 7 and torch_load_step(out / "last.pt") == (0, step)
    upload(store["client"], local["data"] / "train", "changing/train")
    resumed = run_cli(*args, "--resume", env=aws_environment(store["endpoint"]), timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at epoch 1, step {step}" in resumed.stdout
    assert len(json.loads((out / "history.json").read_text())["loss"]) == 2


def torch_load_step(path) -> tuple[int, int]:
    import torch

    state = torch.load(path, weights_only=True)
    return state["epoch"], state["ranks"][0]["step"]
