"""Training input: the paper's section 4.1 augmentation, on the device that trains."""

from __future__ import annotations

import nvidia.dali.fn as fn
from nvidia.dali import pipeline_def

from .common import (CROP_POSITIONS, CROP_SIZE, decode_and_centre, lighting_mean, normalised_crop, on_device,
                     output_layout, read_files)

# The window's offset k in the centre 256×256, in pixels: every value 0..32 equally likely, so the
# window always lies inside the square.
OFFSETS = [float(k) for k in range(CROP_POSITIONS)]


@pipeline_def(enable_checkpointing=True, enable_conditionals=True)
def training_pipeline(files, labels, *, device: str, hw_decoder_load: float, mean, eigval, eigvec, lighting: float,
                      shard_id: int = 0, num_shards: int = 1, shuffle_seed: int = 0, debug: bool = False):
    """Outputs images [3, 224, 224] (CPU) or [224, 224, 3] (GPU), float32, and labels [1].

    `seed` (a pipeline argument) drives crops, flips and lighting and must differ per rank;
    `shuffle_seed` drives the epoch order and must be the same on every rank.
    With debug=True it also returns the window's offsets in the centre 256×256 (pixels), the
    flip flag and the mean it subtracted, for tests.
    """
    encoded, label = read_files(files, labels, shard_id=shard_id, num_shards=num_shards,
                                shuffle=True, shuffle_seed=shuffle_seed)
    crop_x = fn.random.uniform(values=OFFSETS)
    crop_y = fn.random.uniform(values=OFFSETS)
    # only the 224 window is resampled (same pixels as cropping the whole 256 square, less work)
    images = decode_and_centre(encoded, device, hw_decoder_load=hw_decoder_load, window=(crop_x, crop_y, CROP_SIZE))
    flip = fn.random.coin_flip(probability=0.5)
    mean_per_image = lighting_mean(mean, eigval, eigvec, lighting)
    images = normalised_crop(images, mean=mean_per_image, mirror=flip, layout=output_layout(device), crop=False)
    label = on_device(label, device)
    if debug:
        if isinstance(mean_per_image, list):  # lighting off: make the constant an operator output
            mean_per_image = fn.constant(fdata=mean_per_image, shape=[3])
        return images, label, crop_x, crop_y, flip, mean_per_image
    return images, label
