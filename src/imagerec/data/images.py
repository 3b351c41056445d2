"""Decoding image files of every common format into float tensors, keeping bit depth and channel count."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from imagerec.errors import UserError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"})
_TIFF = frozenset({".tif", ".tiff"})


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


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    try:
        array = np.asarray(tifffile.imread(path))
    except FileNotFoundError:
        raise
    except Exception as error:  # a damaged TIFF raises zlib.error, ZeroDivisionError, struct.error, ...
        raise ValueError(f"{type(error).__name__}: {error}") from None
    if array.size == 0:
        raise ValueError("no pixel data")
    return array


def read_array(path: Path) -> np.ndarray:
    """The image as H×W or H×W×C array of its own dtype, EXIF orientation applied."""
    try:
        if path.suffix.lower() in _TIFF:
            return _read_tiff(path)
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            image.load()
            return _pil_to_array(image)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError) as error:
        raise UserError(f"{path}: cannot decode image ({error}); replace or remove the file") from None


def read_image(path: Path) -> torch.Tensor:
    """Float32 C×H×W in [0, 1]. Greyscale stays one channel; an alpha channel is dropped."""
    array = read_array(Path(path))
    if array.ndim == 2:
        array = array[:, :, None]
    elif array.ndim != 3:
        raise UserError(f"{path}: expected a 2-D image, got an array of shape {array.shape}; save one page per file")
    if array.shape[2] in (2, 4):  # LA / RGBA
        array = array[:, :, : array.shape[2] - 1]
    return torch.from_numpy(np.ascontiguousarray(_to_unit_float(array).transpose(2, 0, 1)))


def to_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    """Convert a C×H×W image to `channels` channels (grey ↔ RGB by luminance or repetition)."""
    have = image.shape[0]
    if have == channels:
        return image
    if have == 1:
        return image.expand(channels, -1, -1).contiguous()
    if channels == 1 and have == 3:
        weights = torch.tensor([0.299, 0.587, 0.114], dtype=image.dtype).view(3, 1, 1)
        return (image * weights).sum(0, keepdim=True)
    raise UserError(f"cannot convert a {have}-channel image to {channels} channels")


def image_channels(path: Path) -> int:
    """The channel count an image decodes to, read from its header where possible."""
    if path.suffix.lower() not in _TIFF:
        try:
            with Image.open(path) as image:
                if image.mode in ("L", "I", "I;16", "I;16B", "I;16L", "F", "1", "LA"):
                    return 1
                return 3
        except (OSError, ValueError, UnidentifiedImageError):
            pass
    return read_image(path).shape[0]
