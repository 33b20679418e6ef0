"""ImageNet (ILSVRC-2012) as distributed, recognised without moving a file: train as synset
folders, val as one flat folder labelled by LOC_val_solution.csv, names from
LOC_synset_mapping.txt. Small look-alike trees."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alexnet_dali.data import DataError, index_dataset
from conftest import SYNSET_NAMES, make_imagenet, run_cli, run_main, write_image

def check_against_truth(splits: dict, imagenet: dict) -> None:
    train, val = splits["train"], splits["val"]
    assert train.classes == tuple(sorted(SYNSET_NAMES))  # the synset ids, sorted, as the folders give them
    assert val.classes == train.classes
    assert [Path(p).parent.name for p in train.files] == [train.classes[y] for y in train.labels]
    assert sorted(Path(p).stem for p in val.files) == sorted(imagenet["truth"])
    assert [val.classes[y] for y in val.labels] == [imagenet["truth"][Path(p).stem] for p in val.files]
    assert all(Path(p).is_file() and Path(p).is_relative_to(imagenet["images"].resolve()) for p in val.files)


def test_val_is_labelled_by_its_solution_csv(tmp_path):
    imagenet = make_imagenet(tmp_path / "imagenet")
    splits = index_dataset(imagenet["root"])
    check_against_truth(splits, imagenet)
    assert list(splits["val"].files) == sorted(splits["val"].files)


def test_the_solution_csv_may_lie_in_the_val_folder(tmp_path):
    imagenet = make_imagenet(tmp_path / "imagenet", csv_in_val=True)
    check_against_truth(index_dataset(imagenet["root"]), imagenet)


def test_the_download_tree_is_read_where_it_lies(tmp_path):
    imagenet = make_imagenet(tmp_path / "imagenet-object-localization-challenge", tree=("ILSVRC", "Data", "CLS-LOC"))
    splits = index_dataset(imagenet["root"])
    check_against_truth(splits, imagenet)
    assert splits["train"].class_names == tuple(SYNSET_NAMES[s] for s in sorted(SYNSET_NAMES))


def test_evaluating_val_alone_takes_the_classes_from_train(tmp_path):
    imagenet = make_imagenet(tmp_path / "imagenet")
    alone = index_dataset(imagenet["root"], splits=("val",))["val"]
    assert alone == index_dataset(imagenet["root"])["val"]


def test_human_readable_names_from_the_synset_mapping(tmp_path):
    named = index_dataset(make_imagenet(tmp_path / "named")["root"])["val"]
    assert named.class_names == tuple(SYNSET_NAMES[s] for s in named.classes)
    assert named.class_label(0) == "n01440764 tench, Tinca tinca"
    unnamed = index_dataset(make_imagenet(tmp_path / "unnamed", mapping=False)["root"])["val"]
    assert unnamed.class_names == ()
    assert unnamed.class_label(0) == "n01440764"


def test_class_folders_with_a_synset_mapping_get_names_too(tmp_path):
    imagenet = make_imagenet(tmp_path / "imagenet")
    (imagenet["root"] / "LOC_val_solution.csv").unlink()
    for image in (imagenet["root"] / "val").iterdir():  # val sorted into synset folders (the "moved" layout)
        target = imagenet["root"] / "val" / imagenet["truth"][image.stem] / image.name
        target.parent.mkdir(exist_ok=True)
        image.rename(target)
    splits = index_dataset(imagenet["root"])
    check_against_truth(splits, imagenet)
    assert splits["val"].class_label(2).startswith("n01484850 great white shark")


def test_every_val_problem_is_named_with_its_file(tmp_path):
    imagenet = make_imagenet(tmp_path / "imagenet")
    stray = write_image(imagenet["root"] / "val" / "ILSVRC2012_val_00099999.JPEG", 40, 32)
    rows = imagenet["csv"].read_text().splitlines()
    wrong_id = sorted(imagenet["truth"])[0]
    rows = [f"{wrong_id},n09999999 1 2 3 4" if row.startswith(wrong_id + ",") else row for row in rows]
    imagenet["csv"].write_text("\n".join(rows) + "\n")
    line = next(n for n, row in enumerate(rows, start=1) if row.startswith(wrong_id + ","))
    with pytest.raises(DataError) as info:
        index_dataset(imagenet["root"])
    message = str(info.value)
    assert f"{stray}: not in {imagenet['csv']}: the image has no ground truth" in message
    assert f"{wrong_id}.JPEG: its synset 'n09999999' (LOC_val_solution.csv line {line}) is not in the class " \
           "folders of split 'train'" in message


def test_a_malformed_solution_csv_is_named(tmp_path):
    imagenet = make_imagenet(tmp_path / "imagenet")
    imagenet["csv"].write_text("id,label\nILSVRC2012_val_00000001,n01440764\n")
    with pytest.raises(DataError, match=f"{imagenet['csv']} is not an ImageNet solution file"):
        index_dataset(imagenet["root"])
    imagenet["csv"].write_text("ImageId,PredictionString\nILSVRC2012_val_00000001,\n")
    with pytest.raises(DataError, match=f"{imagenet['csv']}:2: expected an image id and a PredictionString"):
        index_dataset(imagenet["root"])


def test_a_malformed_synset_mapping_is_named(tmp_path):
    imagenet = make_imagenet(tmp_path / "imagenet")
    mapping = imagenet["root"] / "LOC_synset_mapping.txt"
    mapping.write_text(mapping.read_text() + "n02000000\n")
    with pytest.raises(DataError, match=f"{mapping}:5: expected 'SYNSET NAME'"):
        index_dataset(imagenet["root"])


def test_a_val_subset_is_indexed_with_a_warning(tmp_path, caplog):
    imagenet = make_imagenet(tmp_path / "imagenet")
    removed = sorted(imagenet["truth"])[-1]
    (imagenet["root"] / "val" / f"{removed}.JPEG").unlink()
    from alexnet_dali.log import logger

    logger.addHandler(caplog.handler)
    try:
        val = index_dataset(imagenet["root"])["val"]
    finally:
        logger.removeHandler(caplog.handler)
    assert len(val) == len(imagenet["truth"]) - 1
    warnings = {r.getMessage() for r in caplog.records if r.levelname == "WARNING"}  # caplog may see a record twice
    assert len(warnings) == 1
    assert all("lists 1 image(s) that are not in" in w and removed in w for w in warnings)


def test_cli_check_reads_the_download_tree_and_shows_class_names(tmp_path):
    imagenet = make_imagenet(tmp_path / "imagenet", tree=("ILSVRC", "Data", "CLS-LOC"))
    result = run_cli("check", imagenet["root"], "--split", "train", "--split", "val", "--threads", "1", check=True)
    assert "3 classes: n01440764 tench, Tinca tinca; n01443537 goldfish, Carassius auratus; n01484850 great" \
           in result.stdout
    assert "checked 13 images (train 6, val 7): all images decode and are labelled" in result.stdout


def test_a_model_trained_on_imagenet_predicts_with_class_names(tmp_path, capsys):
    """The names travel from LOC_synset_mapping.txt through the checkpoint into predictions (the
    printed ones through main(), the same code as the command without another process)."""
    from alexnet_dali import AlexNet
    from alexnet_dali.cli import main

    imagenet = make_imagenet(tmp_path / "imagenet")
    run = tmp_path / "run"
    run_main("train", imagenet["root"], "--out", run, "--epochs", "1", "--batch-size", "2", "--lr", "1e-4",
             "--device", "cpu", "--dali-threads", "1", check=True)
    image = sorted((imagenet["images"] / "val").glob("*.JPEG"))[0]
    result = run_cli("predict", run / "last.pt", image, "--topk", "3", "--json", "--device", "cpu", check=True)
    top = json.loads(result.stdout)[0]["top"]
    assert sorted(entry["label"] for entry in top) == sorted(SYNSET_NAMES)
    assert all(entry["name"] == SYNSET_NAMES[entry["label"]] for entry in top)
    capsys.readouterr()
    assert main(["predict", str(run / "last.pt"), str(image), "--topk", "3", "--device", "cpu"]) == 0
    assert "n01440764  tench, Tinca tinca" in capsys.readouterr().out
    model = AlexNet.load(run / "last.pt", device="cpu")
    assert model.class_names == tuple(SYNSET_NAMES[s] for s in model.classes)
    assert AlexNet.load(model.save(tmp_path / "model.pt"), device="cpu").class_names == model.class_names
