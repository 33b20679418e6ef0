"""Smoke runs of the benchmark scripts and of the acceptance suite at a tiny size: they run, print
their tables and write the promised JSON. No timing is asserted here (figures come from full runs:
benchmarks/RESULTS.md)."""

import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_script(script, tmp_path, *arguments):
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}  # the generated images go here
    return subprocess.run([sys.executable, str(BENCHMARKS / f"{script}.py"), *map(str, arguments)],
                          capture_output=True, text=True, env=env, timeout=600)


def run_benchmark(script, tmp_path, *extra):
    out = tmp_path / f"{script}.json"
    result = run_script(script, tmp_path, "--device", "cpu", "--trials", "1", "--json", out, *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text()), result.stdout


def check_rows(report, names, images, batch_size):
    assert {"rows", "machine", "settings", "notes"} <= set(report)
    assert {"cpu", "cpu_cores", "torch", "dali"} <= set(report["machine"])
    assert [row["name"] for row in report["rows"]] == names
    for row in report["rows"]:
        assert row["device"] == "cpu" and row["images_per_sec"] > 0 and len(row["trials"]) == 1
        assert (row["images"], row["batch_size"]) == (images, batch_size)


# benchmarks/predict.py on the CPU: each half alone, then the two together
TEN_CROP_CPU_ROWS = ["ten-crop pipeline-only", "ten-crop host-wait", "ten-crop model-only fp32", "ten-crop fp32"]


def generated_sets(tmp_path):
    return sorted(p.name for p in (tmp_path / "cache" / "alexnet-dali" / "benchmarks").iterdir())


def test_pipeline_benchmark_checks_its_sweeps_before_running(tmp_path):
    result = run_script("pipeline", tmp_path, "--hw-decoder-load", "0,0.5,1.5")
    assert result.returncode == 2
    assert "every hw_decoder_load must be in [0, 1], got 0,0.5,1.5" in result.stderr
    result = run_script("pipeline", tmp_path, "--threads", "4,0")
    assert result.returncode == 2
    assert "threads must be whole numbers of at least 1, got 4,0" in result.stderr


def test_pipeline_benchmark_sweeps_threads_and_keeps_every_ratio(tmp_path):
    """A --threads sweep gives one dali row (and one decode row) per value; each keeps its ratio to
    its own decode-only row, and the rows with the peers' threads keep theirs to the peers."""
    report, stdout = run_benchmark("pipeline", tmp_path, "--images", 16, "--batch-size", 8, "--threads", "1,2")
    check_rows(report, ["dali-cpu[threads=1]", "dali-cpu[threads=2]", "pil-dataloader", "dali-reference-cpu[threads=1]",
                        "dali-reference-cpu[threads=2]", "dali-cpu-decode[threads=1]", "dali-cpu-decode[threads=2]",
                        "pil-dataloader-decode", "dali-cpu-decode-region", "dali-cpu-no-lighting", "dali-cpu-pca-stats"],
               16, 8)
    threads = {row["name"]: row["threads"] for row in report["rows"]}
    assert threads["dali-reference-cpu[threads=2]"] == 2  # NVIDIA's pipeline follows the sweep: like for like
    assert threads["dali-reference-cpu[threads=1]"] == threads["dali-cpu-no-lighting"] == 1  # the first value
    ratio, share = r"[0-9.]+x", r"[0-9]+% of its decode-only rate"
    expected = [rf"dali-cpu\[threads=1\] / pil-dataloader = {ratio} \(DALI threads: 1, DataLoader workers: \d+\)",
                rf"dali-cpu\[threads=1\] / dali-reference-cpu\[threads=1\] = {ratio} \(the same files, DALI threads: 1\)",
                r"dali-cpu\[threads=1\]: lighting on / off = [0-9.]+",
                rf"dali-cpu\[threads=1\] runs at {share}",
                rf"dali-cpu\[threads=2\] / pil-dataloader = {ratio} \(DALI threads: 2, DataLoader workers: \d+\)",
                rf"dali-cpu\[threads=2\] / dali-reference-cpu\[threads=2\] = {ratio} \(the same files, DALI threads: 2\)",
                rf"dali-cpu\[threads=2\] runs at {share}",
                rf"pil-dataloader runs at {share}",
                # the first setting's decode row against the region-only decoding of the same setting
                r"dali-cpu-decode\[threads=1\]: decoding the training crop's region / the whole image = [0-9.]+"]
    assert len(report["notes"]) == len(expected)
    for pattern, note in zip(expected, report["notes"]):
        assert re.fullmatch(pattern, note), (pattern, note)
        assert note in stdout
    assert generated_sets(tmp_path) == ["imagenet-like-v2-16-0"]  # no partial set left behind
    generated = tmp_path / "cache" / "alexnet-dali" / "benchmarks" / "imagenet-like-v2-16-0"
    assert len(list(generated.glob("*.jpg"))) == 16 and (generated / "complete").exists()


def test_benchmarks_read_a_given_folder(tmp_path):
    """--data: every row reads the folder's 5 JPEGs (fewer than --images asks for), found in a
    sub-folder, and nothing is generated."""
    from conftest import write_image

    for i in range(5):
        write_image(tmp_path / "photos" / "sub" / f"{i}.jpg", 320, 240, seed=i)
    (tmp_path / "photos" / "notes.txt").write_text("not an image")
    report, _ = run_benchmark("predict", tmp_path, "--data", tmp_path / "photos", "--images", 64, "--batch-size", 3)
    check_rows(report, TEN_CROP_CPU_ROWS, 5, 3)
    assert report["settings"]["data"] == str(tmp_path / "photos")
    assert report["settings"]["data_read"] == {"images": 5, "first": "sub/0.jpg", "last": "sub/4.jpg"}
    assert not (tmp_path / "cache").exists()


def test_suite_runs_the_tests_and_every_benchmark_into_one_folder(tmp_path):
    """The acceptance command in CPU mode at a tiny size: the GPU tests' log (skipped here but
    for the one that needs no GPU), every benchmark's JSON and log, one summary table; with --profile,
    one profile of each row, naming the operators that took its time."""
    out = tmp_path / "acceptance"
    result = run_script("suite", tmp_path, "--device", "cpu", "--out", out, "--images", 4, "--batch-size", 4,
                        "--trials", 1, "--profile")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["pipeline.json", "pipeline.log", "predict.json", "predict.log",
                                                     "profiles", "summary.txt", "test_gpu.log", "train.json",
                                                     "train.log"]
    assert "1 passed" in (out / "test_gpu.log").read_text()
    reports = {name: json.loads((out / f"{name}.json").read_text()) for name in ("pipeline", "train", "predict")}
    check_rows(reports["pipeline"], ["dali-cpu", "pil-dataloader", "dali-reference-cpu", "dali-cpu-decode",
                                     "pil-dataloader-decode", "dali-cpu-decode-region", "dali-cpu-no-lighting",
                                     "dali-cpu-pca-stats"], 4, 4)
    check_rows(reports["train"], ["model-only fp32", "end-to-end fp32", "model-only fp32 default-sgd"], 4, 4)
    assert 0 < reports["train"]["rows"][1]["fraction_of_model_only"]
    fused_rate, _, default_rate = (row["images_per_sec"] for row in reports["train"]["rows"])
    assert reports["train"]["notes"][-1] == (f"cpu fp32: model-only with the fused SGD runs at "
                                             f"{fused_rate / default_rate:.2f}x PyTorch's default SGD")
    check_rows(reports["predict"], TEN_CROP_CPU_ROWS, 4, 4)
    # on 2 cores the network is far slower than decoding: the note must say so, with the rows' figures
    pipeline_rate, waited_rate, model_rate, fed_rate = (row["images_per_sec"] for row in reports["predict"]["rows"])
    assert model_rate < pipeline_rate
    serial = 1 / (1 / model_rate + 1 / pipeline_rate)
    assert reports["predict"]["notes"] == [
        f"cpu ten-crop host-wait (the host waits as long as decoding takes, the device is free): {waited_rate:.1f} "
        f"images/s; fully overlapped {pipeline_rate:.1f}, one after the other {pipeline_rate / 2:.1f}: "
        + ("they overlap" if waited_rate >= 0.75 * pipeline_rate else "they do not overlap"),
        f"cpu ten-crop fp32: {fed_rate:.1f} images/s end to end, {fed_rate / model_rate:.1%} of model-only "
        f"({model_rate:.1f}) and {fed_rate / pipeline_rate:.1%} of pipeline-only ({pipeline_rate:.1f}): "
        f"the network bounds it ({model_rate:.1f} images/s alone)",
        f"cpu ten-crop fp32: {fed_rate:.1f} images/s; fully overlapped {model_rate:.1f}, one after the other "
        f"{serial:.1f}: the halves are too unequal to tell"]
    rows = [row["name"] for report in reports.values() for row in report["rows"]]
    profiles = {p.stem: p.read_text() for p in (out / "profiles").glob("*.txt")}
    traces = {p.name.removesuffix(".trace.json.gz"): p for p in (out / "profiles").glob("*.trace.json.gz")}
    assert sorted(profiles) == sorted(traces) == sorted(name.replace(" ", "_") for name in rows)
    assert len(list((out / "profiles").iterdir())) == 2 * len(rows)
    # the network's layers, with their time, in the table and on the timeline
    for name in ("ten-crop_fp32", "ten-crop_model-only_fp32", "model-only_fp32", "end-to-end_fp32"):
        assert re.match(rf"{name}: 4 images in [0-9.]+ s under the profiler", profiles[name])
        assert re.search(r"^\s*aten::\w*convolution\w*\s+[0-9.]+%", profiles[name], re.MULTILINE), profiles[name]
        events = json.loads(gzip.decompress(traces[name].read_bytes()))["traceEvents"]
        convolutions = [e for e in events if re.fullmatch(r"aten::\w*convolution\w*", e.get("name", ""))]
        assert convolutions and all(e["ph"] == "X" and e["dur"] > 0 for e in convolutions), name
    summary = (out / "summary.txt").read_text()
    assert summary.strip() in result.stdout  # printed as written
    assert re.search(r"^GPU tests \(tests/test_gpu.py\): \d+ passed, \d+ skipped", summary, re.MULTILINE)
    lines = summary.splitlines()
    for report in reports.values():
        for row in report["rows"]:  # one line per row: benchmark, name, device, images, batch, images/s
            cells = [report["benchmark"], row["name"], "cpu", "4", "4", f"{row['images_per_sec']:.1f}"]
            assert any(re.match(r"\s+".join(map(re.escape, cells)) + r"\s", line) for line in lines), cells
        for note in report["notes"]:
            assert note in lines


def test_gpu_ratio_notes_give_what_fancy_upsampling_costs(monkeypatch):
    """The GPU rows cannot run here: the notes are checked on rows as the GPU run records them
    (the decode rows of a sweep, and the plain-upsampling row at the sweep's first setting)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from pipeline import ratio_notes

    def row(name, base, rate, threads=8, load=1.0):
        return {"name": name, "base": base, "device": "gpu", "threads": threads, "hw_decoder_load": load,
                "images_per_sec": rate}

    rows = [row("dali-gpu-decode[hw=1]", "dali-gpu-decode", 20000.0),
            row("dali-gpu-decode[hw=0.65]", "dali-gpu-decode", 9000.0, load=0.65),
            row("dali-gpu-decode-plain-upsampling", "dali-gpu-decode-plain-upsampling", 25000.0)]
    assert ratio_notes(rows) == ["dali-gpu-decode[hw=1]: fancy chroma upsampling on / off = 0.800"]


def test_the_ten_crop_note_names_the_half_that_bounds_it(monkeypatch):
    """The GPU rows cannot run here: the note is checked on figures like the H200's (network
    bound) and on the other case (pipeline bound)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from predict import limit_note

    def rate(value):
        return {"images_per_sec": value}

    assert limit_note("gpu", "bf16", rate(2191.0), rate(2900.0), rate(10000.0)) == (
        "gpu ten-crop bf16: 2191.0 images/s end to end, 75.6% of model-only (2900.0) and 21.9% of pipeline-only "
        "(10000.0): the network bounds it (2900.0 images/s alone)")
    assert limit_note("gpu", "bf16+compile", rate(4000.0), rate(9000.0), rate(4500.0)).endswith(
        ": the pipeline bounds it (4500.0 images/s alone)")


def test_the_overlap_note_tells_overlapped_from_one_after_the_other(monkeypatch):
    """On the H100's figures (network 7,111 and pipeline 10,989 images/s alone): the end-to-end
    4,086 is the two one after the other (4,317), a rate near 7,111 would be overlapped; halves
    too unequal (the CPU's network, 20 times slower than decoding) cannot tell either."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from predict import overlap_note

    model, pipeline = {"images_per_sec": 7111.0}, {"images_per_sec": 10989.0}
    assert overlap_note("gpu ten-crop bf16+compile", 4086.0, model, pipeline) == (
        "gpu ten-crop bf16+compile: 4086.0 images/s; fully overlapped 7111.0, one after the other 4317.3: "
        "they do not overlap")
    assert overlap_note("x", 6900.0, model, pipeline).endswith(": they overlap")
    assert overlap_note("x", 5.0, {"images_per_sec": 5.0}, {"images_per_sec": 100.0}).endswith(
        ": the halves are too unequal to tell")


def test_prepare_benchmark_compares_original_and_prepared_side_by_side(tmp_path):
    report, stdout = run_benchmark("prepare", tmp_path, "--images", 16, "--batch-size", 8, "--start-files", 24,
                                   "--sweep-images", 4)
    names = [row["name"] for row in report["rows"]]
    assert names == ["prepare", "dali-cpu-decode original", "dali-cpu-decode prepared", "dali-cpu original",
                     "dali-cpu prepared", "train-start original", "train-start prepared", "prepare-from-s3",
                     "dali-cpu-s3"]
    assert all(row["images_per_sec"] > 0 for row in report["rows"])
    assert [entry["quality"] for entry in report["quality_sweep"]] == [75, 80, 85, 90, 95]
    errors = [entry["crop_rms"] for entry in report["quality_sweep"]]
    assert errors == sorted(errors, reverse=True) and errors[-1] > 0  # a higher quality, a smaller error
    for pattern in (r"bytes: prepared / original = [0-9.]+", r"dali-cpu training pipeline: prepared / original = [0-9.]+",
                    r"train start: prepared / original = [0-9.]+", r"from s3: streaming every epoch runs at [0-9.]+"):
        assert re.search(pattern, stdout), pattern
