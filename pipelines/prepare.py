"""`alexnet-dali prepare`'s pixels: exactly the training pipeline's step (short side to 256 with
the same resampling, then the centre 256×256), as uint8 HWC images to be stored as JPEGs."""

from __future__ import annotations

import nvidia.dali.fn as fn
import nvidia.dali.types as types
from nvidia.dali import pipeline_def

from .common import SCALE_SIZE, decode_and_centre

ENCODED_INPUT = "encoded"


@pipeline_def(enable_conditionals=True)
def prepare_pipeline(*, device: str, hw_decoder_load: float):
    """Encoded bytes fed to ENCODED_INPUT -> the centre SCALE_SIZE² square, uint8 RGB HWC."""
    encoded = fn.external_source(name=ENCODED_INPUT, dtype=types.UINT8, ndim=1)
    return decode_and_centre(encoded, device, hw_decoder_load=hw_decoder_load, size=SCALE_SIZE)
