"""Shared fixtures: real sample data written once per session, small generated images, the shared datasets, and a
tiny detection run that several test modules read."""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagerec.data.samples import write_sample

# Tests never reach a model hub: without this, timm/huggingface_hub retry for ~50 s before failing.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Training in tests uses one torch thread (see _one_thread), whatever the machine's cores.
os.environ.setdefault("IMAGEREC_THREADS", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _one_thread() -> Iterator[None]:
    """The test models are tiny: intra-op threads cost more than they save, and far more when another
    process shares the cores (digits, 4 epochs: 45 s with 2 threads against 2.6 s with one)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session", autouse=True)
def _machine_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """What autotune remembers of the machine lives in the session's temporary folder, not the user's home."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IMAGEREC_CACHE_DIR", str(tmp_path_factory.mktemp("imagerec-cache")))
        yield


@pytest.fixture(scope="session", autouse=True)
def _autotune_without_timing() -> Iterator[Callable[..., float]]:
    """`--precision auto` on a CPU picks the fastest of fp32/bf16 × NCHW/channels_last by timing a few steps, so a
    busy machine could change the choice, and with it every trained number. In tests each candidate measures the
    same, so the baseline (fp32, NCHW) is chosen whatever the load. Yields the real measurement."""
    from imagerec.engine import autotune

    real = autotune.images_per_second
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(autotune, "images_per_second", lambda *args, **kwargs: 100.0)
        yield real


@pytest.fixture
def real_timing(_autotune_without_timing: Callable[..., float], monkeypatch: pytest.MonkeyPatch) -> None:
    """Autotune measures real step times in this test (for tests whose outcome cannot depend on them)."""
    from imagerec.engine import autotune

    monkeypatch.setattr(autotune, "images_per_second", _autotune_without_timing)


MakeImage = Callable[..., Path]
MakeImageFolder = Callable[..., Path]


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scikit-learn's 1,797 real 8×8 digits as DIR/<digit>/digit_NNNN.png, written once per session.

    Shared by every test in the session: treat it as read-only (copy what you need to modify into tmp_path).
    """
    return write_sample("digits", tmp_path_factory.mktemp("samples") / "digits")


@pytest.fixture(scope="session")
def faces_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scikit-image's 100 faces + 100 non-faces (25×25 grey) as DIR/{face,non_face}/*.png; read-only."""
    return write_sample("faces", tmp_path_factory.mktemp("samples") / "faces")


def _pixels(mode: str, size: tuple[int, int], seed: int) -> np.ndarray:
    width, height = size
    rng = np.random.default_rng(seed)
    if mode in ("I;16", "uint16"):
        return rng.integers(0, 65536, (height, width), dtype=np.uint16)
    channels = {"L": 1, "P": 3, "RGB": 3, "RGBA": 4, "LA": 2}[mode]
    shape = (height, width) if channels == 1 else (height, width, channels)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def _write(path: Path, mode: str, size: tuple[int, int], seed: int, save_options: dict) -> np.ndarray:
    pixels = _pixels(mode, size, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        tifffile.imwrite(path, pixels, **save_options)
        return pixels
    image = Image.fromarray(pixels)
    if mode == "P":
        image = image.quantize(colors=16)
    image.save(path, **save_options)
    return pixels


@pytest.fixture
def make_image() -> MakeImage:
    """`make_image(path, *, size=(w, h), mode="RGB", seed=None, **save_options) -> path`.

    Writes random pixels in `mode` (L, I;16, RGB, RGBA, LA, P) in the format the suffix names (.tif/.tiff
    through tifffile, everything else through Pillow, `save_options` passed on). The default seed comes from the
    path, so different paths give different (never byte-identical) images.
    """

    def make(
        path: Path | str,
        *,
        size: tuple[int, int] = (16, 12),
        mode: str = "RGB",
        seed: int | None = None,
        **save_options,
    ) -> Path:
        path = Path(path)
        _write(path, mode, size, zlib.crc32(str(path).encode()) if seed is None else seed, save_options)
        return path

    return make


@pytest.fixture
def make_image_folder(make_image: MakeImage) -> MakeImageFolder:
    """`make_image_folder(root, {"cat": 3, "dog": 2}, *, split=None, suffix=".png", **make_image_options) -> root`.

    Writes ROOT/[SPLIT/]<class>/<class>_<i><suffix>, all images different.
    """

    def make(
        root: Path | str, counts: dict[str, int], *, split: str | None = None, suffix: str = ".png", **options
    ) -> Path:
        root = Path(root)
        base = root / split if split else root
        for name, count in counts.items():
            for i in range(count):
                make_image(base / name / f"{name}_{i}{suffix}", **options)
        return root

    return make


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """The real datasets in ../shared/datasets (see its README); skips the test when they are not on this machine."""
    path = (REPO_ROOT.parent / "shared" / "datasets").resolve()
    if not path.is_dir():
        pytest.skip(f"{path} not found: the shared real datasets are not on this machine")
    return path


@pytest.fixture(scope="session")
def tiny_detect_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(run, scenes): fcos_lite trained 2 epochs on 24 digit scenes of 64 px, with the threshold training chose.

    Trained once per session for the tests that need a real detection run but not a good one; read-only (copy it
    into tmp_path to resume or modify it).
    """
    import io

    from rich.console import Console

    import imagerec
    from imagerec.data.samples import write_digit_scenes

    scenes = write_digit_scenes(tmp_path_factory.mktemp("scenes") / "scenes", n_train=24, n_val=8, n_test=4, size=64)
    run = imagerec.train(
        scenes, task="detect", model="fcos_lite", epochs=2, batch=8, lr=2e-3, flip=False,
        precision="32", out=tmp_path_factory.mktemp("run") / "run", console=Console(file=io.StringIO()),
    )  # fmt: skip
    return run.path, scenes
