"""Network inputs back to pictures: a grid of augmented training samples for TensorBoard, so a
person can check crops, flips and lighting by eye. torch only.

The network sees centred raw RGB: pixel + lighting shift - 255 * mean (section 2 and 4.1 of the
paper). Adding 255 * mean back gives the pixels as augmented, lighting included.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

MAX_SAMPLES = 16  # a 4×4 grid: enough to see the variety, small enough to look at (~1 MB PNG)
PADDING = 2  # pixels of black between and around the tiles


def to_images(batch: torch.Tensor, mean_rgb: Sequence[float]) -> torch.Tensor:
    """Network inputs [N, 3, H, W] (or NHWC [N, H, W, 3] from the GPU pipeline), centred by
    255 * mean_rgb, -> uint8 RGB images [N, 3, H, W] on the CPU."""
    if batch.dim() != 4:
        raise ValueError(f"expected a batch of images [N, C, H, W] or [N, H, W, C], got shape {tuple(batch.shape)}")
    if batch.shape[1] != 3 and batch.shape[-1] == 3:
        batch = batch.permute(0, 3, 1, 2)
    if batch.shape[1] != 3:
        raise ValueError(f"expected 3 colour channels, got shape {tuple(batch.shape)}")
    mean = torch.tensor([255.0 * float(m) for m in mean_rgb], dtype=torch.float32).view(1, 3, 1, 1)
    pixels = batch.detach().float().cpu() + mean
    return pixels.round().clamp(0, 255).to(torch.uint8)


def tile(images: torch.Tensor, columns: int | None = None, padding: int = PADDING) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> one uint8 image [3, rows·(H+p)+p, columns·(W+p)+p], row by row,
    nearly square unless `columns` is given; empty cells stay black."""
    count, channels, height, width = images.shape
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    grid = torch.zeros(channels, rows * (height + padding) + padding, columns * (width + padding) + padding,
                       dtype=images.dtype)
    for i, image in enumerate(images):
        top = padding + (i // columns) * (height + padding)
        left = padding + (i % columns) * (width + padding)
        grid[:, top:top + height, left:left + width] = image
    return grid


def sample_grid(batch: torch.Tensor, mean_rgb: Sequence[float], max_samples: int = MAX_SAMPLES) -> torch.Tensor:
    """The first `max_samples` images of a batch of network inputs as one uint8 [3, H, W] grid."""
    return tile(to_images(batch[:max_samples], mean_rgb))


def log_sample_grid(writer, batch: torch.Tensor, mean_rgb: Sequence[float], global_step: int) -> None:
    """TensorBoard image "train/samples": the batch as the network sees it, denormalised."""
    writer.add_image("train/samples", sample_grid(batch, mean_rgb), global_step, dataformats="CHW")
    writer.flush()
