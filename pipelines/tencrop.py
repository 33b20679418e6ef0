"""The paper's test-time views: the four corner and the centre 224×224 patches of the centre
256×256, each also mirrored, stacked into one [10, 3, 224, 224] sample per image."""

from __future__ import annotations

import nvidia.dali.fn as fn
import nvidia.dali.types as types
from nvidia.dali import pipeline_def

from .common import centre_square, normalised_crop, on_device, output_layout, read_files

# (name, crop_pos_x, crop_pos_y, mirrored) in output order; anchors are crop_pos · 32 pixels.
TENCROP_ORDER = tuple(
    (("mirrored " if mirrored else "") + name, x, y, mirrored)
    for mirrored in (0, 1)
    for name, x, y in (("top-left", 0.0, 0.0), ("top-right", 1.0, 0.0), ("bottom-left", 0.0, 1.0),
                       ("bottom-right", 1.0, 1.0), ("centre", 0.5, 0.5))
)
ENCODED_INPUT = "encoded"


@pipeline_def(enable_conditionals=True)
def tencrop_pipeline(files=None, labels=None, *, device: str, hw_decoder_load: float, mean, shard_id: int = 0,
                     num_shards: int = 1, source=None, prepared: bool = False):
    """From a file list (evaluation, sharded, with labels) or, with files=None, from encoded
    bytes fed to the external source ENCODED_INPUT (prediction)."""
    if files is None:
        encoded = fn.external_source(name=ENCODED_INPUT, dtype=types.UINT8, ndim=1)
        label = None
    else:
        encoded, label = read_files(files, labels, shard_id=shard_id, num_shards=num_shards, shuffle=False)
    images = centre_square(encoded, device, hw_decoder_load, prepared)
    mean255 = [255.0 * float(m) for m in mean]
    layout = output_layout(device)
    views = [normalised_crop(images, mean=mean255, crop_pos_x=x, crop_pos_y=y, mirror=m, layout=layout)
             for _, x, y, m in TENCROP_ORDER]
    crops = fn.stack(*views, axis=0)
    return crops if label is None else (crops, on_device(label, device))
