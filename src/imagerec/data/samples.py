"""Embedded real data shipped with our dependencies, written out as ordinary image folders."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from imagerec.registry import Registry

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


def write_sample(name: str, out: Path | str) -> Path:
    """Write the embedded dataset `name` (see `SAMPLES.names()`) to `out` and return it."""
    return SAMPLES.get(name)(Path(out))
