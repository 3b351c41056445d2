"""Masks: how semantic mask files encode classes (`MaskCoding`), and instance masks from COCO segmentations."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from imagerec.data.images import IMAGE_EXTENSIONS
from imagerec.data.targets import Objects
from imagerec.errors import UserError

MaskKind = Literal["index", "palette", "binary", "rgb"]
MASK_KINDS: tuple[str, ...] = ("index", "palette", "binary", "rgb")
Colour = tuple[int, int, int]

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
_TIFF = frozenset({".tif", ".tiff"})
# Every format Pillow reads masks from: palette GIFs are common in medical data (DRIVE, CHASE, …); JPEG is read but
# noted, since lossy compression changes the values along every edge.
MASK_EXTENSIONS = IMAGE_EXTENSIONS | {".gif"}
LOSSY_EXTENSIONS = frozenset({".jpg", ".jpeg"})


def is_mask_file(path: Path) -> bool:
    return path.suffix.lower() in MASK_EXTENSIONS and not path.name.startswith(".") and path.is_file()


_LISTED = 5  # offending values or colours named in one error line


def voc_colours(n: int = 256) -> tuple[Colour, ...]:
    """Pascal VOC's colour map (the palette of its SegmentationClass PNGs): class i's colour from i's bits."""
    colours = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colours.append((r, g, b))
    return tuple(colours)


class MaskError(UserError):
    """A mask file that cannot be used: `kind` is "corrupt" (unreadable) or "values" (not in the class list)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class StoredMask:
    """A mask file's pixels as stored: H×W values (P-mode: palette indices) or H×W×3 colours, and its palette."""

    pixels: np.ndarray
    mode: str  # "grey", "palette" or "rgb"
    palette: tuple[Colour, ...] = ()  # palette mode only: the colour of each index


def _pil_mask(path: Path) -> StoredMask:
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)  # as read_image turns the image, so must its mask turn
        image.load()
        if image.mode in ("P", "PA"):
            flat = image.getpalette() or []
            palette = tuple(tuple(flat[i : i + 3]) for i in range(0, len(flat) - 2, 3))
            return StoredMask(np.asarray(image.convert("P") if image.mode == "PA" else image), "palette", palette)
        if image.mode in ("RGB", "RGBA", "RGBX", "CMYK", "YCbCr"):
            return StoredMask(np.asarray(image.convert("RGB")), "rgb")
        if image.mode in ("1", "LA"):
            image = image.convert("L")
        return StoredMask(np.asarray(image), "grey")


def _tiff_mask(path: Path) -> StoredMask:
    import tifffile

    array = np.asarray(tifffile.imread(path))
    if array.ndim == 3 and array.shape[2] in (3, 4):
        return StoredMask(array[:, :, :3], "rgb")
    return StoredMask(array, "grey")


def open_mask(path: Path) -> StoredMask:
    """Read a mask file without converting it (palette indices stay indices); MaskError when it cannot be read."""
    path = Path(path)
    try:
        stored = _tiff_mask(path) if path.suffix.lower() in _TIFF else _pil_mask(path)
    except FileNotFoundError:
        raise MaskError(f"{path}: mask file not found", "corrupt") from None
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError) as error:
        raise MaskError(f"{path}: cannot read the mask ({error}); replace or remove the file", "corrupt") from None
    except Exception as error:  # a damaged TIFF raises zlib.error, struct.error, ...
        raise MaskError(f"{path}: cannot read the mask ({type(error).__name__}); replace it", "corrupt") from None
    if stored.pixels.ndim != (3 if stored.mode == "rgb" else 2):
        raise MaskError(f"{path}: a mask must be one 2-D image, got shape {stored.pixels.shape}", "corrupt")
    if stored.pixels.dtype.kind == "f":
        raise MaskError(f"{path}: floating-point mask; save masks as 8- or 16-bit integer images", "corrupt")
    return stored


def size_mismatch(mask: Path, mask_size: tuple[int, int], image: Path, image_size: tuple[int, int]) -> str:
    """The one line saying a mask and its image differ in size (sizes as width, height)."""
    turned = (
        " (turned: where an image has an EXIF orientation, its mask follows the upright image, as its pixels do)"
        if tuple(mask_size) == tuple(image_size)[::-1]
        else ""
    )
    return (
        f"{mask}: the mask is {mask_size[0]}×{mask_size[1]} but its image {image} is {image_size[0]}×{image_size[1]}"
        f"{turned}; a mask must have its image's size"
    )


def _listing(counts: Counter, name: Any = str) -> str:
    shown = [f"{name(value)} ({n} px)" for value, n in counts.most_common(_LISTED)]
    more = f", … ({len(counts)} in all)" if len(counts) > _LISTED else ""
    return ", ".join(shown) + more


def _colour_codes(colours: np.ndarray) -> np.ndarray:
    """H×W×3 uint8 colours as one int per pixel, so they can be looked up like values."""
    colours = colours.astype(np.int64)
    return (colours[..., 0] << 16) | (colours[..., 1] << 8) | colours[..., 2]


def _code_colour(code: int) -> str:
    return f"({code >> 16}, {(code >> 8) & 255}, {code & 255})"


def _lookup(values: np.ndarray, table: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """`values` mapped through `table`, and where they are not in it."""
    values = values.astype(np.int64, copy=False)
    if values.size and values.min() >= 0 and values.max() < 1 << 17:  # a table as long as the values: fast
        lut = np.full(max(int(values.max()), *table) + 1, -1, dtype=np.int64)
        lut[list(table)] = list(table.values())
        out = lut[values]
    else:
        unique, inverse = np.unique(values, return_inverse=True)
        out = np.array([table.get(int(v), -1) for v in unique], dtype=np.int64)[inverse].reshape(values.shape)
    return out, out < 0


@dataclass(frozen=True)
class MaskCoding:
    """How mask files encode classes, and how to read one into class indices.

    kind: "index" (pixel value = class, 0..K-1), "palette" (P-mode PNG, palette index = class, as VOC's),
    "binary" (0 → class 0, 255 → class 1) or "rgb" (the pixel's colour = the class whose colour it is).
    `ignore_index`: the value of pixels to ignore, in the file (index, palette) and in what `read` returns
    (default 255 as VOC's object borders). `colours`: one RGB colour per class, for overlays and rgb masks
    (default: VOC's colour map). `ignore_colour`: in rgb masks, the colour of ignored pixels (none by default).
    """

    kind: MaskKind
    num_classes: int
    ignore_index: int = 255
    colours: tuple[Colour, ...] = field(default=())
    ignore_colour: Colour | None = None

    def __post_init__(self) -> None:
        if self.kind not in MASK_KINDS:
            raise ValueError(f"mask kind must be one of {MASK_KINDS}, got {self.kind!r}")
        if self.kind == "binary" and self.num_classes != 2:
            raise ValueError(f"binary masks have 2 classes, got {self.num_classes}")
        if 0 <= self.ignore_index < self.num_classes:
            raise ValueError(f"ignore_index {self.ignore_index} is one of the {self.num_classes} classes")
        colours = tuple(tuple(int(v) for v in c) for c in self.colours) or voc_colours(self.num_classes)
        if len(colours) != self.num_classes:
            raise ValueError(f"{len(colours)} colours for {self.num_classes} classes")
        object.__setattr__(self, "colours", colours)

    def read(self, path: Path | str) -> torch.Tensor:
        """H×W int64 class indices (or `ignore_index`) of the mask at `path`; MaskError naming the file when it
        cannot be read, or holds values or colours that are no class."""
        return torch.from_numpy(self.decode(open_mask(Path(path)), Path(path)))

    def decode(self, stored: StoredMask, path: Path) -> np.ndarray:
        """`read`, from pixels already opened (`open_mask`)."""
        if self.kind == "rgb" or (stored.mode == "rgb" and self.kind == "palette"):
            return self._by_colour(as_colours(stored), path)
        values = stored.pixels
        if stored.mode == "rgb":
            if not (np.array_equal(values[..., 0], values[..., 1]) and np.array_equal(values[..., 0], values[..., 2])):
                raise MaskError(
                    f"{path}: a colour mask, but {self.kind} masks are greyscale values; save it as an 8-bit "
                    "grey PNG, or give the class colours in classes.yaml",
                    "values",
                )
            values = values[..., 0]
        elif stored.mode == "palette" and self.kind == "binary":
            values = as_colours(stored)[..., 0]  # a two-colour palette stands for grey levels here
        return self._by_value(values, path)

    def _table(self) -> dict[int, int]:
        if self.kind == "binary":
            return {0: 0, 255: 1}
        table = {v: v for v in range(self.num_classes)}
        if self.ignore_index >= 0:
            table[self.ignore_index] = self.ignore_index
        return table

    def _by_value(self, values: np.ndarray, path: Path) -> np.ndarray:
        out, bad = _lookup(values, self._table())
        if bad.any():
            expected = (
                "0 (background) or 255 (foreground)"
                if self.kind == "binary"
                else f"0..{self.num_classes - 1} (the {self.num_classes} classes) or {self.ignore_index} (ignored)"
            )
            found = _listing(Counter(values[bad].tolist()))
            raise MaskError(
                f"{path}: mask values {found} are not in the class list: expected {expected}; "
                "fix the mask or list the classes in classes.yaml",
                "values",
            )
        return out

    def _by_colour(self, colours: np.ndarray, path: Path) -> np.ndarray:
        table = {int(_colour_codes(np.array(c))): i for i, c in enumerate(self.colours)}
        if self.ignore_colour is not None:
            table[int(_colour_codes(np.array(self.ignore_colour)))] = self.ignore_index
        codes = _colour_codes(colours)
        out, bad = _lookup(codes, table)
        if bad.any():
            found = _listing(Counter(codes[bad].tolist()), _code_colour)
            raise MaskError(
                f"{path}: colours {found} are not class colours; add them to `colours` in classes.yaml "
                "(one [r, g, b] per class) or fix the mask",
                "values",
            )
        return out


def as_colours(stored: StoredMask) -> np.ndarray:
    """H×W×3 uint8 colours of a stored mask (grey values become grey colours)."""
    if stored.mode == "rgb":
        return stored.pixels
    if stored.mode == "palette":
        palette = np.zeros((256, 3), dtype=np.uint8)
        palette[: len(stored.palette)] = stored.palette
        return palette[stored.pixels]
    grey = np.clip(stored.pixels, 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


# --- instance masks: COCO polygons and RLE per object ---------------------------------------------------------


def segmentation_problems(objects: Objects) -> list[str]:
    """What is wrong with each object's segmentation, as "object N: …" (empty when every one can be drawn)."""
    problems = []
    for i, segmentation in enumerate(objects.segmentation):
        if isinstance(segmentation, list):
            for polygon in segmentation:
                if not isinstance(polygon, list) or len(polygon) % 2 or len(polygon) < 6:
                    points = len(polygon) / 2 if isinstance(polygon, list) else 0
                    problems.append(f"object {i + 1} has a polygon of {points:g} point(s); a polygon needs 3 or more")
                    break
        elif not isinstance(segmentation, dict) or "counts" not in segmentation or "size" not in segmentation:
            problems.append(f"object {i + 1} has a segmentation that is neither polygons nor RLE")
    return problems


def check_segmentations(samples: Iterable[Any]) -> None:
    """UserError naming the first image whose objects lack a drawable mask (Mask R-CNN needs one per object)."""
    for sample in samples:
        objects = sample.target
        if not isinstance(objects, Objects) or not objects.boxes:
            continue
        missing = [i for i, s in enumerate(objects.segmentation or [None] * len(objects.boxes)) if not s]
        if missing:
            raise UserError(
                f"{sample.path}: object {missing[0] + 1} has no segmentation; instance segmentation needs a polygon "
                "or RLE mask per object (COCO `segmentation`)"
            )
        problems = segmentation_problems(objects)
        if problems:
            raise UserError(f"{sample.path}: {problems[0]}; fix or remove it in the annotations")


def _rle(segmentation: Any, height: int, width: int, image: Path) -> dict[str, Any]:
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):  # polygons: one RLE per polygon, merged into one mask
        if not segmentation:
            raise UserError(f"{image}: an object has no segmentation; give each object a polygon or RLE mask")
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    size = [int(v) for v in segmentation["size"]]
    if size != [height, width]:
        raise UserError(
            f"{image}: an RLE mask is {size[1]}×{size[0]} but the image is {width}×{height}; "
            "the annotation must belong to this image"
        )
    if isinstance(segmentation["counts"], list):  # uncompressed RLE (COCO's iscrowd objects)
        return mask_utils.frPyObjects(segmentation, height, width)
    counts = segmentation["counts"]
    return {"size": size, "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def instance_masks(objects: Objects, height: int, width: int, image: Path) -> np.ndarray:
    """N×H×W uint8 masks (1 inside) of the objects, drawn from their polygons or RLE through pycocotools."""
    from pycocotools import mask as mask_utils

    if not objects.boxes:
        return np.zeros((0, height, width), dtype=np.uint8)
    problems = segmentation_problems(objects) if objects.segmentation else ["its objects have no segmentation"]
    if problems:
        raise UserError(f"{image}: {problems[0]}; fix or remove it in the annotations")
    masks = [mask_utils.decode(_rle(s, height, width, image)) for s in objects.segmentation]
    return np.stack(masks).astype(np.uint8, copy=False)
