"""Running DALI pipelines in tests and the independent references they are checked against."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

# The placement arguments of a CPU-only pipeline (pipelines take them from placement.Placement).
CPU = dict(device="cpu", hw_decoder_load=0.0)

IDENTITY_PCA = dict(eigval=(0.0, 0.0, 0.0), eigvec=((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)))


def run_batches(pipe, batches: int) -> list[list[np.ndarray]]:
    """Outputs of `batches` runs: one list per output, one array per sample."""
    pipe.build()
    outputs = None
    for _ in range(batches):
        result = pipe.run()
        if outputs is None:
            outputs = [[] for _ in result]
        for store, tensor_list in zip(outputs, result):
            store += [np.array(tensor_list[i]) for i in range(len(tensor_list))]
    return outputs


def dali_centre_256(files, num_threads: int = 2) -> list[np.ndarray]:
    """DALI on the CPU: decode, short side 256, centre 256×256 (uint8 HWC), one array per file."""
    from nvidia.dali import fn, pipeline_def

    from alexnet_dali.pipelines.common import decode_and_centre

    @pipeline_def(batch_size=len(files), num_threads=num_threads, device_id=None, enable_conditionals=True)
    def pipe():
        encoded, _ = fn.readers.file(files=list(files), labels=[0] * len(files))
        return decode_and_centre(encoded, **CPU)

    (images,) = run_batches(pipe(), 1)
    return images


def pil_centre_256(path) -> np.ndarray:
    """Reference for decode + short side 256 + centre 256×256 (square offset rounded down), with
    PIL, float64 HWC: bilinear interpolation at the pixel centres (PIL's affine transform) when
    the image shrinks by at most 2×, PIL's antialiased bilinear resize when it shrinks more."""
    image = ImageOps.exif_transpose(Image.open(path)).convert("RGB")  # upright, as a viewer shows it
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    step = side / 256
    if step <= 2:
        resampled = image.transform((256, 256), Image.AFFINE, (step, 0, left, 0, step, top), resample=Image.BILINEAR)
    else:
        resampled = image.resize((256, 256), Image.BILINEAR, box=(left, top, left + side, top + side))
    return np.asarray(resampled, dtype=np.float64)


def crop_reference(image256: np.ndarray, x: int, y: int, mirror: bool, mean255) -> np.ndarray:
    """NumPy: the 224 window at (x, y), mirrored if asked, minus the mean, as CHW."""
    patch = image256[y:y + 224, x:x + 224]
    if mirror:
        patch = patch[:, ::-1]
    return (patch - np.asarray(mean255, dtype=np.float64)).transpose(2, 0, 1)
