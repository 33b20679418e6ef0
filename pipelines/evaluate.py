"""Validation input: the centre 224×224 of the centre 256×256, no flip, no lighting."""

from __future__ import annotations

from nvidia.dali import pipeline_def

from .common import centre_square, normalised_crop, on_device, output_layout, read_files


@pipeline_def(enable_checkpointing=True, enable_conditionals=True)
def evaluation_pipeline(files, labels, *, device: str, hw_decoder_load: float, mean, shard_id: int = 0,
                        num_shards: int = 1, prepared: bool = False):
    encoded, label = read_files(files, labels, shard_id=shard_id, num_shards=num_shards, shuffle=False)
    images = centre_square(encoded, device, hw_decoder_load, prepared)
    mean255 = [255.0 * float(m) for m in mean]
    return normalised_crop(images, mean=mean255, layout=output_layout(device)), on_device(label, device)
