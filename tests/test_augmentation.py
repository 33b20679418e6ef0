"""Section 4.1 of the paper, on real image files through the real DALI pipeline: the PCA of the
training set, the lighting noise, the 224 crops inside the centre 256, flips, seeds."""

import numpy as np
import pytest

from alexnet_dali.pca import PCA, compute_pca, pca_from_moments
from alexnet_dali.pipelines import training_pipeline
from conftest import cpu_placement, write_image
from pipeline_helpers import CPU, IDENTITY_PCA, dali_centre_256, pil_centre_256, run_batches


def numpy_pca(pixels: np.ndarray):
    """Reference: mean, eigenvalues (descending) and eigenvectors of the RGB covariance, [0, 1] units."""
    x = pixels.reshape(-1, 3).astype(np.float64) / 255.0
    mean = x.mean(axis=0)
    cov = np.cov(x, rowvar=False, bias=True)
    eigval, eigvec = np.linalg.eigh(cov)
    order = np.argsort(eigval)[::-1]
    return mean, eigval[order], eigvec[:, order]


@pytest.fixture(scope="module")
def varied_images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pca")
    sizes = [(500, 375), (375, 500), (256, 256), (640, 300), (180, 240), (333, 333)]
    files = [str(write_image(folder / f"{i}.jpg", w, h, seed=20 + i)) for i, (w, h) in enumerate(sizes)]
    files.append(str(write_image(folder / "p.png", 300, 420, seed=40)))
    return files


def dali_pixels(files):
    return np.stack(dali_centre_256(files))


def test_pca_equals_numpy_over_the_same_resized_pixels(varied_images):
    pca = compute_pca(varied_images, cpu_placement(threads=2), batch_size=3)  # 7 files: the last batch is padded
    mean, eigval, eigvec = numpy_pca(dali_pixels(varied_images))
    np.testing.assert_allclose(pca.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(pca.eigval, eigval, rtol=1e-9)
    np.testing.assert_allclose(np.abs(pca.eigvec_array), np.abs(eigvec), atol=1e-9)
    assert pca.images == len(varied_images)
    assert list(pca.eigval) == sorted(pca.eigval, reverse=True)
    # and close to the PCA of an independent resampler (PIL), within the 1-grey-level difference
    p_mean, p_eigval, _ = numpy_pca(np.stack([pil_centre_256(f) for f in varied_images]))
    np.testing.assert_allclose(pca.mean, p_mean, atol=2e-3)
    np.testing.assert_allclose(pca.eigval, p_eigval, rtol=0.02)


def test_pca_from_moments_is_the_covariance_eigendecomposition():
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, size=(5000, 3)) @ np.array([[1, 0.5, 0.2], [0, 0.5, 0.3], [0, 0, 0.5]])
    pixels = np.clip(pixels, 0, 255).astype(np.int64)
    sums = pixels.sum(axis=0)
    second = pixels.T @ pixels
    pca = pca_from_moments(len(pixels), sums, second[np.triu_indices(3)], images=1)
    mean, eigval, eigvec = numpy_pca(pixels)
    np.testing.assert_allclose(pca.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(pca.eigval, eigval, rtol=1e-9)
    np.testing.assert_allclose(np.abs(pca.eigvec_array), np.abs(eigvec), atol=1e-9)


def random_pca(seed=0) -> PCA:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return PCA(mean=(0.4, 0.45, 0.5), eigval=(0.2, 0.03, 0.006), eigvec=tuple(map(tuple, q)))


def test_lighting_shift_has_the_papers_distribution(tmp_path):
    """Over many draws of one constant-colour image, shift = eigvec @ (alpha * eigval) · 255 with
    alpha ~ N(0, sigma): mean 0, covariance eigvec diag((sigma eigval)^2) eigvec^T · 255²."""
    colour = np.array([120.0, 130.0, 140.0])
    path = write_image(tmp_path / "flat.png", 256, 256, array=np.full((256, 256, 3), colour, np.uint8))
    pca, sigma, batch, runs = random_pca(), 0.1, 100, 20
    pipe = training_pipeline([str(path)] * batch, [0] * batch, **CPU, mean=pca.mean, eigval=pca.eigval,
                             eigvec=pca.eigvec, lighting=sigma, batch_size=batch, num_threads=2, device_id=None,
                             seed=11)
    images, _ = run_batches(pipe, runs)
    flat = np.stack(images).reshape(len(images), 3, -1)
    np.testing.assert_allclose(flat.std(axis=2), 0, atol=1e-3)  # one shift per image, the same at every pixel
    shifts = flat.mean(axis=2) - (colour - 255 * np.array(pca.mean))  # what lighting added
    n = len(shifts)
    vec = pca.eigvec_array
    expected = 255.0**2 * vec @ np.diag((sigma * np.array(pca.eigval)) ** 2) @ vec.T
    # the sample mean is within 5 standard errors of 0
    assert np.all(np.abs(shifts.mean(axis=0)) < 5 * np.sqrt(np.diag(expected) / n))
    # each sample covariance entry is within 5 standard errors of the expected one (Gaussian shifts:
    # var(S_ij) = (C_ij² + C_ii C_jj) / n)
    sample = np.cov(shifts, rowvar=False, bias=True)
    tolerance = 5 * np.sqrt((expected**2 + np.outer(np.diag(expected), np.diag(expected))) / n)
    assert np.all(np.abs(sample - expected) < tolerance), (sample, expected)
    # a few grey levels, not a repaint
    assert 1 < np.sqrt(np.diag(expected)).max() < 10
    # and the shift lies along the principal directions: almost all its variance on the first axis
    along = shifts @ vec
    assert along[:, 0].var() > 20 * along[:, 1].var()


def test_lighting_zero_means_no_shift(tmp_path):
    colour = np.array([50.0, 150.0, 250.0])
    path = write_image(tmp_path / "flat.png", 256, 256, array=np.full((256, 256, 3), colour, np.uint8))
    pca = random_pca()
    pipe = training_pipeline([str(path)] * 8, [0] * 8, **CPU, mean=pca.mean, eigval=pca.eigval,
                             eigvec=pca.eigvec, lighting=0.0, batch_size=8, num_threads=1, device_id=None)
    images, _ = run_batches(pipe, 2)
    np.testing.assert_allclose(np.stack(images), np.broadcast_to((colour - 255 * np.array(pca.mean))[:, None, None],
                                                                 (16, 3, 224, 224)), atol=1e-4)


def coordinate_image(width: int, height: int, scale: int = 1) -> np.ndarray:
    """Margins magenta (255, 0, 255); the centre square encodes position: R = column, G = row
    (in 256-pixel units), B = 0. Magenta never occurs in the centre."""
    image = np.zeros((height, width, 3), np.uint8)
    image[:] = (255, 0, 255)
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    yy, xx = np.mgrid[0:side, 0:side] // scale
    image[top:top + side, left:left + side, 0] = xx
    image[top:top + side, left:left + side, 1] = yy
    image[top:top + side, left:left + side, 2] = 0
    return image


def sample_crops(path, draws: int, seed: int, batch: int = 64):
    pipe = training_pipeline([str(path)] * batch, [0] * batch, **CPU, mean=(0, 0, 0), lighting=0.0,
                             batch_size=batch, num_threads=2, device_id=None, seed=seed, **IDENTITY_PCA)
    images, _ = run_batches(pipe, draws // batch)
    return np.stack(images)


def test_crops_stay_inside_the_centre_and_cover_every_offset(tmp_path):
    path = write_image(tmp_path / "margins.png", 320, 256, array=coordinate_image(320, 256))
    crops = sample_crops(path, 512, seed=5)
    assert crops[:, 2].max() == 0  # blue only lives in the magenta margins: never cropped
    offsets_x, offsets_y, flipped = [], [], []
    for crop in crops:
        red, green = crop[0], crop[1]
        mirrored = red[0, 0] > red[0, -1]
        x0 = red[0, -1] if mirrored else red[0, 0]  # the leftmost source column of the window
        expected = np.arange(x0, x0 + 224)[::-1] if mirrored else np.arange(x0, x0 + 224)
        np.testing.assert_array_equal(red[0], expected)  # the window is a contiguous, unscaled slice
        offsets_x.append(int(x0))
        offsets_y.append(int(green[0, 0]))
        flipped.append(mirrored)
    assert set(offsets_x) == set(range(33)) and set(offsets_y) == set(range(33))
    # flips: binomial(512, 0.5) lies within 4 standard deviations of 256
    assert abs(sum(flipped) - 256) < 4 * np.sqrt(512 * 0.25)


@pytest.mark.parametrize("shrink", [2, 3])
def test_crops_of_a_resampled_image_never_reach_the_margins(tmp_path, shrink):
    """A JPEG (4:4:4, so chroma is not blurred by subsampling) whose centre square shrinks 2× or
    3× to 256; the magenta margins (64 px each side) never enter a crop. Bilinear interpolation
    (shrink 2) reads only the 2×2 source pixels around each sample: no margin at all. The
    antialiasing filter (shrink 3) reaches one source pixel past the square's edge, so the
    outermost column of a window at offset 0 or 32 carries a small blend of the margin (about
    1/9); nothing else sees any."""
    width, height = 320 * shrink, 256 * shrink
    path = write_image(tmp_path / "margins.jpg", width, height, array=coordinate_image(width, height, scale=shrink),
                       quality=95, subsampling=0)
    crops = sample_crops(path, 256, seed=6)
    blue = crops[:, 2]
    assert blue[:, :, 1:-1].max() < 8  # a margin pixel would bring blue near 255; JPEG noise is a few levels
    touched = set(np.where((blue > 20).any(axis=(0, 1)))[0])
    assert touched == (set() if shrink == 2 else {0, 223})


def test_same_seed_same_batches_other_seed_other_batches(tmp_path):
    files = [str(write_image(tmp_path / f"{i}.jpg", 300, 280, seed=i)) for i in range(6)]
    pca = random_pca()

    def first_batches(seed):
        pipe = training_pipeline(files, list(range(6)), **CPU, mean=pca.mean, eigval=pca.eigval,
                                 eigvec=pca.eigvec, lighting=0.1, shuffle_seed=seed, batch_size=3, num_threads=2,
                                 device_id=None, seed=seed)
        images, labels = run_batches(pipe, 4)
        return np.stack(images), np.concatenate(labels)

    a, b, c = first_batches(1), first_batches(1), first_batches(2)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_alexnet_computes_the_pca_once_then_reads_the_cache(tmp_path, capsys):
    from alexnet_dali import AlexNet
    from conftest import make_original_layout

    layout = make_original_layout(tmp_path / "data")
    first = AlexNet(layout["data"], layout["labels"], layout["label_encoding"], device="cpu", out_dir=tmp_path / "a",
                    batch_size=8)
    assert "computing the RGB PCA over 8 training images" in capsys.readouterr().out
    cached = list((layout["data"] / ".alexnet-dali").glob("pca-*.json"))
    assert len(cached) == 1
    second = AlexNet(layout["data"], layout["labels"], layout["label_encoding"], device="cpu", out_dir=tmp_path / "b",
                    batch_size=8)
    assert "computing the RGB PCA" not in capsys.readouterr().out
    assert second.pca == first.pca
    reference = compute_pca(first.data.train.files, cpu_placement())
    np.testing.assert_allclose(first.pca.mean, reference.mean, rtol=1e-12)
