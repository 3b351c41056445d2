"""Reading the user's data: every image format read_image accepts, every index layout, and the errors users cause."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from imagerec.data.formats import load_index
from imagerec.data.images import image_channels, is_image_file, read_array, read_image
from imagerec.data.split import ensure_splits
from imagerec.errors import UserError

# --- image formats -------------------------------------------------------------------------------------------


def _as_uint8(image: torch.Tensor) -> np.ndarray:
    return np.round(image.numpy() * 255).astype(np.uint8)


def test_png_grey_8bit(make_image, tmp_path):
    path = make_image(tmp_path / "g.png", mode="L", size=(7, 5))
    image = read_image(path)
    expected = np.asarray(Image.open(path))
    assert image.shape == (1, 5, 7)
    assert image.dtype == torch.float32
    np.testing.assert_array_equal(_as_uint8(image)[0], expected)


def test_png_grey_16bit_keeps_full_depth(tmp_path):
    pixels = np.array([[0, 255, 256, 257], [1000, 30000, 65534, 65535]], dtype=np.uint16)
    Image.fromarray(pixels).save(tmp_path / "deep.png")
    assert read_array(tmp_path / "deep.png").dtype.itemsize >= 2
    image = read_image(tmp_path / "deep.png")
    assert image.shape == (1, 2, 4)
    # 255, 256 and 257 stay three different values; the scale is 1/65535, not 1/255.
    assert torch.unique(image).numel() == 8
    np.testing.assert_array_equal(np.round(image[0].numpy() * 65535).astype(np.int64), pixels.astype(np.int64))
    assert image.max().item() == 1.0
    assert image.min().item() == 0.0


def test_png_rgb(make_image, tmp_path):
    path = make_image(tmp_path / "c.png", mode="RGB", size=(6, 4))
    image = read_image(path)
    assert image.shape == (3, 4, 6)
    np.testing.assert_array_equal(_as_uint8(image).transpose(1, 2, 0), np.asarray(Image.open(path)))


def test_png_rgba_drops_alpha(tmp_path):
    pixels = np.zeros((3, 5, 4), np.uint8)
    pixels[..., 0], pixels[..., 1], pixels[..., 2], pixels[..., 3] = 200, 100, 50, 0  # fully transparent
    Image.fromarray(pixels).save(tmp_path / "a.png")
    image = read_image(tmp_path / "a.png")
    assert image.shape == (3, 3, 5)
    # colour kept as stored, not premultiplied by the zero alpha
    assert _as_uint8(image)[:, 0, 0].tolist() == [200, 100, 50]
    assert image_channels(tmp_path / "a.png") == 3


def test_palette_png_decodes_to_its_colours(make_image, tmp_path):
    path = make_image(tmp_path / "p.png", mode="P", size=(9, 9))
    assert Image.open(path).mode == "P"
    image = read_image(path)
    assert image.shape == (3, 9, 9)
    np.testing.assert_array_equal(_as_uint8(image).transpose(1, 2, 0), np.asarray(Image.open(path).convert("RGB")))


def _oriented_jpeg(path: Path, orientation: int) -> Path:
    pixels = np.zeros((10, 20, 3), np.uint8)  # stored 20 wide, 10 high; the left 5 columns white
    pixels[:, :5] = 255
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(path, quality=95, exif=exif.tobytes())
    return path


def test_jpeg_exif_orientation_is_applied(tmp_path):
    upright = read_image(_oriented_jpeg(tmp_path / "o1.jpg", 1))
    assert upright.shape == (3, 10, 20)
    # Orientation 6 means "rotate 90° clockwise to display": 10 wide, 20 high, the white left edge on top.
    rotated = read_image(_oriented_jpeg(tmp_path / "o6.jpg", 6))
    assert rotated.shape == (3, 20, 10)
    rows = rotated.mean(dim=(0, 2))
    assert rows[:4].min() > 0.9
    assert rows[6:].max() < 0.1


def test_tiff_16bit_grey_and_rgb(tmp_path):
    grey = np.array([[0, 300], [40000, 65535]], dtype=np.uint16)
    tifffile.imwrite(tmp_path / "g.tif", grey)
    image = read_image(tmp_path / "g.tif")
    assert image.shape == (1, 2, 2)
    np.testing.assert_array_equal(np.round(image[0].numpy() * 65535).astype(np.uint16), grey)
    rgb = np.random.default_rng(0).integers(0, 256, (4, 3, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "c.tiff", rgb)
    image = read_image(tmp_path / "c.tiff")
    assert image.shape == (3, 4, 3)
    np.testing.assert_array_equal(_as_uint8(image).transpose(1, 2, 0), rgb)


@pytest.mark.parametrize(("suffix", "options"), [(".bmp", {}), (".webp", {"lossless": True})])
def test_bmp_and_webp(make_image, tmp_path, suffix, options):
    path = make_image(tmp_path / f"x{suffix}", mode="RGB", size=(5, 3), seed=4, **options)
    image = read_image(path)
    assert image.shape == (3, 3, 5)
    expected = np.random.default_rng(4).integers(0, 256, (3, 5, 3), dtype=np.uint8)  # what make_image wrote
    np.testing.assert_array_equal(_as_uint8(image).transpose(1, 2, 0), expected)


@pytest.mark.parametrize(
    ("name", "mode"),
    [("a.png", "L"), ("b.png", "I;16"), ("c.png", "RGB"), ("d.png", "RGBA"), ("e.png", "LA"), ("f.png", "P")],
)
def test_image_channels_agrees_with_decoding(make_image, tmp_path, name, mode):
    path = make_image(tmp_path / name, mode=mode)
    assert image_channels(path) == read_image(path).shape[0]


def test_is_image_file(tmp_path, make_image):
    assert is_image_file(make_image(tmp_path / "UPPER.PNG"))
    assert not is_image_file(make_image(tmp_path / ".hidden.png"))
    (tmp_path / "notes.txt").write_text("x")
    assert not is_image_file(tmp_path / "notes.txt")


def test_truncated_png_is_a_user_error_naming_the_file(make_image, tmp_path):
    path = make_image(tmp_path / "cut.png", size=(64, 64))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"cut\.png: cannot decode image.*truncated"):
        read_image(path)


def test_damaged_tiff_is_a_user_error(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "z.tif", pixels, compression="zlib")
    data = (tmp_path / "z.tif").read_bytes()
    (tmp_path / "z.tif").write_bytes(data[:-2000])  # the zlib stream ends early: tifffile raises zlib.error
    with pytest.raises(UserError, match=r"z\.tif: cannot decode image"):
        read_image(tmp_path / "z.tif")


# --- layouts -------------------------------------------------------------------------------------------------


def test_split_folders(make_image_folder, tmp_path):
    root = tmp_path / "data"
    make_image_folder(root, {"cat": 3, "dog": 2}, split="train")
    make_image_folder(root, {"cat": 1, "dog": 1}, split="valid")  # an alias for val
    make_image_folder(root, {"cat": 1, "dog": 2}, split="test")
    index = load_index(root)
    assert index.classes == ["cat", "dog"]
    assert index.origin == "folders"
    assert {split: index.counts(split) for split in index.splits} == {"train": [3, 2], "val": [1, 1], "test": [1, 2]}
    assert all(s.path.parent.name == index.classes[s.target] for s in index.all_samples())


def test_flat_folder_is_split_stratified_and_reproducibly(digits_dir):
    first = ensure_splits(load_index(digits_dir), val=0.1, test=0.1, seed=7)
    again = ensure_splits(load_index(digits_dir), val=0.1, test=0.1, seed=7)
    other = ensure_splits(load_index(digits_dir), val=0.1, test=0.1, seed=8)
    assert first.origin == "stratified"
    assert set(first.splits) == {"train", "val", "test"}
    assert first.split_record() == again.split_record()
    assert first.split_record() != other.split_record()
    paths = [s.path for s in first.all_samples()]
    assert len(paths) == len(set(paths)) == 1797
    totals = Counter(s.target for s in first.all_samples())
    for split, fraction in (("val", 0.1), ("test", 0.1), ("train", 0.8)):
        for label, count in enumerate(first.counts(split)):
            assert abs(count - fraction * totals[label]) <= 1, (split, label)


def _write_csv(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_csv_paths_are_relative_to_the_csv(make_image, tmp_path):
    for name in ("a", "b", "c", "d"):
        make_image(tmp_path / "images" / f"{name}.png")
    csv = _write_csv(
        tmp_path / "meta" / "labels.csv", "path,label\n../images/a.png,cat\n../images/b.png,dog\n../images/c.png,cat\n"
    )
    index = load_index(csv)
    assert index.classes == ["cat", "dog"]
    assert not index.multilabel
    assert [(s.path, s.target) for s in index.samples("all")] == [
        ((tmp_path / "images" / "a.png").resolve(), 0),
        ((tmp_path / "images" / "b.png").resolve(), 1),
        ((tmp_path / "images" / "c.png").resolve(), 0),
    ]


def test_multilabel_csv(make_image, tmp_path):
    for name in ("a", "b", "c"):
        make_image(tmp_path / f"{name}.png")
    csv = _write_csv(tmp_path / "labels.csv", 'path,label\na.png,"sky;tree"\nb.png,tree\nc.png,sea;sky\n')
    index = load_index(csv)
    assert index.multilabel
    assert index.classes == ["sea", "sky", "tree"]
    assert [s.target for s in index.samples("all")] == [(1, 2), (2,), (0, 1)]
    assert index.counts("all") == [1, 2, 2]


def test_folder_of_split_csvs(make_image, tmp_path):
    for name in ("a", "b", "c", "d"):
        make_image(tmp_path / "img" / f"{name}.jpg")
    _write_csv(tmp_path / "train.csv", "path,label\nimg/a.jpg,x\nimg/b.jpg,y\n")
    _write_csv(tmp_path / "validation.csv", "path,label\nimg/c.jpg,x\n")
    _write_csv(tmp_path / "test.csv", "path,label\nimg/d.jpg,y\n")
    index = load_index(tmp_path)
    assert index.origin == "csv"
    assert {split: index.counts(split) for split in index.splits} == {"train": [1, 1], "val": [1, 0], "test": [0, 1]}


# --- errors a user can cause ---------------------------------------------------------------------------------


def test_missing_path(tmp_path):
    with pytest.raises(UserError, match="nowhere: no such file or folder"):
        load_index(tmp_path / "nowhere")


def test_empty_class_folder(make_image_folder, tmp_path):
    make_image_folder(tmp_path, {"cat": 2, "dog": 2})
    (tmp_path / "bird").mkdir()
    with pytest.raises(UserError, match=r"bird: empty class folder"):
        load_index(tmp_path)


def test_class_with_one_image_cannot_be_split(make_image_folder, tmp_path):
    make_image_folder(tmp_path, {"cat": 5, "dog": 1})
    with pytest.raises(UserError, match=r"class 'dog' has 1 image\(s\) but a train/val/test split needs at least 3"):
        ensure_splits(load_index(tmp_path), val=0.1, test=0.1, seed=0)


def test_csv_row_pointing_to_a_missing_file(make_image, tmp_path):
    make_image(tmp_path / "a.png")
    csv = _write_csv(tmp_path / "labels.csv", "path,label\na.png,cat\nmissing.png,dog\n")
    with pytest.raises(UserError, match=r"labels\.csv, row 3: image 'missing.png' not found"):
        load_index(csv)


def test_csv_without_header(make_image, tmp_path):
    make_image(tmp_path / "a.png")
    csv = _write_csv(tmp_path / "labels.csv", "a.png,cat\na.png,dog\n")
    with pytest.raises(UserError, match=r"labels\.csv: needs a header with columns path,label"):
        load_index(csv)


def test_single_class_is_refused(make_image_folder, tmp_path):
    make_image_folder(tmp_path, {"only": 3})
    with pytest.raises(UserError, match="only one class"):
        load_index(tmp_path)
