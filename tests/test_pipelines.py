"""The DALI CPU pipelines on real image files, against PIL and NumPy references."""

import numpy as np
import pytest

from alexnet_dali.pipelines import evaluation_pipeline, training_pipeline
from alexnet_dali.pipelines.common import decode_and_centre
from conftest import write_image
from pipeline_helpers import IDENTITY_PCA, crop_reference, pil_centre_256, run_batches

SIZES = [(500, 375), (375, 500), (640, 480), (300, 300), (200, 150), (257, 256), (256, 320)]
MEAN = (0.45, 0.5, 0.55)
MEAN255 = tuple(255 * m for m in MEAN)


@pytest.fixture(scope="module")
def mixed_images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mixed")
    files = []
    for i, (w, h) in enumerate(SIZES):
        files.append(str(write_image(folder / f"{i}.jpg", w, h, seed=i)))
        files.append(str(write_image(folder / f"{i}.png", w, h, seed=100 + i)))
    files.append(str(write_image(folder / "gray.jpg", 320, 240, seed=7, mode="L")))
    files.append(str(write_image(folder / "progressive.jpg", 300, 260, seed=8, progressive=True)))
    files.append(str(write_image(folder / "cmyk.jpg", 280, 300, seed=9, mode="CMYK")))
    return files


def test_decode_and_centre_matches_pil(mixed_images):
    from nvidia.dali import fn, pipeline_def

    @pipeline_def(batch_size=len(mixed_images), num_threads=2, device_id=None)
    def pipe():
        encoded, _ = fn.readers.file(files=mixed_images, labels=[0] * len(mixed_images))
        return decode_and_centre(encoded, "cpu")

    (images,) = run_batches(pipe(), 1)
    for path, image in zip(mixed_images, images):
        assert image.shape == (256, 256, 3), path
        reference = pil_centre_256(path)
        difference = np.abs(image.astype(np.float64) - reference)
        if "cmyk" in path:  # PIL and libjpeg-turbo convert CMYK to RGB differently
            assert difference.mean() < 3, path
            continue
        assert difference.max() <= 1, path  # one grey level: rounding of two bilinear resamplers


def test_short_side_256_is_copied_exactly(tmp_path):
    from nvidia.dali import fn, pipeline_def

    files = [str(write_image(tmp_path / "wide.png", 301, 256, seed=1)),
             str(write_image(tmp_path / "tall.png", 256, 290, seed=2))]

    @pipeline_def(batch_size=2, num_threads=1, device_id=None)
    def pipe():
        encoded, _ = fn.readers.file(files=files, labels=[0, 0])
        return decode_and_centre(encoded, "cpu")

    (images,) = run_batches(pipe(), 1)
    from PIL import Image

    wide = np.asarray(Image.open(files[0]))
    tall = np.asarray(Image.open(files[1]))
    np.testing.assert_array_equal(images[0], wide[:, 22:278])  # (301 - 256) // 2 = 22
    np.testing.assert_array_equal(images[1], tall[17:273])  # (290 - 256) // 2 = 17


def test_training_crops_equal_numpy_crops_of_the_pil_reference(mixed_images):
    files = [f for f in mixed_images if "cmyk" not in f]
    pipe = training_pipeline(files, list(range(len(files))), device="cpu", mean=MEAN, lighting=0.0, debug=True,
                             batch_size=len(files), num_threads=2, device_id=None, seed=3, **IDENTITY_PCA)
    images, labels, xs, ys, flips, means = run_batches(pipe, 2)
    for image, label, x, y, flip in zip(images, labels, np.array(xs), np.array(ys), flips):
        assert image.shape == (3, 224, 224) and image.dtype == np.float32
        assert float(x).is_integer() and 0 <= x <= 32 and float(y).is_integer() and 0 <= y <= 32
        reference = crop_reference(pil_centre_256(files[int(label[0])]), int(x), int(y), bool(flip), MEAN255)
        assert np.abs(image - reference).max() <= 1.0 + 1e-3


def test_pixels_are_centred_raw_values_not_divided(tmp_path):
    """Section 2: centred raw RGB. A constant image of value v comes out as v - 255·mean."""
    path = write_image(tmp_path / "flat.png", 256, 256, array=np.full((256, 256, 3), (200, 100, 30), np.uint8))
    pipe = training_pipeline([str(path)], [0], device="cpu", mean=MEAN, lighting=0.0, batch_size=1,
                             num_threads=1, device_id=None, **IDENTITY_PCA)
    images, _ = run_batches(pipe, 1)
    expected = np.array([200, 100, 30]) - np.array(MEAN255)
    np.testing.assert_allclose(images[0].reshape(3, -1).mean(axis=1), expected, atol=1e-4)
    np.testing.assert_allclose(images[0].reshape(3, -1).std(axis=1), 0, atol=1e-4)


def test_labels_travel_with_their_images(tmp_path):
    files = [str(write_image(tmp_path / f"{v}.png", 260, 256, array=np.full((256, 260, 3), v, np.uint8)))
             for v in (10, 60, 110, 160, 210)]
    pipe = training_pipeline(files, [0, 1, 2, 3, 4], device="cpu", mean=(0, 0, 0), lighting=0.0, batch_size=5,
                             num_threads=1, device_id=None, **IDENTITY_PCA)
    images, labels = run_batches(pipe, 3)
    for image, label in zip(images, labels):
        assert np.allclose(image, (10, 60, 110, 160, 210)[int(label[0])])


def test_evaluation_is_the_centre_crop(mixed_images):
    files = [f for f in mixed_images if "cmyk" not in f]
    pipe = evaluation_pipeline(files, list(range(len(files))), device="cpu", mean=MEAN, batch_size=len(files),
                               num_threads=2, device_id=None)
    images, labels = run_batches(pipe, 1)
    for image, label in zip(images, labels):
        reference = crop_reference(pil_centre_256(files[int(label[0])]), 16, 16, False, MEAN255)
        assert np.abs(image - reference).max() <= 1.0 + 1e-3


def test_shards_are_disjoint_and_cover_the_set(tmp_path):
    files = [str(write_image(tmp_path / f"{i}.png", 256, 256, array=np.full((256, 256, 3), i, np.uint8)))
             for i in range(11)]
    seen = []
    for shard in range(2):
        pipe = training_pipeline(files, list(range(11)), device="cpu", mean=(0, 0, 0), lighting=0.0, shard_id=shard,
                                 num_shards=2, batch_size=6, num_threads=1, device_id=None, seed=shard,
                                 **IDENTITY_PCA)
        _, labels = run_batches(pipe, 1)  # 6 per shard: the reader pads a 5-image shard with a repeat
        seen.append({int(y[0]) for y in labels})
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(range(11))
