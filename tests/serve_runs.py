"""What the service tests share: one tiny trained run per task (trained once per session, whichever test module
asks first), a predictor that can be held at a gate, and a real uvicorn server on a free loopback port."""

from __future__ import annotations

import functools
import io
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console

import imagerec
from imagerec.data.samples import write_digit_scenes

TASKS = ("classify", "detect", "segment")
WAIT_S = 60  # the most any test waits for a server or a gate: a bound against hanging, never a measured time


@functools.cache
def trained_run(task: str, root: Path, digits: Path) -> Path:
    """A one-epoch run of `task` under `root`: digits at 8 px (classify), 64 px digit scenes (detect, segment)."""
    quiet = Console(file=io.StringIO())
    if task == "classify":  # 30 scans per digit: enough to predict, and quick to train and report on
        subset = root / "serve-digits"
        for folder in sorted(p for p in digits.iterdir() if p.is_dir()):
            (subset / folder.name).mkdir(parents=True)
            for path in sorted(folder.glob("*.png"))[:30]:
                shutil.copyfile(path, subset / folder.name / path.name)
        out = root / "serve-classify"
        imagerec.train(subset, out=out, epochs=1, imgsz=8, model="seed_cnn", seed=0, console=quiet)
        return out
    scenes = root / "serve-scenes"
    if not scenes.exists():
        write_digit_scenes(scenes, n_train=16, n_val=4, n_test=4, size=64)
    model = {"detect": "fcos_lite", "segment": "unet"}[task]
    out = root / f"serve-{task}"
    imagerec.train(
        scenes, task=task, model=model, out=out, epochs=1, imgsz=64, batch=8, flip=False, precision="32", seed=0,
        console=quiet,
    )  # fmt: skip
    return out


def sample_images(task: str, run: Path, digits: Path, count: int = 3) -> list[Path]:
    """Real images of the task's data: scanned digits, or digit scenes from the test split."""
    if task == "classify":
        return sorted(digits.rglob("*.png"))[:: 1797 // count][:count]
    return sorted((run.parent / "serve-scenes" / "images" / "test").glob("*.png"))[:count]


class GatedPredictor:
    """A predictor whose `predict` waits at a gate (open by default) and records each batch's size.

    `entered` is set when a call reaches the gate, so a test knows a batch is running without timing anything.
    """

    def __init__(self, predictor: Any) -> None:
        self.inner, self.info, self.task = predictor, predictor.info, predictor.task
        self.gate, self.entered = threading.Event(), threading.Event()
        self.gate.set()
        self.sizes: list[int] = []

    def predict(self, images: list, **kwargs: Any) -> list:
        self.entered.set()
        assert self.gate.wait(WAIT_S), "the test never opened the gate"
        self.sizes.append(len(images))
        return self.inner.predict(images, **kwargs)


@contextmanager
def running_server(app: Any) -> Iterator[tuple[str, Any, threading.Thread]]:
    """(url, uvicorn server, its thread) for `app` on a free loopback port; stopped gracefully on exit."""
    import uvicorn

    from imagerec.outputs.serve import bind

    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=WAIT_S))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT_S
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", server, thread
    finally:
        server.should_exit = True
        thread.join(WAIT_S)
        sock.close()
