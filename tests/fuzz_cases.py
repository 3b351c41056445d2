"""What tests/test_fuzz_readers.py and benchmarks/fuzz_readers.py share: hypothesis strategies that write annotation
data (COCO JSON, YOLO, Pascal VOC XML, box CSV, class CSV, classes.yaml + masks) with wrong types, odd values,
hostile files and damaged bytes, and `read` that runs one case through the public readers."""

from __future__ import annotations

import io
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from hypothesis import strategies as st
from PIL import Image

from imagerec.data.checks import inspect_data
from imagerec.data.formats import load_index, load_index_with_findings
from imagerec.errors import UserError

MISSING = object()  # a key left out of a generated record
LONG_NAME = "n" * 300  # longer than any file system allows (errno 36)


def _png(size: tuple[int, int] = (8, 6), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, 90).save(buffer, format="PNG")
    return buffer.getvalue()


def _rotated_jpeg() -> bytes:
    """A 8×6 JPEG carrying EXIF orientation 6: decoded 6 wide and 8 high."""
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), (20, 120, 200)).save(buffer, format="JPEG", exif=exif)
    return buffer.getvalue()


IMAGES = {
    "png": _png(),
    "grey": _png(mode="L"),
    "rotated": _rotated_jpeg(),
    "truncated": _png()[:40],
    "empty": b"",
    "text": b"not an image",
}
IMAGE_BYTES = st.sampled_from(["png"] * 6 + ["grey", "rotated", "truncated", "empty", "text"]).map(IMAGES.get)

ODD = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.text(max_size=6),
    st.lists(st.integers(min_value=-1, max_value=3), max_size=4),
    st.dictionaries(st.text(max_size=3), st.integers(min_value=0, max_value=3), max_size=2),
)
"""A value of a wrong type or an odd one: None, booleans, huge or negative ints, NaN and infinities, text, lists
and dicts."""


def mostly(usual: st.SearchStrategy, rare: st.SearchStrategy, *, one_in: int = 5) -> st.SearchStrategy:
    """`usual`, and `rare` one time in `one_in` (st.one_of weighs its branches alike, however often repeated)."""
    # The rare branch at the top of the range: hypothesis favours small numbers, and the usual case is the simple one.
    return st.integers(min_value=1, max_value=one_in).flatmap(lambda n: rare if n == one_in else usual)


def maybe(valid: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly `valid`, sometimes an odd value, sometimes the key left out."""
    return mostly(valid, st.one_of(ODD, st.just(MISSING)), one_in=20)


def optional(value: st.SearchStrategy) -> st.SearchStrategy:
    """An optional key: mostly left out, else `value`."""
    return mostly(st.just(MISSING), value, one_in=3)


def record(**fields: st.SearchStrategy) -> st.SearchStrategy:
    """A dict of the fields' values, without the ones left out."""
    return st.fixed_dictionaries(fields).map(lambda d: {k: v for k, v in d.items() if v is not MISSING})


NUMBER_TEXT = mostly(
    st.sampled_from(["0", "1", "0.5", "0.25", "3", "12", "7.5"]),
    st.sampled_from(["-1", "nan", "inf", "-inf", "1e400", "abc", "", "0x10", "1_0", "99999999999", "1e-400"]),
    one_in=4,
)
"""Numbers as annotation text holds them, and text that only looks like one."""


def _hostile_text(kind: str) -> bytes:
    """A damaged or hostile file: not UTF-8, a NUL, nested thousands deep, a YAML alias bomb, XML entities."""
    return {
        "latin1": "naïve,façade\n".encode("latin-1"),
        "nul": b"a\x00b\n",
        # Deeper than Python's recursion limit; no deeper, since PyYAML scans in Python (50,000 levels: 3 s).
        "deep_json": b"[" * 5_000 + b"]" * 5_000,
        "deep_yaml": b"a: " + b"[" * 5_000 + b"]" * 5_000,
        "yaml_bomb": "\n".join(
            ["a: &a [x, x, x, x, x, x, x, x, x]"]
            + [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]" for i in range(8)]
            + ["names: *i"]
        ).encode(),
        "yaml_recursive": b"names: &a [*a]\n",
        "xml_bomb": b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY b "bbbbbbbb"><!ENTITY c "&b;&b;&b;&b;">]>'
        b"<annotation><filename>&c;</filename></annotation>",
        "xml_external": b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
        b"<annotation><filename>&e;</filename></annotation>",
        "binary": bytes(range(256)),
        "empty": b"",
    }[kind]


HOSTILE = st.sampled_from(
    ["latin1", "nul", "deep_json", "deep_yaml", "yaml_bomb", "yaml_recursive", "xml_bomb", "xml_external", "binary"]
).map(_hostile_text)


@dataclass(frozen=True)
class Case:
    """Files to write (relative path → bytes), the path to give the reader, and the format to ask for."""

    files: dict[str, bytes]
    given: str = "."
    format: str = "auto"


def _text_or_hostile(text: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return mostly(text, st.one_of(HOSTILE, st.binary(max_size=40)), one_in=8)


# --- COCO JSON -------------------------------------------------------------------------------------------------

_IDS = mostly(st.integers(min_value=1, max_value=2), st.integers(min_value=0, max_value=3), one_in=12)
_FILE_NAMES = mostly(
    st.sampled_from(["a.png", "b.png"]),
    st.sampled_from(["missing.png", "sub/a.png", "", "/abs/a.png", LONG_NAME]),
    one_in=10,
)
_COORDINATES = st.one_of(st.integers(-2, 10), st.floats(-2, 10))
_BBOX = mostly(
    st.tuples(st.integers(0, 6), st.integers(0, 4), st.integers(1, 4), st.floats(0.5, 4)).map(list),
    st.lists(st.one_of(_COORDINATES, ODD), max_size=5),
)
_SEGMENTATION = st.one_of(
    st.just([[1, 1, 5, 1, 5, 5]]),
    st.just({"size": [6, 8], "counts": [0, 48]}),
    st.lists(st.lists(st.floats(-2, 10), max_size=8), max_size=2),
    ODD,
)
_COCO_IMAGE = record(
    id=maybe(_IDS), file_name=maybe(_FILE_NAMES), width=optional(st.just(8)), height=optional(st.just(6))
)
_COCO_ANNOTATION = record(
    id=optional(_IDS),
    image_id=maybe(_IDS),
    category_id=maybe(_IDS),
    bbox=maybe(_BBOX),
    iscrowd=optional(st.sampled_from([0, 1])),
    area=optional(st.floats(0, 50)),
    segmentation=optional(_SEGMENTATION),
)
_COCO_CATEGORY = record(
    id=maybe(_IDS),
    name=maybe(mostly(st.sampled_from(["cat", "dog"]), st.sampled_from(["7", ""]), one_in=10)),
    supercategory=optional(st.just("animal")),
)


def _distinct(records: st.SearchStrategy) -> st.SearchStrategy:
    """1 to 3 records, mostly with distinct ids (a repeated id is one of the mistakes, not every case's)."""
    return mostly(st.lists(records, min_size=1, max_size=3, unique_by=lambda r: repr(r.get("id"))), st.lists(records))


_COCO_RECORD = record(
    images=maybe(_distinct(_COCO_IMAGE)),
    annotations=maybe(st.lists(_COCO_ANNOTATION, min_size=1, max_size=4)),
    categories=maybe(_distinct(_COCO_CATEGORY)),
)
_COCO_DOCUMENT = mostly(_COCO_RECORD, ODD, one_in=10).map(lambda document: json.dumps(document).encode())


@st.composite
def coco_cases(draw: st.DrawFn) -> Case:
    """A folder with annotations.json and an image or two; the folder or the file given."""
    files = {"annotations.json": draw(_text_or_hostile(_COCO_DOCUMENT)), "a.png": draw(IMAGE_BYTES)}
    files["b.png"] = draw(IMAGE_BYTES)
    return Case(files, draw(st.sampled_from([".", "annotations.json"])), draw(st.sampled_from(["auto", "coco"])))


# --- YOLO ------------------------------------------------------------------------------------------------------

_NAMES = mostly(
    st.one_of(
        st.lists(st.sampled_from(["cat", "dog", "bird", 3]), min_size=1, max_size=3, unique=True),
        st.sampled_from([{0: "cat", 1: "dog"}, {0: "cat", 1: 7, 2: "bird"}, {1: "dog", 0: "cat"}]),
    ),
    st.one_of(
        st.lists(st.sampled_from(["cat", "dog", 3, 1.5, "", None, "cat", [1]]), max_size=4),
        st.dictionaries(st.one_of(_IDS, st.sampled_from(["0", "a", "1"])), st.sampled_from(["cat", 7]), max_size=3),
        ODD,
    ),
)
_SPLIT_ENTRY = mostly(st.just("images/train"), st.sampled_from(["images/val", "missing", "list.txt", LONG_NAME]))
_DATA_YAML = record(
    names=maybe(_NAMES),
    train=maybe(st.one_of(_SPLIT_ENTRY, st.lists(_SPLIT_ENTRY, max_size=2))),
    val=optional(_SPLIT_ENTRY),
    path=optional(st.sampled_from([".", "elsewhere", "/nowhere"])),
    category_ids=optional(st.lists(_IDS, max_size=3)),
).map(lambda data: yaml.safe_dump(data, sort_keys=False).encode())
_FRACTION = st.sampled_from(["0.5", "0.25", "0.1", "1", "0", "0.75"])
_LABEL_LINE = mostly(
    st.tuples(st.sampled_from(["0", "1", "2"]), *[_FRACTION] * 4),
    st.one_of(st.tuples(st.just("0"), *[_FRACTION] * 6), st.lists(NUMBER_TEXT, max_size=9)),
    one_in=4,
).map(" ".join)
_LABELS = st.lists(_LABEL_LINE, min_size=1, max_size=4).map(lambda lines: "\n".join(lines).encode())


@st.composite
def yolo_cases(draw: st.DrawFn) -> Case:
    """`images/train/` + `labels/train/`, with a data.yaml, a classes.txt, or neither."""
    files = {"images/train/a.png": draw(IMAGE_BYTES), "labels/train/a.txt": draw(_text_or_hostile(_LABELS))}
    if draw(st.booleans()):
        files["images/train/b.png"] = draw(IMAGE_BYTES)
        files["labels/train/b.txt"] = draw(_LABELS)
    names = draw(st.sampled_from(["yaml", "yaml", "classes", "none"]))
    if names == "yaml":
        files["data.yaml"] = draw(_text_or_hostile(_DATA_YAML))
        files["list.txt"] = draw(st.sampled_from([b"images/train/a.png\n", b"missing.png\n", IMAGES["text"]]))
    elif names == "classes":
        files["classes.txt"] = draw(_text_or_hostile(st.sampled_from([b"cat\ndog\n", b"cat\ncat\n", b"\n"])))
    given = draw(st.sampled_from([".", "data.yaml"] if names == "yaml" else ["."]))
    return Case(files, given, draw(st.sampled_from(["auto", "yolo"])))


# --- Pascal VOC XML --------------------------------------------------------------------------------------------


def _element(tag: str, text: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return mostly(text.map(lambda t: f"<{tag}>{t}</{tag}>"), st.just(""), one_in=8)


_CORNERS = {"xmin": ["0", "1"], "ymin": ["0", "2"], "xmax": ["5", "8"], "ymax": ["4", "6"]}  # mostly a real box
_VOC_OBJECT = st.tuples(
    _element("name", mostly(st.sampled_from(["cat", "dog"]), st.sampled_from(["", "&amp;", " "]))),
    _element("difficult", st.sampled_from(["0", "1", "yes"])),
    st.tuples(*(_element(k, mostly(st.sampled_from(usual), NUMBER_TEXT)) for k, usual in _CORNERS.items())).map(
        lambda corners: f"<bndbox>{''.join(corners)}</bndbox>"
    ),
).map(lambda parts: f"<object>{''.join(parts)}</object>")
_VOC_XML = st.tuples(
    mostly(st.just("annotation"), st.just("other"), one_in=10),
    _element("filename", mostly(st.just("a.png"), st.sampled_from(["missing.png", "", LONG_NAME]))),
    st.tuples(
        _element("width", mostly(st.just("8"), NUMBER_TEXT)), _element("height", mostly(st.just("6"), NUMBER_TEXT))
    ).map(lambda size: f"<size>{''.join(size)}</size>"),
    st.lists(_VOC_OBJECT, min_size=1, max_size=3),
).map(lambda p: f"<{p[0]}>{p[1]}{p[2]}{''.join(p[3])}</{p[0]}>".encode())


@st.composite
def voc_cases(draw: st.DrawFn) -> Case:
    """`Annotations/` + `JPEGImages/`, sometimes with `ImageSets/Main/train.txt`."""
    files = {"Annotations/a.xml": draw(_text_or_hostile(_VOC_XML)), "JPEGImages/a.png": draw(IMAGE_BYTES)}
    if draw(st.booleans()):
        files["ImageSets/Main/train.txt"] = draw(st.sampled_from([b"a\n", b"missing\n", IMAGES["text"], b"\xff\n"]))
    return Case(files, ".", draw(st.sampled_from(["auto", "voc"])))


# --- CSV tables ------------------------------------------------------------------------------------------------

_CELL = st.one_of(NUMBER_TEXT, st.sampled_from(["a.png", "cat", "dog", "missing.png", "sub", LONG_NAME, '"', ";"]))
_COORDINATE = st.one_of(st.integers(-2, 10).map(str), NUMBER_TEXT)
_BOX_ROW = st.tuples(
    mostly(st.just("a.png"), st.sampled_from(["missing.png", "", LONG_NAME])),
    st.sampled_from(["8", "8", "", "0", "nan"]),
    st.sampled_from(["6", "6", "", "-1"]),
    st.sampled_from(["cat", "dog", "cat", ""]),
    mostly(st.sampled_from(["0", "1", "2"]), _COORDINATE),
    mostly(st.sampled_from(["0", "1", "2"]), _COORDINATE),
    mostly(st.sampled_from(["3", "5", "8"]), _COORDINATE),
    mostly(st.sampled_from(["3", "5", "6"]), _COORDINATE),
)
_CLASS_ROW = st.tuples(
    mostly(st.sampled_from(["a.png", "b.png", "sub/c.png"]), st.sampled_from(["missing.png", "sub", LONG_NAME, ""])),
    st.sampled_from(["cat", "dog", "cat;dog", "", ";"]),
    st.sampled_from(["train", "val", "test", "x", ""]),
)


def _table(header: st.SearchStrategy[list[str]], row: st.SearchStrategy[tuple[str, ...]]) -> st.SearchStrategy[bytes]:
    """A CSV: the header, then rows mostly of the expected columns, some of random cells."""
    rows = st.lists(mostly(row, st.lists(_CELL, max_size=9)).map(",".join), min_size=1, max_size=4)
    return st.tuples(header.map(",".join), rows).map(lambda t: "\n".join([t[0], *t[1]]).encode())


_BOX_HEADER = mostly(
    st.just(["filename", "width", "height", "class", "xmin", "ymin", "xmax", "ymax"]),
    st.lists(st.sampled_from(["filename", "class", "xmin", "ymin", "xmax", "ymax", "split", "x"]), max_size=8),
)
_CLASS_HEADER = mostly(
    st.sampled_from([["path", "label"], ["path", "label", "split"]]),
    st.lists(st.sampled_from(["path", "label", "split", "x"]), max_size=4),
)


@st.composite
def box_csv_cases(draw: st.DrawFn) -> Case:
    """A box CSV beside its images (rows drawn from numbers, names and odd cells)."""
    files = {"labels.csv": draw(_text_or_hostile(_table(_BOX_HEADER, _BOX_ROW))), "a.png": draw(IMAGE_BYTES)}
    return Case(files, draw(st.sampled_from([".", "labels.csv"])), draw(st.sampled_from(["auto", "csv"])))


@st.composite
def class_csv_cases(draw: st.DrawFn) -> Case:
    """A `path,label` CSV (or a folder of split CSVs) pointing at images, folders and missing files."""
    files = {"a.png": draw(IMAGE_BYTES), "b.png": draw(IMAGE_BYTES), "sub/c.png": IMAGES["png"]}
    table = draw(_text_or_hostile(_table(_CLASS_HEADER, _CLASS_ROW)))
    layout = draw(st.sampled_from(["file", "splits", "folder"]))
    if layout == "file":
        files["labels.csv"] = table
        return Case(files, "labels.csv", draw(st.sampled_from(["auto", "csv"])))
    if layout == "splits":
        files["train.csv"] = table
    return Case(files, ".", "csv")  # "folder": a folder without split CSVs, forced as csv


# --- classes.yaml + masks --------------------------------------------------------------------------------------

_MASK_SUFFIXES = st.sampled_from([".png", ".png", ".gif", ".tif", ".bmp", ".jpg"])


def _mask_bytes(values: list[int], mode: str, size: tuple[int, int], suffix: str) -> bytes:
    array = np.resize(np.array(values or [0]), size[0] * size[1]).reshape(size[1], size[0])
    if mode == "RGB":
        image = Image.fromarray(np.stack([array % 256] * 3, axis=-1).astype(np.uint8), "RGB")
    elif mode == "I;16":
        image = Image.fromarray(array.astype(np.uint16))
    else:
        image = Image.fromarray((array % 256).astype(np.uint8), "L")
        if mode == "P":
            image = image.convert("P")
            image.putpalette([v for i in range(256) for v in ((i * 40) % 256, i, 255 - i)])
    if suffix in (".gif", ".jpg", ".bmp") and image.mode == "I;16":
        image = image.convert("L")
    if (suffix, image.mode) in ((".gif", "RGB"), (".jpg", "P")):
        image = image.convert("P" if suffix == ".gif" else "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format={".png": "PNG", ".gif": "GIF", ".tif": "TIFF", ".bmp": "BMP", ".jpg": "JPEG"}[suffix])
    return buffer.getvalue()


_MASK = st.builds(
    _mask_bytes,
    st.lists(st.sampled_from([0, 1, 2, 255, 7, 300]), max_size=6),
    st.sampled_from(["L", "P", "RGB", "I;16"]),
    st.sampled_from([(8, 6), (8, 6), (8, 6), (6, 8), (3, 3)]),
    _MASK_SUFFIXES,
)
_CLASSES_YAML = record(
    names=maybe(_NAMES),
    colours=maybe(st.lists(st.one_of(st.lists(st.integers(-1, 300), max_size=4), ODD), max_size=3)),
    ignore_index=maybe(st.sampled_from([255, 0, -1, 70000])),
    ignore_colour=maybe(st.just([224, 224, 192])),
    kind=maybe(st.sampled_from(["index", "palette", "binary", "rgb", "other"])),
).map(lambda data: yaml.safe_dump(data, sort_keys=False).encode())


@st.composite
def mask_cases(draw: st.DrawFn) -> Case:
    """`images/` + `masks/` in every format Pillow reads, with or without a classes.yaml."""
    suffix = draw(_MASK_SUFFIXES)
    files = {"images/a.png": draw(IMAGE_BYTES), f"masks/a{suffix}": draw(mostly(_MASK, IMAGE_BYTES))}
    if draw(st.booleans()):
        files["images/b.png"] = IMAGES["png"]
        files[f"masks/b{draw(_MASK_SUFFIXES)}"] = draw(_MASK)
    if draw(st.booleans()):
        files["classes.yaml"] = draw(_text_or_hostile(_CLASSES_YAML))
    return Case(files, ".", draw(st.sampled_from(["auto", "auto", "masks"])))


READERS: dict[str, Callable[[], st.SearchStrategy[Case]]] = {
    "coco": coco_cases,
    "yolo": yolo_cases,
    "voc": voc_cases,
    "box_csv": box_csv_cases,
    "class_csv": class_csv_cases,
    "masks": mask_cases,
}


# --- running a case --------------------------------------------------------------------------------------------


def write(case: Case, root: Path) -> Path:
    """Write the case's files under `root`; the path to give the reader."""
    for name, content in case.files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return root / case.given


def read(case: Case) -> str | None:
    """Run `case` through load_index_with_findings (as validate reads), load_index and inspect_data: None when
    they read it, else the UserError's message (the folder written to shown as DATA). Any other exception escapes:
    that is what the fuzzing looks for."""
    with tempfile.TemporaryDirectory() as folder:
        path = write(case, Path(folder))
        try:
            load_index_with_findings(path, format=case.format)
            load_index(path, format=case.format)
            report: Any = inspect_data(path, format=case.format)
        except UserError as error:
            return str(error).replace(str(Path(folder).resolve()), "DATA").replace(folder, "DATA")
        json.dumps(report)  # what `data inspect --json` prints
        return None
