"""Detection data: the COCO, YOLO, VOC and box-CSV readers on hand-written fixtures with hand-checked boxes,
every mistake a user can make (one line, exit 2), lossless conversions, inspect/validate, and the raccoon set."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from imagerec.cli import main as cli_main
from imagerec.cli.main import app
from imagerec.data.checks import inspect_data, validate_data
from imagerec.data.convert import convert_data
from imagerec.data.formats import DATA_FORMATS, DETECTION_FORMATS, FORMATS, detect_format, load_index
from imagerec.data.index import DataIndex
from imagerec.data.targets import Objects
from imagerec.errors import UserError

runner = CliRunner()


# --- fixtures: tiny images and hand-written annotations ------------------------------------------------------


def _image(path: Path, size: tuple[int, int], shade: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (shade, 255 - shade, (7 * shade) % 256)).save(path)
    return path


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _coco_doc(images: list[tuple[int, str, int, int]], annotations: list[dict], categories=None) -> str:
    categories = categories or [{"id": 7, "name": "bird"}, {"id": 1, "name": "cat"}, {"id": 3, "name": "dog"}]
    return json.dumps(
        {
            "images": [{"id": i, "file_name": f, "width": w, "height": h} for i, f, w, h in images],
            "annotations": [{"id": n, "iscrowd": 0, **a} for n, a in enumerate(annotations, start=1)],
            "categories": categories,
        }
    )


POLYGON = [[2.0, 3.0, 12.0, 3.0, 12.0, 9.0]]


@pytest.fixture
def coco(tmp_path: Path) -> Path:
    """COCO with non-contiguous, unsorted category ids, a crowd box, a polygon, float boxes and a negative image."""
    root = tmp_path / "coco"
    _image(root / "images" / "a.png", (40, 30), 10)
    _image(root / "images" / "b.png", (20, 20), 20)
    _image(root / "images" / "empty.png", (10, 10), 30)
    annotations = [
        {"image_id": 1, "category_id": 1, "bbox": [1.25, 2.5, 10.125, 7.3], "segmentation": POLYGON, "area": 30},
        {"image_id": 1, "category_id": 7, "bbox": [20, 10, 15, 15]},
        {"image_id": 2, "category_id": 3, "bbox": [0, 0, 20, 20], "iscrowd": 1},
        {"image_id": 2, "category_id": 1, "bbox": [3.3333333333333335, 4.1, 5.5, 6.000001]},
    ]
    images = [(1, "a.png", 40, 30), (2, "b.png", 20, 20), (3, "empty.png", 10, 10)]
    _write(root / "annotations.json", _coco_doc(images, annotations))
    return root


@pytest.fixture
def yolo(tmp_path: Path) -> Path:
    """YOLO with data.yaml (names as a dict), train/val folders, a missing and an empty label file."""
    root = tmp_path / "yolo"
    _image(root / "images" / "train" / "a.jpg", (40, 20), 1)
    _image(root / "images" / "train" / "nolabel.png", (8, 8), 2)
    _image(root / "images" / "val" / "b.png", (10, 50), 3)
    _image(root / "images" / "val" / "empty.png", (10, 10), 4)
    _write(root / "labels" / "train" / "a.txt", "1 0.5 0.5 0.25 0.5\n0 0.125 0.25 0.25 0.5\n")
    _write(root / "labels" / "val" / "b.txt", "\n0 0.5 0.1 1 0.2\n")
    _write(root / "labels" / "val" / "empty.txt", "")
    _write(root / "data.yaml", "path: .\ntrain: images/train\nval: images/val\nnames:\n  0: person\n  1: car\n")
    return root


@pytest.fixture
def voc(tmp_path: Path) -> Path:
    """Pascal VOC with ImageSets (trainval and test), a difficult object and one image without objects."""
    root = tmp_path / "VOC"
    for name, size, objects in (
        ("000001", (50, 40), [("dog", (5, 6, 20, 30), 0), ("cat", (10.5, 1, 49, 39.5), 1)]),
        ("000002", (30, 30), [("cat", (1, 1, 30, 30), 0)]),
        ("000003", (16, 16), []),
    ):
        _image(root / "JPEGImages" / f"{name}.jpg", size, int(name))
        _write(root / "Annotations" / f"{name}.xml", _voc_xml(f"{name}.jpg", size, objects))
    _write(root / "ImageSets" / "Main" / "trainval.txt", "000001\n000003\n")
    _write(root / "ImageSets" / "Main" / "test.txt", "000002\n")
    return root


def _voc_xml(filename: str, size: tuple[int, int], objects: list[tuple[str, tuple, int]]) -> str:
    parts = [f"<annotation><filename>{filename}</filename>"]
    parts.append(f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>")
    for name, (x1, y1, x2, y2), difficult in objects:
        parts.append(
            f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{x1}</xmin>"
            f"<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
        )
    return "".join(parts) + "</annotation>"


@pytest.fixture
def boxes_csv(tmp_path: Path) -> Path:
    """The raccoon layout: data/{train,test}_labels.csv beside images/; one row lists an image without boxes."""
    root = tmp_path / "csvdata"
    for name, shade in (("a.jpg", 1), ("b.jpg", 2), ("c.jpg", 3)):
        _image(root / "images" / name, (60, 40), shade)
    header = "filename,width,height,class,xmin,ymin,xmax,ymax\n"
    _write(root / "data" / "train_labels.csv", header + "a.jpg,60,40,zebra,1,2,30,40\na.jpg,60,40,ant,5,5,9.5,9\n")
    _write(root / "data" / "test_labels.csv", header + "b.jpg,60,40,zebra,0,0,60,40\nc.jpg,60,40,,,,,\n")
    return root / "data"


def _by_name(index: DataIndex) -> dict[str, Objects]:
    return {s.path.name: s.target for s in index.all_samples()}  # type: ignore[misc]


# --- readers -------------------------------------------------------------------------------------------------


def test_coco_reader(coco):
    index = load_index(coco)
    assert (index.format, index.classes, index.category_ids) == ("coco", ["cat", "dog", "bird"], [1, 3, 7])
    assert list(index.splits) == ["all"]
    a, b, empty = (_by_name(index)[n] for n in ("a.png", "b.png", "empty.png"))
    assert a.boxes == ((1.25, 2.5, 11.375, 9.8), (20.0, 10.0, 35.0, 25.0))
    assert a.labels == (0, 2)
    assert a.size == (40, 30)
    assert a.segmentation == (POLYGON, [])
    assert a.ignore == ()
    assert b.labels == (1, 0)
    assert b.ignore == (True, False)  # iscrowd
    assert empty == Objects(size=(10, 10))  # a negative example, not an error


def test_yolo_reader(yolo):
    index = load_index(yolo)
    assert (index.format, index.classes) == ("yolo", ["person", "car"])
    assert {split: len(s) for split, s in index.splits.items()} == {"train": 2, "val": 2}
    objects = _by_name(index)
    assert objects["a.jpg"].boxes == ((15.0, 5.0, 25.0, 15.0), (0.0, 0.0, 10.0, 10.0))
    assert objects["a.jpg"].labels == (1, 0)
    assert objects["a.jpg"].size == (40, 20)
    assert objects["b.png"].boxes == ((0.0, 0.0, 10.0, 10.0),)
    assert objects["nolabel.png"].boxes == objects["empty.png"].boxes == ()


def test_yolo_without_yaml_reads_classes_txt(yolo):
    (yolo / "data.yaml").unlink()
    _write(yolo / "classes.txt", "person\ncar\n")
    index = load_index(yolo)
    assert index.classes == ["person", "car"]
    assert set(index.splits) == {"train", "val"}
    (yolo / "classes.txt").unlink()
    index = load_index(yolo)
    assert index.classes == ["0", "1"]
    assert "no class names found" in index.notes[0]


def test_yolo_segment_lines_give_box_and_polygon(tmp_path):
    _image(tmp_path / "seg" / "images" / "a.png", (10, 20))
    _write(tmp_path / "seg" / "labels" / "a.txt", "0 0.1 0.5 0.5 0.25 0.9 0.75\n")
    objects = load_index(tmp_path / "seg").splits["all"][0].target
    assert objects.boxes == ((1.0, 5.0, 9.0, 15.0),)
    assert objects.segmentation == ([[1.0, 10.0, 5.0, 5.0, 9.0, 15.0]],)


def test_yolo_roboflow_layout(tmp_path):
    root = tmp_path / "rf"
    for split in ("train", "valid"):
        _image(root / split / "images" / f"{split}.png", (10, 10), len(split))
        _write(root / split / "labels" / f"{split}.txt", "0 0.5 0.5 0.2 0.2\n")
    _write(root / "data.yaml", "train: ../train/images\nval: ../valid/images\nnc: 1\nnames: ['fish']\n")
    index = load_index(root)
    assert {s: len(v) for s, v in index.splits.items()} == {"train": 1, "val": 1}
    assert index.splits["val"][0].target.boxes == ((4.0, 4.0, 6.0, 6.0),)


def test_voc_reader(voc):
    index = load_index(voc)
    assert (index.format, index.classes) == ("voc", ["cat", "dog"])
    assert {s: [x.path.name for x in v] for s, v in index.splits.items()} == {
        "train": ["000001.jpg", "000003.jpg"],
        "test": ["000002.jpg"],
    }
    first = _by_name(index)["000001.jpg"]
    assert first.boxes == ((5.0, 6.0, 20.0, 30.0), (10.5, 1.0, 49.0, 39.5))  # numbers as written
    assert (first.labels, first.ignore, first.size) == ((1, 0), (False, True), (50, 40))
    assert _by_name(index)["000003.jpg"].boxes == ()


def test_voc_labelimg_layout_with_class_order(tmp_path):
    root = tmp_path / "labelimg"
    _image(root / "x.png", (20, 20))
    _write(root / "x.xml", _voc_xml("x.png", (20, 20), [("b", (1, 1, 5, 5), 0), ("a", (2, 2, 8, 8), 0)]))
    _image(root / "unlabelled.png", (20, 20), 9)
    index = load_index(root)
    assert index.classes == ["a", "b"]
    assert [s.path.name for s in index.splits["all"]] == ["x.png"]
    assert "1 image(s) without an XML file were left out" in index.notes[0]
    _write(root / "classes.txt", "b\na\n")
    assert load_index(root).classes == ["b", "a"]


def test_csv_box_reader(boxes_csv):
    index = load_index(boxes_csv)
    assert (index.format, index.classes, index.root) == ("csvboxes", ["ant", "zebra"], boxes_csv.parent)
    assert {s: [x.path.name for x in v] for s, v in index.splits.items()} == {
        "test": ["b.jpg", "c.jpg"],
        "train": ["a.jpg"],
    }
    objects = _by_name(index)
    assert objects["a.jpg"].boxes == ((1.0, 2.0, 30.0, 40.0), (5.0, 5.0, 9.5, 9.0))
    assert objects["a.jpg"].labels == (1, 0)
    assert objects["c.jpg"] == Objects(size=(60, 40))
    single = load_index(boxes_csv / "train_labels.csv", format="csv")
    assert single.format == "csvboxes"
    assert list(single.splits) == ["all"]


def test_coco_split_layouts(tmp_path):
    """`annotations/instances_<split>.json` with images in images/<split>/, and Roboflow's split folders."""
    root = tmp_path / "instances"
    for split in ("train2017", "val2017"):
        _image(root / "images" / split / f"{split}.jpg", (10, 10), len(split))
        annotation = {"image_id": 1, "category_id": 1, "bbox": [1, 1, 2, 2]}
        _write(root / "annotations" / f"instances_{split}.json", _coco_doc([(1, f"{split}.jpg", 10, 10)], [annotation]))
    _write(root / "annotations" / "captions_train2017.json", '{"images": [], "annotations": []}')
    index = load_index(root)
    assert {s: [x.path.name for x in v] for s, v in index.splits.items()} == {
        "train": ["train2017.jpg"],
        "val": ["val2017.jpg"],
    }
    roboflow = tmp_path / "roboflow"
    categories = [
        {"id": 0, "name": "animals", "supercategory": "none"},
        {"id": 1, "name": "fox", "supercategory": "animals"},
    ]
    for split in ("train", "valid", "test"):
        _image(roboflow / split / "p.jpg", (10, 10), len(split))
        doc = _coco_doc([(0, "p.jpg", 10, 10)], [{"image_id": 0, "category_id": 1, "bbox": [0, 0, 5, 5]}], categories)
        _write(roboflow / split / "_annotations.coco.json", doc)
    index = load_index(roboflow)
    assert set(index.splits) == {"train", "val", "test"}
    assert (index.classes, index.category_ids) == (["fox"], [1])  # the unused dataset-name category dropped


@pytest.mark.parametrize(
    ("layout", "expected"),
    [("coco", "coco"), ("yolo", "yolo"), ("voc", "voc"), ("boxes_csv", "csvboxes")],
)
def test_auto_detection(layout, expected, request):
    path = request.getfixturevalue(layout)
    assert detect_format(path) == expected


def test_forced_format_reads_the_same(coco, voc, yolo):
    assert load_index(coco / "annotations.json", format="coco").splits.keys() == {"all"}
    assert load_index(voc, format="voc").classes == ["cat", "dog"]
    assert load_index(yolo / "data.yaml", format="yolo").classes == ["person", "car"]
    with pytest.raises(UserError, match="no COCO JSON found"):
        load_index(yolo, format="coco")


def test_classification_detection_is_unchanged(make_image_folder, tmp_path):
    make_image_folder(tmp_path / "cls", {"a": 2, "b": 2}, split="train")
    assert detect_format(tmp_path / "cls") == "imagefolder"
    _write(tmp_path / "cls" / "train.csv", "path,label\ntrain/a/a_0.png,a\ntrain/b/b_0.png,b\n")
    assert detect_format(tmp_path / "cls") == "csv"


def test_formats_are_one_registry_asked_in_a_fixed_order(coco):
    """Which format a folder is taken for depends on the order formats are asked in: split CSVs, COCO, masks
    before YOLO (whose sniffing takes a classes.yaml for a data.yaml), VOC, any box CSV, and else an image folder."""
    asked = [f.name for f in sorted(DATA_FORMATS.values(), key=lambda f: f.priority) if f.detect is not None]
    assert asked == ["csv", "coco", "masks", "yolo", "voc", "csvboxes"]
    assert FORMATS == ("imagefolder", "csv", "coco", "yolo", "voc", "masks")
    assert DETECTION_FORMATS == ("coco", "yolo", "voc", "csvboxes")
    assert [f.name for f in DATA_FORMATS.values() if f.write is not None] == ["coco", "yolo", "voc"]
    with pytest.raises(
        UserError, match=r"unknown data format 'tfrecord': use imagefolder, csv, coco, yolo, voc, masks \(or auto\)$"
    ):
        load_index(coco, format="tfrecord")


# --- repairs: clipping and zero-area -------------------------------------------------------------------------


def _coco_with(tmp_path: Path, bbox: list[float], **extra) -> Path:
    _image(tmp_path / "d" / "a.png", (40, 30))
    annotation = {"image_id": 1, "category_id": 1, "bbox": bbox, **extra}
    return _write(tmp_path / "d" / "annotations.json", _coco_doc([(1, "a.png", 40, 30)], [annotation]))


def test_boxes_outside_the_image_are_clipped_with_a_note(tmp_path):
    index = load_index(_coco_with(tmp_path, [-5, 10, 50, 30]))
    assert index.splits["all"][0].target.boxes == ((0.0, 10.0, 40.0, 30.0),)
    assert "1 box(es) reaching outside their image were clipped" in index.notes[0]
    assert "annotation id 1" in index.notes[0]


def test_zero_area_boxes_are_dropped_with_a_note(tmp_path):
    _image(tmp_path / "d" / "a.png", (40, 30))
    annotations = [
        {"id": i, "image_id": 1, "category_id": 1, "bbox": b} for i, b in enumerate([[5, 5, 0, 10], [1, 1, 5, 5]])
    ]
    index = load_index(_write(tmp_path / "d" / "annotations.json", _coco_doc([(1, "a.png", 40, 30)], annotations)))
    assert index.splits["all"][0].target.boxes == ((1.0, 1.0, 6.0, 6.0),)
    assert "1 box(es) with zero width or height were dropped" in index.notes[0]


def test_detection_data_without_a_single_box_is_an_error(tmp_path):
    # Read as detection data, a folder whose every box was dropped (or never given) would train on nothing.
    with pytest.raises(UserError, match=r"none of its 1 image\(s\) has a box.*zero width or height were dropped"):
        load_index(_coco_with(tmp_path, [5, 5, 0, 10]))


# --- bad input: one line, exit 2 -----------------------------------------------------------------------------


def _error_line(capsys, monkeypatch, *args: object) -> str:
    monkeypatch.setattr(sys, "argv", ["imagerec", *map(str, args)])
    with pytest.raises(SystemExit) as caught:
        cli_main.main()
    captured = capsys.readouterr()
    assert caught.value.code == 2, captured.err + captured.out
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


def _bad_coco_json(root: Path) -> tuple[Path, list[str]]:
    file = _write(root / "annotations.json", '{\n  "images": [],\n  "annotations": [,]\n}')
    return root, [f"{file}, line 3, column 19", "not valid JSON"]


def _bad_coco_truncated(root: Path) -> tuple[Path, list[str]]:
    file = _write(root / "annotations" / "instances_train.json", '{"info": {"year": 2')
    return root, [f"{file}, line 1, column 20", "not valid JSON"]


def _bad_coco_image_id(root: Path) -> tuple[Path, list[str]]:
    _image(root / "a.png", (10, 10))
    doc = _coco_doc([(1, "a.png", 10, 10)], [{"image_id": 9, "category_id": 1, "bbox": [0, 0, 1, 1]}])
    return root, [f"{_write(root / 'annotations.json', doc)}, annotation id 1", "image_id 9 is not in"]


def _bad_coco_category(root: Path) -> tuple[Path, list[str]]:
    _image(root / "a.png", (10, 10))
    doc = _coco_doc([(1, "a.png", 10, 10)], [{"image_id": 1, "category_id": 2, "bbox": [0, 0, 1, 1]}])
    return root, [f"{_write(root / 'annotations.json', doc)}, annotation id 1", "category_id 2 is not in"]


def _bad_coco_missing_image(root: Path) -> tuple[Path, list[str]]:
    file = _write(root / "annotations.json", _coco_doc([(1, "gone.png", 10, 10)], []))
    return root, [f"{file}, image id 1", "image 'gone.png' not found"]


def _bad_coco_split_categories(root: Path) -> tuple[Path, list[str]]:
    for split, categories in (("train", None), ("val", [{"id": 1, "name": "cat"}])):
        _image(root / "images" / f"{split}.png", (10, 10))
        _write(
            root / "annotations" / f"instances_{split}.json", _coco_doc([(1, f"{split}.png", 10, 10)], [], categories)
        )
    return root, [str(root / "annotations" / "instances_val.json"), "categories differ"]


def _yolo_with(root: Path, line: str) -> Path:
    _image(root / "images" / "a.png", (10, 10))
    _write(root / "data.yaml", "names: [a, b]\n")
    return _write(root / "labels" / "a.txt", f"0 0.5 0.5 0.1 0.1\n{line}\n")


def _bad_yolo_fields(root: Path) -> tuple[Path, list[str]]:
    return root, [f"{_yolo_with(root, '1 0.5 0.5 0.1')}, line 2", "expected 5 values", "found 4"]


def _bad_yolo_range(root: Path) -> tuple[Path, list[str]]:
    return root, [f"{_yolo_with(root, '1 0.5 1.5 0.1 0.1')}, line 2", "cy 1.5 is outside [0, 1]"]


def _bad_yolo_class(root: Path) -> tuple[Path, list[str]]:
    return root, [f"{_yolo_with(root, '2 0.5 0.5 0.1 0.1')}, line 2", "class 2 but there are only 2 names"]


def _bad_yolo_number(root: Path) -> tuple[Path, list[str]]:
    return root, [f"{_yolo_with(root, '1 0.5 x 0.1 0.1')}, line 2", "cy 'x' is not a number"]


def _bad_voc_xml(root: Path) -> tuple[Path, list[str]]:
    _image(root / "a.png", (10, 10))
    file = _write(root / "Annotations" / "a.xml", "<annotation><filename>a.png</filename>\n<object>")
    return root, [f"{file}, line 2", "not valid XML"]


def _bad_voc_inverted(root: Path) -> tuple[Path, list[str]]:
    _image(root / "a.png", (20, 20))
    file = _write(root / "a.xml", _voc_xml("a.png", (20, 20), [("x", (10, 1, 5, 5), 0)]))
    return root, [f"{file}, object 1", "inverted"]


def _bad_csv_columns(root: Path) -> tuple[Path, list[str]]:
    file = _write(root / "boxes.csv", "filename,class,xmin,ymin,xmax\na.png,x,1,2,3\n")
    return file, [str(file), "missing column(s) ymax"]


def _bad_csv_number(root: Path) -> tuple[Path, list[str]]:
    _image(root / "a.png", (10, 10))
    header = "filename,width,height,class,xmin,ymin,xmax,ymax\n"
    file = _write(root / "boxes.csv", header + "a.png,10,10,x,1,1,4,4\na.png,10,10,x,1,one,4,4\n")
    return file, [f"{file}, line 3", "ymin 'one' is not a number"]


BAD_INPUTS = [
    _bad_coco_json, _bad_coco_truncated, _bad_coco_image_id, _bad_coco_category, _bad_coco_missing_image,
    _bad_coco_split_categories, _bad_yolo_fields, _bad_yolo_range, _bad_yolo_class, _bad_yolo_number,
    _bad_voc_xml, _bad_voc_inverted, _bad_csv_columns, _bad_csv_number,
]  # fmt: skip


@pytest.mark.parametrize("make", BAD_INPUTS, ids=lambda f: f.__name__[5:])
def test_bad_input_is_one_line_exit_2(make, tmp_path, capsys, monkeypatch):
    data, expected = make(tmp_path / "data")
    line = _error_line(capsys, monkeypatch, "data", "inspect", data)
    for part in expected:
        assert part in line, line


def test_bad_input_through_forced_format(tmp_path, capsys, monkeypatch):
    data, expected = _bad_yolo_range(tmp_path / "data")
    line = _error_line(capsys, monkeypatch, "data", "inspect", data, "--format", "yolo")
    assert expected[0] in line


# --- conversion ----------------------------------------------------------------------------------------------


def _assert_same_boxes(before: DataIndex, after: DataIndex, *, keep_ignored: bool = True) -> None:
    assert after.classes == before.classes
    assert set(after.splits) == set(before.splits)
    old, new = _by_name(before), _by_name(after)
    assert set(old) == set(new)
    for name, objects in old.items():
        kept = [i for i in range(len(objects.boxes)) if keep_ignored or not objects.ignored(i)]
        assert new[name].labels == tuple(objects.labels[i] for i in kept), name
        assert [new[name].ignored(i) for i in range(len(kept))] == [objects.ignored(i) for i in kept]
        for got, want in zip(new[name].boxes, [objects.boxes[i] for i in kept], strict=True):
            assert got == pytest.approx(want, rel=1e-6, abs=1e-9), name


def test_coco_yolo_coco_round_trip(coco, tmp_path):
    original = load_index(coco)
    convert_data(coco, tmp_path / "y", to="yolo")
    convert_data(tmp_path / "y", tmp_path / "c", to="coco")
    back = load_index(tmp_path / "c")
    _assert_same_boxes(original, back, keep_ignored=False)  # YOLO cannot mark the crowd box
    assert back.category_ids == [1, 3, 7]  # through data.yaml's category_ids


def test_coco_voc_coco_round_trip(coco, tmp_path):
    original = load_index(coco)
    convert_data(coco, tmp_path / "v", to="voc")
    assert load_index(tmp_path / "v").format == "voc"
    convert_data(tmp_path / "v", tmp_path / "c", to="coco")
    back = load_index(tmp_path / "c")
    _assert_same_boxes(original, back)  # crowd → difficult → crowd
    assert back.category_ids == [1, 3, 7]  # through categories.json


def test_yolo_coco_yolo_round_trip(yolo, tmp_path):
    original = load_index(yolo)
    convert_data(yolo, tmp_path / "c", to="coco")
    convert_data(tmp_path / "c", tmp_path / "y", to="yolo")
    _assert_same_boxes(original, load_index(tmp_path / "y"))
    assert (tmp_path / "y" / "labels" / "train" / "nolabel.txt").read_text() == ""  # negatives stay negatives
    line = (tmp_path / "y" / "labels" / "train" / "a.txt").read_text().splitlines()[0]
    assert line == "1 0.5 0.5 0.25 0.5"


def test_voc_csv_yolo_voc_keeps_splits(voc, boxes_csv, tmp_path):
    convert_data(voc, tmp_path / "y", to="yolo")
    convert_data(tmp_path / "y", tmp_path / "v", to="voc")
    back = load_index(tmp_path / "v")
    assert {s: len(v) for s, v in back.splits.items()} == {"train": 2, "test": 1}
    _assert_same_boxes(load_index(voc), back, keep_ignored=False)
    convert_data(boxes_csv, tmp_path / "from_csv", to="voc")
    _assert_same_boxes(load_index(boxes_csv), load_index(tmp_path / "from_csv"))


def test_convert_cli_and_refusals(coco, make_image_folder, tmp_path):
    result = runner.invoke(app, ["data", "convert", str(coco), str(tmp_path / "out"), "--to", "yolo"])
    assert result.exit_code == 0, result.output
    assert "wrote 3 images and 3 boxes" in result.stdout
    assert "left out 1 ignored boxes" in result.stdout
    assert "left out 1 segmentations" in result.stdout
    with pytest.raises(UserError, match="already exists and is not empty"):
        convert_data(coco, tmp_path / "out", to="coco")
    with pytest.raises(UserError, match="cannot convert to 'tfrecord': use one of coco, yolo, voc$"):
        convert_data(coco, tmp_path / "new", to="tfrecord")
    make_image_folder(tmp_path / "cls", {"a": 2, "b": 2})
    with pytest.raises(UserError, match="classification data"):
        convert_data(tmp_path / "cls", tmp_path / "new", to="coco")
    assert not (tmp_path / "new").exists()
    assert not list(tmp_path.glob(".new.partial-*"))


def test_convert_gives_clashing_names_their_own_stem(tmp_path):
    root = tmp_path / "d"
    _image(root / "x" / "a.png", (10, 10), 1)
    _image(root / "y" / "a.png", (10, 10), 2)
    _image(root / "a.jpg", (10, 10), 3)
    annotation = [{"image_id": i, "category_id": 1, "bbox": [i, i, 2, 2]} for i in (1, 2, 3)]
    _write(
        root / "annotations.json",
        _coco_doc([(1, "x/a.png", 10, 10), (2, "y/a.png", 10, 10), (3, "a.jpg", 10, 10)], annotation),
    )
    convert_data(root, tmp_path / "y", to="yolo")
    assert sorted(p.name for p in (tmp_path / "y" / "labels").iterdir()) == ["a-1.txt", "a-2.txt", "a.txt"]
    assert sum(len(o.boxes) for o in _by_name(load_index(tmp_path / "y")).values()) == 3


# --- inspect and validate ------------------------------------------------------------------------------------


def test_inspect_detection(coco, voc):
    report = inspect_data(coco)
    assert report["counts"] == {"all": {"cat": 2, "dog": 1, "bird": 1}}
    boxes = report["boxes"]
    assert (boxes["total"], boxes["ignored"], boxes["images_without_boxes"]) == (4, {"all": 1}, {"all": 1})
    # areas: 10.125 × 7.3 = 73.9, 225, 400, 5.5 × 6 = 33: all below 32²
    assert boxes["sizes"] == {"all": {"small": 4, "medium": 0, "large": 0}}
    assert boxes["per_image"] == {"min": 0, "median": 2, "max": 2, "mean": 1.33}
    result = runner.invoke(app, ["data", "inspect", str(voc)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "images without boxes" in result.stdout
    assert "boxes per image min / median / max: 0 / 1 / 2" in result.stdout


def test_validate_lists_every_detection_problem(tmp_path):
    root = tmp_path / "d"
    for name in ("a", "b", "c"):
        _image(root / "images" / f"{name}.png", (40, 30), ord(name))
    images = [(1, "a.png", 40, 30), (2, "b.png", 40, 30), (3, "c.png", 99, 30)]
    annotations = [
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, -5, 5]},  # inverted
        {"image_id": 1, "category_id": 5, "bbox": [1, 1, 5, 5]},  # unknown category
        {"image_id": 8, "category_id": 1, "bbox": [1, 1, 5, 5]},  # unknown image
        {"image_id": 2, "category_id": 1, "bbox": [1, 1, 10, 10]},
        {"image_id": 2, "category_id": 1, "bbox": [1, 1, 10, 10.1]},  # duplicate box
        {"image_id": 2, "category_id": 3, "bbox": [1, 1, 10, 10]},  # same place, other class: fine
        {"image_id": 2, "category_id": 1, "bbox": [30, 20, 20, 5]},  # outside: clipped
        {"image_id": 2, "category_id": 1, "bbox": [3, 3, 0, 4]},  # zero area: dropped
    ]
    _write(root / "annotations.json", _coco_doc(images, annotations))
    report = validate_data(root)
    assert report["summary"] == {
        "inverted": 1, "unknown-category": 1, "unknown-image": 1, "size": 1, "duplicate-box": 1,
    }  # fmt: skip
    assert report["warning_summary"] == {"outside": 1, "zero-area": 1}
    assert any("c.png: the annotation says 99×30 but the image is 40×30" in p["message"] for p in report["problems"])
    result = runner.invoke(app, ["data", "validate", str(root)])
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith("inverted: ")
    assert any(line.startswith("outside: ") and "annotation id 7" in line for line in lines)
    assert "5 problem(s)" in lines[-1]
    assert "2 box(es) repaired" in lines[-1]


def test_validate_flags_exif_rotated_images(tmp_path):
    path = _coco_with(tmp_path, [1, 1, 5, 5])
    image = Image.open(tmp_path / "d" / "a.png")
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(tmp_path / "d" / "a.png", exif=exif.tobytes())
    report = validate_data(path)
    assert report["summary"] == {"orientation": 1}
    assert "EXIF orientation 6" in report["problems"][0]["message"]


def test_validate_warnings_alone_pass_unless_strict(tmp_path, capsys, monkeypatch):
    path = _coco_with(tmp_path, [30, 20, 20, 5])
    result = runner.invoke(app, ["data", "validate", str(path)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("outside: ")
    assert "no problems; 1 box(es) repaired" in result.stdout
    line = _error_line(capsys, monkeypatch, "data", "validate", path, "--strict")
    assert "1 box(es) reach outside their image or have zero area (--strict)" in line


@pytest.mark.parametrize(("layout", "boxes"), [("yolo", 3), ("coco", 4), ("voc", 3), ("boxes_csv", 3)])
def test_validate_clean_detection_data(layout, boxes, request):
    report = validate_data(request.getfixturevalue(layout))  # COCO's polygons must not trip the checks
    assert (report["problems"], report["warnings"], report["boxes"]) == ([], [], boxes)


# --- the raccoon dataset -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def raccoon() -> Path:
    path = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "raccoon"
    if not path.is_dir():
        pytest.skip(f"{path} not found: the shared raccoon dataset is not on this machine")
    return path


def test_raccoon_voc_and_csv_agree(raccoon):
    voc_index = load_index(raccoon)
    assert voc_index.format == "voc"
    assert len(voc_index.samples("all")) == 200
    assert sum(len(s.target.boxes) for s in voc_index.all_samples()) == 217
    csv_index = load_index(raccoon / "data")
    # The CSVs list 160 and 40 distinct images (173 and 44 rows); its README's "161 / 41" counts one more each.
    assert {s: len(v) for s, v in csv_index.splits.items()} == {"train": 160, "test": 40}
    assert sum(len(s.target.boxes) for s in csv_index.all_samples()) == 217
    assert csv_index.classes == voc_index.classes == ["raccoon"]
    from_voc = {s.path.resolve(): s.target for s in voc_index.all_samples()}
    for sample in csv_index.all_samples():
        voc_objects = from_voc[sample.path.resolve()]
        assert sorted(sample.target.boxes) == sorted(voc_objects.boxes), sample.path
        assert sample.target.size == voc_objects.size
