"""Classification metrics on torchmetrics; the key names are the JSON contract of `imagerec evaluate`."""

from __future__ import annotations

from typing import Any

import torch
import torchmetrics.classification as tmc

from imagerec.records import Decision

# Main metric and whether higher is better, used for best checkpoints and early stopping.
MONITOR = {"single": ("accuracy", "max"), "multilabel": ("map", "max")}


class ClassificationMetrics:
    """Accumulates class probabilities (N×K) and targets (N class indices, or N×K multi-hot)."""

    def __init__(self, classes: list[str], *, multilabel: bool = False, threshold: float = 0.5) -> None:
        self.classes = classes
        self.multilabel = multilabel
        self.threshold = threshold
        self._probs: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []

    def reset(self) -> None:
        self._probs.clear()
        self._targets.clear()

    def update(self, probs: torch.Tensor, targets: torch.Tensor) -> None:
        self._probs.append(probs.detach().float().cpu())
        self._targets.append(targets.detach().cpu())

    def decide(self, rule: str) -> Decision | None:
        """The decision threshold `rule` picks on the accumulated outputs (None: nothing to choose)."""
        return None

    def compute(self) -> dict[str, Any]:
        if not self._probs:
            return {}
        probs, targets = torch.cat(self._probs), torch.cat(self._targets)
        if self.multilabel:
            return _multilabel(probs, targets.int(), self.classes, self.threshold)
        return _single_label(probs, targets.long(), self.classes)


def _f(value: torch.Tensor) -> float:
    return round(float(value), 6)


def _per_class(classes: list[str], precision, recall, f1, support) -> dict[str, dict[str, float]]:
    return {
        name: {"precision": _f(precision[i]), "recall": _f(recall[i]), "f1": _f(f1[i]), "support": int(support[i])}
        for i, name in enumerate(classes)
    }


def _single_label(probs: torch.Tensor, targets: torch.Tensor, classes: list[str]) -> dict[str, Any]:
    k = len(classes)
    common = {"num_classes": k, "validate_args": False}
    result: dict[str, Any] = {
        "accuracy": _f(tmc.MulticlassAccuracy(average="micro", **common)(probs, targets)),
        "precision_macro": _f(tmc.MulticlassPrecision(average="macro", **common)(probs, targets)),
        "recall_macro": _f(tmc.MulticlassRecall(average="macro", **common)(probs, targets)),
        "f1_macro": _f(tmc.MulticlassF1Score(average="macro", **common)(probs, targets)),
        "f1_weighted": _f(tmc.MulticlassF1Score(average="weighted", **common)(probs, targets)),
    }
    if k >= 5:
        result["top5"] = _f(tmc.MulticlassAccuracy(top_k=5, average="micro", **common)(probs, targets))
    present = torch.bincount(targets, minlength=k)
    if k == 2 and bool((present > 0).all()):
        result["auc"] = _f(tmc.BinaryAUROC(validate_args=False)(probs[:, 1], targets))
    elif bool((present > 0).all()):
        result["auc"] = _f(tmc.MulticlassAUROC(average="macro", **common)(probs, targets))
    # else: ROC-AUC is undefined when a class has no examples; the key is left out rather than faked.
    result["per_class"] = _per_class(
        classes,
        tmc.MulticlassPrecision(average=None, **common)(probs, targets),
        tmc.MulticlassRecall(average=None, **common)(probs, targets),
        tmc.MulticlassF1Score(average=None, **common)(probs, targets),
        present,
    )
    result["confusion_matrix"] = tmc.MulticlassConfusionMatrix(**common)(probs, targets).tolist()
    result["count"] = int(len(targets))
    return result


def _multilabel(probs: torch.Tensor, targets: torch.Tensor, classes: list[str], threshold: float) -> dict[str, Any]:
    common = {"num_labels": len(classes), "threshold": threshold, "validate_args": False}
    result: dict[str, Any] = {
        "map": _f(tmc.MultilabelAveragePrecision(num_labels=len(classes), average="macro")(probs, targets)),
        "f1_macro": _f(tmc.MultilabelF1Score(average="macro", **common)(probs, targets)),
        "f1_micro": _f(tmc.MultilabelF1Score(average="micro", **common)(probs, targets)),
        "exact_match": _f(tmc.MultilabelExactMatch(**common)(probs, targets)),
        "threshold": threshold,
    }
    result["per_class"] = _per_class(
        classes,
        tmc.MultilabelPrecision(average=None, **common)(probs, targets),
        tmc.MultilabelRecall(average=None, **common)(probs, targets),
        tmc.MultilabelF1Score(average=None, **common)(probs, targets),
        targets.sum(0),
    )
    result["count"] = int(len(targets))
    return result
