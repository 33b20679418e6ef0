"""What an epoch measures: counts summed on the device (no host sync per batch) and, once per
epoch, the rates that become the history and the TensorBoard scalars."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from . import distributed


class Counts:
    """Loss sum, top-1 hits, top-5 hits and images, accumulated as float64 on one device."""

    def __init__(self, device, values: torch.Tensor | None = None):
        self.values = torch.zeros(4, dtype=torch.float64, device=device) if values is None else values.to(device)

    def add(self, log_probabilities: torch.Tensor, labels: torch.Tensor, loss_sum: torch.Tensor) -> None:
        """One batch: [B, C] scores whose order ranks the classes (logits or log-probabilities)."""
        k = min(5, log_probabilities.shape[1])
        hits = log_probabilities.topk(k, dim=1).indices.eq(labels.view(-1, 1))
        images = torch.full((), labels.numel(), dtype=torch.float64, device=labels.device)
        self.values += torch.stack([loss_sum.detach().double(), hits[:, 0].sum().double(),
                                    hits.any(dim=1).sum().double(), images])

    def summed(self) -> Counts:
        """The counts of every process (all-reduced), as a new Counts."""
        return Counts(self.values.device, distributed.all_reduce_sum(self.values.clone()))

    @property
    def images(self) -> int:
        return int(self.values[3].item())

    def rates(self) -> tuple[float, float, float]:
        """(mean loss, top-1 accuracy, top-5 accuracy)."""
        loss_sum, top1, top5, count = self.values.tolist()
        count = max(count, 1.0)
        return loss_sum / count, top1 / count, top5 / count


def _metric(tag: str):
    return field(metadata={"tag": tag})


@dataclass(frozen=True)
class EpochMetrics:
    """One epoch: the field names are the history's keys, the metadata their TensorBoard tags."""

    loss: float = _metric("train/loss")
    accuracy: float = _metric("train/top1")
    top5: float = _metric("train/top5")
    val_loss: float = _metric("val/loss")
    val_accuracy: float = _metric("val/top1")
    val_top5: float = _metric("val/top5")
    lr: float = _metric("lr")
    images_per_sec: float = _metric("images_per_sec")

    def write(self, writer, epoch: int) -> None:
        for f in dataclasses.fields(self):
            writer.add_scalar(f.metadata["tag"], getattr(self, f.name), epoch)


HISTORY_KEYS = tuple(f.name for f in dataclasses.fields(EpochMetrics))


def empty_history() -> dict[str, list[float]]:
    return {key: [] for key in HISTORY_KEYS}


def append(history: dict, metrics: EpochMetrics) -> None:
    for key in HISTORY_KEYS:
        history[key].append(getattr(metrics, key))
