"""The network against the paper (section 3 and 5), each claim against an independent reference."""

import numpy as np
import pytest
import torch

from alexnet_dali.model import AlexNetModule


def test_parameter_counts_match_the_paper_variants():
    one_tower = AlexNetModule(num_classes=1000, groups=1)
    two_towers = AlexNetModule(num_classes=1000, groups=2)
    assert sum(p.numel() for p in one_tower.parameters()) == 62_378_344
    assert sum(p.numel() for p in two_towers.parameters()) == 60_965_224


def test_layer_shapes_follow_the_paper():
    net = AlexNetModule(num_classes=10).eval()
    x = torch.zeros(1, 3, 224, 224)
    shapes = {}
    for name, layer in net.features.named_children():
        x = layer(x)
        shapes[name] = tuple(x.shape[1:])
    assert shapes["conv1"] == (96, 55, 55)  # 224 in -> 55×55 (stride 4, padding 2)
    assert shapes["pool1"] == (96, 27, 27)  # overlapping pooling: 3×3 windows, stride 2
    assert shapes["conv2"] == (256, 27, 27)
    assert shapes["pool2"] == (256, 13, 13)
    assert shapes["conv3"] == (384, 13, 13) and shapes["conv4"] == (384, 13, 13)
    assert shapes["pool5"] == (256, 6, 6)
    assert net(torch.zeros(2, 3, 224, 224)).shape == (2, 10)


def test_order_is_conv_relu_lrn_pool():
    kinds = [type(m).__name__ for m in AlexNetModule(10).features]
    assert kinds[:8] == ["Conv2d", "ReLU", "LocalResponseNorm", "MaxPool2d"] * 2
    assert kinds[8:] == ["Conv2d", "ReLU"] * 3 + ["MaxPool2d"]
    pools = [m for m in AlexNetModule(10).features if isinstance(m, torch.nn.MaxPool2d)]
    assert all(p.kernel_size == 3 and p.stride == 2 for p in pools)  # z = 3 > s = 2: overlapping


def paper_lrn(a: np.ndarray, n=5, k=2.0, alpha=1e-4, beta=0.75) -> np.ndarray:
    """Section 3.3: b_i = a_i / (k + alpha * sum_{j=max(0,i-n/2)}^{min(N-1,i+n/2)} a_j^2)^beta."""
    channels = a.shape[1]
    out = np.empty_like(a)
    for i in range(channels):
        lo, hi = max(0, i - n // 2), min(channels - 1, i + n // 2)
        out[:, i] = a[:, i] / (k + alpha * (a[:, lo:hi + 1] ** 2).sum(axis=1)) ** beta
    return out


def test_lrn_equals_the_papers_formula():
    net = AlexNetModule(10)
    rng = np.random.default_rng(0)
    a = rng.normal(0, 30, size=(2, 96, 5, 5)).astype(np.float64)  # large enough that alpha matters
    expected = paper_lrn(a)
    got = net.features.norm1(torch.from_numpy(a)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    # and the normalisation is not a no-op at these magnitudes (a wrong alpha would show)
    assert np.abs(expected / a - 2.0 ** -0.75).max() > 0.05


def test_initialisation_statistics():
    torch.manual_seed(0)
    net = AlexNetModule(1000)
    layers = net.weighted_layers()
    assert list(layers) == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]
    for name, layer in layers.items():
        w = layer.weight.detach().double()
        n = w.numel()
        # mean within 5 standard errors of 0, std within 5 standard errors of 0.01
        assert abs(w.mean().item()) < 5 * 0.01 / n**0.5, name
        assert abs(w.std().item() - 0.01) < 5 * 0.01 / (2 * n) ** 0.5 + 1e-6, name
        # Caffe's 0.1 by default (issue 24); 0 for conv1, conv3 and fc8 as in the paper
        expected_bias = 0.1 if name in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0
        assert torch.all(layer.bias == torch.tensor(expected_bias)), name


def test_the_papers_init_bias_of_1_is_one_argument_away():
    net = AlexNetModule(10, init_bias=1.0)
    for name, layer in net.weighted_layers().items():
        expected_bias = 1.0 if name in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0
        assert torch.all(layer.bias == expected_bias), name


def test_two_towers_only_see_their_own_half():
    """groups=2: conv2's first 128 maps depend only on conv1's first 48 maps (one GPU's half)."""
    net = AlexNetModule(10, groups=2)
    conv2 = net.features.conv2
    x = torch.randn(1, 96, 27, 27)
    changed = x.clone()
    changed[:, 48:] += 5.0  # change only the second tower's input
    y, y2 = conv2(x), conv2(changed)
    assert torch.equal(y[:, :128], y2[:, :128])
    assert not torch.equal(y[:, 128:], y2[:, 128:])
    # conv3 is fully connected across towers, as in the paper
    assert net.features.conv3.groups == 1


def test_dropout_only_in_fc6_and_fc7():
    net = AlexNetModule(10, dropout=0.5)
    drops = [name for name, m in net.named_modules() if isinstance(m, torch.nn.Dropout)]
    assert drops == ["classifier.drop6", "classifier.drop7"]
    assert all(m.p == 0.5 for m in net.modules() if isinstance(m, torch.nn.Dropout))


def test_init_bias_replaces_the_papers_ones_and_nothing_else():
    """The default starts conv2, conv4, conv5, fc6 and fc7 at Caffe's 0.1; init_bias=1 is the
    paper's section 5. The weights are drawn alike; every other bias starts at 0."""
    torch.manual_seed(0)
    paper = AlexNetModule(10, init_bias=1.0)
    torch.manual_seed(0)
    default = AlexNetModule(10)
    for (name, a), b in zip(paper.weighted_layers().items(), default.weighted_layers().values()):
        assert torch.equal(a.weight, b.weight), name  # the weights are drawn as before
        in_bias_one = name in ("conv2", "conv4", "conv5", "fc6", "fc7")
        assert torch.all(a.bias == torch.tensor(1.0 if in_bias_one else 0.0)), name
        assert torch.all(b.bias == torch.tensor(0.1 if in_bias_one else 0.0, dtype=b.bias.dtype)), name


@pytest.mark.parametrize("bad", [{"num_classes": 0}, {"groups": 3}, {"dropout": 1.0}, {"init_bias": -0.5},
                                 {"init_bias": float("nan")}])
def test_bad_arguments_are_refused(bad):
    with pytest.raises(ValueError):
        AlexNetModule(**{"num_classes": 10, **bad})


def test_model_file_imports_only_torch():
    import ast
    from pathlib import Path

    source = (Path(__file__).parents[1] / "alexnet_dali" / "model.py").read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported <= {"torch", "__future__", "collections"}


@pytest.mark.parametrize("options", [{}, {"groups": 2, "dropout": 0.3}])
def test_the_architecture_is_one_dict_the_network_is_rebuilt_from(options):
    """nanoGPT's model_args: `arch` holds every shape option, and AlexNetModule(**arch) gives the
    same tensors (names and shapes) and the same options back."""
    net = AlexNetModule(7, **options)
    assert net.arch == {"num_classes": 7, "groups": options.get("groups", 1), "dropout": options.get("dropout", 0.5)}
    again = AlexNetModule(**net.arch)
    assert again.arch == net.arch
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in net.state_dict().items()}
    again.load_state_dict(net.state_dict())  # strict: nothing missing, nothing extra
