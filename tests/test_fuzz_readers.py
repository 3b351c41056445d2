"""Fuzzing the annotation readers: generated COCO, YOLO, VOC, CSV and mask data, with wrong types, odd values and
hostile files, ends either in an index or in a UserError, never in another exception. A fixed-seed short run;
benchmarks/fuzz_readers.py runs the same strategies 10,000 times per reader."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from PIL import Image

from fuzz_cases import READERS, Case, read
from helpers import invoke, user_error
from imagerec.data.checks import inspect_data
from imagerec.data.datasets import DetectionDataset, SegmentationDataset
from imagerec.data.formats import load_index
from imagerec.errors import UserError

EXAMPLES = 100  # per reader: the file in about 30 s on two cores (most of it importing torch)


@pytest.mark.parametrize("reader", sorted(READERS))
def test_readers_raise_only_user_errors(reader: str) -> None:
    @settings(
        derandomize=True,
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(READERS[reader]())
    def check(case: Case) -> None:
        read(case)  # raises anything but a UserError

    check()


# --- regressions: each a crash or a silent guess found by fuzzing or by users -----------------------------------


def _image(path: Path, size: tuple[int, int] = (8, 6), orientation: int = 1, format: str = "PNG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    Image.new("RGB", size, (40, 90, 200)).save(path, format=format, exif=exif)
    return path


def _write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def _coco(root: Path, images: list, annotations: list | None = None, categories: list | None = None) -> Path:
    _image(root / "a.png")
    document = {
        "images": images,
        "annotations": annotations or [],
        "categories": categories or [{"id": 1, "name": "cat"}],
    }
    return _write(root / "annotations.json", json.dumps(document))


@pytest.mark.parametrize(
    ("images", "annotations", "categories", "expected"),
    [
        ([{"id": [1], "file_name": "a.png"}], None, None, r"images\[0\]\.id: Input should be"),
        ([{"id": 1, "file_name": "a.png", "width": float("nan"), "height": 6}], None, None, r"images\[0\]\.width"),
        ([{"id": 1, "file_name": "a.png", "width": -8, "height": 6}], None, None, r"images\[0\]\.width: .*greater"),
        ([{"id": 1, "file_name": "a.png"}], None, [{"id": 1, "name": ["cat"]}], r"categories\[0\]\.name: a class"),
        ([{"id": 1, "file_name": "a.png"}], None, [{"id": [1], "name": "cat"}], r"categories\[0\]\.id"),
        (
            [{"id": 1, "file_name": "a.png"}],
            [{"image_id": 1, "category_id": [1], "bbox": [1, 1, 2, 2]}],
            None,
            r"annotations\[0\]\.category_id",
        ),
        (
            [{"id": 1, "file_name": "a.png"}],
            [{"image_id": 1, "category_id": 1, "bbox": [1, float("nan"), 2, 2]}],
            None,
            r"annotations\[0\]\.bbox\[1\]: Input should be a finite number",
        ),
        ([{"id": 1, "file_name": "a.png"}, {"id": 1, "file_name": "a.png"}], None, None, "image id 1 is listed twice"),
        ([{"id": 1}], None, None, r"images\[0\]\.file_name: Field required"),
        (
            [{"id": 1, "file_name": "a.png"}],
            [{"image_id": 1, "category_id": 1, "bbox": [1, 1, 2, 2], "segmentation": {"size": [6, "x"], "counts": []}}],
            None,
            r"annotations\[0\]\.segmentation\.size\[1\]: Input should be a valid integer",
        ),
    ],
)
def test_coco_values_of_the_wrong_type_are_one_line(tmp_path, images, annotations, categories, expected):
    file = _coco(tmp_path, images, annotations, categories)
    with pytest.raises(UserError, match=rf"^{re.escape(str(file))}: {expected}"):
        load_index(tmp_path)


def test_json_nested_thousands_deep_is_refused(tmp_path):
    _write(tmp_path / "annotations.json", "[" * 100_000 + "]" * 100_000)
    with pytest.raises(UserError, match="JSON nested too deeply"):
        load_index(tmp_path / "annotations.json")


def test_a_file_name_longer_than_the_file_system_allows_is_one_line(tmp_path):
    _coco(tmp_path, [{"id": 1, "file_name": "n" * 300 + ".png"}])
    with pytest.raises(UserError, match=r"cannot be read \(File name too long\)"):
        load_index(tmp_path)


def test_a_data_path_longer_than_the_file_system_allows_is_one_line(tmp_path):
    with pytest.raises(UserError, match=r"cannot be read \(File name too long\)"):
        load_index(tmp_path / ("n" * 300))


def _yolo(root: Path, data_yaml: str, label: str | bytes = "0 0.5 0.5 0.25 0.25\n") -> Path:
    _image(root / "images" / "train" / "a.png")
    _write(root / "labels" / "train" / "a.txt", label)
    return _write(root / "data.yaml", data_yaml)


@pytest.mark.parametrize(
    ("data_yaml", "expected"),
    [
        ("names: {0: cat, one: dog}\n", r"names: keys of a dict of names must be 0, 1, 2"),
        ("names: [cat, [dog]]\n", r"names\[1\]: a class name must be text or a number"),
        ("names: [cat, dog]\ncategory_ids: [1, two]\n", r"category_ids\[1\]: Input should be a valid integer"),
        ("names: [cat, dog]\ntrain: {a: 1}\n", r"train: "),
        ("names: [cat, cat]\n", r"names: class 'cat' is listed twice"),
        ("names: [yes, no]\n", r"names\[0\]: a class name must be text or a number: put names such as yes or no"),
    ],
)
def test_yolo_yaml_values_of_the_wrong_type_are_one_line(tmp_path, data_yaml, expected):
    file = _yolo(tmp_path, data_yaml)
    with pytest.raises(UserError, match=rf"^{re.escape(str(file))}: {expected}"):
        load_index(tmp_path)


def test_yolo_names_mixing_numbers_and_text_read_as_text(tmp_path):
    _yolo(tmp_path, "names: {0: 7, 1: cat}\n")
    assert load_index(tmp_path).classes == ["7", "cat"]


def test_a_yaml_billion_laughs_is_refused_before_it_expands(tmp_path):
    levels = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    levels += [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]" for i in range(8)]
    _yolo(tmp_path, "\n".join([*levels, "names: *i"]))  # 9**9 = 387 million names once expanded
    with pytest.raises(UserError, match="aliases expand to more than 100,000 values"):
        load_index(tmp_path)


def test_yaml_brackets_nested_thousands_deep_are_refused(tmp_path):
    _yolo(tmp_path, "names: " + "[" * 20_000 + "]" * 20_000)
    with pytest.raises(UserError, match="brackets nested more than 100 deep"):
        load_index(tmp_path)


def test_yolo_labels_that_are_not_utf8_are_one_line(tmp_path):
    _yolo(tmp_path, "names: [cat]\n", label="0 0.5 0.5 0.2 0.2 é\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"a\.txt: not UTF-8 text .*save YOLO labels"):
        load_index(tmp_path)


def test_yolo_class_numbers_without_names_are_bounded(tmp_path):
    _image(tmp_path / "images" / "a.png")
    _write(tmp_path / "labels" / "a.txt", "99999999999 0.5 0.5 0.2 0.2\n")
    with pytest.raises(UserError, match="uses class 99999999999 and no names are given"):
        load_index(tmp_path)


@pytest.mark.parametrize(
    ("xml", "expected"),
    [
        (
            '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY b "bb"><!ENTITY c "&b;&b;">]>'
            "<annotation><filename>&c;</filename></annotation>",
            r"refused: the XML declares entities",
        ),
        (
            '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
            "<annotation><filename>&e;</filename></annotation>",
            r"refused: the XML declares entities",
        ),
    ],
)
def test_voc_xml_entities_are_refused(tmp_path, xml, expected):
    _image(tmp_path / "JPEGImages" / "a.png")
    _write(tmp_path / "Annotations" / "a.xml", xml)
    with pytest.raises(UserError, match=expected):
        load_index(tmp_path)


@pytest.mark.parametrize(
    ("xml", "expected"),
    [
        ("<object><name>cat</name><bndbox><xmin>one</xmin></bndbox></object>", r"object\[0\]\.bndbox\.xmin: .*'one'"),
        ("<size><width>nan</width><height>6</height></size>", r"size\.width: Input should be a finite number"),
        ("<size><width>-8</width><height>6</height></size>", r"size\.width: .*greater than or equal to 0"),
        ("<object><name> </name><bndbox/></object>", r"object\[0\]\.name: a class name must not be empty"),
        ("<object><name>cat</name></object>", r"object\[0\]\.bndbox: Field required"),
    ],
)
def test_voc_values_are_checked_with_the_key_named(tmp_path, xml, expected):
    _image(tmp_path / "JPEGImages" / "a.png")
    file = _write(tmp_path / "Annotations" / "a.xml", f"<annotation><filename>a.png</filename>{xml}</annotation>")
    with pytest.raises(UserError, match=rf"^{re.escape(str(file))}: {expected}"):
        load_index(tmp_path)


def test_class_csv_format_on_a_folder_without_split_csvs_is_one_line(tmp_path):
    _image(tmp_path / "cat" / "a.png")
    with pytest.raises(UserError, match="no train.csv, val.csv or test.csv in this folder"):
        load_index(tmp_path, format="csv")


def test_class_csv_that_is_not_utf8_is_one_line(tmp_path):
    _image(tmp_path / "a.png")
    _write(tmp_path / "labels.csv", "path,label\na.png,caf\xe9\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"labels\.csv: not UTF-8 text"):
        load_index(tmp_path / "labels.csv")


@pytest.mark.parametrize(
    ("classes_yaml", "expected"),
    [
        ("names: [a, b]\ncolours: [1, 2]\n", r"colours\[0\]: Input should be a valid tuple"),
        ("names: {0: a, x: b}\n", r"names: keys of a dict of names"),
        ("names: [a, b]\nignore_index: 70000\n", r"ignore_index: Input should be less than or equal to 65535"),
        ("names: [a, b]\nkind: other\n", r"kind: Input should be 'index', 'palette', 'binary' or 'rgb'"),
    ],
)
def test_classes_yaml_values_of_the_wrong_type_are_one_line(tmp_path, classes_yaml, expected):
    _image(tmp_path / "images" / "a.png")
    (tmp_path / "masks").mkdir()
    Image.new("L", (8, 6), 1).save(tmp_path / "masks" / "a.png")
    file = _write(tmp_path / "classes.yaml", classes_yaml)
    with pytest.raises(UserError, match=rf"^{re.escape(str(file))}: {expected}"):
        load_index(tmp_path)


def test_mask_values_beyond_255_without_classes_yaml_are_one_line(tmp_path):
    _image(tmp_path / "images" / "a.png")
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.full((6, 8), 300, dtype=np.uint16)).save(tmp_path / "masks" / "a.png")
    with pytest.raises(UserError, match="mask value 300 is no class index"):
        load_index(tmp_path)


# --- the data people really have: masks in any format, layouts judged by evidence, EXIF orientation -------------


def _palette_gif(path: Path, values: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = Image.fromarray(values.astype(np.uint8), "P")
    mask.putpalette([0, 0, 0, 255, 255, 255] + [0, 0, 0] * 254)
    mask.save(path, format="GIF")
    return path


def test_gif_masks_beside_classes_yaml_are_segmentation_not_yolo(tmp_path):
    values = np.zeros((6, 8), dtype=np.uint8)
    values[2:4, 3:6] = 1
    _image(tmp_path / "images" / "a.png")
    _palette_gif(tmp_path / "masks" / "a.gif", values)
    _write(tmp_path / "classes.yaml", "names: [background, vessel]\n")
    index = load_index(tmp_path)
    assert index.format == "masks"
    assert np.array_equal(index.masks.read(index.splits["all"][0].target.path).numpy(), values)
    assert inspect_data(tmp_path)["masks"]["pixels"] == {"background": 42, "vessel": 6}


@pytest.mark.parametrize("suffix", [".tif", ".bmp", ".jpg"])
def test_masks_in_every_format_pillow_reads(tmp_path, suffix):
    _image(tmp_path / "images" / "a.png")
    (tmp_path / "masks").mkdir()
    Image.new("L", (8, 6), 0).save(tmp_path / "masks" / f"a{suffix}")
    index = load_index(tmp_path)
    assert index.format == "masks"
    assert any("JPEG" in note and "lossy" in note for note in index.notes) == (suffix == ".jpg")


def test_mask_folder_without_a_single_pair_is_not_taken_for_image_classes(tmp_path):
    _image(tmp_path / "images" / "a.png")
    _write(tmp_path / "masks" / "a.npy", b"\x93NUMPY")
    with pytest.raises(UserError, match="no image with a mask found"):
        load_index(tmp_path)


def test_masks_and_yolo_labels_in_one_folder_are_refused_naming_both(tmp_path):
    _image(tmp_path / "images" / "a.png")
    _write(tmp_path / "labels" / "a.txt", "0 0.5 0.5 0.2 0.2\n")
    Image.new("L", (8, 6), 0).save(tmp_path / "labels" / "a.png")
    with pytest.raises(UserError, match="give --format masks or --format yolo"):
        load_index(tmp_path)
    assert load_index(tmp_path, format="yolo").format == "yolo"


def test_yolo_folder_without_a_single_box_is_an_error(tmp_path):
    _image(tmp_path / "images" / "a.png")
    _write(tmp_path / "labels" / "a.txt", "")
    with pytest.raises(UserError, match=r"read as yolo detection data, but none of its 1 image\(s\) has a box"):
        load_index(tmp_path)


def test_boxes_and_masks_follow_the_exif_orientation_as_the_pixels_do(tmp_path):
    # Stored 20 wide and 10 high with orientation 6: decoded (and shown by annotation tools) 10 wide, 20 high.
    _image(tmp_path / "yolo" / "images" / "a.jpg", (20, 10), orientation=6, format="JPEG")
    _write(tmp_path / "yolo" / "labels" / "a.txt", "0 0.5 0.25 0.2 0.1\n")
    (sample,) = load_index(tmp_path / "yolo").splits["all"]
    assert sample.target.boxes == ((4.0, 4.0, 6.0, 6.0),)  # fractions of the upright 10×20 image
    image, target = DetectionDataset([sample], channels=3)[0]
    assert tuple(image.shape[-2:]) == (20, 10)
    assert tuple(target["boxes"].canvas_size) == (20, 10)

    _image(tmp_path / "seg" / "images" / "a.jpg", (20, 10), orientation=6, format="JPEG")
    upright = np.zeros((20, 10), dtype=np.uint8)
    upright[15:, :] = 1  # the bottom quarter of the upright image
    (tmp_path / "seg" / "masks").mkdir()
    Image.fromarray(upright).save(tmp_path / "seg" / "masks" / "a.png")
    index = load_index(tmp_path / "seg")
    image, mask = SegmentationDataset(index.splits["all"], channels=3, coding=index.masks)[0]
    assert tuple(image.shape[-2:]) == tuple(mask.shape) == (20, 10)
    assert int(mask.sum()) == 50


def test_data_inspect_on_gif_masks_reports_the_masks(tmp_path):
    values = np.zeros((6, 8), dtype=np.uint8)
    values[:3] = 1
    _image(tmp_path / "images" / "a.png")
    _palette_gif(tmp_path / "masks" / "a.gif", values)
    _write(tmp_path / "classes.yaml", "names: [background, lesion]\n")
    result = invoke("data", "inspect", tmp_path, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["format"] == "masks"
    assert report["masks"]["pixels"] == {"background": 24, "lesion": 24}


def test_data_inspect_on_data_without_targets_is_one_error_line(tmp_path, capsys, monkeypatch):
    _image(tmp_path / "images" / "a.png")
    _write(tmp_path / "labels" / "a.txt", "")
    line = user_error(capsys, monkeypatch, "data", "inspect", tmp_path)
    assert "none of its 1 image(s) has a box" in line
