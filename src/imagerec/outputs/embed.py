"""Embeddings: one vector per image from a run or a classifier name, saved as Parquet or NPZ.

A run knows its preprocessing (model.json); a classifier name (`resnet18`, `timm:convnext_tiny`) takes it from
its `--weights` where they record it (published weights, runs), else ImageNet's mean and std at `--imgsz`.
The file records what made it, so queries against it (`imagerec neighbors`) are embedded the same way.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from imagerec.data.images import MAX_PIXELS, to_channels
from imagerec.errors import UserError
from imagerec.models.embedding import backbone_name, check_layer, classifier_name, extract
from imagerec.outputs.predict import load, pick_device, to_tensor
from imagerec.outputs.sources import ImageLike, decoded_batches, expand_sources
from imagerec.tasks.results import Classification, Detections

INDEX_FORMAT = 1  # bumped when the files' layout changes incompatibly
SUFFIXES = (".parquet", ".npz")
META_KEY = "imagerec"  # Parquet schema metadata key / NPZ entry holding what made the embeddings
DEFAULT_IMGSZ = 224  # a classifier name without weights that say otherwise


def check_suffix(path: Path) -> None:
    if Path(path).suffix.lower() not in SUFFIXES:
        raise UserError(f"{path}: embeddings are written as .parquet or .npz; name the file FILE.parquet or FILE.npz")


@dataclass(frozen=True)
class Embeddings:
    """One float32 vector per image (not normalised), with what made them (`meta`: run or model, weights, layer,
    input size). `labels` holds each image's class folder (the folder holding it, when found inside a SOURCE
    folder; None otherwise), or is None when no image has one. `failed` lists (path, error) of unreadable files."""

    paths: list[str]
    vectors: np.ndarray
    meta: dict[str, Any]
    labels: list[str | None] | None = None
    failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.paths)

    def save(self, path: str | Path) -> Path:
        """Write `.parquet` (columns path, embedding[, label]) or `.npz` (paths, embeddings[, labels], meta)."""
        from imagerec.runs import atomic_write

        path = Path(path)
        check_suffix(path)
        writer = _write_parquet if path.suffix.lower() == ".parquet" else _write_npz
        atomic_write(path, lambda tmp: writer(self, tmp))
        return path


def _write_parquet(embeddings: Embeddings, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    flat = pa.array(embeddings.vectors.reshape(-1), type=pa.float32())
    columns = {
        "path": pa.array(embeddings.paths, type=pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(flat, embeddings.dim),
    }
    if embeddings.labels is not None:
        columns["label"] = pa.array(embeddings.labels, type=pa.string())
    table = pa.table(columns).replace_schema_metadata({META_KEY: json.dumps(embeddings.meta)})
    pq.write_table(table, path)


def _write_npz(embeddings: Embeddings, path: Path) -> None:
    arrays = {"paths": np.array(embeddings.paths, dtype=str), "embeddings": embeddings.vectors}
    if embeddings.labels is not None:
        arrays["labels"] = np.array([label or "" for label in embeddings.labels], dtype=str)
    with path.open("wb") as handle:  # a file object, so numpy does not append its own .npz suffix
        np.savez(handle, **arrays, meta=np.array(json.dumps(embeddings.meta)))


def read_embeddings(path: str | Path) -> Embeddings:
    """An embeddings file written by `imagerec embed` (or `Embeddings.save`)."""
    path = Path(path).expanduser()
    check_suffix(path)
    if not path.is_file():
        raise UserError(f"{path}: no such embeddings file; write one with imagerec embed RUN SOURCE --out {path}")
    try:
        embeddings = _read_parquet(path) if path.suffix.lower() == ".parquet" else _read_npz(path)
    except (OSError, ValueError, KeyError) as error:
        detail = str(error).splitlines()[0][:120] if str(error) else type(error).__name__
        raise UserError(f"{path}: not an embeddings file written by imagerec embed ({detail})") from None
    if embeddings.meta.get("format") != INDEX_FORMAT:
        found = embeddings.meta.get("format")
        raise UserError(f"{path}: embeddings format {found}, this imagerec reads {INDEX_FORMAT}; re-embed the images")
    return embeddings


def _read_parquet(path: Path) -> Embeddings:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    meta = json.loads((table.schema.metadata or {})[META_KEY.encode()])
    column = table.column("embedding").combine_chunks()
    vectors = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(table), -1)
    labels = table.column("label").to_pylist() if "label" in table.column_names else None
    return Embeddings(table.column("path").to_pylist(), vectors, meta, labels)


def _read_npz(path: Path) -> Embeddings:
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        labels = [label or None for label in data["labels"].tolist()] if "labels" in data else None
        return Embeddings(data["paths"].tolist(), data["embeddings"].astype(np.float32), meta, labels)


class Embedder:
    """A model ready to embed images: its preprocessing, and where its features are taken (`layer`: the module's
    input for a classifier's default pre-logits features, else its output)."""

    def __init__(
        self,
        model: nn.Module,
        preprocess: Callable[[ImageLike], torch.Tensor],
        *,
        layer: str,
        use_input: bool,
        per_image: bool,
        meta: dict[str, Any],
        device: torch.device,
        image_list: bool = False,
    ) -> None:
        self.model, self.preprocess, self.meta, self.device = model.to(device).eval(), preprocess, meta, device
        self.layer, self.use_input = layer, use_input
        # Detectors and segmenters take images of any size: batching would pad them, and an image's embedding
        # would then depend on its batch; one at a time keeps it a function of the image alone.
        self.per_image = per_image
        self.image_list = image_list  # detectors take a list of images, the others one N×C×H×W tensor

    @torch.no_grad()
    def vectors(self, images: list[torch.Tensor]) -> torch.Tensor:
        """N×D features of preprocessed images."""
        if self.per_image:
            return torch.cat([self._features([image]) for image in images])
        return self._features(images)

    def _features(self, images: list[torch.Tensor]) -> torch.Tensor:
        if self.image_list:
            inputs: Any = [image.to(self.device) for image in images]
        else:
            inputs = torch.stack(images).to(self.device)
        return extract(self.model, inputs, layer=self.layer, use_input=self.use_input).cpu()

    def embed_iter(
        self, sources: Iterable[ImageLike], *, batch: int = 64, workers: int = 0
    ) -> Iterator[tuple[str, np.ndarray | None, str | None]]:
        """(name, vector, None) per image in order, or (name, None, error) for an unreadable one."""
        for chunk in decoded_batches(sources, self.preprocess, batch=batch, workers=workers):
            good = [image for _, image, error in chunk if error is None]
            vectors = iter(self.vectors(good).numpy() if good else [])
            for name, _, error in chunk:
                yield (name, None, error) if error is not None else (name, next(vectors), None)


def open_embedder(
    run_or_model: str | Path,
    *,
    layer: str | None = None,
    weights: str | None = None,
    imgsz: int | None = None,
    device: str = "auto",
    max_image_pixels: int = MAX_PIXELS,
) -> Embedder:
    """An Embedder for a run directory (any task) or a classifier name (fresh weights, or `weights`).

    `layer` names any module (`model.named_modules()`); by default a classifier gives its pre-logits features
    and a detector or segmenter its backbone's pooled deepest feature map. A classifier name without `weights`
    warns (UserWarning): an untrained network's embeddings mean little. Image files whose header claims more than
    `max_image_pixels` are refused unread (a decompression bomb).
    """
    path = Path(run_or_model).expanduser()
    if path.is_dir():
        if weights is not None:
            raise UserError(f"--weights applies to a model name; the run {path} embeds with its own weights")
        return _run_embedder(path, layer=layer, imgsz=imgsz, device=device, max_image_pixels=max_image_pixels)
    name = str(run_or_model)
    if path.exists() or ("/" in name and not name.startswith("timm:")):
        raise UserError(f"{path}: not a run directory; give the folder imagerec train wrote, or a model name")
    return _model_embedder(
        name, layer=layer, weights=weights, imgsz=imgsz, device=device, max_image_pixels=max_image_pixels
    )


def _run_embedder(path: Path, *, layer: str | None, imgsz: int | None, device: str, max_image_pixels: int) -> Embedder:
    predictor = load(path, device=device, imgsz=imgsz, max_image_pixels=max_image_pixels, embedding=True)
    info, model = predictor.info, predictor.model
    classify = issubclass(predictor.task.result_type, Classification)
    if layer is not None:
        check_layer(model, layer, what=f"the {info.model} model of {path}")
    weights_file = predictor.run.best if predictor.run.best.exists() else predictor.run.last
    meta = {
        "format": INDEX_FORMAT, "run": str(path.resolve()), "model": info.model, "task": info.task,
        "instance": bool(info.instance), "weights": None, "weights_digest": _digest(weights_file),
        "layer": layer, "imgsz": info.imgsz,
    }  # fmt: skip
    return Embedder(
        model,
        predictor.preprocess,
        layer=layer or (classifier_name(model) if classify else backbone_name(model)),
        use_input=layer is None and classify,
        per_image=not classify,
        meta=meta,
        device=predictor.device,
        image_list=issubclass(predictor.task.result_type, Detections),
    )


def _model_embedder(
    name: str, *, layer: str | None, weights: str | None, imgsz: int | None, device: str, max_image_pixels: int
) -> Embedder:
    from imagerec.models import create_classifier
    from imagerec.models.weights import IMAGENET_MEAN, IMAGENET_STD, apply_weights, fit_channels, weights_preprocessing
    from imagerec.transforms.classification import eval_transform

    known = weights_preprocessing(weights, model_name=name) if weights is not None else None
    size = imgsz or (known or {}).get("imgsz") or DEFAULT_IMGSZ
    with torch.random.fork_rng(devices=[]):  # fresh weights drawn the same way every time: an index and its
        torch.manual_seed(0)  # queries, embedded in two commands, then come from one and the same network
        model = create_classifier(name, num_outputs=1000, in_channels=3, imgsz=size)
    if weights is None:
        warnings.warn(
            f"{name} has fresh random weights (no --weights): embeddings of an untrained network mean little; "
            "pass --weights DEFAULT, a weights file or a run",
            UserWarning,
            stacklevel=3,
        )
    else:
        apply_weights(model, weights, model_name=name)
    if layer is not None:
        check_layer(model, layer, what=name)
    mean, std = (fit_channels(known[k], 3) for k in ("mean", "std")) if known else (IMAGENET_MEAN, IMAGENET_STD)
    transform = eval_transform(imgsz=size, mean=mean, std=std)
    meta = {
        "format": INDEX_FORMAT, "run": None, "model": name, "task": "classify", "weights": weights,
        "weights_digest": None, "layer": layer, "imgsz": size,
    }  # fmt: skip
    return Embedder(
        model,
        lambda image: transform(to_channels(to_tensor(image, max_pixels=max_image_pixels), 3)),
        layer=layer or classifier_name(model),
        use_input=layer is None,
        per_image=False,
        meta=meta,
        device=pick_device(device),
    )


def _digest(path: Path) -> str:
    """A short fingerprint of a weights file: an index made before a run was retrained is refused."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def with_labels(sources: Sequence[str | Path]) -> list[tuple[Path, str | None]]:
    """The image files of `sources` (folders expanded as `imagerec predict` does), each with its class folder:
    the name of the folder holding it when it was found inside a SOURCE folder, else None."""
    files: list[tuple[Path, str | None]] = []
    for source in sources:
        root = Path(source).expanduser()
        for file in expand_sources([root]):
            file = Path(file)
            files.append((file, file.parent.name if root.is_dir() and file.parent != root else None))
    if not files:
        raise UserError(f"no images found in {', '.join(str(s) for s in sources)}")
    return files


def embed(
    run_or_model: str | Path,
    sources: Sequence[str | Path],
    *,
    layer: str | None = None,
    weights: str | None = None,
    batch: int = 64,
    imgsz: int | None = None,
    device: str = "auto",
    workers: int = 0,
    max_image_pixels: int = MAX_PIXELS,
    progress: Callable[[int], None] | None = None,
    embedder: Embedder | None = None,
) -> Embeddings:
    """Embed image files and folders (recursively) with a run or a classifier name; unreadable files are left
    out and listed in `failed`. `progress(n)` is called as images are done. Save with `.save(path)`."""
    if batch < 1:
        raise UserError(f"--batch {batch}: must be at least 1")
    embedder = embedder or open_embedder(
        run_or_model, layer=layer, weights=weights, imgsz=imgsz, device=device, max_image_pixels=max_image_pixels
    )
    files = with_labels(sources)
    paths, vectors, labels, failed = [], [], [], []
    found = embedder.embed_iter([file for file, _ in files], batch=batch, workers=workers)
    for (_, label), (name, vector, error) in zip(files, found, strict=True):
        if error is None:
            paths.append(name)
            vectors.append(vector)
            labels.append(label)
        else:
            failed.append((name, error))
        if progress is not None:
            progress(1)
    if not vectors:
        raise UserError(f"none of the {len(files)} image(s) could be read (first: {failed[0][1]})")
    stacked = np.stack(vectors).astype(np.float32)
    taken = f"{'input' if embedder.use_input else 'output'} of {embedder.layer}"
    meta = {**embedder.meta, "features": taken, "dim": int(stacked.shape[1])}
    if failed:  # the file says which images it lacks, and why
        meta["failed"] = [{"path": name, "error": error} for name, error in failed]
    return Embeddings(paths, stacked, meta, labels if any(labels) else None, failed)
