"""The DALI CPU pipelines on real image files, against PIL and NumPy references."""

import numpy as np
import pytest

from alexnet_dali.pipelines import evaluation_pipeline, training_pipeline
from conftest import smooth_image, write_image
from pipeline_helpers import CPU, IDENTITY_PCA, crop_reference, dali_centre_256, pil_centre_256, run_batches

# shrink factors 1.46, 1.46, 1.88, 2, 3.5 (antialiased), 1.17; 0.59 (enlarged); 1 and 1 (copied)
SIZES = [(500, 375), (375, 500), (640, 480), (512, 700), (1200, 896), (300, 300), (200, 150), (257, 256), (256, 320)]
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
    images = dali_centre_256(mixed_images)
    for path, image in zip(mixed_images, images):
        assert image.shape == (256, 256, 3), path
        reference = pil_centre_256(path)
        difference = np.abs(image.astype(np.float64) - reference)
        if "cmyk" in path:  # PIL and libjpeg-turbo convert CMYK to RGB differently
            assert difference.mean() < 3, path
            continue
        assert difference.max() <= 1, path  # one grey level: rounding of two bilinear resamplers


def numpy_bilinear(source: np.ndarray, top: float, left: float, step: float, out: int) -> np.ndarray:
    """Reference: bilinear interpolation of `source` at the pixel centres of an out×out grid
    `step` source pixels apart from the corner point (top, left); edges repeat the border pixel."""
    centres = (np.arange(out) + 0.5) * step - 0.5
    rows = np.clip(centres + top, 0, source.shape[0] - 1)
    cols = np.clip(centres + left, 0, source.shape[1] - 1)
    r0, c0 = np.floor(rows).astype(int), np.floor(cols).astype(int)
    r1, c1 = np.minimum(r0 + 1, source.shape[0] - 1), np.minimum(c0 + 1, source.shape[1] - 1)
    dr, dc = (rows - r0)[:, None, None], (cols - c0)[None, :, None]
    s = source.astype(np.float64)
    return ((s[r0][:, c0] * (1 - dc) + s[r0][:, c1] * dc) * (1 - dr)
            + (s[r1][:, c0] * (1 - dc) + s[r1][:, c1] * dc) * dr)


@pytest.mark.parametrize("branch", ["cpu", "gpu"])  # the operator each device's bilinear branch uses
@pytest.mark.parametrize("top, left, step", [(10.25, 60.5, 1.4609375), (0.0, 0.0, 2.0), (-0.3, 5.0, 0.75)])
def test_bilinear_resampling_equals_the_numpy_formula(tmp_path, branch, top, left, step):
    """White noise (every pixel independent, lossless PNG): any error in the sample positions, the
    weights or the edge handling shows. The GPU branch's operator runs here on the CPU backend."""
    from nvidia.dali import fn, pipeline_def, types

    from alexnet_dali.pipelines.common import decode, resample

    noise = np.random.default_rng(0).integers(0, 256, size=(375, 500, 3), dtype=np.uint8)
    path = str(write_image(tmp_path / "noise.png", 500, 375, array=noise))

    @pipeline_def(batch_size=1, num_threads=1, device_id=None, enable_conditionals=True)
    def pipe():
        encoded, _ = fn.readers.file(files=[path])
        node = lambda value: fn.constant(fdata=value, shape=[], dtype=types.FLOAT)  # noqa: E731
        return resample(decode(encoded, **CPU), branch, node(top), node(left), node(step), 224)

    (images,) = run_batches(pipe(), 1)
    difference = np.abs(images[0] - numpy_bilinear(noise, top, left, step, 224))
    assert difference.max() <= 0.5 + 1e-6  # rounding to uint8 only


@pytest.mark.parametrize("orientation", [3, 6, 8])  # rotated 180°, 90° clockwise, 90° anticlockwise
def test_exif_orientation_is_applied_before_the_centre_crop(tmp_path, orientation):
    """A phone photo stored sideways: the centre square, the window and the decoded region are all
    taken from the upright image."""
    from PIL import Image

    path, unrotated = tmp_path / "sideways.jpg", tmp_path / "unrotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(smooth_image(640, 400, seed=4)).save(path, quality=95, exif=exif)
    Image.fromarray(smooth_image(640, 400, seed=4)).save(unrotated, quality=95)

    images = dali_centre_256([str(path)], num_threads=1)
    reference = pil_centre_256(path)
    assert np.abs(images[0] - reference).max() <= 1
    assert np.abs(images[0] - pil_centre_256(unrotated)).mean() > 10  # an ignored orientation would show


def test_short_side_256_is_copied_exactly(tmp_path):
    files = [str(write_image(tmp_path / "wide.png", 301, 256, seed=1)),
             str(write_image(tmp_path / "tall.png", 256, 290, seed=2))]

    images = dali_centre_256(files, num_threads=1)
    from PIL import Image

    wide = np.asarray(Image.open(files[0]))
    tall = np.asarray(Image.open(files[1]))
    np.testing.assert_array_equal(images[0], wide[:, 22:278])  # (301 - 256) // 2 = 22
    np.testing.assert_array_equal(images[1], tall[17:273])  # (290 - 256) // 2 = 17


def test_training_crops_equal_numpy_crops_of_the_pil_reference(mixed_images):
    files = [f for f in mixed_images if "cmyk" not in f]
    pipe = training_pipeline(files, list(range(len(files))), **CPU, mean=MEAN, lighting=0.0, debug=True,
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
    pipe = training_pipeline([str(path)], [0], **CPU, mean=MEAN, lighting=0.0, batch_size=1,
                             num_threads=1, device_id=None, **IDENTITY_PCA)
    images, _ = run_batches(pipe, 1)
    expected = np.array([200, 100, 30]) - np.array(MEAN255)
    np.testing.assert_allclose(images[0].reshape(3, -1).mean(axis=1), expected, atol=1e-4)
    np.testing.assert_allclose(images[0].reshape(3, -1).std(axis=1), 0, atol=1e-4)


def test_labels_travel_with_their_images(tmp_path):
    files = [str(write_image(tmp_path / f"{v}.png", 260, 256, array=np.full((256, 260, 3), v, np.uint8)))
             for v in (10, 60, 110, 160, 210)]
    pipe = training_pipeline(files, [0, 1, 2, 3, 4], **CPU, mean=(0, 0, 0), lighting=0.0, batch_size=5,
                             num_threads=1, device_id=None, **IDENTITY_PCA)
    images, labels = run_batches(pipe, 3)
    for image, label in zip(images, labels):
        assert np.allclose(image, (10, 60, 110, 160, 210)[int(label[0])])


def test_evaluation_is_the_centre_crop(mixed_images):
    files = [f for f in mixed_images if "cmyk" not in f]
    pipe = evaluation_pipeline(files, list(range(len(files))), **CPU, mean=MEAN, batch_size=len(files),
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
        pipe = training_pipeline(files, list(range(11)), **CPU, mean=(0, 0, 0), lighting=0.0, shard_id=shard,
                                 num_shards=2, batch_size=6, num_threads=1, device_id=None, seed=shard,
                                 **IDENTITY_PCA)
        _, labels = run_batches(pipe, 1)  # 6 per shard: the reader pads a 5-image shard with a repeat
        seen.append({int(y[0]) for y in labels})
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(range(11))
