"""`imagerec train --head knn|logistic`: scikit-learn on frozen embeddings, saved as an ordinary run.

The network (`--model`, `--weights`) stays frozen. Its pre-logits embeddings of the train split fit a
k-nearest-neighbour or a logistic-regression classifier whose hyper-parameter (k, or C) is chosen by accuracy on
the val split; the test split measures the result. The fitted classifier then becomes a layer in place of the
network's own (`models.embedding.NeighborVote`, or an `nn.Linear` holding the fitted coefficients), so the run
directory is like any other and `imagerec evaluate`, `predict` and `embed` work on it unchanged.

This module sits beside training.py rather than in engine/: it is glue that binds a config, data, the task and
the run directory, built from training.py's pieces (data, model record, pretrained weights, run files).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from lightning_fabric.utilities.seed import seed_everything
from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader

from imagerec.config import RunConfig
from imagerec.engine.autotune import default_settings
from imagerec.errors import UserError
from imagerec.models.classification import check_input_size
from imagerec.models.embedding import NeighborVote, classifier_name, extract, replace_module, similarity_weights
from imagerec.records import ModelInfo
from imagerec.runs import Run, new_run_dir, write_json
from imagerec.tasks.classification import ClassificationTask
from imagerec.training import accelerator, load_pretrained, model_info, prepare_data, write_run_files
from imagerec.weights_io import save_weights

K_GRID = (1, 3, 5, 7, 9, 15, 25)
C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)
MAX_ITER = 2000


@dataclass
class FittedHead:
    """A scikit-learn classifier fitted on embeddings, with the hyper-parameter chosen on val."""

    kind: str  # "knn" | "logistic"
    estimator: Any
    param: dict[str, float]  # {"k": 5} or {"C": 0.1}
    search: list[dict[str, float]] = field(default_factory=list)  # each candidate with its val accuracy


def _estimator(kind: str, value: float) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "knn":
        return KNeighborsClassifier(int(value), metric="cosine", weights=similarity_weights, algorithm="brute")
    return make_pipeline(StandardScaler(), LogisticRegression(C=value, max_iter=MAX_ITER))


def fit_head(kind: str, train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray] | None) -> FittedHead:
    """Fit `kind` ("knn" or "logistic") on `train` (embeddings, class indices) for each k or C of the grid and
    keep the most accurate on `val` (the first of equals: fewer neighbours, stronger regularisation)."""
    if kind not in ("knn", "logistic"):
        raise ValueError(f"unknown head {kind!r}")
    name, grid = ("k", [k for k in K_GRID if k <= len(train[0])]) if kind == "knn" else ("C", list(C_GRID))
    if val is None:  # nothing to choose on: the middle of the grid
        grid = [grid[min(2, len(grid) - 1)]]
    search, best, best_accuracy = [], None, -1.0
    for value in grid:
        estimator = _estimator(kind, value).fit(*train)
        accuracy = float((estimator.predict(val[0]) == val[1]).mean()) if val is not None else 0.0
        search.append({name: value, "val_accuracy": round(accuracy, 6)})
        if accuracy > best_accuracy:
            best, best_accuracy = FittedHead(kind, estimator, {name: value}), accuracy
    assert best is not None
    best.search = search
    return best


def head_module(fitted: FittedHead, train_x: np.ndarray, train_y: np.ndarray, task: ClassificationTask) -> nn.Module:
    """The fitted classifier as a layer whose outputs `task` turns into the same probabilities."""
    if fitted.kind == "knn":
        vote = NeighborVote(
            bank_size=len(train_x), dim=train_x.shape[1], num_classes=task.num_classes, k=int(fitted.param["k"]),
            single_logit=task.single_logit,
        )  # fmt: skip
        vote.bank.copy_(F.normalize(torch.from_numpy(train_x).float(), dim=1))
        vote.labels.copy_(torch.from_numpy(train_y).long())
        return vote
    scaler, logistic = fitted.estimator[0], fitted.estimator[-1]
    # Fold the standardisation into the coefficients: w·(x - μ)/σ + b = (w/σ)·x + (b - w·μ/σ).
    weight = logistic.coef_ / scaler.scale_
    bias = logistic.intercept_ - weight @ scaler.mean_
    if weight.shape[0] == 1 and not task.single_logit:  # two classes on a softmax head: logits (0, z)
        weight, bias = np.concatenate([np.zeros_like(weight), weight]), np.concatenate([[0.0], bias])
    linear = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(weight))
        linear.bias.copy_(torch.from_numpy(bias))
    return linear


def _embed_split(
    net: nn.Module, task: ClassificationTask, samples: list, info: ModelInfo, *, layer: str, batch: int, device
) -> tuple[np.ndarray, np.ndarray]:
    dataset = task.dataset(samples, info=info, augment=None, cache=False)
    vectors, labels = [], []
    for images, targets in DataLoader(dataset, batch_size=batch):
        vectors.append(extract(net, images.to(device), layer=layer, use_input=True).cpu())
        labels.append(targets)
    return torch.cat(vectors).numpy(), torch.cat(labels).numpy()


def _check_classes_trained(cfg: RunConfig, task: ClassificationTask, train_y: np.ndarray) -> None:
    if cfg.model.head == "logistic":
        missing = sorted(set(range(task.num_classes)) - set(train_y.tolist()))
        if missing:
            raise UserError(
                f"{cfg.data.path}: class {task.classes[missing[0]]!r} has no training images, so logistic "
                "regression cannot learn it; add some, or use --head knn"
            )


def train_head(cfg: RunConfig, console: Console) -> Run:
    """Fit `cfg.model.head` ("knn" or "logistic") on frozen embeddings of `cfg.model.name` (with
    `cfg.model.weights`), choose k or C on val, measure on test, and save a run directory that predicts."""
    device_kind = accelerator(cfg.train)
    seed_everything(cfg.train.seed, workers=True, verbose=False)
    index, task = prepare_data(cfg)
    info = model_info(cfg, index, task)
    net = task.build_model(info, dropout=cfg.model.dropout)
    loaded = load_pretrained(cfg, task, net)
    if loaded is None:
        console.print(
            f"[yellow]warning[/]: {cfg.model.name} has fresh random weights (no --weights): the embeddings of an "
            "untrained network mean little; pass --weights DEFAULT, a weights file or an earlier run"
        )
    check_input_size(net, name=cfg.model.name, in_channels=info.channels, imgsz=info.imgsz)
    layer = classifier_name(net)
    if not isinstance(net.get_submodule(layer), nn.Linear):
        raise UserError(f"--head needs a model whose classifier is a Linear layer; {cfg.model.name}'s {layer} is not")
    device = torch.device(device_kind)
    net.to(device).eval()
    batch = cfg.data.batch or task.default_batch
    splits = {
        split: _embed_split(net, task, index.samples(split), info, layer=layer, batch=batch, device=device)
        for split in ("train", "val", "test")
        if index.samples(split)
    }
    train_x, train_y = splits["train"]
    _check_classes_trained(cfg, task, train_y)
    fitted = fit_head(cfg.model.head, splits["train"], splits.get("val"))
    head = head_module(fitted, train_x, train_y, task)
    replace_module(net, layer, head.to(device))
    info = info.model_copy(update={"head": {
        "kind": fitted.kind, "layer": layer, "dim": int(train_x.shape[1]), **fitted.param,
        **({"bank_size": len(train_x)} if fitted.kind == "knn" else {}), "search": fitted.search,
    }})  # fmt: skip
    run = new_run_dir(cfg.out, cfg.task)
    settings = default_settings(net, accelerator=device_kind, requested=cfg.train.precision)
    write_run_files(cfg, run, index, info, settings, loaded)
    weights = {k: v.cpu() for k, v in net.state_dict().items()}
    save_weights(run.last, weights)
    save_weights(run.best, weights)
    chosen = ", ".join(f"{k}={v}" for k, v in fitted.param.items())
    console.print(f"run directory: [bold]{run.path}[/]  ({fitted.kind} on {train_x.shape[1]}-d embeddings of "
                  f"{len(train_x)} train images; {chosen} chosen on val)")  # fmt: skip
    if loaded is not None:
        console.print(loaded.summary(), markup=False)
    split = next((s for s in ("test", "val") if s in splits), "")
    metrics: dict[str, Any] = {}
    if split:
        metrics = _measure(head, task, *splits[split], device=device)
        write_json(run.evaluation(split), {"split": split, "data": str(cfg.data.path), **metrics})
    return Run(run.path, metrics=metrics, best_epoch=0, epochs=0, split=split)


@torch.no_grad()
def _measure(head: nn.Module, task: ClassificationTask, x: np.ndarray, y: np.ndarray, *, device) -> dict[str, Any]:
    """The run's metrics, from the head on the split's embeddings (the network up to the head gave them)."""
    metrics = task.metrics()
    metrics.update(task.probabilities(head(torch.from_numpy(x).to(device))), torch.from_numpy(y))
    return metrics.compute()
