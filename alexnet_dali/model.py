"""AlexNet as described by Krizhevsky, Sutskever and Hinton (NIPS 2012). Imports only torch.

Layer by layer, from section 3.5 and figure 2 of the paper:

    conv1  96 × 11×11 / 4, pad 2   ReLU  LRN  max-pool 3/2     224 -> 55 -> 27
    conv2 256 ×  5×5,     pad 2   ReLU  LRN  max-pool 3/2      27 -> 13
    conv3 384 ×  3×3,     pad 1   ReLU
    conv4 384 ×  3×3,     pad 1   ReLU
    conv5 256 ×  3×3,     pad 1   ReLU       max-pool 3/2      13 -> 6
    fc6  4096  ReLU  dropout 0.5
    fc7  4096  ReLU  dropout 0.5
    fc8  num_classes (logits; the softmax lives in the loss)

`groups=2` splits conv2, conv4 and conv5 into the paper's two towers (each half sees only the
half of the previous layer's maps that lived on the same GPU); conv3 and the fully connected
layers see everything, as in the paper.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

# Section 3.3: k = 2, n = 5, alpha = 1e-4, beta = 0.75 with b = a / (k + alpha * sum(a^2))^beta.
# torch.nn.LocalResponseNorm divides alpha by n, so it must be given n * 1e-4.
LRN_SIZE = 5
LRN_ALPHA = 1e-4
LRN_BETA = 0.75
LRN_K = 2.0

INPUT_SIZE = 224
# Section 5 starts the biases of these layers at 1; Caffe's reference AlexNet (bvlc_alexnet) at
# 0.1, "found necessary for training, as initialization to 1 gave flat loss". 0.1 is the default.
BIAS_ONE = ("conv2", "conv4", "conv5", "fc6", "fc7")
CAFFE_INIT_BIAS = 0.1

# The options that shape the network besides its class count: what a checkpoint's "arch" records
# (with num_classes) and what a run may not change (nanoGPT's model_args). init_bias is not one:
# it sets the first weights only, and a trained net's biases are its own.
SHAPE_OPTIONS = ("groups", "dropout")


def lrn() -> nn.LocalResponseNorm:
    """The paper's local response normalisation (torch takes alpha / n, hence the product)."""
    return nn.LocalResponseNorm(LRN_SIZE, alpha=LRN_ALPHA * LRN_SIZE, beta=LRN_BETA, k=LRN_K)


def check_args(*, num_classes: int = 1, groups: int = 1, dropout: float = 0.5, init_bias: float = CAFFE_INIT_BIAS):
    """ValueError for a value the network cannot be built with (the one check: TrainConfig runs it
    on its options before any work)."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    if groups not in (1, 2):
        raise ValueError(f"groups must be 1 (one tower) or 2 (the paper's two towers), got {groups}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if not 0.0 <= init_bias < float("inf"):
        raise ValueError(f"init_bias must be a finite number of at least 0, got {init_bias}")


class AlexNetModule(nn.Module):
    """The paper's network. `groups=1` (default) is the single-GPU variant most reproductions use."""

    def __init__(self, num_classes: int = 1000, groups: int = 1, dropout: float = 0.5,
                 init_bias: float = CAFFE_INIT_BIAS):
        super().__init__()
        check_args(num_classes=num_classes, groups=groups, dropout=dropout, init_bias=init_bias)
        self.num_classes = num_classes
        self.groups = groups
        self.dropout = dropout
        self.init_bias = init_bias  # used by reset_parameters only: a trained net's biases are its own
        self.features = nn.Sequential(OrderedDict(
            conv1=nn.Conv2d(3, 96, kernel_size=11, stride=4, padding=2), relu1=nn.ReLU(inplace=True),
            norm1=lrn(), pool1=nn.MaxPool2d(3, stride=2),
            conv2=nn.Conv2d(96, 256, kernel_size=5, padding=2, groups=groups), relu2=nn.ReLU(inplace=True),
            norm2=lrn(), pool2=nn.MaxPool2d(3, stride=2),
            conv3=nn.Conv2d(256, 384, kernel_size=3, padding=1), relu3=nn.ReLU(inplace=True),
            conv4=nn.Conv2d(384, 384, kernel_size=3, padding=1, groups=groups), relu4=nn.ReLU(inplace=True),
            conv5=nn.Conv2d(384, 256, kernel_size=3, padding=1, groups=groups), relu5=nn.ReLU(inplace=True),
            pool5=nn.MaxPool2d(3, stride=2),
        ))
        self.classifier = nn.Sequential(OrderedDict(
            fc6=nn.Linear(256 * 6 * 6, 4096), relu6=nn.ReLU(inplace=True), drop6=nn.Dropout(dropout),
            fc7=nn.Linear(4096, 4096), relu7=nn.ReLU(inplace=True), drop7=nn.Dropout(dropout),
            fc8=nn.Linear(4096, num_classes),
        ))
        self.reset_parameters()

    @property
    def arch(self) -> dict:
        """The architecture as keyword arguments: `AlexNetModule(**net.arch)` builds the same shape."""
        return {"num_classes": self.num_classes, **{name: getattr(self, name) for name in SHAPE_OPTIONS}}

    def reset_parameters(self) -> None:
        """Section 5: weights N(0, 0.01); biases `init_bias` (the paper: 1; default: Caffe's 0.1) in
        conv2, conv4, conv5 and the hidden fully connected layers (positive inputs for the ReLUs
        early on), 0 elsewhere."""
        for name, layer in self.weighted_layers().items():
            nn.init.normal_(layer.weight, mean=0.0, std=0.01)
            nn.init.constant_(layer.bias, self.init_bias if name in BIAS_ONE else 0.0)

    def weighted_layers(self) -> dict[str, nn.Module]:
        """conv1 … fc8 by their paper names."""
        layers = {**dict(self.features.named_children()), **dict(self.classifier.named_children())}
        return {name: m for name, m in layers.items() if isinstance(m, (nn.Conv2d, nn.Linear))}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.features(images)
        return self.classifier(torch.flatten(features, 1))
