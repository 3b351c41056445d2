"""Loading a run for inference and predicting files, folders or in-memory images in batches."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from imagerec.data.images import _pil_to_array, _to_unit_float, is_image_file, read_image, to_channels
from imagerec.engine.checkpoint import load_weights
from imagerec.errors import UserError
from imagerec.outputs.results import Classification
from imagerec.runs import RunDir, open_run
from imagerec.tasks.classification import ClassificationTask
from imagerec.transforms.classification import eval_transform

ImageLike = str | Path | Image.Image | np.ndarray | torch.Tensor


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but no CUDA GPU is visible; use --device cpu")
    return torch.device(device)


def expand_sources(sources: Iterable[ImageLike]) -> list[ImageLike]:
    """Folders become their image files (recursively, sorted); a missing path is an error."""
    expanded: list[ImageLike] = []
    for source in sources:
        if isinstance(source, str | Path):
            path = Path(source).expanduser()
            if path.is_dir():
                expanded.extend(sorted(p for p in path.rglob("*") if is_image_file(p)))
            elif path.exists():
                expanded.append(path)
            else:
                raise UserError(f"{path}: no such file or folder")
        else:
            expanded.append(source)
    return expanded


def _to_tensor(image: ImageLike) -> torch.Tensor:
    if isinstance(image, str | Path):
        return read_image(Path(image))
    if isinstance(image, Image.Image):
        image = _pil_to_array(image)
    if isinstance(image, np.ndarray):  # scaled as files are: 8-bit /255, 16-bit /65535, float clipped to [0, 1]
        array = image[:, :, None] if image.ndim == 2 else image
        if array.shape[2] in (2, 4):  # LA / RGBA: drop alpha, as for files
            array = array[:, :, :-1]
        return torch.from_numpy(_to_unit_float(array).transpose(2, 0, 1).copy())
    return image.float()


def _name(image: ImageLike, position: int) -> str:
    return str(image) if isinstance(image, str | Path) else f"<image {position}>"


class _Decoded(Dataset):
    """Sources decoded and preprocessed one by one: (name, tensor, None), or (name, None, error) if unreadable."""

    def __init__(self, sources: list[ImageLike], preprocess: Callable[[ImageLike], torch.Tensor]) -> None:
        self.sources, self.preprocess = sources, preprocess

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int) -> tuple[str, torch.Tensor | None, str | None]:
        name = _name(self.sources[i], i)
        try:
            return name, self.preprocess(self.sources[i]), None
        except UserError as error:
            return name, None, str(error)


class Predictor:
    """A trained model with the preprocessing it was trained with, ready to predict."""

    def __init__(self, run: RunDir, *, device: str = "auto", weights: str = "best") -> None:
        self.run = run
        self.info: dict[str, Any] = run.read_model_info()
        self.classes: list[str] = self.info["classes"]
        self.device = pick_device(device)
        self.task = ClassificationTask(
            self.classes, multilabel=self.info["multilabel"], binary_head=self.info["binary_head"]
        )
        from imagerec.config import ModelConfig

        self.model = self.task.build_model(
            ModelConfig(name=self.info["model"]), channels=self.info["channels"], imgsz=self.info["imgsz"]
        )
        path = run.best if weights == "best" and run.best.exists() else run.last
        self.model.load_state_dict(load_weights(path))
        self.model.to(self.device).eval()
        self.transform = eval_transform(imgsz=self.info["imgsz"], mean=self.info["mean"], std=self.info["std"])

    def preprocess(self, image: ImageLike) -> torch.Tensor:
        return self.transform(to_channels(_to_tensor(image), self.info["channels"]))

    @torch.no_grad()
    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """Class probabilities (N×K) for a preprocessed batch."""
        return self.task.probabilities(self.model(batch.to(self.device))).cpu()

    def predict_iter(
        self, sources: Iterable[ImageLike], *, topk: int = 5, batch: int = 64, workers: int = 0
    ) -> Iterator[Classification]:
        """Yield one result per image, in order; unreadable files yield a result with `error` set.

        `workers` > 0 decodes images in that many DataLoader processes while the model runs.
        """
        items = _Decoded(expand_sources(sources), self.preprocess)
        for chunk in DataLoader(items, batch_size=batch, num_workers=workers, collate_fn=list):
            good = [(name, image) for name, image, error in chunk if error is None]
            results = iter(self._classify(good, topk) if good else [])
            for name, _, error in chunk:
                yield Classification(name, (), (), error=error) if error is not None else next(results)

    def _classify(self, items: list[tuple[str, torch.Tensor]], topk: int) -> list[Classification]:
        probs = self.probabilities(torch.stack([image for _, image in items]))
        return self.task.results(probs, [name for name, _ in items], topk=topk)

    def predict(
        self, sources: ImageLike | Sequence[ImageLike], *, topk: int = 5, batch: int = 64, workers: int = 0
    ) -> list[Classification]:
        """Predict files, folders, PIL images, arrays or tensors (C×H×W in [0, 1])."""
        if isinstance(sources, str | Path | Image.Image | np.ndarray | torch.Tensor):
            sources = [sources]
        return list(self.predict_iter(sources, topk=topk, batch=batch, workers=workers))


def load(run: str | Path | RunDir, *, device: str = "auto", weights: str = "best") -> Predictor:
    """Load a run directory for prediction."""
    run_dir = run if isinstance(run, RunDir) else open_run(run, task="classify")
    return Predictor(run_dir, device=device, weights=weights)
