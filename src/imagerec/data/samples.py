"""Embedded real data shipped with our dependencies, written out as image folders, COCO datasets and masks."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from imagerec.errors import UserError
from imagerec.registry import Registry
from imagerec.runs import staged_output, write_error

SAMPLES: Registry[Callable[[Path], Path]] = Registry("sample dataset")


def _write_pngs(out: Path, images: np.ndarray, labels: list[str], names: list[str]) -> Path:
    for cls in sorted(set(labels)):
        (out / cls).mkdir(parents=True, exist_ok=True)
    for i, (pixels, label) in enumerate(zip(images, labels, strict=True)):
        Image.fromarray(pixels).save(out / label / f"{names[i]}.png")
    return out


@SAMPLES.register("digits")
def write_digits(out: Path) -> Path:
    """scikit-learn's 1,797 real 8×8 handwritten digit scans, as greyscale PNGs in `out/<digit>/`."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    labels = [str(int(t)) for t in digits.target]
    return _write_pngs(out, pixels, labels, [f"digit_{i:04d}" for i in range(len(labels))])


@SAMPLES.register("faces")
def write_faces(out: Path) -> Path:
    """scikit-image's LFW subset: 100 real 25×25 faces and 100 non-faces, as `out/{face,non_face}/`."""
    from skimage.data import lfw_subset

    images = lfw_subset()  # documented order: the first 100 are faces, the last 100 are not
    pixels = np.round(images * 255.0).astype(np.uint8)
    labels = ["face" if i < 100 else "non_face" for i in range(len(images))]
    return _write_pngs(out, pixels, labels, [f"lfw_{i:03d}" for i in range(len(labels))])


def write_sample(name: str, out: Path | str, *, force: bool = False) -> Path:
    """Write the embedded dataset `name` (see `SAMPLES.names()`) to `out` and return it.

    `out` must be new or empty: it is written as a whole, or not at all. With `force`, a folder that holds files
    is written into (the sample's files replace those of the same name; others stay)."""
    out = Path(out)
    write = SAMPLES.get(name)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: a file is in the way; give a folder to write the sample into")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise UserError(f"{out}: already exists and is not empty; give a new folder, or --force to write into it")
        try:
            return write(out)
        except OSError as error:
            raise write_error(out, error, if_full="while writing the sample; part of it may be written") from None
    with staged_output(out, f"the {name} sample") as tmp:
        write(tmp)
    return out


# --- digit scenes: detection and instance-segmentation ground truth from real glyphs ------------------------------

_SCENE_SPLITS = ("train", "val", "test")
_POOL_FRACTIONS = (0.70, 0.15, 0.15)
# A glyph pixel belongs to the digit when its 8-bit value reaches this; fainter interpolation tails are zeroed so
# the canvas holds nothing of a glyph outside its mask and box.
_GLYPH_THRESHOLD = 24
# Overlap is measured as intersection over the SMALLER box (not IoU): IoU alone lets a small digit sit wholly
# inside a large one's box, hiding it in the strokes. This bound also keeps every pair's IoU ≤ 0.2.
_MAX_OVERLAP = 0.2
_PLACEMENT_TRIES = 50


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection of two corner boxes over the area of the smaller one."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    return w * h / min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))


def _glyph(scan: np.ndarray, side: int) -> np.ndarray:
    """An 8×8 scan (0..16) upscaled bilinearly to side×side uint8, faint tails zeroed."""
    pixels = Image.fromarray(np.round(scan * (255.0 / 16.0)).astype(np.uint8))
    glyph = np.asarray(pixels.resize((side, side), Image.Resampling.BILINEAR))
    return np.where(glyph >= _GLYPH_THRESHOLD, glyph, 0).astype(np.uint8)


def _tight_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(x1, y1, x2, y2) pixel-edge corners of the True pixels of a 2-D mask."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _place(
    rng: np.random.Generator, glyph: np.ndarray, size: int, boxes: list[tuple[int, int, int, int]]
) -> tuple[int, int] | None:
    """A paste offset (x, y) whose glyph box overlaps no placed box by more than 20%, or None after retries."""
    local = _tight_box(glyph > 0)
    side = glyph.shape[0]
    for _ in range(_PLACEMENT_TRIES):
        x, y = (int(v) for v in rng.integers(0, size - side + 1, size=2))
        box = (local[0] + x, local[1] + y, local[2] + x, local[3] + y)
        if all(_overlap(box, other) <= _MAX_OVERLAP for other in boxes):
            return x, y
    return None


def _scene(
    rng: np.random.Generator, scans: np.ndarray, pool: np.ndarray, size: int
) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """A size×size uint8 canvas and, per placed digit, (source index, its full-canvas boolean mask)."""
    canvas = np.zeros((size, size), dtype=np.uint8)
    placed: list[tuple[int, np.ndarray]] = []
    boxes: list[tuple[int, int, int, int]] = []
    max_scale = min(6.0, size / 8.0)
    for _ in range(int(rng.integers(1, 7))):
        source = int(rng.choice(pool))
        glyph = _glyph(scans[source], max(8, round(8 * rng.uniform(min(2.0, max_scale), max_scale))))
        offset = _place(rng, glyph, size, boxes)
        if offset is None:  # the canvas is too crowded for this one: fewer digits, never more overlap
            continue
        x, y = offset
        side = glyph.shape[0]
        region = canvas[y : y + side, x : x + side]
        np.maximum(region, glyph, out=region)  # max() compositing keeps every glyph's strokes visible
        mask = np.zeros((size, size), dtype=bool)
        mask[y : y + side, x : x + side] = glyph > 0
        placed.append((source, mask))
        boxes.append(_tight_box(mask))
    return canvas, placed


def _rle(mask: np.ndarray) -> dict:
    """COCO compressed RLE of a boolean H×W mask, JSON-ready."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _semantic(placed: list[tuple[int, np.ndarray]], targets: np.ndarray, size: int) -> np.ndarray:
    """The scene's class map: 0 background, digit d → d + 1; where glyphs overlap, the one placed later wins (its
    strokes are the ones drawn last, though max() compositing keeps the earlier glyph's brighter pixels visible)."""
    classes = np.zeros((size, size), dtype=np.uint8)
    for source, mask in placed:
        classes[mask] = int(targets[source]) + 1
    return classes


def _write_classes_yaml(out: Path) -> None:
    from imagerec.data.masks import voc_colours

    names = ["background", *(str(d) for d in range(10))]
    lines = [
        "# digit scenes: mask value 0 = background, d + 1 = digit d (8-bit index PNGs in masks/)",
        "names: [" + ", ".join(f'"{n}"' for n in names) + "]",
        "colours: [" + ", ".join(f"[{r}, {g}, {b}]" for r, g, b in voc_colours(len(names))) + "]",
        "ignore_index: 255",
        "kind: index",
    ]
    (out / "classes.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _write_split(
    out: Path, split: str, count: int, rng: np.random.Generator, pool: np.ndarray, size: int, digits: Any
) -> None:
    """Write `count` scenes of `split` drawn from `pool` (indices into scikit-learn's `digits` bunch)."""
    folder, masks = out / "images" / split, out / "masks" / split
    folder.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(count):
        canvas, placed = _scene(rng, digits.images, pool, size)
        name = f"scene_{i:04d}.png"
        Image.fromarray(canvas, mode="L").save(folder / name)
        Image.fromarray(_semantic(placed, digits.target, size), mode="L").save(masks / name)
        image_id = i + 1
        sources = [source for source, _ in placed]
        images.append({"id": image_id, "file_name": name, "width": size, "height": size, "source_digits": sources})
        for source, mask in placed:
            x1, y1, x2, y2 = _tight_box(mask)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(digits.target[source]) + 1,
                    "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                    "area": float(mask.sum()),
                    "iscrowd": 0,
                    "segmentation": _rle(mask),
                    "source_digit": source,
                }
            )
    coco = {
        "info": {"description": f"imagerec digit scenes ({split}) from scikit-learn's handwritten digits"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": d + 1, "name": str(d), "supercategory": "digit"} for d in range(10)],
    }
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    (out / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))


def write_digit_scenes(
    out: Path | str, *, n_train: int = 600, n_val: int = 150, n_test: int = 150, size: int = 128, seed: int = 0
) -> Path:
    """Canvases of 1–6 real scikit-learn digits (upscaled 2–6×, boxes overlapping ≤ 20%) as a COCO dataset.

    Writes `out/images/{train,val,test}/scene_NNNN.png` (8-bit greyscale, size×size) and
    `out/annotations/instances_{split}.json`: categories 1..10 named "0".."9", `bbox` [x, y, w, h] tight on the
    glyph's pixels, `area` the mask's pixel count, `segmentation` the glyph's exact mask as compressed RLE (digits
    have holes, which COCO polygons cannot express). Extra keys: `images[i]["source_digits"]` and
    `annotations[j]["source_digit"]` give the scikit-learn indices used. The 1,797 scans are partitioned 70/15/15
    into per-split pools first, so no scanned digit appears in two splits. Deterministic by `seed`.

    For semantic segmentation it also writes `out/masks/{split}/scene_NNNN.png` (8-bit index PNGs: 0 background,
    digit d → d + 1; where two glyphs overlap, the later one wins) and `out/classes.yaml` (names background,
    "0".."9", VOC colours, ignore_index 255). Read them with `load_index(out, format="masks")`: auto reads COCO.
    """
    if size < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}")
    from sklearn.datasets import load_digits

    digits = load_digits()
    out = Path(out)
    root = np.random.SeedSequence(seed)
    pool_seed, *split_seeds = root.spawn(1 + len(_SCENE_SPLITS))
    order = np.random.default_rng(pool_seed).permutation(len(digits.target))
    cuts = np.round(np.cumsum(_POOL_FRACTIONS)[:-1] * len(order)).astype(int)
    counts = {"train": n_train, "val": n_val, "test": n_test}
    for split, pool, split_seed in zip(_SCENE_SPLITS, np.split(order, cuts), split_seeds, strict=True):
        _write_split(out, split, counts[split], np.random.default_rng(split_seed), np.sort(pool), size, digits)
    _write_classes_yaml(out)
    return out


@SAMPLES.register("digit-scenes")
def _write_digit_scenes_default(out: Path) -> Path:
    return write_digit_scenes(out)
