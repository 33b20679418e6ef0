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


def autocast(device: torch.device, precision: str):
    """bf16 autocast (fp32 weights, bf16 matmuls and convolutions), or nothing for fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def mean_log_softmax(net: nn.Module, images: torch.Tensor, precision: str) -> torch.Tensor:
    """[B, C] log of the softmax averaged over the views of each image (exact in log space)."""
    views = images.shape[1] if images.dim() == 5 else 1
    flat = images.reshape(-1, *images.shape[-3:])
    with autocast(flat.device, precision):
        logits = net(flat)
    log_probabilities = torch.log_softmax(logits.float(), dim=1).view(images.shape[0], views, -1)
    return torch.logsumexp(log_probabilities, dim=1) - math.log(views)


@torch.inference_mode()
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
    net = bundle.net.to(placement.device)
    if placement.on_gpu:
        net = net.to(memory_format=torch.channels_last)  # the GPU pipelines give NHWC
    loader = evaluation_loader(split, bundle.pca, placement, DistInfo(), batch_size=batch_size, prefetch=2,
                               ten_crop=ten_crop)
    counts = evaluate(torch.compile(net) if compile else net, loader, precision)
    loss, top1, top5 = counts.rates()
    return {"images": counts.images, "loss": loss, "top1": top1, "top5": top5, "top1_error": 1 - top1,
            "top5_error": 1 - top5, "ten_crop": ten_crop, "precision": precision, "compiled": compile}
