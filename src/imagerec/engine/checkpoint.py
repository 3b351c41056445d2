"""One finished epoch on disk: metrics, best/last weights and the resumable training state, all written atomically."""

from __future__ import annotations

import pickle
import random
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


class Checkpointer:
    """Writes one finished epoch: metrics.csv, last (and maybe best) weights, then state.pt as commit point."""

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
        if best:
            save_weights(self.run.best, weights)
        atomic_write(self.run.state, lambda tmp: torch.save(state, tmp))

    def load_state(self) -> dict[str, Any]:
        try:
            return torch.load(self.run.state, map_location="cpu", weights_only=False)
        except FileNotFoundError:
            raise UserError(f"{self.run.path}: no state.pt; nothing to resume (no epoch finished)") from None
        except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as error:
            raise UserError(f"{self.run.state}: damaged training state ({error}); start a new run") from None
