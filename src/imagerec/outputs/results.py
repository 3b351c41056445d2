"""Typed prediction results with `.to_dict()` for JSON, CSV and HTTP."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Classification:
    """Top-k labels of one image, most probable first; `error` is set (and labels empty) when it was unreadable."""

    source: str
    labels: tuple[str, ...]
    probs: tuple[float, ...]
    error: str | None = None

    @property
    def label(self) -> str | None:
        return self.labels[0] if self.labels else None

    @property
    def prob(self) -> float | None:
        return self.probs[0] if self.probs else None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["labels"], data["probs"] = list(self.labels), [round(p, 6) for p in self.probs]
        return data
