"""Running DALI pipelines in tests and the independent references they are checked against."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

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
