"""Nearest images and near-duplicate pairs by cosine similarity of embeddings.

Similarities are cosines of vectors centred on the index's mean. Pooled features come after a ReLU, so raw
vectors all point into one orthant and any two images look alike: on the digits, with a 2-epoch seed CNN, 20,581
pairs reached 0.98 raw, against 1,273 centred; the most similar pair of different digits fell from 0.989 to
0.957, while an exact copy still scores 1. They are matrix products of L2-normalised vectors in chunks of ~16 M
values (64 MiB), so memory stays flat; all pairs of 100,000 512-d embeddings take about 2.6 TFLOP, a minute or
two on a CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from imagerec.errors import UserError
from imagerec.outputs.embed import Embeddings, open_embedder, read_embeddings, with_labels
from imagerec.runs import open_run

CHUNK_VALUES = 1 << 24  # similarities held at once
MAX_PAIRS = 1_000_000  # more pairs than this above the threshold means the threshold is too low to be useful


@dataclass(frozen=True)
class Match:
    """An indexed image and its cosine similarity to the query (1: the same embedding)."""

    path: str
    similarity: float
    label: str | None = None


@dataclass(frozen=True)
class Neighbors:
    """The most similar indexed images to one query, most similar first; `error` if the query was unreadable."""

    query: str
    matches: tuple[Match, ...] = ()
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"query": self.query, "matches": [vars(m) for m in self.matches]}
        if self.error is not None:
            out["error"] = self.error
        return out


@dataclass(frozen=True)
class DuplicatePair:
    """Two indexed images whose embeddings are at least `threshold` similar (`a` comes first in the index)."""

    a: str
    b: str
    similarity: float

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "similarity": self.similarity}


def _unit(vectors: np.ndarray, centre: torch.Tensor) -> torch.Tensor:
    return F.normalize(torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)) - centre, dim=1)


def _centre(index: Embeddings) -> torch.Tensor:
    return torch.from_numpy(np.asarray(index.vectors, dtype=np.float64).mean(axis=0)).float()


def nearest(index: Embeddings, queries: np.ndarray, *, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Similarities and positions in `index` of the `k` nearest indexed vectors to each query (M×k each)."""
    centre = _centre(index)
    bank, q = _unit(index.vectors, centre), _unit(queries, centre)
    want = min(k, len(bank))
    best_sims, best_ids = torch.empty(len(q), 0), torch.empty(len(q), 0, dtype=torch.long)
    rows = max(1, CHUNK_VALUES // max(1, len(q)))
    for start in range(0, len(bank), rows):
        sims = q @ bank[start : start + rows].T
        ids = torch.arange(start, start + sims.shape[1]).expand(len(q), -1)
        sims, ids = torch.cat([best_sims, sims], dim=1), torch.cat([best_ids, ids], dim=1)
        best_sims, position = sims.topk(min(want, sims.shape[1]), dim=1)
        best_ids = ids.gather(1, position)
    return best_sims, best_ids


def duplicates(index: Embeddings, *, threshold: float = 0.98) -> list[DuplicatePair]:
    """Every pair of indexed images at least `threshold` similar, most similar first."""
    _check_threshold(threshold)
    bank = _unit(index.vectors, _centre(index))
    rows = max(1, CHUNK_VALUES // max(1, len(bank)))
    found: list[tuple[float, int, int]] = []
    for start in range(0, len(bank), rows):
        block = bank[start : start + rows] @ bank[start:].T  # this block's rows against every later image
        i, j = (block >= threshold).nonzero(as_tuple=True)
        later = j > i  # j counts from `start` too: j > i is the upper triangle, without the diagonal
        sims = block[i[later], j[later]].tolist()
        found += zip(sims, (i[later] + start).tolist(), (j[later] + start).tolist(), strict=True)
        if len(found) > MAX_PAIRS:
            raise UserError(
                f"more than {MAX_PAIRS:,} pairs are at least {threshold} similar; raise --threshold (e.g. 0.98)"
            )
    found.sort(key=lambda t: (-t[0], t[1], t[2]))
    return [DuplicatePair(index.paths[a], index.paths[b], round(s, 6)) for s, a, b in found]


def _check_threshold(threshold: float | None) -> None:
    if threshold is not None and not -1 <= threshold <= 1:
        raise UserError(f"--threshold {threshold}: a cosine similarity lies in [-1, 1] (e.g. 0.98 for duplicates)")


def check_made_by(index: Embeddings, run_or_model: str | Path, *, where: str | Path) -> None:
    """Queries must be embedded by what embedded the index: the same run, or the same model name."""
    path = Path(run_or_model).expanduser()
    given = str(path.resolve()) if path.is_dir() else str(run_or_model)
    made = index.meta["run"] or index.meta["model"]
    if given != made:
        raise UserError(
            f"{where}: embedded with {made}, but the queries would be embedded with {given}; pass {made}, or "
            f"re-embed the images with imagerec embed {given} … --out {where}"
        )


def neighbors(
    run_or_model: str | Path | None,
    queries: Sequence[str | Path],
    *,
    index: str | Path | Embeddings,
    k: int = 5,
    threshold: float | None = None,
    batch: int = 64,
    device: str = "auto",
    progress: Callable[[int], None] | None = None,
) -> list[Neighbors]:
    """The `k` indexed images most similar to each query image (at least `threshold`, if given), embedded with
    the run or model that made `index` (its layer, weights and input size; None: the one the index records); a
    query never matches itself."""
    if k < 1:
        raise UserError(f"--k {k}: must be at least 1")
    _check_threshold(threshold)
    where = index if not isinstance(index, Embeddings) else "the index"
    found = index if isinstance(index, Embeddings) else read_embeddings(index)
    if run_or_model is None:
        run_or_model = found.meta["run"] or found.meta["model"]
        if found.meta["run"] and not Path(run_or_model).is_dir():
            raise UserError(
                f"{where}: made by the run {run_or_model}, which is no longer there; re-embed the images with "
                f"another run (imagerec embed RUN … --out {where})"
            )
    check_made_by(found, run_or_model, where=where)
    meta = found.meta
    imgsz = meta["imgsz"]
    if meta["run"] is not None and open_run(run_or_model).read_model_info().imgsz == imgsz:
        imgsz = None  # the run's own size; only a detector's index can have been made at another one
    embedder = open_embedder(run_or_model, layer=meta["layer"], weights=meta["weights"], imgsz=imgsz, device=device)
    if embedder.meta.get("weights_digest") != meta.get("weights_digest"):
        raise UserError(
            f"{where}: made with other weights of {meta['run']} (retrained since?); re-embed the images with "
            f"imagerec embed {meta['run']} … --out {where}"
        )
    files = [file for file, _ in with_labels(queries)]
    rows = []
    for name, vector, error in embedder.embed_iter(files, batch=batch):
        rows.append((name, vector, error))
        if progress is not None:
            progress(1)
    good = [(name, vector) for name, vector, error in rows if error is None]
    if good and good[0][1].shape[0] != found.dim:
        raise UserError(f"{where}: holds {found.dim}-d embeddings but the queries give {good[0][1].shape[0]}-d ones")
    matches = iter(_matches(found, good, k=k, threshold=threshold) if good else [])
    return [Neighbors(name, error=error) if error else Neighbors(name, next(matches)) for name, _, error in rows]


def _matches(
    index: Embeddings, queries: list[tuple[str, np.ndarray]], *, k: int, threshold: float | None
) -> list[tuple[Match, ...]]:
    sims, ids = nearest(index, np.stack([vector for _, vector in queries]), k=k + 1)  # +1: the query itself
    labels = index.labels or [None] * len(index)
    out = []
    for (name, _), row_sims, row_ids in zip(queries, sims.tolist(), ids.tolist(), strict=True):
        me = Path(name).resolve()
        row = [
            Match(index.paths[j], round(s, 6), labels[j])
            for s, j in zip(row_sims, row_ids, strict=True)
            if (threshold is None or s >= threshold) and Path(index.paths[j]).resolve() != me
        ]
        out.append(tuple(row[:k]))
    return out
