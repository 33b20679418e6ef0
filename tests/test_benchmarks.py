"""Smoke runs of the benchmark scripts at a tiny size: they run, print a table and write the
promised JSON. No timing is asserted here (figures come from full runs: benchmarks/RESULTS.md)."""

import json
import os
import subprocess
import sys
from pathlib import Path


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_benchmark(script, tmp_path, *extra):
    out = tmp_path / f"{script}.json"
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}  # the generated images go here
    result = subprocess.run([sys.executable, str(BENCHMARKS / f"{script}.py"), "--device", "cpu", "--trials", "1",
                             "--json", str(out), *map(str, extra)], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text()), result.stdout


def check_rows(report, names):
    assert {"rows", "machine", "settings"} <= set(report)
    assert {"cpu", "cpu_cores", "torch", "dali"} <= set(report["machine"])
    assert [row["name"] for row in report["rows"]] == names
    for row in report["rows"]:
        assert row["device"] == "cpu" and row["images_per_sec"] > 0 and len(row["trials"]) == 1


def test_pipeline_benchmark_checks_the_hw_decoder_sweep_before_running(tmp_path):
    result = subprocess.run([sys.executable, str(BENCHMARKS / "pipeline.py"), "--hw-decoder-load", "0,0.5,1.5"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "every hw_decoder_load must be in [0, 1], got 0,0.5,1.5" in result.stderr


def test_pipeline_benchmark(tmp_path):
    report, stdout = run_benchmark("pipeline", tmp_path, "--images", 16, "--batch-size", 8)
    check_rows(report, ["dali-cpu", "pil-dataloader", "dali-cpu-decode", "pil-dataloader-decode",
                        "dali-cpu-no-lighting", "dali-cpu-pca-stats"])
    assert "dali-cpu / pil-dataloader" in stdout
    generated = list((tmp_path / "cache" / "alexnet-dali" / "benchmarks").glob("*/*.jpg"))
    assert len(generated) == 16


def test_training_benchmark(tmp_path):
    report, stdout = run_benchmark("train", tmp_path, "--images", 8, "--batch-size", 4)
    check_rows(report, ["model-only fp32", "end-to-end fp32"])
    assert 0 < report["rows"][1]["fraction_of_model_only"]
    assert "of model-only" in stdout


def test_prediction_benchmark(tmp_path):
    report, _ = run_benchmark("predict", tmp_path, "--images", 4, "--batch-size", 2)
    check_rows(report, ["ten-crop fp32"])


def test_benchmarks_read_a_given_folder(tmp_path):
    from conftest import write_image

    for i in range(6):
        write_image(tmp_path / "photos" / "sub" / f"{i}.jpg", 320, 240, seed=i)
    report, _ = run_benchmark("predict", tmp_path, "--data", tmp_path / "photos", "--images", 6, "--batch-size", 3)
    assert report["settings"]["data"] == str(tmp_path / "photos")
