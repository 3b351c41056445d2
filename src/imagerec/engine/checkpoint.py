"""One finished epoch on disk: metrics, best/last weights and the resumable training state, all written atomically.

state.pt is the commit point. metrics.csv and last.safetensors are written before it, best.safetensors after it
(it is a copy of the epoch's weights, which state.pt holds), so a kill at any moment leaves files that
`Checkpointer.agree` can bring back in line with state.pt when the run resumes.
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imagerec.errors import UserError
from imagerec.runs import RunDir, atomic_write, write_csv
from imagerec.weights_io import save_weights


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_state(state: dict[str, Any], path: Path) -> None:
    # Through a Python file: torch's own file writer turns a full disk into a RuntimeError that names no errno.
    with path.open("wb") as handle:
        torch.save(state, handle)


class Checkpointer:
    """Writes one finished epoch: metrics.csv, last weights, state.pt (the commit point), then maybe best weights."""

    def __init__(self, run: RunDir, *, enabled: bool = True) -> None:
        self.run = run
        self.enabled = enabled  # only the global-zero process writes

    def save_epoch(
        self, *, history: list[dict[str, Any]], weights: dict[str, torch.Tensor], state: dict[str, Any], best: bool
    ) -> None:
        if not self.enabled:
            return
        write_csv(self.run.metrics, history)
        save_weights(self.run.last, weights)
        atomic_write(self.run.state, lambda tmp: _save_state(state, tmp))
        if best:
            save_weights(self.run.best, weights)

    def agree(self, fit: dict[str, Any] | None, weights: dict[str, torch.Tensor] | None) -> None:
        """Bring metrics.csv and the weights back in line with state.pt's `fit` record and the `weights` it holds
        (None for both when no epoch was committed: the files of an uncommitted epoch are removed)."""
        if not self.enabled:
            return
        if fit is None or weights is None:
            for path in (self.run.metrics, self.run.last, self.run.best):
                path.unlink(missing_ok=True)
            return
        write_csv(self.run.metrics, fit["history"])
        save_weights(self.run.last, weights)
        if fit["best_epoch"] == fit["epoch"]:  # killed before best.safetensors followed state.pt
            save_weights(self.run.best, weights)

    def load_state(self) -> dict[str, Any] | None:
        """The committed training state; None when no epoch was committed (no state.pt)."""
        try:
            return torch.load(self.run.state, map_location="cpu", weights_only=False)
        except FileNotFoundError:
            return None
        except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as error:
            raise UserError(f"{self.run.state}: damaged training state ({error}); start a new run") from None
