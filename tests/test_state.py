"""The typed model state: one loader for AlexNet.load, Predictor and resume; files of the format
before these types still load; `fit` after `load` trains the loaded weights, in memory."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from alexnet_dali.checkpoint import CheckpointError, FORMAT
from alexnet_dali.metrics import HISTORY_KEYS
from alexnet_dali.model import AlexNetModule
from alexnet_dali.pca import PCA
from alexnet_dali.predict import Predictor
from alexnet_dali.state import ModelBundle, TrainState, load_state
from conftest import cpu_placement, graphs_captured, run_cli

PCA_DICT = PCA((0.5, 0.4, 0.3), (0.1, 0.01, 0.001), ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)), 9).to_dict()


def format_1_checkpoint(net: AlexNetModule, groups: int = 1) -> dict:
    """A last.pt as alexnet-dali 0.1.0 wrote it (train.py's dict, before the typed state)."""
    sgd = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    return {"format": FORMAT, "version": 1, "model": net.state_dict(), "optimizer": sgd.state_dict(),
            "scheduler": {"best": 0.5}, "epoch": 3, "history": {k: [0.1] * 3 for k in HISTORY_KEYS},
            "ranks": [], "classes": ["cat", "dog"], "class_names": ["", ""], "pca": PCA_DICT,
            "config": {"groups": groups, "dropout": 0.3, "batch_size": 64, "precision": "bf16"},
            "global_batch": 64, "world_size": 1, "package_version": "0.1.0", "commit": None}


def test_format_1_checkpoints_and_saved_models_load(tmp_path):
    torch.manual_seed(0)
    net = AlexNetModule(2, groups=2, dropout=0.3)
    torch.save(format_1_checkpoint(net, groups=2), tmp_path / "last.pt")
    saved_by_0_1 = {"format": FORMAT, "version": 1, "model": net.state_dict(), "classes": ["cat", "dog"],
                    "class_names": ["", ""], "pca": PCA_DICT, "config": {"groups": 2, "dropout": 0.3},
                    "history": {"loss": [1.0]}, "epoch": 1}  # AlexNet.save of 0.1.0: no optimiser
    torch.save(saved_by_0_1, tmp_path / "model.pt")
    checkpoint, model = load_state(tmp_path / "last.pt"), load_state(tmp_path / "model.pt")
    assert checkpoint.epoch == 3 and checkpoint.global_batch == 64 and checkpoint.resumable
    assert checkpoint.bundle.precision == "bf16" and checkpoint.bundle.classes == ("cat", "dog")
    assert (checkpoint.bundle.net.groups, checkpoint.bundle.net.dropout) == (2, 0.3)
    assert model.epoch == 1 and not model.resumable and model.history["loss"] == [1.0]
    assert model.bundle.precision == "fp32"  # no precision recorded: fp32, as 0.1.0 trained
    for state in (checkpoint, model):
        for key, value in net.state_dict().items():
            assert torch.equal(state.bundle.net.state_dict()[key], value), key


def test_a_checkpoint_stores_the_network_arch_and_an_arch_from_before_num_classes_loads():
    """The file's "arch" is the network's own dict; a 0.2-era arch (groups and dropout only) loads too."""
    bundle = ModelBundle(AlexNetModule(2, groups=2, dropout=0.3), PCA.from_dict(PCA_DICT), ("cat", "dog"))
    values = TrainState(bundle, {}).to_dict()
    assert values["arch"] == {"num_classes": 2, "groups": 2, "dropout": 0.3}
    values["arch"] = {"groups": 2, "dropout": 0.3}
    assert TrainState.from_dict(values).bundle.net.arch == {"num_classes": 2, "groups": 2, "dropout": 0.3}


def test_a_state_round_trips_through_its_dict(tmp_path):
    torch.manual_seed(1)
    bundle = ModelBundle(AlexNetModule(3, dropout=0.2), PCA.from_dict(PCA_DICT), ("a", "b", "c"), ("x", "", "z"),
                         "bf16")
    state = TrainState(bundle, {"lr": 0.01}, epoch=2, history={k: [1.0, 2.0] for k in HISTORY_KEYS},
                       optimizer={"state": {}, "param_groups": []}, global_batch=32, ranks=[{"step": 0}])
    again = TrainState.from_dict(state.to_dict())
    assert (again.epoch, again.global_batch, again.ranks, again.config) == (2, 32, [{"step": 0}], {"lr": 0.01})
    assert again.bundle.classes == ("a", "b", "c") and again.bundle.class_names == ("x", "", "z")
    assert again.bundle.precision == "bf16" and again.bundle.label(0) == "a x" and again.bundle.label(1) == "b"
    assert again.history == state.history
    slim = TrainState.from_dict(state.model_only().to_dict())
    assert slim.optimizer is None and slim.ranks == [] and not slim.resumable


def test_the_one_loader_names_incomplete_files(tmp_path):
    torch.manual_seed(0)
    values = format_1_checkpoint(AlexNetModule(2))
    del values["classes"]
    torch.save(values, tmp_path / "no-classes.pt")
    with pytest.raises(CheckpointError, match=r"missing keys \(classes\)"):
        load_state(tmp_path / "no-classes.pt")
    values = format_1_checkpoint(AlexNetModule(3))  # 3 outputs, 2 classes
    torch.save(values, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match="does not fit together"):
        load_state(tmp_path / "mismatch.pt")


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fit_after_load_trains_the_loaded_weights_into_a_new_run_directory(tmp_path, original_layout,
                                                                         monkeypatch):
    """AlexNet.load(p).fit(1) continues the loaded weights as they are in memory (edits to
    model.net included), never the original run directory's last.pt, and writes a run of its own."""
    from alexnet_dali import AlexNet

    first = tmp_path / "first"
    model = AlexNet(original_layout["data"], original_layout["labels"], original_layout["label_encoding"],
                    batch_size=4, lr=1e-3, device="cpu", out_dir=first, verbose=False)
    model.fit(1)
    saved = model.save(tmp_path / "epoch1.pt")
    model.fit(1)  # the original run goes on to epoch 2
    original_last = file_digest(first / "last.pt")
    epoch2 = {k: v.clone() for k, v in model.net.state_dict().items()}

    monkeypatch.chdir(tmp_path)  # the default run directory is runs/alexnet-<time> here
    loaded = AlexNet.load(saved, device="cpu", verbose=False)
    with torch.no_grad():
        loaded.net.classifier.fc8.bias += 5.0  # an in-memory change that fit must keep
    edited = {k: v.clone() for k, v in loaded.net.state_dict().items()}
    history = loaded.fit(1)
    assert {k: len(v) for k, v in history.items()} == {k: 2 for k in HISTORY_KEYS}  # the loaded history, continued
    trained = loaded.net.state_dict()
    assert any(not torch.equal(trained[k], edited[k]) for k in trained)  # it trained ...
    assert (trained["classifier.fc8.bias"] - epoch2["classifier.fc8.bias"]).mean() > 4  # ... the loaded weights
    new_runs = list((tmp_path / "runs").iterdir())
    assert len(new_runs) == 1 and Path(loaded.config.out).resolve() == new_runs[0].resolve()
    on_disk = torch.load(new_runs[0] / "last.pt", weights_only=True)
    assert on_disk["epoch"] == 2
    assert all(torch.equal(on_disk["model"][k], trained[k].cpu()) for k in trained)
    assert file_digest(first / "last.pt") == original_last  # the original run was not touched



def test_models_made_in_the_same_second_get_their_own_run_directories(tmp_path, monkeypatch):
    """Two AlexNet objects without out_dir used to share runs/alexnet-<second>, and the second's
    fit was refused by the first's lock."""
    from alexnet_dali import api

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(api.time, "strftime", lambda fmt: "alexnet-20260101-120000")  # one second for all
    first, second = api.default_run_dir(), api.default_run_dir()
    assert (first, second) == ("runs/alexnet-20260101-120000", "runs/alexnet-20260101-120000-2")
    (tmp_path / "runs" / "alexnet-20260101-120000-3").mkdir(parents=True)  # another process's run
    assert api.default_run_dir() == "runs/alexnet-20260101-120000-4"


def test_fit_without_a_data_set_speaks_python(tmp_path):
    from alexnet_dali import AlexNet

    torch.manual_seed(0)
    values = format_1_checkpoint(AlexNetModule(2))
    values["config"] = {"groups": 1, "dropout": 0.5}  # no data recorded
    torch.save(values, tmp_path / "model.pt")
    model = AlexNet.load(tmp_path / "model.pt", device="cpu", out_dir=tmp_path / "run", verbose=False)
    with pytest.raises(RuntimeError, match="no data set to train on") as info:
        model.fit(1)
    assert "--" not in str(info.value)  # no command-line advice from the Python API


@pytest.fixture(scope="module")
def bf16_model(tmp_path_factory):
    """A saved model that records bf16 as its training precision, and a few images to predict."""
    from conftest import make_class_folders

    root = tmp_path_factory.mktemp("precision")
    data = make_class_folders(root / "data", per_split={"train": 1, "val": 2}, classes=("ant", "bee"))
    torch.manual_seed(3)
    net = AlexNetModule(2)
    with torch.no_grad():  # a confident but unsaturated output, so bf16's rounding shows in the probabilities
        net.classifier.fc8.weight *= 20
    state = TrainState(ModelBundle(net, PCA.from_dict(PCA_DICT), ("ant", "bee"), precision="bf16"), {})
    path = root / "model.pt"
    torch.save({"format": FORMAT, "version": 2, **state.model_only().to_dict()}, path)
    return path, data


def printed_json(capsys, *args) -> dict | list:
    """What `alexnet-dali ARGS --json --device cpu` prints, through its main() in this process."""
    from alexnet_dali.cli import main

    assert main([*map(str, args), "--json", "--device", "cpu"]) == 0
    return json.loads(capsys.readouterr().out)


def test_predict_and_evaluate_use_the_trained_precision_unless_told(bf16_model, capsys):
    """The first through the real command, the others through its main()."""
    path, data = bf16_model
    images = sorted(str(p) for p in (data / "val" / "ant").iterdir())
    default = json.loads(run_cli("predict", path, *images, "--json", "--device", "cpu", check=True).stdout)
    fp32 = printed_json(capsys, "predict", path, *images, "--precision", "fp32")
    assert {row["precision"] for row in default} == {"bf16"} and {row["precision"] for row in fp32} == {"fp32"}
    bundle = load_state(path).bundle
    for precision, rows in (("bf16", default), ("fp32", fp32)):
        reference = Predictor(bundle, cpu_placement(), batch_size=4, precision=precision).predict_files(images)
        np.testing.assert_allclose([r["top"][0]["probability"] for r in rows], reference.max(axis=1), rtol=1e-5)
    assert default[0]["top"][0]["probability"] != fp32[0]["top"][0]["probability"]  # bf16 really ran
    evaluated = {p: printed_json(capsys, "evaluate", path, data, *(["--precision", p] if p else []))
                 for p in (None, "fp32")}
    assert evaluated[None]["precision"] == "bf16" and evaluated["fp32"]["precision"] == "fp32"
    assert evaluated[None]["loss"] != evaluated["fp32"]["loss"]
    assert evaluated[None]["loss"] == pytest.approx(evaluated["fp32"]["loss"], rel=0.05)


def test_predict_and_evaluate_with_compile_run_the_compiled_network(bf16_model, capsys, compiled_without_codegen):
    """--compile on predict and on evaluate (ten-crop) runs the views through torch.compile
    (aot_eager here, whose numbers are eager's: see the fixture) and prints what the eager
    command does; evaluate's JSON says it was compiled."""
    path, data = bf16_model
    images = sorted(str(p) for p in (data / "val" / "ant").iterdir())
    eager = printed_json(capsys, "predict", path, *images)
    assert compiled_without_codegen == []
    compiled = printed_json(capsys, "predict", path, *images, "--compile")
    assert len(compiled_without_codegen) == 1 and graphs_captured() >= 1
    assert [r["top"][0]["label"] for r in compiled] == [r["top"][0]["label"] for r in eager]
    # bf16: the compiled network runs a padded batch, whose kernels round in the 5th digit otherwise
    np.testing.assert_allclose([r["top"][0]["probability"] for r in compiled],
                               [r["top"][0]["probability"] for r in eager], rtol=1e-3)
    # 4 images at batch 3: the last batch is padded to the first one's shape, so one graph serves both
    before = graphs_captured()
    eager, compiled = (printed_json(capsys, "evaluate", path, data, "--ten-crop", "--batch-size", 3, *extra)
                       for extra in ([], ["--compile"]))
    assert len(compiled_without_codegen) == 2 and graphs_captured() == before + 1
    assert (eager["compiled"], compiled["compiled"]) == (False, True)
    assert compiled["loss"] == pytest.approx(eager["loss"], rel=1e-3)
    assert (compiled["images"], compiled["top1"]) == (eager["images"], eager["top1"])
    from alexnet_dali.cli import main

    assert main(["evaluate", str(path), str(data), "--device", "cpu", "--compile", "--batch-size", "4"]) == 0
    assert capsys.readouterr().out.startswith("val: 4 images, centre crop, bf16, compiled\n")


def test_one_visible_gpu_is_cuda_0_whatever_the_local_rank(monkeypatch):
    """A launcher that shows each rank only its own GPU (CUDA_VISIBLE_DEVICES, SLURM
    --gpus-per-task=1): local rank 3 sees one device, cuda:0."""
    from alexnet_dali.config import ConfigError
    from alexnet_dali.placement import gpu_for

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert gpu_for(3) == torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert gpu_for(1) == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match="local rank 3 has no GPU: this process sees 2"):
        gpu_for(3)


def test_evaluate_with_permuted_classes_names_the_classes_that_moved(bf16_model, tmp_path, capsys):
    from alexnet_dali.cli import main

    path, data = bf16_model
    permuted = tmp_path / "permuted.json"
    permuted.write_text(json.dumps({"bee": 0, "ant": 1}))
    assert main(["evaluate", str(path), str(data), "--label-encoding", str(permuted), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'ant' 0 -> 1" in err and "'bee' 1 -> 0" in err, err
    assert "pass the label encoding the model was trained with" in err
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"ant": 0, "bee": 1, "cow": 2}))
    assert main(["evaluate", str(path), str(data), "--label-encoding", str(other), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "['ant', 'bee'] -> ['ant', 'bee', 'cow']" in err and "label encoding the model was trained with" in err


def test_bf16_on_a_cpu_is_said_to_be_slow_once(bf16_model, capsys, monkeypatch):
    """4 images at batch 1: four bf16 batches on the CPU, one warning; none in fp32."""
    import alexnet_dali.evaluate
    from alexnet_dali.cli import main

    path, data = bf16_model
    monkeypatch.setattr(alexnet_dali.evaluate, "_said_bf16_is_slow", False)
    assert main(["evaluate", str(path), str(data), "--device", "cpu", "--batch-size", "1", "--precision", "fp32"]) == 0
    assert "slow" not in capsys.readouterr().err
    assert main(["evaluate", str(path), str(data), "--device", "cpu", "--batch-size", "1"]) == 0
    assert main(["evaluate", str(path), str(data), "--device", "cpu", "--batch-size", "1"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "bf16" in line]
    assert warnings == ["warning: bf16 on a CPU is no faster than fp32, and on some CPUs about 6x slower; use "
                        "fp32 on a CPU (bf16 pays on tensor-core GPUs)"]
