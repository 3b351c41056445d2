"""Decoding image files of every common format into float tensors, keeping bit depth and channel count."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from imagerec.config import MAX_IMAGE_PIXELS as MAX_PIXELS
from imagerec.errors import UserError

if TYPE_CHECKING:
    import torch

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif"})
_TIFF = frozenset({".tif", ".tiff"})
_PILLOW_COUNT = re.compile(r"\((\d+) pixels\)")  # how DecompressionBombError states the size it refused


def _too_many_pixels(path: Path, size: str, max_pixels: int) -> UserError:
    return UserError(
        f"{path}: {size} pixels is above the {max_pixels:,}-pixel limit (a decompression bomb, or a very large "
        "image); if the image is genuine, raise --max-image-pixels"
    )


def check_pixels(path: Path, width: int, height: int, max_pixels: int) -> None:
    """A UserError when the header's `width`×`height` is above `max_pixels`, before any pixel is decoded."""
    if width * height > max_pixels:
        raise _too_many_pixels(path, f"{width}×{height}", max_pixels)


def open_image(path: Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """The image opened lazily (header only) with Pillow, refused when its header claims more than `max_pixels`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # check_pixels applies our own limit
            image = Image.open(path)
    except Image.DecompressionBombError as error:  # above Pillow's own limit: refused before the size is ours
        found = _PILLOW_COUNT.search(str(error))
        size = f"{int(found[1]):,}" if found else f"more than {MAX_PIXELS:,}"
        if max_pixels <= MAX_PIXELS:
            raise _too_many_pixels(path, size, max_pixels) from None
        raise UserError(
            f"{path}: {size} pixels is above Pillow's own {MAX_PIXELS:,}-pixel limit, which --max-image-pixels "
            "does not lift; save a genuine image this large as TIFF (read without that limit) or in tiles"
        ) from None
    try:
        check_pixels(path, *image.size, max_pixels)
    except UserError:
        image.close()
        raise
    return image


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _pil_to_array(image: Image.Image) -> np.ndarray:
    if image.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        image = image.convert("RGBA" if "transparency" in image.info or image.mode == "PA" else "RGB")
    elif image.mode == "1":
        image = image.convert("L")
    return np.asarray(image)


def _to_unit_float(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype in (np.uint16, np.int32, np.int64, np.uint32):
        # 16-bit PNG/TIFF (Pillow opens 16-bit PNGs as 32-bit mode "I"): keep the full depth.
        return array.astype(np.float32) / 65535.0
    return np.clip(array.astype(np.float32), 0.0, 1.0)


def _read_tiff(path: Path, max_pixels: int) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes = dict(zip(series.axes, series.shape, strict=True))
            check_pixels(path, axes.get("X", 1), axes.get("Y", 1), max_pixels)
            array = np.asarray(series.asarray())
    except (FileNotFoundError, UserError):
        raise
    except Exception as error:  # a damaged TIFF raises zlib.error, ZeroDivisionError, struct.error, ...
        raise ValueError(f"{type(error).__name__}: {error}") from None
    if array.size == 0:
        raise ValueError("no pixel data")
    return array


def read_array(path: Path, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """The image as H×W or H×W×C array of its own dtype, EXIF orientation applied; of an animated image (GIF,
    APNG, WebP) the first frame. A UserError when it cannot be decoded or its header claims over `max_pixels`."""
    try:
        if path.suffix.lower() in _TIFF:
            return _read_tiff(path, max_pixels)
        with open_image(path, max_pixels) as image:
            image = ImageOps.exif_transpose(image)
            image.load()
            return _pil_to_array(image)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError) as error:
        raise UserError(f"{path}: cannot decode image ({error}); replace or remove the file") from None


def read_image(path: Path, *, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """Float32 C×H×W in [0, 1]. Greyscale stays one channel; an alpha channel is dropped."""
    array = read_array(Path(path), max_pixels=max_pixels)
    if array.ndim == 2:
        array = array[:, :, None]
    elif array.ndim != 3:
        raise UserError(f"{path}: expected a 2-D image, got an array of shape {array.shape}; save one page per file")
    if array.shape[2] in (2, 4):  # LA / RGBA
        array = array[:, :, : array.shape[2] - 1]
    import torch  # here, not at the top: the annotation readers use this module, and `import imagerec` stays light

    return torch.from_numpy(np.ascontiguousarray(_to_unit_float(array).transpose(2, 0, 1)))


def to_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    """Convert a C×H×W image to `channels` channels (grey ↔ RGB by luminance or repetition)."""
    have = image.shape[0]
    if have == channels:
        return image
    if have == 1:
        return image.expand(channels, -1, -1).contiguous()
    if channels == 1 and have == 3:
        weights = image.new_tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
        return (image * weights).sum(0, keepdim=True)
    raise UserError(f"cannot convert a {have}-channel image to {channels} channels")


def image_channels(path: Path, *, max_pixels: int = MAX_PIXELS) -> int:
    """The channel count an image decodes to, read from its header where possible."""
    if path.suffix.lower() not in _TIFF:
        try:
            with open_image(path, max_pixels) as image:
                if image.mode in ("L", "I", "I;16", "I;16B", "I;16L", "F", "1", "LA"):
                    return 1
                return 3
        except (OSError, ValueError, UnidentifiedImageError):
            pass
    return read_image(path, max_pixels=max_pixels).shape[0]


def frame_count(path: Path, *, max_pixels: int = MAX_PIXELS) -> int:
    """How many frames an animated image (GIF, APNG, WebP) holds, of which only the first is read; 1 for a still
    image."""
    with open_image(path, max_pixels) as image:
        return int(getattr(image, "n_frames", 1)) if getattr(image, "is_animated", False) else 1
