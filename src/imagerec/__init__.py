"""imagerec: image classification, detection and segmentation, from your folders to a measured model.

Importing the package does nothing but define names: no logging set-up, no files, no network. The public
names load their modules on first use (PEP 562), so `imagerec --help` does not pay for importing torch.
"""

from __future__ import annotations

import importlib
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

__version__ = version("imagerec")

_EXPORTS = {
    "train": "imagerec.api",
    "pretrain": "imagerec.api",
    "benchmark": "imagerec.outputs.benchmark",
    "BenchmarkReport": "imagerec.outputs.benchmark",
    "evaluate": "imagerec.api",
    "explain": "imagerec.outputs.explain",
    "export": "imagerec.outputs.export",
    "Explanation": "imagerec.outputs.explain",
    "load": "imagerec.outputs.predict",
    "Predictor": "imagerec.outputs.predict",
    "Classification": "imagerec.tasks.results",
    "Run": "imagerec.runs",
    "UserError": "imagerec.errors",
    "list_models": "imagerec.models",
    "write_sample": "imagerec.data.samples",
    "serve": "imagerec.outputs.serve",
}

__all__ = [
    "BenchmarkReport",
    "Classification",
    "Explanation",
    "Predictor",
    "Run",
    "UserError",
    "__version__",
    "benchmark",
    "evaluate",
    "explain",
    "export",
    "list_models",
    "load",
    "pretrain",
    "serve",
    "train",
    "write_sample",
]

if TYPE_CHECKING:
    from imagerec.api import evaluate, pretrain, train
    from imagerec.data.samples import write_sample
    from imagerec.errors import UserError
    from imagerec.models import list_models
    from imagerec.outputs.benchmark import BenchmarkReport, benchmark
    from imagerec.outputs.explain import Explanation, explain
    from imagerec.outputs.export import export
    from imagerec.outputs.predict import Predictor, load
    from imagerec.outputs.serve import serve
    from imagerec.runs import Run
    from imagerec.tasks.results import Classification


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'imagerec' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
