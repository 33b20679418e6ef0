"""The GPU placement of every pipeline against the tested CPU path. Skipped where torch sees no
CUDA GPU (conftest.py); these have not yet run on a GPU (none was lent to the sessions so far)."""

import numpy as np
import pytest

from alexnet_dali.pipelines import evaluation_pipeline, training_pipeline
from conftest import make_original_layout, write_image
from pipeline_helpers import IDENTITY_PCA

pytestmark = pytest.mark.gpu
MEAN = (0.45, 0.5, 0.55)



@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpu")
    return [str(write_image(folder / f"{i}.jpg", w, h, seed=i))
            for i, (w, h) in enumerate([(500, 375), (375, 500), (256, 300), (1200, 896)])]  # bilinear, copy, antialiased


def test_gpu_evaluation_pipeline_matches_the_cpu_one(images):
    results = {}
    for device in ("cpu", "gpu"):
        pipe = evaluation_pipeline(images, list(range(4)), device=device, mean=MEAN, batch_size=4, num_threads=2,
                                   device_id=0 if device == "gpu" else None)
        pipe.build()
        crops, labels = pipe.run()
        if device == "gpu":  # labels already on the GPU: the loop makes no per-batch host copy
            assert type(crops).__name__ == type(labels).__name__ == "TensorListGPU"
            crops = crops.as_cpu()
        results[device] = np.stack([np.array(crops[i]) for i in range(4)])
    gpu = results["gpu"].transpose(0, 3, 1, 2)  # NHWC on the GPU
    # nvJPEG and libjpeg-turbo round their IDCTs differently: a few grey levels at most
    assert np.abs(gpu - results["cpu"]).mean() < 1.0
    assert np.abs(gpu - results["cpu"]).max() <= 12


def test_gpu_training_pipeline_crops_flips_and_lights(images):
    pipe = training_pipeline(images, list(range(4)), device="gpu", mean=MEAN, lighting=0.0, batch_size=4,
                             num_threads=2, device_id=0, debug=True, seed=3, **IDENTITY_PCA)
    pipe.build()
    out = pipe.run()
    crops = out[0].as_cpu()
    assert np.array(crops[0]).shape == (224, 224, 3)
    xs = [float(np.array(out[2][i])) for i in range(4)]
    assert all(0 <= x <= 32 and x.is_integer() for x in xs)


def test_gpu_training_crops_equal_the_cpu_ones_for_the_same_seed(images):
    """Every random operator runs on the CPU, so one seed gives the same windows and flips on both
    devices; only the decoders' rounding differs."""
    results = {}
    for device in ("cpu", "gpu"):
        pipe = training_pipeline(images, list(range(4)), device=device, mean=MEAN, lighting=0.0, batch_size=4,
                                 num_threads=2, device_id=0 if device == "gpu" else None, debug=True, seed=11,
                                 **IDENTITY_PCA)
        pipe.build()
        out = pipe.run()
        crops = out[0].as_cpu() if device == "gpu" else out[0]
        results[device] = (np.stack([np.array(crops[i]) for i in range(4)]),
                           [(float(np.array(out[2][i])), float(np.array(out[3][i])), int(np.array(out[4][i])))
                            for i in range(4)])
    assert results["gpu"][1] == results["cpu"][1]  # the same windows and flips
    gpu = results["gpu"][0].transpose(0, 3, 1, 2)
    assert np.abs(gpu - results["cpu"][0]).mean() < 1.0
    assert np.abs(gpu - results["cpu"][0]).max() <= 12


def test_gpu_pca_pass_matches_the_cpu_one(images):
    from alexnet_dali.pca import compute_pca

    from alexnet_dali.placement import place

    cpu = compute_pca(images, place("cpu", threads=2, hw_decoder_load=0.65), batch_size=4)
    gpu = compute_pca(images, place("gpu", threads=2, hw_decoder_load=0.65), batch_size=4)
    np.testing.assert_allclose(gpu.mean, cpu.mean, atol=2 / 255)  # decoders differ by a grey level or so
    np.testing.assert_allclose(gpu.eigval, cpu.eigval, rtol=0.05, atol=1e-4)


def test_gpu_training_run_and_ten_crop_prediction(tmp_path):
    from alexnet_dali.config import TrainConfig
    from alexnet_dali.placement import place
    from alexnet_dali.predict import Predictor
    from alexnet_dali.train import train

    layout = make_original_layout(tmp_path / "data", per_split={"train": 16, "val": 8})
    config = TrainConfig(data=str(layout["data"]), labels=str(layout["labels"]),
                         label_encoding=str(layout["label_encoding"]), out=str(tmp_path / "run"), epochs=2,
                         batch_size=8, lr=3e-5, device="gpu")
    state = train(config)
    assert len(state.history["loss"]) == 2 and next(state.bundle.net.parameters()).is_cuda
    checkpoint = tmp_path / "run" / "last.pt"
    predictor = Predictor.from_checkpoint(checkpoint, place("gpu", threads=2, hw_decoder_load=0.65), batch_size=8,
                                          precision="bf16")
    probabilities = predictor.predict_files(sorted((layout["data"] / "val").glob("*.jpg")))
    assert probabilities.shape == (8, 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-3)
    cpu = Predictor.from_checkpoint(checkpoint, place("cpu", threads=2, hw_decoder_load=0.65), batch_size=8)
    reference = cpu.predict_files(sorted((layout["data"] / "val").glob("*.jpg")))
    assert np.abs(probabilities - reference).max() < 0.05  # bf16 autocast and nvJPEG vs fp32 on the CPU
