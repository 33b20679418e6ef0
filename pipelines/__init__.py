"""DALI pipeline definitions (installed as alexnet_dali.pipelines). Nothing here imports torch.

Every pipeline takes `device="cpu"|"gpu"`: the graph is the same, only the decoder ("cpu" or
"mixed", i.e. nvJPEG / the hardware JPEG decoder) and the kernels after it change place.
"""

from .common import READER_NAME, decode_and_centre, normalised_crop, lighting_mean
from .evaluate import evaluation_pipeline
from .prepare import prepare_pipeline
from .stats import statistics_pipeline
from .tencrop import TENCROP_ORDER, tencrop_pipeline
from .train import training_pipeline

__all__ = [
    "READER_NAME", "decode_and_centre", "normalised_crop", "lighting_mean",
    "training_pipeline", "evaluation_pipeline", "tencrop_pipeline", "TENCROP_ORDER", "statistics_pipeline",
    "prepare_pipeline",
]
