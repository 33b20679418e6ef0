"""The steps every pipeline shares: read, decode + short side to 256 + centre 256×256, and the
one crop_mirror_normalize that crops, flips, centres the pixels and adds the PCA lighting."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import nvidia.dali.fn as fn
import nvidia.dali.math as dmath
import nvidia.dali.types as types

READER_NAME = "Reader"  # the iterators find epoch sizes through this name (never a hand-set size)
SCALE_SIZE = 256  # section 2: short side rescaled to 256, then the central 256×256 patch
CROP_SIZE = 224  # section 4.1: random 224×224 patches of the 256×256 image
CROP_POSITIONS = SCALE_SIZE - CROP_SIZE + 1  # 33 offsets (0..32) per axis

# Buffers the mixed decoder pre-allocates so it does not grow them batch by batch (the values of
# NVIDIA's ImageNet examples), per CPU thread: one device buffer and two pinned host buffers
# (hence loader.MAX_GPU_PIPELINE_THREADS).
DEVICE_MEMORY_PADDING = 211025920
HOST_MEMORY_PADDING = 140544512


def read_files(files, labels, *, shard_id: int, num_shards: int, shuffle: bool, shuffle_seed: int = 0):
    """DALI's file reader over our own file and label lists.

    Sharded by the *global* rank. The last batch of a shard is padded (pad_last_batch) so every
    shard reports the same size and the iterators agree on the number of steps. Training shuffles
    the whole list every epoch with one seed shared by all ranks (shuffle_after_epoch), so the
    shards stay disjoint; the reader's `random_shuffle` would only shuffle within a small buffer,
    which on a class-sorted list like ImageNet's means batches of one class.
    """
    options = dict(shuffle_after_epoch=True, shuffle_after_epoch_seed=shuffle_seed) if shuffle else {}
    return fn.readers.file(
        files=list(files), labels=list(labels), shard_id=shard_id, num_shards=num_shards,
        pad_last_batch=True, name=READER_NAME, **options,
    )


def on_device(labels, device: str):
    """Labels next to the images (DALI copies them to the GPU in the pipeline), so the training
    loop needs no per-batch host-to-device copy and the loss sees one device."""
    return labels.gpu() if device == "gpu" else labels


def decoder_options(device: str, hw_decoder_load: float, fancy_upsampling: bool = True) -> dict:
    """The decoders' arguments on the CPU (libjpeg-turbo) or the GPU (nvJPEG + hardware decoder).
    `fancy_upsampling=False` exists for the benchmark that measures what it costs on a GPU."""
    if device == "gpu":
        # jpeg_fancy_upsampling: interpolate 4:2:0 chroma as libjpeg-turbo (the CPU decoder) does.
        # nvJPEG's default repeats each chroma sample over 2×2 pixels, which changes the colours
        # along every colour edge: a model trained on one device would be tested on other pixels.
        return dict(device="mixed", output_type=types.RGB, hw_decoder_load=hw_decoder_load,
                    jpeg_fancy_upsampling=fancy_upsampling,
                    device_memory_padding=DEVICE_MEMORY_PADDING, host_memory_padding=HOST_MEMORY_PADDING)
    if device == "cpu":
        return dict(device="cpu", output_type=types.RGB)
    raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")


def decode(encoded, device: str, hw_decoder_load: float, fancy_upsampling: bool = True):
    """JPEG/PNG/... -> RGB uint8 HWC, the whole image."""
    return fn.decoders.image(encoded, **decoder_options(device, hw_decoder_load, fancy_upsampling))


# Shrinking by at most this factor (a short side of up to 512 px, most of ImageNet) is plain
# bilinear interpolation, as Caffe's (OpenCV) and TensorFlow's ImageNet preprocessing do: every
# source pixel still lies in some output pixel's 2×2 neighbourhood. Shrinking more would skip
# pixels and alias, so there the resampler is antialiased (a triangle filter as wide as the step,
# like PIL's bilinear). The paper names no filter.
MAX_BILINEAR_SHRINK = 2.0


def decode_and_centre(encoded, device: str, hw_decoder_load: float, size: int = SCALE_SIZE, window=None):
    """Decode, rescale the short side to `size` and keep the central size×size square, or only
    a window of that square.

    Done as one resampling of a region of the source image, so no pixel outside the result is
    ever computed. The square's offset is rounded down in source pixels; an image whose short
    side already equals `size` is copied exactly. `window=(x, y, side)` (DALI nodes or numbers, in
    pixels of the size×size square) resamples only that part: the same sample positions as
    cutting it from the whole square, for (side/size)² of the work, which is how training takes
    its random 224 crop.

    The pipeline calling this needs `enable_conditionals=True` (the filter is chosen per image).
    """
    region = centre_region(encoded, size, window)
    if device == "cpu":
        images, top, left = decode_region(encoded, region, device, hw_decoder_load)
    else:  # the GPU decodes whole images: a region ran at 0.17x the whole image on an H100, since
        # nvJPEG < 13.2 leaves its fast path for regions with fancy upsampling (benchmarks/RESULTS.md)
        images, top, left = decode(encoded, device, hw_decoder_load), region.top, region.left
    return resample(images, device, top, left, region.step, region.out)


def centre_square(encoded, device: str, hw_decoder_load: float, prepared: bool = False):
    """The centre 256×256 of each image: computed (decode_and_centre), or, for a set that
    `alexnet-dali prepare` stored (prepared=True), the stored square decoded as it is."""
    if prepared:
        return decode(encoded, device, hw_decoder_load)
    return decode_and_centre(encoded, device, hw_decoder_load=hw_decoder_load)


def op_seeds(count: int) -> list[dict]:
    """`seed=` arguments for the pipeline's random operators, derived from the pipeline's seed.
    DALI otherwise seeds each operator by its place among all the graph's operators, so the
    prepared graph (no resize) would draw other crops than the original one for the same seed."""
    from nvidia.dali.pipeline import Pipeline

    seed = Pipeline.current().seed
    if seed is None:
        return [{} for _ in range(count)]
    states = np.random.SeedSequence([seed, 0x5EED]).generate_state(count)
    return [dict(seed=int(s & 0x7FFFFFFF)) for s in states]


class Region(NamedTuple):
    """Where in the source image the out×out result samples (DALI nodes, source pixels)."""

    top: object
    left: object
    step: object  # source pixels per pixel of the size×size square
    out: object
    height: object
    width: object


def centre_region(encoded, size: int, window=None) -> Region:
    """The central size×size square of the image rescaled to a short side of `size`, or the
    window (x, y, side) of that square, in source pixels."""
    shape = fn.peek_image_shape(encoded)  # H, W, C after EXIF orientation, as the decoder applies it
    height, width = shape[0], shape[1]
    side = dmath.min(height, width)
    top = fn.cast((height - side) // 2, dtype=types.FLOAT)
    left = fn.cast((width - side) // 2, dtype=types.FLOAT)
    step = fn.cast(side, dtype=types.FLOAT) / float(size)
    if window is None:
        out = size
    else:
        x, y, out = window
        top, left = top + y * step, left + x * step
    return Region(top, left, step, out, height, width)


def decode_region(encoded, region: Region, device: str, hw_decoder_load: float):
    """Decode only the region's square, widened by the resampling filter's reach (at most
    `step` + 1 pixels): the same pixels as decoding the whole image, and libjpeg-turbo skips the
    blocks outside (benchmarks/RESULTS.md has the gain on the CPU). Returns the image and (top,
    left) relative to it."""
    top, left, step = region.top, region.left, region.step
    extent = region.out * step
    margin = dmath.ceil(step) + 1.0
    row0 = dmath.max(dmath.floor(top) - margin, 0.0)
    col0 = dmath.max(dmath.floor(left) - margin, 0.0)
    row1 = dmath.min(dmath.ceil(top + extent) + margin, fn.cast(region.height, dtype=types.FLOAT))
    col1 = dmath.min(dmath.ceil(left + extent) + margin, fn.cast(region.width, dtype=types.FLOAT))
    images = fn.decoders.image_slice(encoded, fn.stack(row0, col0), fn.stack(row1 - row0, col1 - col0),
                                     axis_names="HW", normalized_anchor=False, normalized_shape=False,
                                     **decoder_options(device, hw_decoder_load))
    return images, top - row0, left - col0


def resample(images, device: str, top, left, step, out: int):
    """An out×out image whose pixel (i, j) samples the source at (top + (i + ½)·step,
    left + (j + ½)·step), in coordinates whose origin is the source's top-left corner."""
    start, end = fn.stack(top, left), fn.stack(top + out * step, left + out * step)
    if step > MAX_BILINEAR_SHRINK:
        result = fn.resize(images, size=[out, out], roi_start=start, roi_end=end, roi_relative=False)
    elif device == "cpu":
        # OpenCV's warp: the same samples as resize(antialias=False), faster on the CPU (RESULTS.md)
        zero, one = fn.zeros_like(step), fn.ones_like(step)
        matrix = fn.reshape(fn.stack(step, zero, left, zero, step, top, zero, zero, one), shape=[3, 3])
        result = fn.experimental.warp_perspective(images, matrix=matrix, size=[out, out], inverse_map=True,
                                                  interp_type=types.INTERP_LINEAR, pixel_origin="corner",
                                                  border_mode="replicate")
    else:
        result = fn.resize(images, size=[out, out], roi_start=start, roi_end=end, roi_relative=False,
                           antialias=False)
    return result


def lighting_mean(mean_rgb, eigval, eigvec, sigma: float, seed: dict | None = None):
    """What crop_mirror_normalize subtracts, per image, in 0-255 units.

    Section 4.1: to each pixel add eigvec @ (alpha * eigval), alpha ~ N(0, sigma) drawn per image.
    The PCA is in [0, 1] units and the pixels in 0-255, so the shift is 255 times that; adding it
    to the pixels equals subtracting it from the mean. With sigma == 0 the mean is a constant.
    """
    mean255 = [255.0 * float(m) for m in mean_rgb]
    if sigma == 0:
        return mean255
    # shift = M @ alpha with M = 255 * eigvec @ diag(eigval): one 3×3 transform per image.
    transform = 255.0 * np.asarray(eigvec, dtype=np.float64) @ np.diag(np.asarray(eigval, dtype=np.float64))
    alpha = fn.random.normal(shape=[1, 3], stddev=sigma, **(seed or {}))
    shift = fn.reshape(fn.coord_transform(alpha, M=transform.astype(np.float32).ravel().tolist()), shape=[3])
    return types.Constant(np.asarray(mean255, dtype=np.float32)) - shift


def normalised_crop(images, *, mean, crop_pos_x=0.5, crop_pos_y=0.5, mirror=0, layout: str = "CHW",
                    dtype=types.FLOAT, crop: bool = True):
    """A 224×224 window of the 256×256 image at anchor (crop_pos · 32) (or, with crop=False, the
    image as it is), optionally mirrored, minus the (per-image) mean: centred raw RGB values, no
    division (section 2)."""
    window = dict(crop=(CROP_SIZE, CROP_SIZE), crop_pos_x=crop_pos_x, crop_pos_y=crop_pos_y) if crop else {}
    return fn.crop_mirror_normalize(images, mirror=mirror, mean=mean, std=[1.0, 1.0, 1.0], dtype=dtype,
                                    output_layout=layout, **window)


def output_layout(device: str) -> str:
    """NHWC on the GPU (a channels_last model takes it as is), NCHW on the CPU."""
    return "HWC" if device == "gpu" else "CHW"
