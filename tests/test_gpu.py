"""The GPU placement of every pipeline against the tested CPU path, and the hand-off of GPU batches
to torch. The tests marked gpu are skipped where torch sees no CUDA GPU (conftest.py); none of them
has run yet (no GPU was lent to the sessions that wrote them). The first test runs everywhere.

    python -m pytest -q -ra tests/test_gpu.py      (benchmarks/suite.py runs it first)
"""

import numpy as np
import pytest
import torch
from PIL import Image
from PIL.JpegImagePlugin import get_sampling

from alexnet_dali.config import HW_DECODER_LOAD
from alexnet_dali.pipelines import evaluation_pipeline, statistics_pipeline, tencrop_pipeline, training_pipeline
from conftest import make_original_layout, write_image
from pipeline_helpers import crop_reference, pil_centre_256

gpu = pytest.mark.gpu
MEAN = (0.45, 0.5, 0.55)
HW = HW_DECODER_LOAD  # the hardware decoder's share where not swept (the trainer's default)
# ImageNet's PCA (fb.resnet.torch): with lighting on, the colours really shift.
PCA = dict(eigval=(0.2175, 0.0188, 0.0045),
           eigvec=((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203)))

# With the same chroma upsampling, nvJPEG (or the hardware decoder) and libjpeg-turbo differ only in
# the rounding of their IDCTs, upsampling and colour conversion: a few grey levels, under one on
# average (the bound of DALI's own test of jpeg_fancy_upsampling). Without it they differ by up to
# 160 levels along a red/blue edge (a NumPy model of 4:2:0). For scale: on the saturated edges
# below, libjpeg-turbo's own fast and accurate IDCTs differ by up to 20 levels, 2 on average.
# Not yet measured on a GPU: the assertions print the figures.
DECODER_MAX_DIFFERENCE = 8
DECODER_MEAN_DIFFERENCE = 1.0
# After resampling: a convex combination of decoded pixels, rounded to uint8 once on each device
# (both devices' resamplers give the same samples: tests/test_pipelines.py).
PIPELINE_MAX_DIFFERENCE = DECODER_MAX_DIFFERENCE + 1


def colour_edges(width: int, height: int) -> np.ndarray:
    """Saturated stripes 7 px wide in bands 9 px high: colour edges at odd positions, inside the 2×2
    blocks whose chroma a 4:2:0 JPEG stores once (where the upsampling method shows most)."""
    colours = np.array([[255, 0, 0], [0, 0, 255], [0, 255, 0], [255, 255, 0], [255, 0, 255], [0, 255, 255]],
                       dtype=np.uint8)
    stripe = np.arange(width)[None, :] // 7 + np.arange(height)[:, None] // 9
    return colours[stripe % len(colours)]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Sharp colour edges and smooth photo-like content, 4:2:0 JPEGs, sized for each resampling
    branch: bilinear (500×375, 375×500), a plain copy (256 short side), antialiased (1200×896)."""
    folder = tmp_path_factory.mktemp("gpu")
    sizes = [(500, 375), (375, 500), (256, 320), (1200, 896)]
    paths = [write_image(folder / f"edges-{w}x{h}.jpg", w, h, array=colour_edges(w, h), quality=95, subsampling=2)
             for w, h in sizes]
    paths += [write_image(folder / f"smooth-{w}x{h}.jpg", w, h, seed=i, quality=95, subsampling=2)
              for i, (w, h) in enumerate(sizes)]
    for path in paths:
        assert get_sampling(Image.open(path)) == 2  # 4:2:0, as most ImageNet JPEGs
    return [str(p) for p in paths]


def as_arrays(tensor_list) -> list[np.ndarray]:
    if hasattr(tensor_list, "as_cpu"):  # TensorListGPU
        tensor_list = tensor_list.as_cpu()
    return [np.array(tensor_list[i]) for i in range(len(tensor_list))]


def run_once(pipe) -> list[list[np.ndarray]]:
    pipe.build()
    return [as_arrays(output) for output in pipe.run()]


def device_id(device: str):
    return 0 if device == "gpu" else None


def test_every_gpu_pipeline_is_a_graph_dali_accepts(tmp_path):
    """Defining a pipeline checks each operator's arguments against DALI's schema (an unknown
    argument raises KeyError here), with no GPU needed: so every machine checks the GPU graphs,
    the mixed decoder's jpeg_fancy_upsampling included."""
    files = [str(write_image(tmp_path / "a.jpg", 64, 48))]
    placement = dict(device="gpu", hw_decoder_load=HW, batch_size=1, num_threads=1, device_id=0)
    training_pipeline(files, [0], mean=MEAN, **PCA, lighting=0.1, **placement)
    training_pipeline(files, [0], mean=MEAN, **PCA, lighting=0.0, debug=True, **placement)
    evaluation_pipeline(files, [0], mean=MEAN, **placement)
    tencrop_pipeline(mean=MEAN, **placement)
    tencrop_pipeline(files, [0], mean=MEAN, **placement)
    statistics_pipeline(files, **placement)


@gpu
@pytest.mark.parametrize("hw_decoder_load", [0.0, 1.0])  # nvJPEG's CUDA decoder; the hardware decoder where present
def test_gpu_decoder_upsamples_chroma_as_the_cpu_decoder_does(images, hw_decoder_load):
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def

    from alexnet_dali.pipelines.common import decode

    @pipeline_def(batch_size=len(images), num_threads=2, device_id=0)
    def decoders():
        encoded, _ = fn.readers.file(files=images)
        repeated = fn.decoders.image(encoded, device="mixed", output_type=types.RGB, hw_decoder_load=hw_decoder_load,
                                     jpeg_fancy_upsampling=False)  # nvJPEG's default: the reference of what we fixed
        return decode(encoded, "cpu", HW), decode(encoded, "gpu", hw_decoder_load), repeated

    cpu, ours, repeated = run_once(decoders())
    for path, c, g, r in zip(images, cpu, ours, repeated):
        assert g.shape == c.shape, path
        difference = np.abs(g.astype(np.int64) - c)
        if "edges" in path:  # the image must have edges where the upsampling shows
            unfixed = np.abs(r.astype(np.int64) - c)
            assert unfixed.max() > 40 and unfixed.mean() > 2, (path, unfixed.max(), unfixed.mean())
        assert difference.max() <= DECODER_MAX_DIFFERENCE, (path, difference.max())
        assert difference.mean() < DECODER_MEAN_DIFFERENCE, (path, difference.mean())


@gpu
def test_gpu_region_decoding_gives_the_whole_images_pixels(images):
    """decode_region on the GPU (which the GPU pipelines do not use: on an H100 it ran at 0.17x the
    whole-image decode, benchmarks/RESULTS.md): the pixels of the whole-image GPU decode inside the
    region, to the decoders' rounding (the hardware decoder may hand regions to nvJPEG's CUDA decoder)."""
    import nvidia.dali.fn as fn
    from nvidia.dali import pipeline_def

    from alexnet_dali.pipelines.common import CROP_SIZE, SCALE_SIZE, centre_region, decode, decode_region

    @pipeline_def(batch_size=len(images), num_threads=2, device_id=0)
    def decoders():
        encoded, _ = fn.readers.file(files=images)
        region = centre_region(encoded, SCALE_SIZE, (7.0, 19.0, CROP_SIZE))
        part, top, left = decode_region(encoded, region, "gpu", HW)
        return part, decode(encoded, "gpu", HW), region.top - top, region.left - left  # the part's corner

    parts, wholes, rows, cols = run_once(decoders())
    for path, part, whole, row, col in zip(images, parts, wholes, rows, cols):
        row, col = int(row), int(col)
        assert CROP_SIZE <= part.shape[0] < whole.shape[0] and CROP_SIZE <= part.shape[1] < whole.shape[1], path
        difference = np.abs(part.astype(np.int64) - whole[row:row + part.shape[0], col:col + part.shape[1]])
        assert difference.max() <= DECODER_MAX_DIFFERENCE, (path, difference.max())
        assert difference.mean() < DECODER_MEAN_DIFFERENCE, (path, difference.mean())


@gpu
def test_gpu_evaluation_pipeline_matches_the_cpu_one(images):
    results = {}
    for device in ("cpu", "gpu"):
        pipe = evaluation_pipeline(images, list(range(len(images))), device=device, hw_decoder_load=HW, mean=MEAN,
                                   batch_size=len(images), num_threads=2, device_id=device_id(device))
        pipe.build()
        crops, labels = pipe.run()
        if device == "gpu":  # labels already on the GPU: the loop makes no per-batch host copy
            assert type(crops).__name__ == type(labels).__name__ == "TensorListGPU"
        results[device] = np.stack(as_arrays(crops))
    gpu_crops = results["gpu"].transpose(0, 3, 1, 2)  # NHWC on the GPU
    difference = np.abs(gpu_crops - results["cpu"])
    assert difference.max() <= PIPELINE_MAX_DIFFERENCE, difference.max()
    assert difference.mean() < DECODER_MEAN_DIFFERENCE, difference.mean()


def training_outputs(files, device: str, seed: int, **options):
    """One batch of the training pipeline with its debug outputs: images (CHW), labels, window
    offsets, flips and the mean each image had subtracted (lighting included)."""
    pipe = training_pipeline(files, list(range(len(files))), device=device, hw_decoder_load=HW, mean=MEAN, lighting=0.1,
                             batch_size=len(files), num_threads=2, device_id=device_id(device), debug=True,
                             seed=seed, **PCA, **options)
    images, labels, xs, ys, flips, means = run_once(pipe)
    images = np.stack(images)
    if device == "gpu":
        images = images.transpose(0, 3, 1, 2)
    return images, np.concatenate(labels), np.array(xs), np.array(ys), np.array(flips), np.stack(means)


@gpu
def test_gpu_training_pipeline_crops_flips_and_lights(images):
    """Each GPU training image equals an independent reference: PIL's centre 256×256, the window
    at the offsets the pipeline drew, mirrored where it flipped, minus the mean it subtracted (the
    PCA lighting shift included)."""
    crops, labels, xs, ys, flips, means = training_outputs(images, "gpu", seed=3)
    assert set(flips.tolist()) == {0, 1}  # both branches are checked (seed 3 draws both for 8 images)
    mean255 = 255.0 * np.asarray(MEAN)
    assert np.abs(means - mean255).max(axis=1).min() > 0.01  # every image has its own lighting shift
    assert len({tuple(m) for m in means.round(4)}) == len(images)
    assert sorted(labels.tolist()) == list(range(len(images)))  # shuffled: each label names its file
    for i, label in enumerate(labels):
        path = images[label]
        assert xs[i].is_integer() and ys[i].is_integer() and 0 <= xs[i] <= 32 and 0 <= ys[i] <= 32
        reference = crop_reference(pil_centre_256(path), int(xs[i]), int(ys[i]), bool(flips[i]), means[i])
        difference = np.abs(crops[i] - reference)
        assert difference.max() <= PIPELINE_MAX_DIFFERENCE, (path, difference.max())
        if "edges" in path:  # asymmetric content: the other mirror image would not match
            other = crop_reference(pil_centre_256(path), int(xs[i]), int(ys[i]), not flips[i], means[i])
            assert np.abs(crops[i] - other).max() > 100


@gpu
def test_gpu_training_draws_the_cpu_crops_flips_and_lighting_for_the_same_seed(images):
    """Every random operator runs on the CPU, so one seed gives the same windows, flips and lighting
    on both devices; only the decoders' rounding differs."""
    cpu = training_outputs(images, "cpu", seed=11)
    gpu_outputs = training_outputs(images, "gpu", seed=11)
    for name, a, b in zip(("labels", "x", "y", "flip", "mean"), cpu[1:], gpu_outputs[1:]):
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert len(set(cpu[4].tolist())) == 2 and len({tuple(m) for m in cpu[5].round(4)}) == len(images)
    difference = np.abs(gpu_outputs[0] - cpu[0])
    assert difference.max() <= PIPELINE_MAX_DIFFERENCE, difference.max()
    assert difference.mean() < DECODER_MEAN_DIFFERENCE, difference.mean()


@gpu
def test_gpu_training_pipeline_resumes_from_a_dali_checkpoint(images):
    """The mid-epoch resume path on the GPU: a pipeline rebuilt from `checkpoint()` continues with
    the same files, windows, flips and lighting as the one that kept running."""
    options = dict(device="gpu", hw_decoder_load=HW, mean=MEAN, lighting=0.1, batch_size=3, num_threads=2,
                   device_id=0, debug=True, seed=7, shuffle_seed=5, prefetch_queue_depth=2, **PCA)
    labels = list(range(len(images)))
    running = training_pipeline(images, labels, **options)
    running.build()
    for _ in range(4):  # past the first epoch's end (8 images in batches of 3)
        running.run()
    state = running.checkpoint()
    expected = [[as_arrays(output) for output in running.run()] for _ in range(3)]
    restored = training_pipeline(images, labels, checkpoint=state, **options)
    restored.build()
    got = [[as_arrays(output) for output in restored.run()] for _ in range(3)]
    for batch, (want, have) in enumerate(zip(expected, got)):
        for name, a, b in zip(("labels", "x", "y", "flip", "mean"), want[1:], have[1:]):
            np.testing.assert_array_equal(np.stack(a), np.stack(b), err_msg=f"batch {batch}: {name}")
        assert np.abs(np.stack(want[0]) - np.stack(have[0])).max() <= PIPELINE_MAX_DIFFERENCE


def endless(loader):
    while True:
        yield from loader  # the iterator resets itself at each epoch's end


def gpu_loader(files, seed: int):
    from nvidia.dali.plugin.pytorch import LastBatchPolicy

    from alexnet_dali.loader import DaliLoader

    pipe = training_pipeline(files, list(range(len(files))), device="gpu", hw_decoder_load=HW, mean=MEAN, lighting=0.1, batch_size=4,
                             num_threads=2, device_id=0, seed=seed, prefetch_queue_depth=2, **PCA)
    pipe.build()
    return DaliLoader(pipe, LastBatchPolicy.FILL)


@gpu
def test_gpu_loader_gives_channels_last_nchw_views_of_the_cpu_batches(images):
    """The model sees NCHW on both devices; on the GPU it is a view of the pipeline's NHWC memory
    (channels_last, what a channels_last model takes without a copy), holding the same images as
    the CPU loader's batch for the same seed."""
    from nvidia.dali.plugin.pytorch import LastBatchPolicy

    from alexnet_dali.loader import DaliLoader

    gpu_images, gpu_labels = next(iter(gpu_loader(images, seed=9)))
    assert gpu_images.shape == (4, 3, 224, 224) and gpu_images.dtype == torch.float32
    assert gpu_images.is_cuda and gpu_images.is_contiguous(memory_format=torch.channels_last)
    assert gpu_labels.is_cuda and gpu_labels.dtype == torch.int64 and gpu_labels.shape == (4,)
    pipe = training_pipeline(images, list(range(len(images))), device="cpu", hw_decoder_load=HW, mean=MEAN, lighting=0.1, batch_size=4,
                             num_threads=2, device_id=None, seed=9, prefetch_queue_depth=2, **PCA)
    pipe.build()
    cpu_images, cpu_labels = next(iter(DaliLoader(pipe, LastBatchPolicy.FILL)))
    assert cpu_images.shape == (4, 3, 224, 224) and cpu_images.is_contiguous()
    assert torch.equal(gpu_labels.cpu(), cpu_labels)
    difference = (gpu_images.cpu() - cpu_images).abs()
    assert difference.max().item() <= PIPELINE_MAX_DIFFERENCE, difference.max().item()
    assert difference.mean().item() < DECODER_MEAN_DIFFERENCE, difference.mean().item()


# About 0.25-0.5 s of a GPU's clock: far longer than DALI takes to produce a few small batches.
SLEEP_CYCLES = 500_000_000


@gpu
def test_gpu_batch_is_not_overwritten_while_queued_kernels_still_read_it(images):
    """The iterator hands out DALI's own buffers (zero-copy under DALI's default executor). A
    training step queues its kernels and asks for the next batch at once; the batch it dropped
    must keep its pixels until the queued kernels have read them."""
    batches = endless(gpu_loader(images, seed=5))
    still_queued = 0
    for trial in range(6):
        images_now, _ = next(batches)
        expected = images_now.double().sum().item()  # synchronous: what the batch holds now
        torch.cuda._sleep(SLEEP_CYCLES)  # the stream is busy, as behind a training step
        late = images_now.double().sum()  # queued behind the sleep
        queued = torch.cuda.Event()
        queued.record()
        del images_now
        for _ in range(4):
            next(batches)  # DALI produces (and allocates) more batches meanwhile
        still_queued += not queued.query()
        assert late.item() == pytest.approx(expected, rel=1e-12), f"trial {trial}: the batch changed under a queued read"
    if still_queued == 0:
        pytest.skip("the queued read always finished before DALI produced the next batches: nothing was tested")


@gpu
def test_gpu_pca_pass_matches_the_cpu_one(images):
    from alexnet_dali.pca import compute_pca
    from alexnet_dali.placement import place

    cpu = compute_pca(images, place("cpu", threads=2, hw_decoder_load=HW), batch_size=4)
    gpu_pca = compute_pca(images, place("gpu", threads=2, hw_decoder_load=HW), batch_size=4)
    np.testing.assert_allclose(gpu_pca.mean, cpu.mean, atol=2 / 255)  # decoders differ by a grey level or so
    np.testing.assert_allclose(gpu_pca.eigval, cpu.eigval, rtol=0.05, atol=1e-4)


@gpu
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
    predictor = Predictor.from_checkpoint(checkpoint, place("gpu", threads=2, hw_decoder_load=HW), batch_size=8,
                                          precision="bf16")
    probabilities = predictor.predict_files(sorted((layout["data"] / "val").glob("*.jpg")))
    assert probabilities.shape == (8, 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-3)
    cpu = Predictor.from_checkpoint(checkpoint, place("cpu", threads=2, hw_decoder_load=HW), batch_size=8)
    reference = cpu.predict_files(sorted((layout["data"] / "val").glob("*.jpg")))
    assert np.abs(probabilities - reference).max() < 0.05  # bf16 autocast and nvJPEG vs fp32 on the CPU
    compiled = Predictor.from_checkpoint(checkpoint, place("gpu", threads=2, hw_decoder_load=HW), batch_size=8,
                                         precision="bf16", compile=True)  # inductor's kernels (predict --compile)
    assert np.abs(compiled.predict_files(sorted((layout["data"] / "val").glob("*.jpg"))) - probabilities).max() < 0.02


@gpu
def test_a_gpu_placement_lets_cudnn_time_its_algorithms_for_every_use():
    """Training, evaluation, prediction and the benchmarks all place through place(): each gets
    cuDNN's autotuning (on the H200, ten-crop prediction was measured without it)."""
    from alexnet_dali.placement import place

    torch.backends.cudnn.benchmark = False
    place("gpu", threads=1, hw_decoder_load=HW)
    assert torch.backends.cudnn.benchmark
    place("cpu", threads=1, hw_decoder_load=HW)
    assert torch.backends.cudnn.benchmark  # a CPU placement leaves it as it was


@gpu
def test_gpu_training_with_compile_bf16_and_channels_last(tmp_path):
    """--compile on the GPU path (bf16 autocast, channels_last inputs from DALI): it trains, every
    loss is finite, and the checkpoint holds the plain network's keys."""
    from alexnet_dali.config import TrainConfig
    from alexnet_dali.model import AlexNetModule
    from alexnet_dali.train import train

    layout = make_original_layout(tmp_path / "data", per_split={"train": 16, "val": 8})
    config = TrainConfig(data=str(layout["data"]), labels=str(layout["labels"]),
                         label_encoding=str(layout["label_encoding"]), out=str(tmp_path / "run"), epochs=2,
                         batch_size=8, lr=1e-3, device="gpu", precision="bf16", compile=True)
    state = train(config)
    assert all(np.isfinite(state.history["loss"])) and next(state.bundle.net.parameters()).is_cuda
    saved = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["model"]
    assert saved.keys() == AlexNetModule(2).state_dict().keys()
