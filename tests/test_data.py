"""The data index: both layouts, and a clear error naming the file or label for each problem."""

import json
from pathlib import Path

import pytest

from alexnet_dali.data import DataError, index_dataset
from alexnet_dali.labels import parse_label_encoding


def read_label_encoding(path):
    return parse_label_encoding(path.read_text(), str(path))
from conftest import make_class_folders, write_image


def test_original_layout_files_labels_and_classes(original_layout):
    splits = index_dataset(original_layout["data"], original_layout["labels"], original_layout["label_encoding"])
    train, val = splits["train"], splits["val"]
    assert (len(train), len(val)) == (8, 4)
    assert train.classes == ("cat", "dog")
    labels = json.loads(original_layout["labels"].read_text())
    for path, y in zip(train.files, train.labels):
        assert Path(path).is_absolute() and Path(path).is_file()
        assert train.classes[y] == labels[Path(path).stem]
    assert list(train.files) == sorted(train.files)


def test_image_id_with_or_without_extension(tmp_path):
    root = tmp_path / "data"
    write_image(root / "train" / "a.jpg", 64, 64)
    write_image(root / "train" / "b.png", 64, 64)
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"a": "x", "b.png": "y"}))  # one id bare, one with its extension
    split = index_dataset(root, labels, splits=("train",))["train"]
    assert [Path(f).name for f in split.files] == ["a.jpg", "b.png"]
    assert [split.classes[y] for y in split.labels] == ["x", "y"]


def test_classes_default_to_sorted_labels_without_an_encoding(tmp_path):
    root = tmp_path / "data"
    for name in ("p", "q", "r"):
        write_image(root / "train" / f"{name}.jpg", 40, 40)
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"p": "zebra", "q": "ant", "r": "moose"}))
    split = index_dataset(root, labels, splits=("train",))["train"]
    assert split.classes == ("ant", "moose", "zebra")
    assert list(split.labels) == [2, 0, 1]


def test_class_folders_sorted(class_folders):
    splits = index_dataset(class_folders)
    assert splits["train"].classes == ("ant", "bee")
    for split in splits.values():
        for path, y in zip(split.files, split.labels):
            assert Path(path).parent.name == split.classes[y]
    assert len(splits["train"]) == 8 and len(splits["val"]) == 4


def test_class_folders_with_an_encoding(tmp_path):
    root = make_class_folders(tmp_path / "data")
    encoding = tmp_path / "enc.json"
    encoding.write_text(json.dumps({"bee": 0, "ant": 1}))
    split = index_dataset(root, encoding_path=encoding)["train"]
    assert split.classes == ("bee", "ant")
    assert all(split.classes[y] == Path(p).parent.name for p, y in zip(split.files, split.labels))


def error_of(call) -> str:
    with pytest.raises(DataError) as info:
        call()
    return str(info.value)


def test_unlabelled_image_is_named(original_layout):
    stray = write_image(original_layout["data"] / "train" / "mystery.jpg", 40, 40)
    message = error_of(lambda: index_dataset(original_layout["data"], original_layout["labels"],
                                             original_layout["label_encoding"]))
    assert str(stray) in message and "unlabelled" in message


def test_label_missing_from_the_encoding_is_named(original_layout):
    labels = json.loads(original_layout["labels"].read_text())
    labels["train_003"] = "wolf"
    original_layout["labels"].write_text(json.dumps(labels))
    message = error_of(lambda: index_dataset(original_layout["data"], original_layout["labels"],
                                             original_layout["label_encoding"]))
    assert "'wolf'" in message and "train_003.jpg" in message and "not in the label encoding" in message


def test_empty_split(original_layout):
    for f in (original_layout["data"] / "val").iterdir():
        f.unlink()
    message = error_of(lambda: index_dataset(original_layout["data"], original_layout["labels"]))
    assert "split 'val' is empty" in message


def test_missing_split(original_layout):
    message = error_of(lambda: index_dataset(original_layout["data"], original_layout["labels"],
                                             splits=("train", "valid")))
    assert "missing split 'valid'" in message and "train" in message and "val" in message


def test_missing_data_folder(tmp_path):
    assert "does not exist" in error_of(lambda: index_dataset(tmp_path / "nowhere"))


@pytest.mark.parametrize("which", ["labels", "label_encoding"])
def test_malformed_json_names_file_and_place(original_layout, which):
    original_layout[which].write_text('{"a": "cat",\n "b": }')
    message = error_of(lambda: index_dataset(original_layout["data"], original_layout["labels"],
                                             original_layout["label_encoding"]))
    assert str(original_layout[which]) in message and "malformed JSON" in message and "line 2" in message


def test_encoding_with_bad_indices(tmp_path):
    path = tmp_path / "enc.json"
    path.write_text(json.dumps({"a": 0, "b": 0, "c": 5}))
    message = error_of(lambda: read_label_encoding(path))
    assert "index 0 is given to several labels" in message and "out of range: [5]" in message
    path.write_text(json.dumps({"a": "zero"}))
    assert "not an integer" in error_of(lambda: read_label_encoding(path))


def test_duplicate_image_ids(original_layout):
    write_image(original_layout["data"] / "train" / "train_001.png", 40, 40)  # same id as train_001.jpg
    message = error_of(lambda: index_dataset(original_layout["data"], original_layout["labels"]))
    assert "duplicate image id 'train_001'" in message


def test_every_problem_is_reported_together(original_layout):
    write_image(original_layout["data"] / "train" / "x1.jpg", 40, 40)
    write_image(original_layout["data"] / "train" / "x2.jpg", 40, 40)
    (original_layout["data"] / "train" / "notes.docx").write_text("hi")
    with pytest.raises(DataError) as info:
        index_dataset(original_layout["data"], original_layout["labels"])
    paths = {Path(p.path).name for p in info.value.problems}
    assert paths == {"x1.jpg", "x2.jpg", "notes.docx"}


def test_class_folder_problems(tmp_path):
    root = make_class_folders(tmp_path / "data")
    (root / "train" / "cow").mkdir()  # empty class
    write_image(root / "train" / "ant" / "deeper" / "x.jpg", 40, 40)  # nested folder
    with pytest.raises(DataError) as info:
        index_dataset(root, splits=("train",))
    reasons = {Path(p.path).name: p.reason for p in info.value.problems}
    assert reasons["cow"] == "empty class folder"
    assert "nested folder" in reasons["deeper"]


def test_train_and_val_classes_must_agree(tmp_path):
    root = make_class_folders(tmp_path / "data")
    write_image(root / "val" / "cow" / "0.jpg", 40, 40)
    message = error_of(lambda: index_dataset(root))
    assert "class folder 'cow' is not in the class folders of split 'train'" in message
    (root / "val" / "cow" / "0.jpg").unlink()
    (root / "val" / "cow").rmdir()
    for f in (root / "val" / "bee").iterdir():
        f.unlink()
    (root / "val" / "bee").rmdir()
    message = error_of(lambda: index_dataset(root))
    assert "different classes" in message and "only in train: ['bee']" in message


def test_validation_indices_follow_the_training_folders(tmp_path):
    """val lacks no class but lists them in another order on disk: indices still agree."""
    root = make_class_folders(tmp_path / "data", classes=("ant", "bee", "cow"))
    splits = index_dataset(root)
    for split in splits.values():
        assert split.classes == ("ant", "bee", "cow")
        assert all(split.classes[y] == Path(p).parent.name for p, y in zip(split.files, split.labels))


def test_flat_images_without_labels_explain_the_options(original_layout):
    message = error_of(lambda: index_dataset(original_layout["data"]))
    assert "--labels" in message and "class folders" in message


def test_a_label_file_key_given_twice_with_two_labels_is_named(original_layout):
    """json.loads keeps the last of two equal keys: "train_000" would silently become a dog."""
    text = original_layout["labels"].read_text()
    original_layout["labels"].write_text(text[:-1] + ', "train_000": "dog"}')  # it is "cat" earlier in the file
    message = error_of(lambda: index_dataset(original_layout["data"], original_layout["labels"]))
    assert str(original_layout["labels"]) in message
    assert "key 'train_000' is given twice, as 'cat' and as 'dog'" in message
    enc = original_layout["label_encoding"]
    enc.write_text('{"cat": 0, "dog": 1, "cat": 1}')
    assert "key 'cat' is given twice, as 0 and as 1" in error_of(lambda: read_label_encoding(enc))
    enc.write_text('{"cat": 0, "dog": 1, "cat": 0}')  # the same value twice cannot be misread
    assert read_label_encoding(enc) == {"cat": 0, "dog": 1}


def test_an_image_labelled_by_its_full_name_and_by_its_stem_differently_is_named(tmp_path):
    from alexnet_dali.check import check_dataset
    from conftest import cpu_placement

    root = tmp_path / "data"
    for split in ("train", "val"):
        for name in ("a", "b"):
            write_image(root / split / f"{split}_{name}.jpg", 40, 40)
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"train_a": "x", "train_a.jpg": "y", "train_b": "y", "val_a": "x",
                                  "val_b": "y", "val_b.jpg": "y"}))  # val_b: twice, but the same label
    message = error_of(lambda: index_dataset(root, labels))
    assert "train_a.jpg: labelled twice in" in message and "'train_a.jpg' as 'y' and 'train_a' as 'x'" in message
    assert "val_b" not in message
    report = check_dataset(root, labels, None, cpu_placement())
    assert not report["ok"]
    assert [Path(p["path"]).name for p in report["problems"]] == ["train_a.jpg"]


def test_a_label_that_is_a_digit_but_no_number_sorts_as_a_name(tmp_path):
    """"²".isdigit() is true, but int("²") fails: numbers are ASCII digits only."""
    from alexnet_dali.labels import encoding_from_labels

    assert encoding_from_labels({"a": "²", "b": "10", "c": "9", "d": "x"}) == {"9": 0, "10": 1, "x": 2, "²": 3}
    root = tmp_path / "data"
    write_image(root / "train" / "a.jpg", 40, 40)
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"a": "²"}))
    assert index_dataset(root, labels, splits=("train",))["train"].classes == ("²",)
