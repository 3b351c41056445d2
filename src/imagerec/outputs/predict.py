"""Loading a run for inference and predicting files, folders or in-memory images in batches."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from imagerec.config import ModelConfig
from imagerec.data.images import _pil_to_array, _to_unit_float, is_image_file, read_image, to_channels
from imagerec.engine.checkpoint import load_weights
from imagerec.errors import UserError
from imagerec.outputs.results import Classification, Detections, SegmentationMask
from imagerec.outputs.tiling import predict_tiled
from imagerec.runs import RunDir, open_run
from imagerec.tasks.build import task_from_info
from imagerec.tasks.detection import DetectionTask

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


def to_tensor(image: ImageLike) -> torch.Tensor:
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


def source_name(image: ImageLike, position: int) -> str:
    """How results name a source: its path, or `<image N>` for an in-memory image at position N."""
    return str(image) if isinstance(image, str | Path) else f"<image {position}>"


class DecodedImages(Dataset):
    """Sources decoded and preprocessed one by one: (name, tensor, None), or (name, None, error) if unreadable."""

    def __init__(self, sources: list[ImageLike], preprocess: Callable[[ImageLike], torch.Tensor]) -> None:
        self.sources, self.preprocess = sources, preprocess

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int) -> tuple[str, torch.Tensor | None, str | None]:
        name = source_name(self.sources[i], i)
        try:
            return name, self.preprocess(self.sources[i]), None
        except UserError as error:
            return name, None, str(error)


Result = Classification | Detections | SegmentationMask
# Whole-image segmentation above this many pixels needs --tile: a 2048×2048 image. At 4096×4096 the compact
# U-Net alone peaked at 8.6 GiB, against 1.7 GiB in 512 px tiles (docs/benchmarks.md, tiling).
MAX_PIXELS = 2048 * 2048


class Predictor:
    """A trained model with the preprocessing it was trained with, ready to predict.

    Classification runs give `Classification` results (options: `topk`); detection runs give `Detections`
    (options: `conf`, the minimum score, and `iou`, the non-maximum-suppression overlap), instance segmentation
    `InstanceMasks` (same options); semantic segmentation gives `SegmentationMask` (options: `tile` and `overlap`
    for sliding-window inference, `max_pixels` above which an image needs a tile size).
    """

    def __init__(self, run: RunDir, *, device: str = "auto", weights: str = "best", imgsz: int | None = None) -> None:
        self.run = run
        self.info: dict[str, Any] = run.read_model_info()
        if imgsz is not None:
            if self.info["task"] != "detect":
                raise UserError("--imgsz at prediction applies to detection runs; a classifier keeps its input size")
            self.info["imgsz"] = imgsz
        self.classes: list[str] = self.info["classes"]
        self.device = pick_device(device)
        self.task = task_from_info(self.info)
        cfg = ModelConfig(
            name=self.info["model"], backbone=self.info.get("backbone"), anchor_sizes=self.info.get("anchor_sizes")
        )
        self.model = self.task.build_model(cfg, self.info)
        path = run.best if weights == "best" and run.best.exists() else run.last
        self.model.load_state_dict(load_weights(path))
        self.model.to(self.device).eval()
        self.transform = self.task.predict_transform(self.info)

    def preprocess(self, image: ImageLike) -> torch.Tensor:
        image = to_channels(to_tensor(image), self.info["channels"])
        return image if self.transform is None else self.transform(image)

    @torch.no_grad()
    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """Class probabilities (N×K) for a preprocessed batch (classification runs)."""
        return self.task.probabilities(self.model(batch.to(self.device))).cpu()

    def predict_iter(
        self, sources: Iterable[ImageLike], *, batch: int = 64, workers: int = 0, **options: Any
    ) -> Iterator[Result]:
        """Yield one result per image, in order; unreadable files yield a result with `error` set.

        `workers` > 0 decodes images in that many DataLoader processes while the model runs.
        """
        _check_options(options)
        if isinstance(self.task, DetectionTask):
            self.model.set_thresholds(score=options.get("conf", 0.25), iou=options.get("iou"))
        items = DecodedImages(expand_sources(sources), self.preprocess)
        for chunk in DataLoader(items, batch_size=batch, num_workers=workers, collate_fn=list):
            good = [(name, image) for name, image, error in chunk if error is None]
            results = iter(self._predict(good, options) if good else [])
            for name, _, error in chunk:
                yield self.task.failed(name, error) if error is not None else next(results)

    @torch.no_grad()
    def _predict(self, items: list[tuple[str, torch.Tensor]], options: dict[str, Any]) -> list[Result]:
        names = [name for name, _ in items]
        if self.task.name == "segment" and not isinstance(self.task, DetectionTask):  # semantic
            maps = [self._segment(name, image, options) for name, image in items]
            return self.task.results(maps, names)
        if isinstance(self.task, DetectionTask):
            images = [image.to(self.device) for _, image in items]
            outputs = [{k: v.cpu() for k, v in o.items()} for o in self.model(images)]
            sizes = [(image.shape[-1], image.shape[-2]) for image in images]
            return self.task.results(outputs, names, sizes=sizes, conf=options.get("conf", 0.25))
        probs = self.probabilities(torch.stack([image for _, image in items]))
        return self.task.results(probs, names, topk=options.get("topk", 5))

    def _segment(self, name: str, image: torch.Tensor, options: dict[str, Any]) -> torch.Tensor:
        """H×W class map of one image, whole or tile by tile."""
        tile, overlap = options.get("tile"), options.get("overlap", 64)
        height, width = image.shape[-2:]
        if tile is None:
            limit = options.get("max_pixels", MAX_PIXELS)
            if height * width > limit:
                raise UserError(
                    f"{name}: {width}×{height} pixels is above the {limit:,}-pixel limit for whole-image inference; "
                    "pass --tile 1024 (tiles with blended overlaps) or raise --max-pixels"
                )
            logits = self.model(image[None].to(self.device))[0]
        else:
            logits = predict_tiled(lambda x: self.model(x.to(self.device)), image, tile=tile, overlap=overlap)
        return self.task.class_map(logits[None].float()).cpu()[0]

    def predict(
        self, sources: ImageLike | Sequence[ImageLike], *, batch: int = 64, workers: int = 0, **options: Any
    ) -> list[Result]:
        """Predict files, folders, PIL images, arrays or tensors (C×H×W in [0, 1])."""
        if isinstance(sources, str | Path | Image.Image | np.ndarray | torch.Tensor):
            sources = [sources]
        return list(self.predict_iter(sources, batch=batch, workers=workers, **options))


def _check_options(options: dict[str, Any]) -> None:
    topk, conf, iou = options.get("topk", 5), options.get("conf", 0.25), options.get("iou")
    tile, overlap = options.get("tile"), options.get("overlap", 64)
    if topk < 1:
        raise UserError(f"--topk {topk}: must be at least 1")
    if not 0 <= conf <= 1 or (iou is not None and not 0 < iou <= 1):
        raise UserError("--conf must be in [0, 1] and --iou in (0, 1]")
    if tile is not None and not 0 <= overlap < tile:
        raise UserError(f"--tile {tile} --overlap {overlap}: the overlap must be at least 0 and below the tile size")


def load(
    run: str | Path | RunDir, *, device: str = "auto", weights: str = "best", imgsz: int | None = None
) -> Predictor:
    """Load a run directory (any task) for prediction; `imgsz` overrides a detector's input size."""
    run_dir = run if isinstance(run, RunDir) else open_run(run)
    return Predictor(run_dir, device=device, weights=weights, imgsz=imgsz)
