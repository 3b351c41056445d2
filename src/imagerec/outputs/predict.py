"""Loading a run for inference and predicting files, folders or in-memory images in batches."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from typing_extensions import Unpack  # typing.Unpack for **kwargs needs Python 3.12

from imagerec.data.images import MAX_PIXELS, _pil_to_array, _to_unit_float, read_image, to_channels
from imagerec.errors import UserError
from imagerec.outputs.graphs import in_memory
from imagerec.outputs.runtimes import (
    EAGER_RUNTIMES,
    RUNTIMES,
    GraphModel,
    check_options,
    compiled,
    is_exported,
    open_exported,
    runtime_names,
)
from imagerec.outputs.sources import ImageLike, decoded_batches
from imagerec.records import ModelInfo
from imagerec.runs import Run, RunDir, open_run
from imagerec.tasks.base import PredictOptions, PredictSettings, predict_options
from imagerec.tasks.build import task_from_info
from imagerec.tasks.results import Result
from imagerec.weights_io import load_weights


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but no CUDA GPU is visible; use --device cpu")
    return torch.device(device)


def to_tensor(image: ImageLike, *, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """A file (refused above `max_pixels`, read from its header), PIL image, array or tensor as C×H×W float."""
    if isinstance(image, str | Path):
        return read_image(Path(image), max_pixels=max_pixels)
    if isinstance(image, Image.Image):
        image = _pil_to_array(image)
    if isinstance(image, np.ndarray):  # scaled as files are: 8-bit /255, 16-bit /65535, float clipped to [0, 1]
        array = image[:, :, None] if image.ndim == 2 else image
        if array.shape[2] in (2, 4):  # LA / RGBA: drop alpha, as for files
            array = array[:, :, :-1]
        return torch.from_numpy(_to_unit_float(array).transpose(2, 0, 1).copy())
    return image.float()


class Predictor:
    """A trained model with the preprocessing it was trained with, ready to predict.

    Classification runs give `Classification` results (options: `topk`); detection runs give `Detections`
    (options: `conf`, the minimum score, by default the threshold the run chose on validation (`conf_threshold`),
    else 0.25; `iou`, the non-maximum-suppression overlap; `agnostic`, suppression across classes; `max_det`, the
    most boxes per image), instance segmentation `InstanceMasks` (same options); semantic segmentation gives
    `SegmentationMask` (options: `tile` and `overlap` for sliding-window inference, `max_pixels` above which an
    image needs a tile size). Image files whose header claims more than `max_image_pixels` are refused unread.
    """

    def __init__(
        self,
        info: ModelInfo,
        model: nn.Module,
        *,
        device: torch.device,
        run: RunDir | None = None,
        runtime: str = "eager",
        max_image_pixels: int = MAX_PIXELS,
    ) -> None:
        self.info, self.run, self.runtime, self.device = info, run, runtime, device
        self.max_image_pixels = max_image_pixels  # an attribute, so DataLoader workers decoding for it get it too
        self.task = task_from_info(info)
        self.classes: list[str] = info.classes
        self.model = model.to(device).eval()
        self.transform = self.task.predict_transform(info)

    @classmethod
    def from_run(
        cls,
        run: RunDir,
        *,
        device: str = "auto",
        weights: str = "best",
        imgsz: int | None = None,
        max_image_pixels: int = MAX_PIXELS,
        embedding: bool = False,
    ) -> Predictor:
        """The run's eager network with its best (else last) weights; `imgsz` overrides a detector's input size.
        A pretraining run, which has no classes, loads only to embed images (`embedding`)."""
        info = run.read_model_info()
        if info.pretraining and not embedding:
            raise UserError(
                f"{run.path}: a {info.pretraining} pretraining run has no classes to predict or score; train from it "
                f"(imagerec train DATA --model {info.model} --weights {run.path}), or embed images with it"
            )
        task = task_from_info(info)
        if imgsz is not None:
            info = task.with_imgsz(info, imgsz)
        model = task.build_model(info)
        path = run.best if weights == "best" and run.best.exists() else run.last
        model.load_state_dict(load_weights(path))
        return cls(info, model, device=pick_device(device), run=run, max_image_pixels=max_image_pixels)

    def read(self, image: ImageLike) -> torch.Tensor:
        """`image` as C×H×W in [0, 1] with the model's channels; a UserError when it cannot be read."""
        return to_channels(to_tensor(image, max_pixels=self.max_image_pixels), self.info.channels)

    def preprocess(self, image: ImageLike) -> torch.Tensor:
        image = self.read(image)
        return image if self.transform is None else self.transform(image)

    @torch.no_grad()
    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """Class probabilities (N×K) for a preprocessed batch (classification runs)."""
        return self.task.probabilities(self.model(batch.to(self.device))).cpu()

    def predict_iter(
        self,
        sources: Iterable[ImageLike],
        *,
        batch: int = 64,
        workers: int = 0,
        skip: int = 0,
        **options: Unpack[PredictSettings],
    ) -> Iterator[Result]:
        """Yield one result per image, in order, after the first `skip` images (a resumed run's); unreadable or
        missing files yield a result with `error` set.

        Sources stream (see `imagerec.outputs.sources.iter_sources`: folders, `.txt` lists, globs), so memory does not
        grow with their number. `workers` > 0 decodes images in that many DataLoader processes while the model runs.
        The options (`PredictOptions`' fields) apply to this call only: the model is never changed, so threads may
        share it.
        """
        chosen = predict_options(self.task, options)
        if isinstance(self.model, GraphModel):
            check_options(self.model.record, chosen)
        for chunk in decoded_batches(sources, self.preprocess, batch=batch, workers=workers, skip=skip):
            good = [(name, image) for name, image, error in chunk if error is None]
            results = iter(self._predict(good, chosen) if good else [])
            for name, _, error in chunk:
                yield self.task.failed(name, error) if error is not None else next(results)

    @torch.no_grad()
    def _predict(self, items: list[tuple[str, torch.Tensor]], options: PredictOptions) -> list[Result]:
        names, images = [name for name, _ in items], [image for _, image in items]
        return self.task.predict(self.model, images, names, options)

    def predict(
        self,
        sources: ImageLike | Sequence[ImageLike],
        *,
        batch: int = 64,
        workers: int = 0,
        **options: Unpack[PredictSettings],
    ) -> list[Result]:
        """Predict files, folders, PIL images, arrays or tensors (C×H×W in [0, 1])."""
        if isinstance(sources, str | Path | Image.Image | np.ndarray | torch.Tensor):
            sources = [sources]
        return list(self.predict_iter(sources, batch=batch, workers=workers, **options))


def load(
    run: str | Path | RunDir | Run,
    *,
    device: str = "auto",
    weights: str = "best",
    imgsz: int | None = None,
    runtime: str | None = None,
    max_image_pixels: int = MAX_PIXELS,
    embedding: bool = False,
) -> Predictor:
    """Load a run directory (any task; or the Run `imagerec.train` returned) or an exported file (.onnx, .xml,
    .torchscript) for prediction.

    `runtime`: `eager` (default for runs), `compile` (torch.compile), or `onnx`, `openvino`, `torchscript` (default
    for an exported file: its own format; a run is exported in memory first). `imgsz` overrides a detector's input
    size (runs only: an exported graph fixes it). Image files whose header claims more than `max_image_pixels` are
    refused unread (a decompression bomb). `embedding`: the network is only to embed images, which a pretraining
    run (no classes) is for.
    """
    if isinstance(run, str | Path) and is_exported(run):
        return _load_exported(Path(run), device=device, imgsz=imgsz, runtime=runtime, max_image_pixels=max_image_pixels)
    run_dir = run if isinstance(run, RunDir) else open_run(run.path if isinstance(run, Run) else run)
    runtime = runtime or "eager"
    if runtime not in runtime_names():
        RUNTIMES.get(runtime)  # names the runtimes there are
    if runtime in EAGER_RUNTIMES:
        predictor = Predictor.from_run(
            run_dir, device=device, weights=weights, imgsz=imgsz, max_image_pixels=max_image_pixels,
            embedding=embedding,
        )  # fmt: skip
        if runtime == "compile":
            predictor.model, predictor.runtime = compiled(predictor.model), runtime
        return predictor
    eager = Predictor.from_run(run_dir, device="cpu", weights=weights, imgsz=imgsz)
    graph = in_memory(eager.task, eager.model, eager.info, runtime)
    return Predictor(
        eager.info, graph, device=_cpu_only(device, runtime), run=run_dir, runtime=runtime,
        max_image_pixels=max_image_pixels,
    )  # fmt: skip


def _load_exported(
    path: Path, *, device: str, imgsz: int | None, runtime: str | None, max_image_pixels: int
) -> Predictor:
    exported = open_exported(path)
    runtime = runtime or exported.format
    if runtime in EAGER_RUNTIMES:
        raise UserError(f"{path}: --runtime {runtime} runs a run directory's network; give the run, or --runtime "
                        f"{exported.format}")  # fmt: skip
    if imgsz is not None:
        raise UserError(f"{path}: --imgsz is fixed in an exported graph; export the run again with the size you want")
    model = RUNTIMES.get(runtime)(exported)
    return Predictor(
        exported.info, model, device=_cpu_only(device, runtime), runtime=runtime, max_image_pixels=max_image_pixels
    )


def _cpu_only(device: str, runtime: str) -> torch.device:
    """The exported-graph runtimes run on the CPU here."""
    if device not in ("auto", "cpu"):
        raise UserError(f"--runtime {runtime} runs on the CPU; use --device cpu (or --runtime eager on a GPU)")
    return torch.device("cpu")
