"""The seam for data sources (sources.py): each kind of location answers the same questions. The
bucket and the web site are checked against their local copies in test_s3.py and test_remote.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from alexnet_dali.config import ConfigError, TrainConfig
from alexnet_dali.dataset import cache_dirs, load_training_data
from alexnet_dali.sources import (HttpSite, LocalFolder, S3Bucket, cache_folder, cache_folder_name, default_cache_dir,
                                  kind_of, open_source, read_location)
from conftest import make_class_folders, write_image


def test_a_local_folder_lists_every_image_with_its_size_and_mtime(tmp_path):
    root = make_class_folders(tmp_path / "data")
    (root / "train" / "ant" / ".hidden.jpg").write_bytes(b"x")  # hidden: never listed
    (root / "train" / "ant" / "notes.md").write_text("not an image")
    write_image(root / "train" / "bee" / "deeper" / "nested.png", 40, 30)
    expected = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                      if p.is_file() and p.suffix in (".jpg", ".png") and not p.name.startswith("."))
    source = open_source(root)
    listed = dict(source.image_files())
    assert sorted(listed) == expected and len(expected) > 4  # sub-folders included, nothing else
    for rel, identity in listed.items():
        stat = os.stat(root / rel)
        assert identity == f"{stat.st_size}\0{stat.st_mtime_ns}"
        assert source.read_file(rel) == (root / rel).read_bytes() == read_location(source.location(rel))
        assert source.location(rel) == os.path.abspath(root / rel)
    assert [rel for rel, _ in source.image_files("train/bee")] == [r for r in expected if r.startswith("train/bee/")]


def test_a_files_identity_follows_its_content(tmp_path):
    path = write_image(tmp_path / "a.jpg", 32, 32)
    source = LocalFolder(tmp_path)
    before = source.identity("a.jpg")
    write_image(path, 48, 32, seed=1)
    os.utime(path, ns=(1, 1))  # another size and mtime
    assert source.identity("a.jpg") not in (before, None)
    assert source.identity("gone.jpg") is None


def test_each_location_opens_its_own_kind():
    assert kind_of("s3://bucket/prefix") is S3Bucket
    assert kind_of("https://example.org/data/") is kind_of("http://example.org/d") is HttpSite
    assert kind_of("data") is kind_of(Path("/data")) is kind_of("./s3:/x") is LocalFolder
    site = open_source("http://example.org/data")  # opening a site asks the server nothing
    assert isinstance(site, HttpSite) and site.name("train/a b.jpg") == "http://example.org/data/train/a%20b.jpg"
    assert open_source(site) is site


def test_the_cache_folder_is_decided_in_one_place(tmp_path, monkeypatch):
    """Beside local data; in --cache-dir for a bucket (never in it), else nowhere shared; in the
    local mirror for a web site. Train's list of candidates comes from the same place."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_folder(tmp_path / "data") == LocalFolder(tmp_path / "data").cache_folder() == tmp_path / "data" / ".alexnet-dali"
    assert cache_folder("s3://b/p") is None
    assert cache_folder("s3://b/p", tmp_path / "c") == tmp_path / "c" / cache_folder_name("s3://b/p")
    url = "http://example.org/data/"
    assert cache_folder(url) == default_cache_dir() / cache_folder_name(url) / ".alexnet-dali"
    assert default_cache_dir() == tmp_path / "xdg" / "alexnet-dali"
    config = TrainConfig(data=str(tmp_path / "data"), out=str(tmp_path / "run"))
    assert cache_dirs(config, config.data) == [tmp_path / "data" / ".alexnet-dali", tmp_path / "run" / "cache"]


def test_a_run_directory_on_a_web_server_is_refused(tmp_path):
    config = TrainConfig(data=str(tmp_path / "data"), out="http://example.org/runs")
    with pytest.raises(ConfigError, match="--out http://example.org/runs is on a web server: .*file system path"):
        load_training_data(config, None, None)
