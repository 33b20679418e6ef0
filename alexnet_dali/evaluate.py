"""The one evaluator: training's validation and `alexnet-dali evaluate` both count here.

A batch is the centre crop [B, 3, 224, 224] or the paper's ten views [B, 10, 3, 224, 224]
(section 4.1: "averaging the predictions made by the network's softmax layer on the ten
patches"). The score of a class is the log of its mean softmax over the views (for one view,
the log-softmax), so the loss is the cross-entropy of the averaged prediction and top-k ranks
the averaged probabilities. Counts stay on the device until the end.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .metrics import Counts

TEN_VIEWS = 10  # the paper's test-time views an image (pipelines/tencrop.py's TENCROP_ORDER)


def autocast(device: torch.device, precision: str):
    """bf16 autocast (fp32 weights, bf16 matmuls and convolutions), or nothing for fp32."""
    if precision == "bf16" and device.type == "cpu":
        say_bf16_is_slow_on_a_cpu()
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


_said_bf16_is_slow = False


def say_bf16_is_slow_on_a_cpu() -> None:
    """A warning, once a process (rank 0 alone under torchrun): bf16 buys no speed on a CPU. A
    training step at batch 16 took 3-9% longer than fp32's on an AVX512-BF16 EPYC, and a run on
    another CPU 6x longer (README, Train)."""
    global _said_bf16_is_slow
    if _said_bf16_is_slow:
        return
    _said_bf16_is_slow = True
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank():
        return
    from .log import logger

    logger.warning("bf16 on a CPU is no faster than fp32, and on some CPUs about 6x slower; use fp32 on a "
                   "CPU (bf16 pays on tensor-core GPUs)")


class FixedRows(nn.Module):
    """`net` for inputs of exactly `rows` rows: a smaller batch (a split's last one) is padded with
    zeros, in the input's memory layout, and the padding's outputs dropped. A compiled network
    then runs one graph for every batch; another batch size would compile a second one (about
    a minute)."""

    def __init__(self, net: nn.Module, rows: int):
        super().__init__()
        self.net, self.rows = net, rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        given = x.shape[0]
        if given >= self.rows:
            return self.net(x)
        # what the compiled graph's guards check stays as in a full batch: the stride order (NHWC
        # memory on the GPU) and the kind of tensor (an inference tensor or not)
        order = sorted(range(x.dim()), key=lambda d: -x.stride(d))
        with torch.inference_mode(x.is_inference()):
            padded = x.new_zeros([self.rows if d == 0 else x.shape[d] for d in order]).permute(
                *sorted(range(x.dim()), key=order.__getitem__))
            padded[:given] = x
        return self.net(padded)[:given]


def compiled_for_batches(net: nn.Module, rows: int) -> nn.Module:
    """torch.compile of `net`, fed `rows` rows a call (FixedRows)."""
    return FixedRows(torch.compile(net), rows)


def mean_log_softmax(net: nn.Module, images: torch.Tensor, precision: str) -> torch.Tensor:
    """[B, C] log of the softmax averaged over the views of each image (exact in log space)."""
    views = images.shape[1] if images.dim() == 5 else 1
    flat = images.reshape(-1, *images.shape[-3:])
    with autocast(flat.device, precision):
        logits = net(flat)
    log_probabilities = torch.log_softmax(logits.float(), dim=1).view(images.shape[0], views, -1)
    return torch.logsumexp(log_probabilities, dim=1) - math.log(views)


# no_grad, not inference_mode: DALI allocates the first batch before this runs, so batches would be
# of two kinds (inference tensors or not), and a compiled network compiles a graph for each kind
@torch.no_grad()
def evaluate(net: nn.Module, loader, precision: str) -> Counts:
    """Counts over this process's shard (the caller sums them over processes)."""
    net.eval()
    counts = None
    for images, labels in loader:
        scores = mean_log_softmax(net, images, precision)
        counts = counts or Counts(scores.device)
        loss_sum = nn.functional.nll_loss(scores, labels, reduction="sum")
        counts.add(scores, labels, loss_sum)
    return counts or Counts(next(net.parameters()).device)


def evaluate_split(bundle, split, placement, *, ten_crop: bool, batch_size: int, precision: str | None,
                   compile: bool = False) -> dict:
    """Top-1 / top-5 accuracy (and error, the paper's metric) and loss of a model over a labelled
    split in this process, with the centre crop or the ten-view average (`compile`: through
    torch.compile)."""
    from .distributed import DistInfo
    from .loader import evaluation_loader

    precision = precision or bundle.precision
    net = placement.put_model(bundle.net)
    loader = evaluation_loader(split, bundle.pca, placement, DistInfo(), batch_size=batch_size, prefetch=2,
                               ten_crop=ten_crop)
    views = TEN_VIEWS if ten_crop else 1
    counts = evaluate(compiled_for_batches(net, batch_size * views) if compile else net, loader, precision)
    loss, top1, top5 = counts.rates()
    return {"images": counts.images, "loss": loss, "top1": top1, "top5": top5, "top1_error": 1 - top1,
            "top5_error": 1 - top5, "ten_crop": ten_crop, "precision": precision, "compiled": compile}
