"""Classification metrics on torchmetrics; the key names are the JSON contract of `imagerec evaluate`.

Binary (two-class, single-label) data has a positive class, the one sensitivity is about. Its scores at a decision
threshold (sensitivity, specificity, PPV, NPV, each with a 95% Wilson interval) are reported beside the usual
argmax metrics, and `decide` chooses that threshold on validation data by a rule (`youden`, `f1`,
`sensitivity=X`, `specificity=X`).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch
import torchmetrics.classification as tmc

from imagerec.records import Decision

# Main metric and whether higher is better, used for best checkpoints and early stopping.
MONITOR = {"single": ("accuracy", "max"), "multilabel": ("map", "max")}
DEFAULT_THRESHOLD = 0.5  # the threshold before one is chosen, and when a rule cannot be met


class ClassificationMetrics:
    """Accumulates class probabilities (N×K) and targets (N class indices, or N×K multi-hot).

    Two-class single-label data is binary: `positive` is the index of its positive class (default: the second,
    the sigmoid head's), and the binary scores are taken at `decision`'s threshold (0.5 until one is chosen).
    """

    def __init__(
        self,
        classes: list[str],
        *,
        multilabel: bool = False,
        threshold: float = 0.5,
        positive: int | None = None,
        decision: Decision | None = None,
    ) -> None:
        self.classes = classes
        self.multilabel = multilabel
        self.threshold = threshold
        self.binary = not multilabel and len(classes) == 2
        self.positive = (1 if positive is None else positive) if self.binary else None
        self.decision = decision
        self._probs: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []

    def reset(self) -> None:
        self._probs.clear()
        self._targets.clear()

    def update(self, probs: torch.Tensor, targets: torch.Tensor) -> None:
        self._probs.append(probs.detach().float().cpu())
        self._targets.append(targets.detach().cpu())

    def decide(self, rule: str, *, split: str = "val") -> Decision | None:
        """The threshold on the positive class's probability that `rule` picks on the accumulated outputs of
        `split`: `youden` (`auto`) maximises sensitivity + specificity − 1, `f1` the positive class's F1,
        `sensitivity=X` is the highest threshold whose sensitivity is at least X and `specificity=X` the lowest
        whose specificity is at least X. A rule that cannot be met falls back to 0.5 and says why in `note`.
        None for multi-class and multi-label data, which have no threshold to choose."""
        if self.positive is None:
            return None
        rule = "youden" if rule == "auto" else rule
        name = self.classes[self.positive]
        if not self._probs:
            return Decision(
                positive=name, threshold=DEFAULT_THRESHOLD, rule=rule, split=split,
                note=f"{split} has no images to choose on; the default {DEFAULT_THRESHOLD} is used",
            )  # fmt: skip
        scores, truth = self._binary()
        return choose_threshold(scores.numpy(), truth.numpy(), rule, positive=name, split=split)

    def compute(self) -> dict[str, Any]:
        if not self._probs:
            return {}
        probs, targets = torch.cat(self._probs), torch.cat(self._targets)
        if self.multilabel:
            return _multilabel(probs, targets.int(), self.classes, self.threshold)
        result = _single_label(probs, targets.long(), self.classes, self.positive)
        if self.positive is not None:
            threshold = DEFAULT_THRESHOLD if self.decision is None else self.decision.threshold
            result |= {"positive": self.classes[self.positive], **at_threshold(*self._binary(), threshold)}
        return result

    def _binary(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The positive class's probability and whether each image is of that class."""
        probs, targets = torch.cat(self._probs), torch.cat(self._targets).long()
        return probs[:, self.positive], targets == self.positive


def choose_threshold(scores: np.ndarray, truth: np.ndarray, rule: str, *, positive: str, split: str) -> Decision:
    """The Decision `rule` makes on `scores` (the positive class's probabilities) against `truth` (booleans)."""
    from sklearn.metrics import roc_curve

    decision = {"positive": positive, "rule": rule, "split": split}
    positives, negatives = int(truth.sum()), int((~truth).sum())
    if not positives or not negatives:
        side = f"{positive} image" if not positives else f"image other than {positive}"
        note = f"{split} has no {side}, so rule {rule} cannot be applied; the default {DEFAULT_THRESHOLD} is used"
        return Decision(threshold=DEFAULT_THRESHOLD, note=note, **decision)
    fpr, tpr, thresholds = roc_curve(truth, scores, drop_intermediate=False)
    # Point 0 of sklearn's curve is "nobody positive" at an infinite threshold: never a usable decision.
    fpr, tpr, thresholds = fpr[1:], tpr[1:], thresholds[1:]
    index, value = _rule_point(rule, fpr, tpr, positives, negatives)
    if index is None:
        note = f"no threshold reaches {rule} on {split} (at best {value:.3f}); the default {DEFAULT_THRESHOLD} is used"
        return Decision(threshold=DEFAULT_THRESHOLD, note=note, **decision)
    return Decision(threshold=float(thresholds[index]), score=round(float(value), 6), **decision)


def _rule_point(
    rule: str, fpr: np.ndarray, tpr: np.ndarray, positives: int, negatives: int
) -> tuple[int | None, float]:
    """The index of the ROC point (thresholds decreasing) `rule` picks and the rule's value there; (None, the
    best value reached) when no point meets it."""
    if rule == "youden":
        j = tpr - fpr
        index = int(np.argmax(j))  # the first maximum: the highest threshold among equally good ones
        return index, float(j[index])
    if rule == "f1":
        tp, fp = tpr * positives, fpr * negatives
        f1 = 2 * tp / (tp + fp + positives)  # 2·TP / (2·TP + FP + FN), with TP + FN = positives
        index = int(np.argmax(f1))
        return index, float(f1[index])
    match = re.fullmatch(r"(sensitivity|specificity)=([\d.]+)", rule)
    if match is None:
        raise ValueError(f"unknown threshold rule {rule!r}")
    target = float(match[2])
    if match[1] == "sensitivity":
        met = np.flatnonzero(tpr >= target - 1e-12)
        return (int(met[0]), float(tpr[met[0]])) if met.size else (None, float(tpr.max()))
    specificity = 1 - fpr
    met = np.flatnonzero(specificity >= target - 1e-12)
    return (int(met[-1]), float(specificity[met[-1]])) if met.size else (None, float(specificity.max()))


def at_threshold(scores: torch.Tensor, truth: torch.Tensor, threshold: float) -> dict[str, Any]:
    """Sensitivity, specificity, PPV, NPV and accuracy when an image is called positive at `scores` ≥ `threshold`,
    each rate with its 95% Wilson interval (None where no image falls in its denominator)."""
    called = scores >= threshold
    tp, fp = int((called & truth).sum()), int((called & ~truth).sum())
    fn, tn = int((~called & truth).sum()), int((~called & ~truth).sum())
    result: dict[str, Any] = {"threshold": threshold}
    for key, hits, total in (
        ("sensitivity", tp, tp + fn),
        ("specificity", tn, tn + fp),
        ("ppv", tp, tp + fp),
        ("npv", tn, tn + fn),
        ("accuracy_at_threshold", tp + tn, tp + tn + fp + fn),
    ):
        result[key] = round(hits / total, 6) if total else None
        result[f"{key}_ci"] = wilson_interval(hits, total)
    result["counts_at_threshold"] = {"tp": tp, "fp": fp, "fn": fn, "tn": tn}
    return result


def wilson_interval(hits: int, total: int, confidence: float = 0.95) -> list[float] | None:
    """The Wilson score interval of the proportion hits/total (None when total is 0)."""
    if not total:
        return None
    from scipy.stats import binomtest

    interval = binomtest(hits, total).proportion_ci(confidence_level=confidence, method="wilson")
    return [round(float(interval.low), 6), round(float(interval.high), 6)]


def _f(value: torch.Tensor) -> float:
    return round(float(value), 6)


def _per_class(classes: list[str], precision, recall, f1, support) -> dict[str, dict[str, float]]:
    return {
        name: {"precision": _f(precision[i]), "recall": _f(recall[i]), "f1": _f(f1[i]), "support": int(support[i])}
        for i, name in enumerate(classes)
    }


def _single_label(
    probs: torch.Tensor, targets: torch.Tensor, classes: list[str], positive: int | None
) -> dict[str, Any]:
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
    if positive is not None and bool((present > 0).all()):
        result["auc"] = _f(tmc.BinaryAUROC(validate_args=False)(probs[:, positive], (targets == positive).long()))
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
