"""The TensorBoard sample grid: network inputs turned back into the pictures they were cut from,
read back from a real training run's event file with TensorBoard's own reader."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet_dali.train import train
from alexnet_dali.visualize import PADDING, sample_grid, tile, to_images
from conftest import write_image
from conftest import tiny_config

CROP = 224


def test_to_images_undoes_the_centring_in_either_layout():
    rng = np.random.default_rng(0)
    pixels = torch.from_numpy(rng.integers(0, 256, size=(3, 3, 8, 5), dtype=np.uint8))
    mean = [0.485, 0.456, 0.406]
    centred = pixels.float() - 255.0 * torch.tensor(mean).view(1, 3, 1, 1)  # what the pipeline hands the network
    assert torch.equal(to_images(centred, mean), pixels)
    assert torch.equal(to_images(centred.permute(0, 2, 3, 1), mean), pixels)  # NHWC, as the GPU pipeline gives
    assert torch.equal(to_images(centred + 1000.0, mean), torch.full_like(pixels, 255))  # clipped, not wrapped


def test_tile_lays_images_out_row_by_row():
    images = torch.stack([torch.full((3, 4, 6), value, dtype=torch.uint8) for value in (10, 20, 30, 40, 50)])
    grid = tile(images)  # 5 images: 3 columns, 2 rows
    assert grid.shape == (3, 2 * (4 + PADDING) + PADDING, 3 * (6 + PADDING) + PADDING)
    for i, value in enumerate((10, 20, 30, 40, 50)):
        top, left = PADDING + (i // 3) * (4 + PADDING), PADDING + (i % 3) * (6 + PADDING)
        assert torch.all(grid[:, top:top + 4, left:left + 6] == value)
    assert int(grid.sum()) == 3 * 4 * 6 * (10 + 20 + 30 + 40 + 50)  # everything else black


def test_sample_grid_shows_at_most_sixteen_images():
    batch = torch.zeros(40, 3, 8, 8)
    assert sample_grid(batch, [0.5, 0.5, 0.5]).shape == (3, 4 * (8 + PADDING) + PADDING, 4 * (8 + PADDING) + PADDING)


# Each image: one flat colour on its left half, another on its right half. A tile of the grid must
# show the pair again, swapped when flipped, its boundary moved by the crop, its colours moved a
# little by the lighting noise, and nothing of the mean subtraction.
COLOUR_PAIRS = [((200, 40, 40), (40, 40, 200)), ((40, 180, 40), (230, 220, 60))]


def make_two_colour_data(root):
    labels = {}
    for split, count in (("train", 4), ("val", 2)):
        for i in range(count):
            c = i % 2
            image = np.zeros((256, 256, 3), dtype=np.uint8)
            image[:, :128], image[:, 128:] = COLOUR_PAIRS[c]
            write_image(root / split / f"{split}_{i}.jpg", 256, 256, array=image, quality=98)
            labels[f"{split}_{i}"] = f"class{c}"
    (root / "labels.json").write_text(json.dumps(labels))
    (root / "label_encoding.json").write_text(json.dumps({"class0": 0, "class1": 1}))
    return {"data": root, "labels": root / "labels.json", "label_encoding": root / "label_encoding.json"}


@pytest.fixture(scope="module")
def grid_event(tmp_path_factory):
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

    root = tmp_path_factory.mktemp("grid")
    config = tiny_config(make_two_colour_data(root / "data"), root / "run", epochs=1, lighting=0.1)
    train(config)
    events = EventAccumulator(str(root / "run" / "tensorboard"), size_guidance={IMAGES: 0})
    events.Reload()
    return events.Images("train/samples")


def test_the_first_epoch_writes_one_grid_of_the_batch(grid_event):
    assert len(grid_event) == 1 and grid_event[0].step == 0
    side = 2 * (CROP + PADDING) + PADDING  # batch 4: a 2×2 grid of 224×224 crops
    assert (grid_event[0].width, grid_event[0].height) == (side, side)
    picture = np.asarray(Image.open(io.BytesIO(grid_event[0].encoded_image_string)).convert("RGB"))
    assert picture.shape == (side, side, 3)


def test_every_tile_shows_a_training_image_as_cropped_flipped_and_lit(grid_event):
    picture = np.asarray(Image.open(io.BytesIO(grid_event[0].encoded_image_string)).convert("RGB")).astype(float)
    assert picture[:PADDING].max() == 0 and picture[:, :PADDING].max() == 0  # the black frame
    seen = set()
    for row in range(2):
        for column in range(2):
            top, left = PADDING + row * (CROP + PADDING), PADDING + column * (CROP + PADDING)
            crop = picture[top:top + CROP, left:left + CROP]
            # The colour boundary sits at 128 - offset (or, flipped, 96 + offset) for offsets 0..32:
            # columns < 90 and >= 134 are each one colour whatever the crop.
            left_colour, right_colour = crop[:, :90].mean(axis=(0, 1)), crop[:, 134:].mean(axis=(0, 1))
            assert crop[:, :90].std(axis=(0, 1)).max() < 6 and crop[:, 134:].std(axis=(0, 1)).max() < 6
            matches = [(c, flipped) for c, pair in enumerate(COLOUR_PAIRS) for flipped in (False, True)
                       if np.abs(left_colour - pair[flipped]).max() < 25 and np.abs(right_colour - pair[not flipped]).max() < 25]
            assert len(matches) == 1, (row, column, left_colour, right_colour)
            seen.add(matches[0])
            boundary = np.abs(np.diff(crop.mean(axis=(0, 2)))).argmax() + 1  # the column where the colour changes
            assert 96 <= boundary <= 128
    assert {c for c, _ in seen} == {0, 1}  # both classes in the batch, as the labels say
