"""The training loop, the run directory it writes, the API and the CLI, on real JPEGs through the
real DALI CPU pipeline."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from alexnet_dali.config import ConfigError, TrainConfig
from alexnet_dali.metrics import HISTORY_KEYS
from alexnet_dali.model import AlexNetModule
from alexnet_dali.train import train
from conftest import cpu_placement, graphs_captured, make_original_layout, run_cli, run_main, tiny_config


def untrained_val_loss(config: TrainConfig) -> float:
    """Validation loss of the network `train` starts from (same seed, same init)."""
    from alexnet_dali.distributed import DistInfo
    from alexnet_dali.evaluate import evaluate
    from alexnet_dali.loader import evaluation_loader
    from alexnet_dali.dataset import load_training_data

    data = load_training_data(config, DistInfo(), cpu_placement())
    torch.manual_seed(config.seed)
    net = AlexNetModule(len(data.train.classes))
    loader = evaluation_loader(data.val, data.pca, cpu_placement(), DistInfo(), batch_size=config.batch_size, prefetch=2)
    return evaluate(net, loader, "fp32").rates()[0]


@pytest.fixture(scope="module")
def two_epoch_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    layout = make_original_layout(root / "data")
    config = tiny_config(layout, root / "run")
    before = untrained_val_loss(config)
    return config, train(config), before


def test_two_epochs_lower_the_loss_and_write_the_run_directory(two_epoch_run):
    """The loss that shows learning this early is the validation loss (eval mode, centre crops):
    the training loss of the first steps is dominated by dropout noise on the paper's init."""
    config, result, before = two_epoch_run
    history = result.history
    assert set(history) == set(HISTORY_KEYS) and result.epoch == 2
    assert all(len(history[k]) == 2 for k in HISTORY_KEYS)
    assert history["val_loss"][1] < history["val_loss"][0] < before
    assert history["lr"] == [3e-5, 3e-5]
    assert all(0 <= v <= 1 for k in ("accuracy", "top5", "val_accuracy", "val_top5") for v in history[k])
    assert history["val_top5"] == [1.0, 1.0]  # two classes: the true one is always in the top 5
    assert all(v > 0 for v in history["images_per_sec"])
    out = Path(config.out)
    assert json.loads((out / "history.json").read_text()) == history
    saved_config = json.loads((out / "config.json").read_text())
    assert saved_config["batch_size"] == 4 and saved_config["global_batch"] == 4 and "commit" in saved_config
    assert (out / "best.pt").is_file()


def test_checkpoint_reloads_with_weights_only(two_epoch_run):
    config, result, _ = two_epoch_run
    state = torch.load(Path(config.out) / "last.pt", map_location="cpu", weights_only=True)
    assert state["epoch"] == 2
    assert {"model", "optimizer", "scheduler", "history", "pca", "classes", "config", "ranks"} <= set(state)
    assert state["classes"] == ["cat", "dog"]
    assert len(state["optimizer"]["state"]) == 16  # a momentum buffer for each of 8 weights and 8 biases
    net = AlexNetModule(2)
    net.load_state_dict(state["model"])
    net.eval()
    result.bundle.net.eval()
    x = torch.randn(2, 3, 224, 224) * 50
    torch.testing.assert_close(net(x), result.bundle.net(x))


def test_tensorboard_scalars_are_written(two_epoch_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config, result, _ = two_epoch_run
    events = EventAccumulator(str(Path(config.out) / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/top1", "val/loss", "val/top1", "val/top5", "lr", "images_per_sec"} <= tags
    losses = [e.value for e in events.Scalars("train/loss")]
    np.testing.assert_allclose(losses, result.history["loss"], rtol=1e-6)


def test_the_fused_sgd_takes_the_papers_update_and_a_checkpoint_from_before_it_keeps_it_fused():
    """Section 5's rule (v <- 0.9 v - 0.0005 lr w - lr grad; w <- w + v), written out in float64
    in PyTorch's form (lr outside the momentum: the same while lr is constant), against the
    trainer's fused SGD over three steps; then its state loaded from a default SGD (a checkpoint
    written before the fused one holds fused=None)."""
    from alexnet_dali.train import load_optimizer_state, sgd

    torch.manual_seed(0)
    weights, grads = torch.randn(1000), [torch.randn(1000) for _ in range(3)]
    lr, momentum, decay = 0.01, 0.9, 5e-4
    w, v = weights.double().clone(), None
    parameter = torch.nn.Parameter(weights.clone())
    optimizer = sgd([parameter], lr, momentum, decay)
    for step, grad in enumerate(grads):
        d = grad.double() + decay * w
        v = d if step == 0 else momentum * v + d  # the first step starts the momentum at d
        w = w - lr * v
        parameter.grad = grad.clone()
        optimizer.step()
    assert optimizer.param_groups[0]["fused"] is True
    torch.testing.assert_close(parameter.detach().double(), w, rtol=1e-6, atol=1e-7)
    before = torch.optim.SGD([parameter], lr=lr, momentum=momentum, weight_decay=decay)
    parameter.grad = grads[0].clone()
    before.step()
    assert before.state_dict()["param_groups"][0]["fused"] is None
    load_optimizer_state(optimizer, before.state_dict())
    assert optimizer.param_groups[0]["fused"] is True
    torch.testing.assert_close(optimizer.state[parameter]["momentum_buffer"], before.state[parameter]["momentum_buffer"])


def test_training_needs_the_same_classes_as_the_network(tmp_path, original_layout):
    from alexnet_dali.checkpoint import CheckpointError
    from alexnet_dali.pca import PCA
    from alexnet_dali.state import ModelBundle, TrainState

    three = ModelBundle(AlexNetModule(3), PCA((0.5,) * 3, (0.0,) * 3, ((1.0, 0.0, 0.0),) * 3), ("a", "b", "c"))
    with pytest.raises(CheckpointError, match=r"classes \(index order\): \['a', 'b', 'c'\] -> \['cat', 'dog'\]"):
        train(tiny_config(original_layout, tmp_path / "run", epochs=1), TrainState(three, {}))


def test_api_fit_returns_the_history_and_continues(tmp_path, original_layout):
    from alexnet_dali import AlexNet

    model = AlexNet(original_layout["data"], original_layout["labels"], original_layout["label_encoding"],
                    batch_size=4, lr=0.001, device="cpu", out_dir=tmp_path / "run", verbose=False)
    assert isinstance(model.net, AlexNetModule) and model.net.num_classes == 2
    first = model.fit(epochs=1)
    assert {k: len(v) for k, v in first.items()} == {k: 1 for k in HISTORY_KEYS}
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    second = model.fit(epochs=1)  # continues: same run directory, resumed optimiser and schedule
    assert {k: len(v) for k, v in second.items()} == {k: 2 for k in HISTORY_KEYS}
    assert second["loss"][0] == first["loss"][0]
    assert any(not torch.equal(before[k], v) for k, v in model.net.state_dict().items())


def test_bf16_precision_computes_in_bf16_and_keeps_fp32_weights(tmp_path, original_layout):
    """The same run (seed, crops, dropout masks) in both precisions: the network's layers compute
    in bf16 (their outputs' dtype, seen by a hook); bf16 rounding moves the losses a little, and
    never to exactly the fp32 values; the weights stay fp32."""
    fp32 = train(tiny_config(original_layout, tmp_path / "fp32", epochs=1))
    dtypes = {"train": set(), "eval": set()}
    config = tiny_config(original_layout, tmp_path / "bf16", epochs=1, precision="bf16")
    from alexnet_dali.dataset import load_training_data
    from alexnet_dali.distributed import DistInfo
    from alexnet_dali.train import new_state

    state = new_state(config, load_training_data(config, DistInfo(), cpu_placement(threads=1)))
    state.bundle.net.features.conv1.register_forward_hook(
        lambda module, inputs, output: dtypes["train" if module.training else "eval"].add(output.dtype))
    bf16 = train(config, state)
    assert dtypes == {"train": {torch.bfloat16}, "eval": {torch.bfloat16}}  # training steps and validation
    for key in ("loss", "val_loss"):
        assert bf16.history[key][0] != fp32.history[key][0]
        assert bf16.history[key][0] == pytest.approx(fp32.history[key][0], rel=0.05)
    weights = torch.load(tmp_path / "bf16" / "last.pt", weights_only=True)["model"]
    assert {tensor.dtype for tensor in weights.values()} == {torch.float32}


def test_config_rejects_unknown_keys_and_wrong_types():
    with pytest.raises(ConfigError, match="unknown config keys: colour"):
        TrainConfig.from_dict({"colour": "red"})
    with pytest.raises(ConfigError, match="batch_size must be int"):
        TrainConfig(batch_size="128")
    with pytest.raises(ConfigError, match="lr must be positive"):
        TrainConfig(lr=0.0)
    with pytest.raises(ConfigError, match=r"hw_decoder_load must be in \[0, 1\], got 1.5"):
        TrainConfig(hw_decoder_load=1.5)
    with pytest.raises(ConfigError, match="precision must be fp32 or bf16, got 'fp16'"):
        TrainConfig(precision="fp16")


def test_cli_help_lists_every_verb(capfd):
    """The command's help from a real process; a verb's help from its main(), the same parser."""
    result = run_cli("--help", check=True)
    for verb in ("demo", "train", "predict", "evaluate", "check"):
        assert verb in result.stdout
    train_help = run_main("train", "--help", capfd=capfd, check=True).stdout
    for option in ("--labels", "--label-encoding", "--epochs", "--batch-size", "--lr", "--out", "--device", "--resume"):
        assert option in train_help


def test_cli_train_runs_and_refuses_to_overwrite_a_run(tmp_path, original_layout, capfd):
    args = ["train", original_layout["data"], "--labels", original_layout["labels"], "--label-encoding",
            original_layout["label_encoding"], "--epochs", "1", "--batch-size", "4", "--lr", "0.001",
            "--out", tmp_path / "run", "--device", "cpu"]
    result = run_cli(*args, check=True)
    assert "epoch 1/1" in result.stdout and "tensorboard --logdir" in result.stdout
    assert (tmp_path / "run" / "last.pt").is_file()
    again = run_main(*args, capfd=capfd)  # the refusal: main() in this process, without a second start
    assert again.returncode == 2
    assert "last.pt exists: pass --resume" in again.stderr and "Traceback" not in again.stderr



def test_compile_trains_compiled_steps_and_saves_the_plain_network(tmp_path, original_layout,
                                                                    compiled_without_codegen):
    """compile=True (--compile): the training steps run through torch.compile (dynamo captures the
    network, AOTAutograd its backward), the weights train, and the checkpoint holds the plain
    network's keys, without torch.compile's wrapper prefix (aot_eager here: see the fixture)."""
    from alexnet_dali import AlexNet

    model = AlexNet(original_layout["data"], original_layout["labels"], original_layout["label_encoding"],
                    batch_size=4, lr=1e-3, device="cpu", out_dir=tmp_path / "run", verbose=False, compile=True)
    model.fit(1)
    assert compiled_without_codegen == [model.net]  # one process: no DDP wrapper in between
    assert graphs_captured() >= 1  # dynamo really captured it
    assert json.loads((tmp_path / "run" / "config.json").read_text())["compile"] is True
    saved = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["model"]
    torch.manual_seed(0)
    initial = AlexNetModule(2).state_dict()
    assert saved.keys() == initial.keys()
    assert not torch.equal(saved["classifier.fc8.weight"], initial["classifier.fc8.weight"])  # it trained


def test_cli_reports_bad_data_without_a_traceback(tmp_path, original_layout):
    (original_layout["data"] / "val" / "extra.jpg").write_bytes(b"")  # unlabelled (and empty)
    result = run_cli("train", original_layout["data"], "--labels", original_layout["labels"], "--out", tmp_path / "r")
    assert result.returncode == 2
    assert "extra.jpg" in result.stderr and "unlabelled" in result.stderr and "Traceback" not in result.stderr


def test_cli_demo_makes_data_trains_predicts_and_saves(tmp_path, capsys):
    """The README's first command, shortened to one epoch (the full demo is timed in the README);
    the refusal to run it again through main(), the same code without a second process."""
    from alexnet_dali.cli import main

    result = run_cli("demo", "--out", tmp_path / "demo", "--epochs", "1", "--device", "cpu", check=True)
    assert "epoch 1/1" in result.stdout and "ten-crop predictions" in result.stdout
    assert "test images right" in result.stdout and "after 1 epoch (chance: 20%)" in result.stdout
    demo = tmp_path / "demo"
    assert len(list((demo / "data" / "train").glob("*.jpg"))) == 200
    assert len(list((demo / "data" / "test").glob("*.jpg"))) == 20
    assert (demo / "run" / "history.json").is_file()
    from alexnet_dali import AlexNet

    model = AlexNet.load(demo / "model.pt", device="cpu")
    assert model.classes == ("stripes", "columns", "rings", "checks", "diagonals")
    capsys.readouterr()
    assert main(["demo", "--out", str(demo), "--epochs", "1"]) == 2
    assert "already holds a demo run" in capsys.readouterr().err


class RecordedLabels:
    """A training loader that records the labels of every batch it gives."""

    def __init__(self, loader):
        self.loader, self.labels = loader, []

    def __len__(self):
        return len(self.loader)

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def __iter__(self):
        for images, labels in self.loader:
            self.labels.append(labels)
            yield images, labels


def test_training_metrics_count_each_image_once_not_the_padded_repeats(tmp_path):
    """6 images at batch 4: DALI's second batch holds 2 images and 2 repeats of the last one.
    Top-1 and the image count are those of the 6 images, each counted at its first sight."""
    from tqdm import tqdm

    from alexnet_dali.data import Split
    from alexnet_dali.distributed import DistInfo
    from alexnet_dali.loader import training_loader
    from alexnet_dali.metrics import Counts
    from alexnet_dali.pca import PCA
    from alexnet_dali.schedule import DivergenceGuard, Warmup
    from alexnet_dali.state import ModelBundle
    from alexnet_dali.train import EpochProgress, Run, StepControl, train_one_epoch
    from conftest import write_image

    files = tuple(str(write_image(tmp_path / f"{i}.jpg", 64, 64, seed=i)) for i in range(6))
    split = Split("train", files, tuple(range(6)), tuple(map(str, range(6))))  # a class per image: labels name them
    pca = PCA((0.5, 0.5, 0.5), (0.0, 0.0, 0.0), ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)))
    loader = RecordedLabels(training_loader(split, pca, cpu_placement(), DistInfo(), batch_size=4, seed=0,
                                            lighting=0.0, prefetch=2))
    torch.manual_seed(0)
    net = AlexNetModule(6)
    predicted = []  # the class the network gave every row it saw
    net.register_forward_hook(lambda module, inputs, output: predicted.append(output.argmax(dim=1)))
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-4)
    progress = EpochProgress(Counts(torch.device("cpu")))
    config = TrainConfig(data=str(tmp_path), out=str(tmp_path / "run"), device="cpu", batch_size=4, lr=1e-4)
    run = Run(config, DistInfo(), cpu_placement(), None, ModelBundle(net, pca, split.classes), net, optimizer, None,
              Warmup(optimizer, 1e-4, 0), DivergenceGuard(6), loader, None, {"val_accuracy": [], "val_loss": []})
    with StepControl(0, DistInfo(), torch.device("cpu")) as control, tqdm(disable=True) as bar:
        train_one_epoch(run, 0, progress, control, bar)
    rows = list(zip(torch.cat(loader.labels).tolist(), torch.cat(predicted).tolist()))
    assert len(rows) == 8  # two full batches went through the network
    right_at_first_sight = {}
    for label, guess in rows:
        right_at_first_sight.setdefault(label, guess == label)
    assert sorted(right_at_first_sight) == list(range(6))
    assert progress.counts.images == 6
    assert progress.counts.rates()[1] == pytest.approx(sum(right_at_first_sight.values()) / 6)


def test_a_batch_larger_than_a_shard_of_the_training_split_is_refused_before_any_work(original_layout, tmp_path,
                                                                                     capsys):
    """8 training images: batch 1000 would be 992 repeats of one image a step, at lr 0.078."""
    from alexnet_dali import AlexNet
    from alexnet_dali.cli import main
    from alexnet_dali.data import index_dataset
    from alexnet_dali.dataset import check_batch_fits
    from conftest import train_args

    argv = [str(a) for a in train_args(original_layout, tmp_path / "run", "--batch-size", "1000")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == "error: batch_size 1000 is larger than the training split (8 images): the largest batch that " \
                  "fits is 8\n"
    assert not (original_layout["data"] / ".alexnet-dali").exists()  # neither the scan nor the PCA pass ran
    with pytest.raises(ConfigError, match=r"^batch_size 9 is larger than the training split \(8 images\)"):
        AlexNet(original_layout["data"], original_layout["labels"], original_layout["label_encoding"], batch_size=9,
                device="cpu", out_dir=tmp_path / "api")
    train_split = index_dataset(original_layout["data"], original_layout["labels"])["train"]
    check_batch_fits(train_split, TrainConfig(batch_size=8), 1)  # the whole split in one step
    check_batch_fits(train_split, TrainConfig(batch_size=6), 3)  # 2 a process, shards of 2, 3 and 3
    with pytest.raises(ConfigError, match="batch_size 9, 3 a process, more than its share of 2 .* is 6"):
        check_batch_fits(train_split, TrainConfig(batch_size=9), 3)
    with pytest.raises(ConfigError, match="batch_size 3, 3 a process, more than its share of 2 .* is 2"):
        check_batch_fits(train_split, TrainConfig(batch_size=3, per_gpu_batch=True), 3)
