"""Ten-crop prediction (section 4.1: four corners and the centre of the 256×256 image, and their
mirrors, softmax averaged), on real image files, against NumPy and PIL references."""

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet_dali.data import DataError, index_dataset
from alexnet_dali.model import AlexNetModule
from alexnet_dali.pca import PCA
from alexnet_dali.pipelines import TENCROP_ORDER
from alexnet_dali.evaluate import TEN_VIEWS, FixedRows, evaluate_split
from alexnet_dali.predict import Predictor
from alexnet_dali.state import ModelBundle
from conftest import cpu_placement, graphs_captured, make_class_folders, run_cli, smooth_image, write_image
from pipeline_helpers import pil_centre_256

PCA_FOR_TESTS = PCA(mean=(0.48, 0.46, 0.41), eigval=(0.1, 0.01, 0.001),
                    eigvec=((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)))
MEAN255 = np.array([255.0 * m for m in PCA_FOR_TESTS.mean]).astype(np.float32)  # as the pipeline gets it


def test_documented_order_of_the_ten_views():
    """Corner anchors in pixels of the 256×256 image: 0 or 32; the centre: 16."""
    anchors = [(name, int(x * 32), int(y * 32), m) for name, x, y, m in TENCROP_ORDER]
    plain = [("top-left", 0, 0), ("top-right", 32, 0), ("bottom-left", 0, 32), ("bottom-right", 32, 32),
             ("centre", 16, 16)]
    assert anchors == [(n, x, y, 0) for n, x, y in plain] + [("mirrored " + n, x, y, 1) for n, x, y in plain]
    assert len(TENCROP_ORDER) == TEN_VIEWS  # what a compiled evaluator pads its batches to


def reference_crops(image256: np.ndarray) -> np.ndarray:
    """NumPy: the documented order (TENCROP_ORDER) of 224 windows of the normalised 256×256 image."""
    normalised = image256.astype(np.float32) - MEAN255
    views = []
    for _, x, y, mirrored in TENCROP_ORDER:
        left, top = int(x * 32), int(y * 32)
        patch = normalised[top:top + 224, left:left + 224]
        views.append((patch[:, ::-1] if mirrored else patch).transpose(2, 0, 1))
    return np.stack(views)


def sensitive_net(num_classes=5, seed=0) -> AlexNetModule:
    """An AlexNet whose output depends strongly on its input (the paper's init is nearly constant
    before training, which would let wrong crops pass unnoticed)."""
    torch.manual_seed(seed)
    net = AlexNetModule(num_classes)
    for name, layer in net.weighted_layers().items():
        torch.nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
        torch.nn.init.zeros_(layer.bias)
    with torch.no_grad():
        net.features.conv1.weight /= 16.0  # inputs are centred 0-255 values
        net.classifier.fc8.weight /= 4.0
    return net.eval()


def reference_prediction(net, crops: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(net(torch.from_numpy(np.ascontiguousarray(crops))), dim=1).mean(dim=0).numpy()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tencrop")
    return {
        "wide256": write_image(folder / "wide256.png", 300, 256, seed=1),  # even margins: 22 px
        "tall256": write_image(folder / "tall256.png", 256, 290, seed=2),  # odd margins: 17 / 17
        "square": write_image(folder / "square.png", 256, 256, seed=3),
        "big": write_image(folder / "big.jpg", 500, 375, seed=4),
        "small": write_image(folder / "small.jpg", 180, 200, seed=5),
    }


@pytest.fixture(scope="module")
def predictor():
    return Predictor(bundle(sensitive_net(), [f"c{i}" for i in range(5)]), cpu_placement(), batch_size=4)


def bundle(net, classes) -> ModelBundle:
    return ModelBundle(net, PCA_FOR_TESTS, tuple(classes))


def test_ten_crops_are_exact_numpy_slices_when_no_resampling_is_needed(images, predictor):
    names = ["wide256", "tall256", "square"]
    crops = predictor.crops([images[n].read_bytes() for n in names], names).numpy()
    assert crops.shape == (3, 10, 3, 224, 224)
    for crops_of_one, name in zip(crops, names):
        pixels = np.asarray(Image.open(images[name]).convert("RGB"))
        h, w = pixels.shape[:2]
        top, left = (h - 256) // 2, (w - 256) // 2
        np.testing.assert_array_equal(crops_of_one, reference_crops(pixels[top:top + 256, left:left + 256]))


def test_ten_crops_of_resampled_jpegs_match_pil_within_one_grey_level(images, predictor):
    names = ["big", "small"]
    crops = predictor.crops([images[n].read_bytes() for n in names], names).numpy()
    for crops_of_one, name in zip(crops, names):
        assert np.abs(crops_of_one - reference_crops(pil_centre_256(images[name]))).max() <= 1.0 + 1e-4


def test_prediction_is_the_mean_softmax_over_the_reference_crops(images, predictor):
    paths = [images[n] for n in ("wide256", "big", "small")]
    probabilities = predictor.predict_files(paths)
    assert probabilities.shape == (3, 5)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)
    for path, row in zip(paths, probabilities):
        reference = reference_prediction(predictor.net, reference_crops(pil_centre_256(path)))
        np.testing.assert_allclose(row, reference, atol=2e-3)  # resampling differs by <= 1 grey level
    exact = reference_prediction(predictor.net, reference_crops(
        np.asarray(Image.open(images["wide256"]).convert("RGB"))[:, 22:278]))
    np.testing.assert_allclose(probabilities[0], exact, rtol=1e-4, atol=1e-6)
    # and the network is not blind: different images get clearly different predictions
    assert np.abs(probabilities[0] - probabilities[1]).max() > 0.05


def test_mirrored_image_same_prediction_and_margins_do_not_matter(tmp_path, predictor):
    pixels = smooth_image(320, 256, seed=9)  # 32 px margins on each side
    original = write_image(tmp_path / "o.png", 320, 256, array=pixels)
    mirrored = write_image(tmp_path / "m.png", 320, 256, array=np.ascontiguousarray(pixels[:, ::-1]))
    repainted = pixels.copy()
    repainted[:, :32] = 255 - repainted[:, :32]
    repainted[:, 288:] = 0
    margins = write_image(tmp_path / "r.png", 320, 256, array=repainted)
    other = write_image(tmp_path / "x.png", 320, 256, seed=10)
    p = predictor.predict_files([original, mirrored, margins, other])
    np.testing.assert_allclose(p[1], p[0], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(p[2], p[0])
    assert np.abs(p[3] - p[0]).max() > 0.05


def test_batched_and_single_predictions_agree(images, predictor):
    paths = list(images.values())  # 5 images, batch size 4: two pipeline runs
    batched = predictor.predict_files(paths)
    singles = np.stack([predictor.predict_files([p])[0] for p in paths])
    np.testing.assert_allclose(batched, singles, rtol=1e-5, atol=1e-7)


def test_bad_paths_and_undecodable_files_are_named(tmp_path, images, predictor):
    with pytest.raises(DataError, match=r"nope\.jpg: no such file"):
        predictor.predict_files([images["big"], tmp_path / "nope.jpg"])
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(images["big"].read_bytes()[:3000])
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "text.jpg"
    text.write_text("not a picture")
    with pytest.raises(DataError, match=r"broken\.jpg: truncated JPEG"):
        predictor.predict_files([images["big"], broken])
    with pytest.raises(DataError, match=r"empty\.jpg: empty file"):
        predictor.predict_files([empty])
    with pytest.raises(DataError, match=r"text\.jpg: not an image"):
        predictor.predict_files([text, images["small"]])
    assert predictor.predict_files([images["small"]]).shape == (1, 5)  # the pipeline recovered


def test_api_predict_predict_n_save_and_load(tmp_path, images):
    from alexnet_dali import AlexNet

    data = make_class_folders(tmp_path / "data", classes=("ant", "bee", "cow", "dog", "eel"))
    model = AlexNet(data, device="cpu", out_dir=tmp_path / "run", verbose=False, batch_size=4)
    model.net = sensitive_net()
    one = model.predict(str(images["big"]))
    assert one.shape == (5,) and abs(one.sum() - 1) < 1e-5
    many = model.predict([images["big"], images["small"]])
    assert many.shape == (2, 5)
    np.testing.assert_allclose(many[0], one, rtol=1e-5, atol=1e-7)
    top = model.predict_n(images["big"], n=3)
    assert [label for label, _ in top] == [model.classes[i] for i in np.argsort(-one)[:3]]
    assert [p for _, p in top] == sorted((p for _, p in top), reverse=True)
    assert all(label in ("ant", "bee", "cow", "dog", "eel") for label, _ in top)
    np.testing.assert_allclose([p for _, p in top], np.sort(one)[::-1][:3], rtol=1e-6)
    saved = model.save(tmp_path / "model.pt")
    loaded = AlexNet.load(saved, device="cpu")  # needs no data set
    assert loaded.classes == model.classes and loaded.pca == model.pca
    np.testing.assert_array_equal(loaded.predict([images["big"], images["small"]]), many)


def labelled_set(root: Path):
    """10 validation images, 2 a class: batches of 4 end in a partial one."""
    return make_class_folders(root, per_split={"train": 2, "val": 2}, classes=("ant", "bee", "cow", "dog", "eel"),
                              size=(300, 260))


def test_evaluate_agrees_with_a_reference_computation(tmp_path):
    split = index_dataset(labelled_set(tmp_path / "data"))["val"]
    net = sensitive_net(seed=1)
    for ten_crop in (False, True):
        result = evaluate_split(bundle(net, split.classes), split, cpu_placement(), ten_crop=ten_crop, batch_size=4,
                                precision=None)
        top1 = top5 = loss = 0.0
        for path, label in zip(split.files, split.labels):
            crops = reference_crops(pil_centre_256(path))
            probs = reference_prediction(net, crops if ten_crop else crops[4:5])  # index 4: the centre
            order = np.argsort(-probs)
            top1 += order[0] == label
            top5 += label in order[:5]
            loss -= np.log(probs[label])
        n = len(split)
        assert result["images"] == n
        assert result["top1"] == pytest.approx(top1 / n) and result["top5"] == pytest.approx(top5 / n)
        assert result["top1_error"] == pytest.approx(1 - top1 / n)
        assert result["loss"] == pytest.approx(loss / n, rel=2e-3)


def test_cli_predict_and_evaluate(tmp_path, images, capsys):
    """predict through the real command; the rest through its main() (the same code, without a
    process each)."""
    from alexnet_dali.checkpoint import save_checkpoint
    from alexnet_dali.cli import main

    def printed(*args) -> tuple[int, str, str]:
        status = main(list(map(str, args)))
        return (status, *capsys.readouterr())

    data = labelled_set(tmp_path / "data")
    classes = ["ant", "bee", "cow", "dog", "eel"]
    net = sensitive_net(seed=2)
    model_path = save_checkpoint({"model": net.state_dict(), "classes": classes, "pca": PCA_FOR_TESTS.to_dict(),
                                  "config": {"groups": 1, "dropout": 0.5}}, tmp_path / "model.pt")
    folder = data / "val" / "cow"
    result = run_cli("predict", model_path, folder, images["big"], "--topk", "2", "--json", "--device", "cpu",
                     check=True)
    rows = json.loads(result.stdout)
    expected_paths = sorted(str(p) for p in folder.iterdir()) + [str(images["big"])]
    assert [r["image"] for r in rows] == expected_paths
    reference = Predictor(bundle(net, classes), cpu_placement(), batch_size=32).predict_files(expected_paths)
    for row, probs in zip(rows, reference):
        assert [e["label"] for e in row["top"]] == [classes[i] for i in np.argsort(-probs)[:2]]
        assert row["top"][0]["probability"] == pytest.approx(probs.max(), rel=1e-5)
    status, text, _ = printed("predict", model_path, images["big"], "--device", "cpu")
    assert status == 0 and str(images["big"]) in text and "%" in text
    status, evaluated, _ = printed("evaluate", model_path, data, "--ten-crop", "--json", "--device", "cpu")
    split = index_dataset(data)["val"]
    direct = evaluate_split(bundle(net, classes), split, cpu_placement(), ten_crop=True, batch_size=32, precision=None)
    evaluated = json.loads(evaluated)
    assert status == 0 and evaluated["images"] == direct["images"] == 10
    assert evaluated["top1"] == pytest.approx(direct["top1"])
    assert evaluated["loss"] == pytest.approx(direct["loss"], rel=1e-5)
    status, text, _ = printed("evaluate", model_path, data, "--device", "cpu")
    assert status == 0 and "top-1 accuracy" in text and "error" in text and "centre crop" in text
    status, _, stderr = printed("predict", model_path, tmp_path / "nothing.jpg", "--device", "cpu")
    assert status == 2 and "nothing.jpg: no such file" in stderr


def test_cli_evaluate_names_undecodable_images_before_it_starts(tmp_path):
    data = labelled_set(tmp_path / "data")
    broken = data / "val" / "bee" / "000.jpg"
    broken.write_bytes(broken.read_bytes()[:2000])
    net = sensitive_net(seed=2)
    model_path = tmp_path / "model.pt"
    torch.save({"format": "alexnet-dali-checkpoint", "version": 2,
                **bundle(net, ["ant", "bee", "cow", "dog", "eel"]).to_dict()}, model_path)
    result = run_cli("evaluate", model_path, data, "--device", "cpu")
    assert result.returncode == 2 and "Traceback" not in result.stderr and "[ERROR]" not in result.stderr
    assert f"{broken}: truncated JPEG" in result.stderr


def test_the_next_batch_is_fed_to_dali_before_the_model_runs_on_this_one(images):
    """Prediction overlaps decoding with the network: batch i+1 is handed to DALI (fed and
    scheduled) before the model sees batch i."""
    events = []

    class Recording(AlexNetModule):
        def forward(self, x):
            events.append("model")
            return super().forward(x)

    torch.manual_seed(0)
    predictor = Predictor(bundle(Recording(5), [f"c{i}" for i in range(5)]), cpu_placement(), batch_size=2)
    blobs = [images[name].read_bytes() for name in ("big", "small", "square", "wide256", "tall256")]

    def batches():
        for start in range(0, len(blobs), 2):
            events.append(f"fed {start // 2}")
            yield blobs[start:start + 2], [f"image {i}" for i in range(start, min(start + 2, len(blobs)))]

    with torch.inference_mode():
        for views in predictor._views(batches()):
            predictor.net(views.reshape(-1, *views.shape[-3:]))
    assert events == ["fed 0", "fed 1", "model", "fed 2", "model", "model"]


def test_a_compiled_predictor_predicts_what_the_network_does(images, predictor, compiled_without_codegen):
    """Predictor(compile=True) runs the views through torch.compile (aot_eager here, whose numbers
    are eager's: see the fixture) and gives the eager predictor's probabilities."""
    paths = list(images.values())  # 5 images at batch 4: a full batch and a smaller one
    fast = Predictor(predictor.bundle, cpu_placement(), batch_size=4, compile=True)
    probabilities = fast.predict_files(paths)
    # one graph: the smaller batch is padded to the full one's shape (FixedRows), not compiled again
    assert compiled_without_codegen == [predictor.net] and graphs_captured() == 1
    np.testing.assert_allclose(probabilities, predictor.predict_files(paths), rtol=1e-5, atol=1e-7)


def test_fixed_rows_pads_a_smaller_batch_in_its_memory_layout():
    """The network sees `rows` rows, the given ones then zeros, with the strides of the input
    (NHWC memory seen as NCHW, as the GPU pipelines give it), and only the given rows come back."""
    seen = []

    def net(x):
        seen.append(x)
        return x.flatten(1).sum(dim=1, keepdim=True) * torch.arange(1, 3)

    nhwc = torch.randn(3, 5, 6, 4).movedim(-1, -3)  # [3, 4, 5, 6], channels_last strides
    out = FixedRows(net, rows=8)(nhwc)
    (fed,) = seen
    assert fed.shape == (8, 4, 5, 6) and fed.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(fed[:3], nhwc) and not fed[3:].any()
    assert torch.equal(out, net(nhwc))
    assert FixedRows(net, rows=3)(nhwc).shape == (3, 2) and seen[-1] is nhwc  # a full batch as it is


# -- Prediction memory: batches bounded by pixels (issue 27, point 11) ---------------------------------

def banded_png(path: Path, size: int, left, top_right, bottom_right) -> Path:
    """A size×size RGB PNG: the left half one colour, the right half two (top and bottom), written
    row by row, so a 144-million-pixel image costs a second and 2 MB rather than 432 MB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    half = size // 2
    rows = [b"\x00" + bytes(left) * half + bytes(right) * (size - half) for right in (top_right, bottom_right)]
    packer = zlib.compressobj(1)
    body = b"".join(packer.compress(rows[y >= half]) for y in range(size)) + packer.flush()
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)  # 8-bit RGB
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def test_prediction_batches_hold_at_most_max_pixels(images, predictor):
    """Room for the first two images by pixels: batches of 2, 2 and 1 at batch size 4 (the last,
    500×375, is over the budget alone), and the same predictions as one image at a time."""
    names = ["wide256", "tall256", "square", "small", "big"]
    blobs = [images[n].read_bytes() for n in names]
    pixels = [Image.open(images[n]).width * Image.open(images[n]).height for n in names]
    bounded = Predictor(predictor.bundle, cpu_placement(), batch_size=4, max_pixels=pixels[0] + pixels[1])
    sizes = [views.shape[0] for views in bounded.views(blobs, names)]
    assert sizes == [2, 2, 1]
    unbounded = predictor.predict_bytes(blobs, names)  # batches of 4 and 1
    np.testing.assert_allclose(bounded.predict_bytes(blobs, names), unbounded, rtol=1e-5, atol=1e-7)


def test_a_huge_image_is_decoded_in_a_batch_of_its_own_and_predicted_right(tmp_path, images, predictor):
    """12000×12000 (144 million pixels, over the 2**27 budget the scan uses): in a batch of 4 it
    is decoded alone, and predicted as its 1200×1200 copy is (the same picture, a tenth the
    size)."""
    colours = (200, 30, 60), (20, 90, 220), (240, 220, 40)
    huge = banded_png(tmp_path / "huge.png", 12000, *colours)
    copy = banded_png(tmp_path / "copy.png", 1200, *colours)
    other = banded_png(tmp_path / "other.png", 1200, colours[0], colours[2], colours[1])  # right half upside down
    small = [images[n].read_bytes() for n in ("big", "small", "square")]
    blobs = [small[0], small[1], huge.read_bytes(), small[2]]
    sizes, rows = [], []
    with torch.no_grad():
        for views in predictor.views(blobs):  # the ten-crop mean of the softmax, batch by batch
            sizes.append(views.shape[0])
            rows += [reference_prediction(predictor.net, crops.numpy()) for crops in views]
    assert sizes == [2, 1, 1]
    probabilities = np.stack(rows)
    expected_copy, expected_other = predictor.predict_files([copy, other])
    # the colour edges blend over a pixel or so differently at the two scales: 1.4e-4 measured
    np.testing.assert_allclose(probabilities[2], expected_copy, atol=1e-3)
    assert np.abs(expected_other - expected_copy).max() > 0.01  # the comparison can tell pictures apart
    np.testing.assert_allclose(probabilities[[0, 1, 3]], predictor.predict_bytes(small), rtol=1e-5, atol=1e-7)


# -- What model.predict takes (issue 27, points 15 and 16) --------------------------------------------

@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """AlexNet.load of a file holding the sensitive net (it needs no data set)."""
    from alexnet_dali import AlexNet
    from alexnet_dali.checkpoint import save_checkpoint

    path = tmp_path_factory.mktemp("saved") / "model.pt"
    save_checkpoint({"model": sensitive_net().state_dict(), "classes": [f"c{i}" for i in range(5)],
                     "pca": PCA_FOR_TESTS.to_dict(), "config": {"groups": 1, "dropout": 0.5}}, path)
    return AlexNet.load(path, device="cpu", verbose=False)


def test_predict_takes_pil_images_arrays_and_bytes_mixed_with_paths(tmp_path, images, model):
    """Decoded images are written losslessly (PPM) and go through the same pipeline as the file:
    the same pixels reach the crops (PIL and DALI's CPU decoder are both libjpeg-turbo), so the
    stated tolerance is 1e-6 on each probability (float summation order only)."""
    paths = [images["big"], images["wide256"]]  # a JPEG and a PNG
    by_file = model.predict(paths)
    for path, expected in zip(paths, by_file):
        with Image.open(path) as opened:
            pil = opened.copy()  # a PIL image with no file behind it
        pixels = np.asarray(pil.convert("RGB"))
        for image in (pil, pixels, path.read_bytes(), bytearray(path.read_bytes()), str(path), path):
            np.testing.assert_allclose(model.predict(image), expected, atol=1e-6)
        top_two = [model.classes[i] for i in np.argsort(-expected)[:2]]
        assert [label for label, _ in model.predict_n(pil, n=2)] == top_two
    grey = Image.open(images["small"]).convert("L")  # other modes become RGB, as the decoder makes them
    mixed = model.predict([pixels, str(paths[0]), pil, grey, paths[0].read_bytes(), np.asfortranarray(pixels)])
    assert mixed.shape == (6, 5)
    np.testing.assert_allclose(mixed[[0, 2, 5]], np.stack([by_file[1]] * 3), atol=1e-6)
    np.testing.assert_allclose(mixed[[1, 4]], np.stack([by_file[0]] * 2), atol=1e-6)
    grey_file = write_image(tmp_path / "grey.png", 180, 200, array=np.asarray(grey))
    np.testing.assert_allclose(mixed[3], model.predict(grey_file), atol=1e-6)
    assert np.abs(mixed[3] - mixed[0]).max() > 0.05  # the network is not blind


def test_a_pil_image_is_taken_upright_as_its_file_is(tmp_path, model):
    """DALI's decoder applies a JPEG's EXIF orientation; a PIL image opened from that file is
    still on its side, so predict turns it as the decoder does."""
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to view
    path = tmp_path / "rotated.jpg"
    Image.fromarray(smooth_image(400, 300, seed=7)).save(path, quality=95, exif=exif)
    by_file, on_its_side = model.predict([path, np.asarray(Image.open(path))])
    np.testing.assert_allclose(model.predict(Image.open(path)), by_file, atol=1e-6)
    assert np.abs(on_its_side - by_file).max() > 0.01  # so the orientation mattered


@pytest.mark.parametrize("bad", [42, None, {"a.jpg": 1}, np.zeros((64, 64, 3)), np.zeros((64, 64), np.uint8),
                                 np.zeros((2, 64, 64, 3), np.uint8), np.zeros((64, 64, 4), np.uint8),
                                 torch.zeros(3, 64, 64, dtype=torch.uint8), ["a.jpg", 3.5]],
                         ids=["int", "None", "dict", "float-array", "grey-array", "batch-array", "rgba-array",
                              "tensor", "list-with-float"])
def test_anything_else_gets_one_error_saying_what_is_accepted(model, bad):
    with pytest.raises(TypeError) as raised:
        model.predict(bad)
    message = str(raised.value)
    assert "a path" in message and "encoded image bytes" in message and "PIL image" in message
    assert "HxWx3 uint8 RGB numpy array" in message and "list of these" in message
    assert "\n" not in message  # one line, not a row per pixel
    if hasattr(bad, "shape"):  # an array or a tensor: named with its shape, once (not a row at a time)
        assert message.count(f"of shape {tuple(bad.shape)}") == 1
    with pytest.raises(TypeError, match="predict_n takes one image"):
        model.predict_n([bad] if not isinstance(bad, list) else bad)


def test_encoded_bytes_are_named_by_their_place_and_a_gif_as_an_unsupported_format(tmp_path, images, predictor):
    gif = tmp_path / "moving.gif"
    Image.fromarray(smooth_image(64, 48)).save(gif)
    with pytest.raises(DataError, match=r"moving\.gif: unsupported image format GIF: DALI decodes JPEG, PNG"):
        predictor.predict_files([images["small"], gif])
    with pytest.raises(DataError, match=r"image 1 \(7 encoded bytes\): not an image"):
        predictor.predict_images([images["small"], b"GIF80ab", images["big"].read_bytes()])
    with pytest.raises(DataError, match=r"image 0 \(0 encoded bytes\): empty"):
        predictor.predict_images([b""])
