"""The statistics pass for the PCA: same decode and centre 256×256 as training, reduced on the
device to exact per-image integer sums (no pixel leaves the device)."""

from __future__ import annotations

import nvidia.dali.fn as fn
import nvidia.dali.types as types
from nvidia.dali import pipeline_def

from .common import centre_square, read_files

# Upper triangle of the 3×3 RGB cross-product matrix, in this order.
CROSS_PRODUCTS = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))


@pipeline_def(enable_conditionals=True)
def statistics_pipeline(files, *, device: str, hw_decoder_load: float, shard_id: int = 0, num_shards: int = 1,
                        prepared: bool = False, reduce: bool = True):
    """Per image: sums [3] of R, G, B and sums [6] of the channel products (CROSS_PRODUCTS), as
    int64. Products of uint8 values fit int32 and sums of a 256×256 image fit int64 exactly.
    With reduce=False, the centre 256×256 itself (uint8 HWC): on the CPU NumPy reduces it several
    times faster than DALI's element-wise operators (pca.square_moments)."""
    encoded, _ = read_files(files, [0] * len(files), shard_id=shard_id, num_shards=num_shards, shuffle=False)
    square = centre_square(encoded, device, hw_decoder_load, prepared)
    if not reduce:
        return square
    pixels = fn.cast(square, dtype=types.INT32)
    channels = [pixels[:, :, c] for c in range(3)]
    products = fn.stack(*[channels[a] * channels[b] for a, b in CROSS_PRODUCTS], axis=2)
    sums = fn.reductions.sum(pixels, axes=[0, 1], dtype=types.INT64)
    cross = fn.reductions.sum(products, axes=[0, 1], dtype=types.INT64)
    return sums, cross
