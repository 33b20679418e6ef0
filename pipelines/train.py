"""Training input: the paper's section 4.1 augmentation, on the device that trains."""

from __future__ import annotations

import nvidia.dali.fn as fn
from nvidia.dali import pipeline_def

from .common import (CROP_POSITIONS, CROP_SIZE, decode, decode_and_centre, lighting_mean, normalised_crop, on_device,
                     op_seeds, output_layout, read_files)

# The window's offset k in the centre 256×256, in pixels: every value 0..32 equally likely, so the
# window always lies inside the square.
OFFSETS = [float(k) for k in range(CROP_POSITIONS)]


@pipeline_def(enable_checkpointing=True, enable_conditionals=True)
def training_pipeline(files, labels, *, device: str, hw_decoder_load: float, mean, eigval, eigvec, lighting: float,
                      shard_id: int = 0, num_shards: int = 1, shuffle_seed: int = 0, debug: bool = False,
                      prepared: bool = False):
    """Outputs images [3, 224, 224] (CPU) or [224, 224, 3] (GPU), float32, and labels [1].

    `seed` (a pipeline argument) drives crops, flips and lighting and must differ per rank;
    `shuffle_seed` drives the epoch order and must be the same on every rank.
    With debug=True it also returns the window's offsets in the centre 256×256 (pixels), the
    flip flag and the mean it subtracted, for tests.
    `prepared`: the files are `alexnet-dali prepare`'s 256×256 squares; the window is cut from
    them as they are (the same seed gives the same windows, flips and lighting as the originals).
    """
    encoded, label = read_files(files, labels, shard_id=shard_id, num_shards=num_shards,
                                shuffle=True, shuffle_seed=shuffle_seed)
    seeds = op_seeds(4)
    crop_x = fn.random.uniform(values=OFFSETS, **seeds[0])
    crop_y = fn.random.uniform(values=OFFSETS, **seeds[1])
    flip = fn.random.coin_flip(probability=0.5, **seeds[2])
    mean_per_image = lighting_mean(mean, eigval, eigvec, lighting, seed=seeds[3])
    if prepared:  # crop_pos · 32 pixels is the window's offset in the stored 256 square
        images = normalised_crop(decode(encoded, device, hw_decoder_load), mean=mean_per_image, mirror=flip,
                                 crop_pos_x=crop_x / float(CROP_POSITIONS - 1),
                                 crop_pos_y=crop_y / float(CROP_POSITIONS - 1), layout=output_layout(device))
    else:  # only the 224 window is resampled (same pixels as cropping the whole 256 square, less work)
        images = decode_and_centre(encoded, device, hw_decoder_load=hw_decoder_load,
                                   window=(crop_x, crop_y, CROP_SIZE))
        images = normalised_crop(images, mean=mean_per_image, mirror=flip, layout=output_layout(device), crop=False)
    label = on_device(label, device)
    if debug:
        if isinstance(mean_per_image, list):  # lighting off: make the constant an operator output
            mean_per_image = fn.constant(fdata=mean_per_image, shape=[3])
        return images, label, crop_x, crop_y, flip, mean_per_image
    return images, label
