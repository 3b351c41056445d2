"""ClassificationMetrics against values worked out by hand, and against scikit-learn where it is the reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from imagerec.metrics.classification import ClassificationMetrics


def one_hot_probs(preds: list[int], k: int, confidence: float = 0.8) -> torch.Tensor:
    """Probabilities whose argmax is `preds` (rows sum to 1)."""
    probs = torch.full((len(preds), k), (1 - confidence) / (k - 1))
    probs[torch.arange(len(preds)), torch.tensor(preds)] = confidence
    return probs


def compute(probs, targets, classes, **kwargs) -> dict:
    metrics = ClassificationMetrics(classes, **kwargs)
    metrics.update(torch.as_tensor(probs, dtype=torch.float32), torch.as_tensor(targets))
    return metrics.compute()


# targets 0 0 0 1 1 2, predictions 0 0 1 1 2 2:
#   confusion (rows true, columns predicted): [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
#   precision per class 2/2, 1/2, 1/2     recall 2/3, 1/2, 1/1     f1 0.8, 0.5, 2/3     support 3, 2, 1
TARGETS = [0, 0, 0, 1, 1, 2]
PREDS = [0, 0, 1, 1, 2, 2]
CLASSES = ["a", "b", "c"]


def test_single_label_by_hand():
    result = compute(one_hot_probs(PREDS, 3), TARGETS, CLASSES)
    assert result["accuracy"] == pytest.approx(4 / 6, abs=1e-6)
    assert result["precision_macro"] == pytest.approx((1 + 0.5 + 0.5) / 3, abs=1e-6)
    assert result["recall_macro"] == pytest.approx((2 / 3 + 0.5 + 1) / 3, abs=1e-6)
    assert result["f1_macro"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3, abs=1e-6)
    assert result["f1_weighted"] == pytest.approx((3 * 0.8 + 2 * 0.5 + 1 * 2 / 3) / 6, abs=1e-6)
    assert result["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert result["count"] == 6
    per_class = result["per_class"]
    assert list(per_class) == CLASSES
    assert [per_class[c]["support"] for c in CLASSES] == [3, 2, 1]
    assert [per_class[c]["precision"] for c in CLASSES] == pytest.approx([1.0, 0.5, 0.5], abs=1e-6)
    assert [per_class[c]["recall"] for c in CLASSES] == pytest.approx([2 / 3, 0.5, 1.0], abs=1e-6)
    assert [per_class[c]["f1"] for c in CLASSES] == pytest.approx([0.8, 0.5, 2 / 3], abs=1e-6)
    assert "top5" not in result  # fewer than 5 classes: top-5 accuracy would be trivially 1


def test_batches_accumulate_and_reset():
    probs = one_hot_probs(PREDS, 3)
    metrics = ClassificationMetrics(CLASSES)
    metrics.update(probs[:4], torch.tensor(TARGETS[:4]))
    metrics.update(probs[4:], torch.tensor(TARGETS[4:]))
    assert metrics.compute() == compute(probs, TARGETS, CLASSES)
    metrics.reset()
    assert metrics.compute() == {}


def test_multiclass_auc_matches_sklearn():
    rng = np.random.default_rng(0)
    targets = np.array([0, 1, 2] * 10)
    logits = rng.normal(size=(30, 3)) + 1.5 * np.eye(3)[targets]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    result = compute(probs, targets, CLASSES)
    expected = roc_auc_score(targets, probs, multi_class="ovr", average="macro")
    assert result["auc"] == pytest.approx(expected, abs=1e-5)
    assert 0.5 < result["auc"] < 1.0  # informative but imperfect scores: a real check, not a saturated one


def test_binary_auc_matches_sklearn():
    rng = np.random.default_rng(1)
    targets = rng.integers(0, 2, size=40)
    positive = np.clip(0.5 + 0.3 * (targets - 0.5) + rng.normal(scale=0.25, size=40), 0.01, 0.99)
    probs = np.stack([1 - positive, positive], axis=1)
    result = compute(probs, targets, ["neg", "pos"])
    assert result["auc"] == pytest.approx(roc_auc_score(targets, positive), abs=1e-5)
    assert 0.5 < result["auc"] < 1.0
    assert result["accuracy"] == pytest.approx(np.mean((positive > 0.5) == targets), abs=1e-6)


def test_auc_left_out_when_a_class_is_absent():
    result = compute(one_hot_probs([0, 1, 0, 1], 3), [0, 1, 0, 0], CLASSES)
    assert "auc" not in result  # class c never occurs: ROC-AUC is undefined for it
    assert result["per_class"]["c"]["support"] == 0


def test_top5_only_with_five_or_more_classes():
    classes = list("abcdef")
    # image 0: true class 5 ranked last (outside the top 5); image 1: ranked second; image 2: ranked first
    probs = torch.tensor(
        [
            [0.30, 0.25, 0.20, 0.15, 0.08, 0.02],
            [0.50, 0.05, 0.05, 0.05, 0.05, 0.30],
            [0.01, 0.01, 0.01, 0.01, 0.01, 0.95],
        ]
    )
    result = compute(probs, [5, 5, 5], classes)
    assert result["top5"] == pytest.approx(2 / 3, abs=1e-6)
    assert result["accuracy"] == pytest.approx(1 / 3, abs=1e-6)
    four = compute(probs[:, :4] / probs[:, :4].sum(1, keepdim=True), [3, 3, 3], classes[:4])
    assert "top5" not in four
    five = compute(probs[:, :5] / probs[:, :5].sum(1, keepdim=True), [4, 4, 4], classes[:5])
    assert five["top5"] == pytest.approx(1.0)


def test_multilabel_by_hand_and_map_vs_sklearn():
    rng = np.random.default_rng(2)
    targets = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1], [1, 0, 0], [0, 1, 1]] * 3)
    probs = np.clip(0.25 + 0.5 * targets + rng.normal(scale=0.2, size=targets.shape), 0.01, 0.99)
    result = compute(probs, targets, CLASSES, multilabel=True)
    expected_map = average_precision_score(targets, probs, average="macro")
    assert result["map"] == pytest.approx(expected_map, abs=1e-5)
    predicted = probs > 0.5
    assert result["exact_match"] == pytest.approx(np.mean((predicted == targets).all(axis=1)), abs=1e-6)
    tp = (predicted & (targets == 1)).sum()
    micro_f1 = 2 * tp / (predicted.sum() + targets.sum())
    assert result["f1_micro"] == pytest.approx(micro_f1, abs=1e-6)
    assert result["threshold"] == 0.5
    assert [result["per_class"][c]["support"] for c in CLASSES] == targets.sum(0).tolist()
    assert "accuracy" not in result


def test_multilabel_perfect_scores():
    targets = torch.tensor([[1, 0], [0, 1], [1, 1]])
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.7, 0.6]])
    result = compute(probs, targets, ["x", "y"], multilabel=True)
    assert result["map"] == pytest.approx(1.0)
    assert result["exact_match"] == pytest.approx(1.0)
    assert result["f1_macro"] == pytest.approx(1.0)
