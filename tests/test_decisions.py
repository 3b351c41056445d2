"""Decisions for binary classification: the positive class, the threshold chosen on validation by a rule, the
scores at that threshold with Wilson intervals, predict answering at it, and the report saying so."""

from __future__ import annotations

import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from sklearn.metrics import roc_auc_score

import imagerec
from imagerec.config import build_config
from imagerec.data.index import DataIndex
from imagerec.data.targets import Sample
from imagerec.errors import UserError
from imagerec.metrics.classification import ClassificationMetrics, wilson_interval
from imagerec.records import Decision
from imagerec.tasks.build import build_task
from imagerec.tasks.classification import ClassificationTask

CLASSES = ["malignant", "benign"]  # the positive class first, so nothing works by assuming it is the second
# The positive class's probability. Walking the thresholds down (TP, FP of 3 positives and 10 negatives):
#   0.9 (1, 0)  0.8 (2, 0)  0.7 (2, 1)  0.5 (2, 2)  0.4 (2, 3)  0.35 (3, 3)  0.3 (3, 4) ...
# Youden's J = TPR − FPR is 2/3 at 0.8 and 1 − 3/10 = 0.7 at 0.35 (the maximum); F1 = 2TP / (2TP + FP + FN) is
# 4/5 at 0.8 (the maximum) and 6/9 at 0.35.
POSITIVES = [0.9, 0.8, 0.35]
NEGATIVES = [0.7, 0.5, 0.4, 0.3, 0.2, 0.15, 0.1, 0.08, 0.05, 0.02]


def metrics_of(scores: list[float], truth: list[bool], **kwargs) -> ClassificationMetrics:
    """Binary metrics with malignant (index 0) positive, fed `scores` as P(malignant)."""
    p = torch.tensor(scores)
    metrics = ClassificationMetrics(CLASSES, positive=0, **kwargs)
    metrics.update(torch.stack([p, 1 - p], dim=1), torch.tensor([0 if t else 1 for t in truth]))
    return metrics


def example(**kwargs) -> ClassificationMetrics:
    return metrics_of(POSITIVES + NEGATIVES, [True] * 3 + [False] * 10, **kwargs)


@pytest.mark.parametrize(
    ("rule", "threshold", "score"),
    [
        ("auto", 0.35, 0.7),  # auto means Youden's J for binary classification
        ("youden", 0.35, 0.7),
        ("f1", 0.8, 0.8),
        ("sensitivity=0.6", 0.8, 2 / 3),  # the highest threshold with sensitivity ≥ 0.6
        ("sensitivity=0.9", 0.35, 1.0),
        ("specificity=0.8", 0.5, 0.8),  # the lowest threshold with specificity ≥ 0.8: 2 false positives of 10
        ("specificity=1.0", 0.8, 1.0),
    ],
)
def test_rules_pick_the_threshold_worked_out_by_hand(rule, threshold, score):
    decision = example().decide(rule)
    assert decision.positive == "malignant"
    assert decision.threshold == pytest.approx(threshold, abs=1e-6)
    assert decision.score == pytest.approx(score, abs=1e-6)
    assert decision.rule == ("youden" if rule == "auto" else rule)
    assert decision.split == "val"
    assert decision.note is None


def test_youden_matches_a_brute_force_search():
    rng = np.random.default_rng(3)
    truth = rng.random(200) < 0.2
    scores = np.clip(0.3 + 0.25 * truth + rng.normal(scale=0.15, size=200), 0.001, 0.999).astype(np.float32)
    decision = metrics_of(scores.tolist(), truth.tolist()).decide("youden")

    def youden(t: float) -> float:
        called = scores >= t
        return (called & truth).sum() / truth.sum() - (called & ~truth).sum() / (~truth).sum()

    best = max(youden(t) for t in np.unique(scores))
    assert decision.score == pytest.approx(best, abs=1e-6)
    assert youden(decision.threshold) == pytest.approx(best, abs=1e-9)
    assert 0.3 < decision.score < 1  # informative but imperfect: a real search, not a saturated one


def test_a_rule_that_cannot_be_met_falls_back_to_one_half_and_says_why():
    no_positives = metrics_of([0.2, 0.7, 0.4], [False, False, False]).decide("youden")
    assert (no_positives.threshold, no_positives.score) == (0.5, None)
    assert "no malignant image" in no_positives.note
    # The highest-scoring image is a negative: no threshold that calls anything positive reaches specificity 1.
    unreachable = metrics_of([0.9, 0.8, 0.2], [False, True, False]).decide("specificity=1.0")
    assert unreachable.threshold == 0.5
    assert "no threshold reaches specificity=1.0" in unreachable.note
    assert unreachable.describe().startswith("threshold 0.5 for malignant: no threshold reaches specificity=1.0")
    empty = ClassificationMetrics(CLASSES).decide("f1")
    assert empty.threshold == 0.5
    assert "no images" in empty.note


def test_nothing_to_decide_for_multiclass_or_multilabel():
    multiclass = ClassificationMetrics(["a", "b", "c"])
    multiclass.update(torch.eye(3), torch.tensor([0, 1, 2]))
    assert multiclass.decide("youden") is None
    multilabel = ClassificationMetrics(["a", "b"], multilabel=True)
    multilabel.update(torch.tensor([[0.9, 0.2], [0.1, 0.8]]), torch.tensor([[1, 0], [0, 1]]))
    assert multilabel.decide("auto") is None
    assert "sensitivity" not in multiclass.compute()
    assert "positive" not in multilabel.compute()


def test_wilson_interval_against_known_values():
    # Wilson (1927) / Newcombe (1998): 7 of 10 → 0.3968–0.8922; 0 of 10 → 0–0.2775; 81 of 263 → 0.2553–0.3662.
    assert wilson_interval(7, 10) == pytest.approx([0.3968, 0.8922], abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx([0.0, 0.2775], abs=1e-4)
    assert wilson_interval(81, 263) == pytest.approx([0.2553, 0.3662], abs=1e-4)
    z, k, n = 1.959964, 13, 40  # the closed form
    p, z2 = k / n, z * z
    centre, half = (p + z2 / (2 * n)) / (1 + z2 / n), z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    assert wilson_interval(k, n) == pytest.approx([centre - half, centre + half], abs=1e-5)
    assert wilson_interval(0, 0) is None


def test_scores_at_the_decision_threshold():
    decision = Decision(positive="malignant", threshold=0.35, rule="youden", split="val")
    result = example(decision=decision).compute()
    # At 0.35: TP 3, FN 0, FP 3 (0.7, 0.5, 0.4), TN 7.
    assert result["positive"] == "malignant"
    assert result["threshold"] == 0.35
    assert result["counts_at_threshold"] == {"tp": 3, "fp": 3, "fn": 0, "tn": 7}
    assert result["sensitivity"] == 1.0
    assert result["specificity"] == 0.7
    assert result["ppv"] == 0.5
    assert result["npv"] == 1.0
    assert result["accuracy_at_threshold"] == pytest.approx(10 / 13, abs=1e-6)
    assert result["specificity_ci"] == pytest.approx([0.3968, 0.8922], abs=1e-4)
    assert result["sensitivity_ci"] == wilson_interval(3, 3)
    # The argmax metrics are unchanged: 0.9, 0.8 right, 0.35 wrong; 0.7 wrong, the other nine negatives right.
    assert result["accuracy"] == pytest.approx(10 / 13, abs=1e-6)
    assert result["confusion_matrix"] == [[2, 1], [2, 8]]
    truth = np.array([1] * 3 + [0] * 10)
    assert result["auc"] == pytest.approx(roc_auc_score(truth, POSITIVES + NEGATIVES), abs=1e-6)


def test_before_a_decision_the_binary_scores_are_at_one_half():
    result = example().compute()
    assert result["threshold"] == 0.5
    assert result["counts_at_threshold"] == {"tp": 2, "fp": 2, "fn": 1, "tn": 8}  # 0.5 itself is called positive
    assert result["sensitivity"] == pytest.approx(2 / 3, abs=1e-6)
    assert result["ppv"] == 0.5
    assert result["ppv_ci"] == wilson_interval(2, 4)
    # No image called positive: PPV is undefined and left empty, not faked.
    nothing_called = metrics_of([0.1, 0.2], [True, False]).compute()
    assert nothing_called["ppv"] is None
    assert nothing_called["ppv_ci"] is None
    assert nothing_called["npv"] == 0.5


def test_predict_calls_the_positive_class_at_the_threshold():
    probs = torch.tensor([[0.4, 0.6], [0.2, 0.8], [0.9, 0.1]])  # P(malignant), P(benign)
    plain = ClassificationTask(CLASSES, positive=0)
    assert [r.label for r in plain.top_labels(probs, "abc", topk=1)] == ["benign", "benign", "malignant"]
    task = ClassificationTask(CLASSES).with_decision(
        Decision(positive="malignant", threshold=0.3, rule="sensitivity=0.95", split="val")
    )
    assert task.positive == 0  # learnt from the decision, as when rebuilt from model.json
    results = task.top_labels(probs, "abc", topk=2)
    assert [r.labels for r in results] == [("malignant", "benign"), ("benign", "malignant"), ("malignant", "benign")]
    assert [r.probs for r in results] == [pytest.approx(p) for p in ([0.4, 0.6], [0.8, 0.2], [0.9, 0.1])]
    assert [r.label for r in task.top_labels(probs, "abc", topk=1)] == ["malignant", "benign", "malignant"]
    assert task.metrics().decision is task.decision
    assert task.metrics().positive == 0


def _index(counts: dict[str, int], *, multilabel: bool = False) -> DataIndex:
    classes = list(counts)
    samples = [Sample(Path(f"{c}_{i}.png"), k) for k, c in enumerate(classes) for i in range(counts[c])]
    return DataIndex(Path("data"), classes, {"train": samples, "val": samples[:2]}, multilabel=multilabel)


def _config(**model):
    return build_config({"data": {"path": "data"}, "model": model})


def test_the_positive_class_defaults_to_the_minority_and_is_stated():
    index = _index({"benign": 30, "malignant": 8})
    task = build_task(_config(), index)
    assert task.positive == 1
    assert "positive class malignant: the minority class in train (8 of 38 images" in index.notes[-1]
    assert build_task(_config(), _index({"rare": 3, "common": 9})).positive == 0
    assert build_task(_config(), _index({"a": 5, "b": 5})).positive == 1  # a tie: the second class
    assert build_task(_config(positive="benign"), _index({"benign": 30, "malignant": 8})).positive == 0
    assert build_task(_config(), _index({"a": 3, "b": 4, "c": 5})).positive is None


def test_a_positive_class_that_is_not_a_class_is_a_user_error():
    with pytest.raises(UserError, match=r"--positive cancer: not a class of data; choose one of benign, malignant"):
        build_task(_config(positive="cancer"), _index({"benign": 3, "malignant": 2}))
    with pytest.raises(UserError, match=r"applies to two-class single-label data.*classes a, b, c"):
        build_task(_config(positive="a"), _index({"a": 3, "b": 4, "c": 5}))


def test_decision_describes_itself_in_one_line():
    decision = Decision(positive="malignant", threshold=0.3104, rule="youden", split="val", score=0.6213)
    assert decision.describe() == "threshold 0.31 for malignant, chosen on val by Youden's J (0.621)"
    sensitive = Decision(positive="malignant", threshold=0.12, rule="sensitivity=0.95", split="val", score=0.96)
    assert sensitive.describe() == "threshold 0.12 for malignant, chosen on val by sensitivity ≥ 0.95 (0.960)"


@pytest.fixture(scope="module")
def threes_and_eights(digits_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real 8×8 digits, imbalanced: every 3 (about 180) against 60 eights, the positive (minority) class."""
    root = tmp_path_factory.mktemp("binary") / "digits"
    for digit, name, limit in (("3", "three", None), ("8", "eight", 60)):
        (root / name).mkdir(parents=True)
        for path in sorted(Path(digits_dir, digit).glob("*.png"))[:limit]:
            shutil.copy(path, root / name / path.name)
    return root


def test_training_chooses_the_threshold_on_val_and_scores_and_predicts_at_it(threes_and_eights, tmp_path):
    run = imagerec.train(
        threes_and_eights, out=tmp_path / "run", epochs=2, model="seed_cnn", imgsz=8, batch=64, seed=0,
        precision="32", console=Console(file=io.StringIO()),
    )  # fmt: skip
    info = json.loads((run.path / "model.json").read_text())
    decision = Decision.model_validate(info["decision"])
    assert (decision.positive, decision.split, decision.rule) == ("eight", "val", "youden")
    assert 0 < decision.threshold < 1
    assert decision.note is None
    assert 0 < decision.score <= 1

    scored = json.loads((run.path / "evaluation" / f"{run.split}.json").read_text())
    assert scored["positive"] == "eight"
    assert scored["threshold"] == decision.threshold
    for key in ("sensitivity", "specificity", "ppv", "npv", "accuracy_at_threshold"):
        low, high = scored[f"{key}_ci"]
        assert low <= scored[key] <= high
    counts = scored["counts_at_threshold"]
    assert counts["tp"] + counts["fn"] == scored["per_class"]["eight"]["support"]
    assert scored["sensitivity"] == pytest.approx(counts["tp"] / (counts["tp"] + counts["fn"]), abs=1e-6)

    images = sorted(threes_and_eights.glob("*/*.png"))[::6]
    results = imagerec.load(run, device="cpu").predict(images, topk=2)
    for result in results:
        p_eight = dict(zip(result.labels, result.probs, strict=True))["eight"]
        assert result.label == ("eight" if p_eight >= decision.threshold else "three")

    from imagerec.outputs.report import build_context, report_sections

    ctx = build_context(run.path, device="cpu")
    sections = {s.id: s for s in report_sections(ctx)}
    table = sections["decision"].blocks[0]
    assert [row[0] for row in table.rows][:2] == ["sensitivity (recall of eight)", "specificity (recall of the rest)"]
    assert table.rows[0][1] == ctx.metrics["sensitivity"]
    assert "chosen on val by Youden's J" in table.caption
    assert [row[0] for row in sections["roc-pr"].blocks[1].rows] == ["eight"]
    assert "eight as the positive class" in sections["roc-pr"].blocks[0].caption
