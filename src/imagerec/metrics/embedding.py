"""How good embeddings are without a trained head: k-NN accuracy on labelled images and the collapse check.

- `knn_accuracy`: each labelled image is classified by the votes of its k most similar others (k = 10, fewer for a
  class of fewer images) (cosine, each vote
  weighted (1 + cos) / 2 as `train --head knn` does), leaving itself out; only the images given (the validation
  split) are used, so no training label is read.
- `embedding_spread`: Lightly's `std_of_l2_normalized` (the mean per-dimension standard deviation of the
  L2-normalised embeddings) times √d. Embeddings spread evenly over the sphere give about 1; embeddings that all
  collapsed to one vector give 0, the failure self-supervised training must avoid.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from imagerec.records import Decision

KNN_K = 10
COLLAPSED = 0.1  # embedding_spread below this: the embeddings have (nearly) collapsed to one vector
UNLABELLED = -1  # the target of an image without a class


def spread(embeddings: torch.Tensor) -> float:
    """`std_of_l2_normalized` × √d: about 1 for evenly spread embeddings, 0 when collapsed."""
    from lightly.utils.debug import std_of_l2_normalized

    return float(std_of_l2_normalized(embeddings.float())) * math.sqrt(embeddings.shape[1])


def leave_one_out_knn(embeddings: np.ndarray, labels: np.ndarray, k: int = KNN_K) -> float:
    """The share of images whose k nearest others (cosine) vote for their own class; k is cut to one less than
    the smallest class's count (at least 1)."""
    from sklearn.neighbors import NearestNeighbors

    # A class with few images cannot outvote the others among k neighbours: k stays below its count.
    k = max(1, min(k, int(np.unique(labels, return_counts=True)[1].min()) - 1, len(labels) - 1))
    index = NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute").fit(embeddings)
    distances, neighbours = index.kneighbors()  # no query: each image's neighbours, itself left out
    classes = int(labels.max()) + 1
    votes = np.zeros((len(labels), classes))
    np.add.at(votes, (np.arange(len(labels))[:, None], labels[neighbours]), 1 - distances / 2)
    return float((votes.argmax(axis=1) == labels).mean())


def knn_measurable(labels: list[int]) -> bool:
    """Whether these class indices (no UNLABELLED) are enough for the k-NN accuracy: more than k images, of more
    than one class."""
    return len(labels) > KNN_K and len(set(labels)) > 1


class EmbeddingMetrics:
    """Accumulates embeddings (and their class index, or UNLABELLED) over a split."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._vectors: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        self._vectors.append(outputs.detach().float().flatten(1).cpu())
        self._labels.append(targets.detach().long().reshape(-1).cpu())

    def compute(self) -> dict[str, Any]:
        vectors, labels = torch.cat(self._vectors), torch.cat(self._labels)
        scores: dict[str, Any] = {"embedding_spread": round(spread(vectors), 6), "count": len(labels)}
        labelled = labels != UNLABELLED
        if knn_measurable(labels[labelled].tolist()):
            accuracy = leave_one_out_knn(vectors[labelled].numpy(), labels[labelled].numpy())
            scores["knn_accuracy"] = round(accuracy, 6)
        return scores

    def decide(self, rule: str) -> Decision | None:
        return None
