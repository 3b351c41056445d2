"""imagerec: image classification, detection and segmentation, from your folders to a measured model.

Importing the package does nothing but define names: no logging set-up, no files, no network.
"""

from imagerec.api import evaluate, train
from imagerec.data.samples import write_sample
from imagerec.errors import UserError
from imagerec.models import list_models
from imagerec.outputs.predict import Predictor, load
from imagerec.outputs.results import Classification
from imagerec.training import Run

__version__ = "0.1.0"

__all__ = [
    "Classification",
    "Predictor",
    "Run",
    "UserError",
    "__version__",
    "evaluate",
    "list_models",
    "load",
    "train",
    "write_sample",
]
