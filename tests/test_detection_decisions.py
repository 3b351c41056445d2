"""Decisions for detection: the confidence threshold chosen on validation by F1 (known answers on hand-made boxes,
then a real tiny training run and predict at that threshold), and per-call class-agnostic NMS and max detections on
every registered detector, kept apart between threads."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

import imagerec
from helpers import invoke
from imagerec.data.targets import Objects
from imagerec.errors import UserError
from imagerec.metrics.detection import DEFAULT_CONF, SUMMARY_KEYS, DetectionMetrics
from imagerec.models.detection import DETECTORS, DetectorSpec, create_detector, thresholds
from imagerec.outputs.report import detection as report
from imagerec.records import Decision, ModelInfo
from imagerec.tasks.base import PredictOptions
from imagerec.tasks.build import task_from_info
from imagerec.tasks.results import Detections

A, B = (0.0, 0.0, 10.0, 10.0), (20.0, 20.0, 40.0, 40.0)
ELSEWHERE = (50.0, 50.0, 60.0, 60.0)


def _image(boxes: list, labels: list, scores: list) -> dict[str, torch.Tensor]:
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "scores": torch.tensor(scores, dtype=torch.float32),
    }


def _known_metrics(decision: Decision | None = None) -> DetectionMetrics:
    """Two images, three objects. By score: 0.9 TP, 0.8 TP, 0.7 FP, 0.6 TP, 0.4 FP (right box, wrong class),
    0.3 FP; a 0.95 prediction on an ignored object counts neither way. F1 = 2·TP / (TP + FP + 3) is highest
    (6/7) keeping the scores ≥ 0.6, so the threshold lies between 0.4 and 0.6."""
    metrics = DetectionMetrics(["a", "b"], decision=decision)
    truth = [
        {"boxes": torch.tensor([A, B, ELSEWHERE]), "labels": torch.tensor([0, 0, 1]),
         "ignore": torch.tensor([False, False, True])},
        {"boxes": torch.tensor([B]), "labels": torch.tensor([1])},
    ]  # fmt: skip
    outputs = [
        _image([A, ELSEWHERE, (0, 30, 5, 35), B, (70, 70, 80, 80)], [0, 1, 0, 0, 1], [0.9, 0.95, 0.7, 0.6, 0.3]),
        _image([B, B], [1, 0], [0.8, 0.4]),
    ]
    metrics.update(outputs, truth)
    return metrics


def test_f1_picks_the_known_threshold_and_other_rules_follow() -> None:
    metrics = _known_metrics()
    decision = metrics.decide("auto")
    assert (decision.rule, decision.split, decision.note, decision.positive) == ("f1", "val", None, None)
    assert 0.4 < decision.threshold < 0.6
    assert decision.threshold == 0.5  # a short decimal between the two scores
    assert decision.score == pytest.approx(6 / 7, abs=1e-6)
    assert metrics.decide("f1") == decision
    at = metrics.at_threshold(decision.threshold)
    assert at == {"conf_threshold": 0.5, "precision": 0.75, "recall": 1.0, "f1": round(6 / 7, 6), "tp": 3, "fp": 1,
                  "fn": 0}  # fmt: skip
    # Recall ≥ 0.6 is first reached keeping the scores ≥ 0.8 (2 of 3 objects): the highest such threshold.
    sensitive = metrics.decide("sensitivity=0.6")
    assert (sensitive.rule, sensitive.score, sensitive.note) == ("sensitivity=0.6", round(2 / 3, 6), None)
    assert 0.7 < sensitive.threshold < 0.8
    assert metrics.decide("sensitivity=1.0").threshold == 0.5
    # Youden's J and specificity need true negatives: the F1 choice, saying so.
    for rule in ("youden", "specificity=0.9"):
        other = metrics.decide(rule)
        assert (other.threshold, other.rule, other.score) == (0.5, "f1", decision.score)
        assert rule in other.note
        assert "does not apply to detection" in other.note


def test_rules_that_cannot_be_met_fall_back_to_the_default_and_say_why() -> None:
    unreachable = _known_metrics()
    unreachable.update([_image([], [], [])], [{"boxes": torch.tensor([A]), "labels": torch.tensor([0])}])
    missed = unreachable.decide("sensitivity=0.9")  # 3 of 4 objects at best
    assert missed.threshold == DEFAULT_CONF
    assert "no threshold reaches sensitivity=0.9" in missed.note
    empty = DetectionMetrics(["a"])
    empty.update([_image([A], [0], [0.9])], [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}])
    nothing = empty.decide("f1")
    assert (nothing.threshold, nothing.split) == (DEFAULT_CONF, "val")
    assert "no ground-truth objects" in nothing.note
    blind = DetectionMetrics(["a"])
    blind.update([_image([], [], [])], [{"boxes": torch.tensor([A]), "labels": torch.tensor([0])}])
    assert "no prediction matching an object" in blind.decide("auto").note
    assert blind.at_threshold(0.5) == {"conf_threshold": 0.5, "precision": None, "recall": 0.0, "f1": 0.0, "tp": 0,
                                       "fp": 0, "fn": 1}  # fmt: skip


def test_the_decision_adds_its_counts_to_compute_and_the_report_counts_the_same_way() -> None:
    """With a decision, compute() adds `at_threshold`'s keys at its confidence (the COCO keys unchanged), and the
    report's per-image `match` agrees with those counts."""
    plain, decided = _known_metrics(), _known_metrics(Decision(threshold=0.5, rule="f1", split="val"))
    scored = decided.compute()
    assert set(scored) == set(plain.compute()) | set(decided.at_threshold()) > set(SUMMARY_KEYS)
    assert {k: scored[k] for k in decided.at_threshold()} == decided.at_threshold()
    assert decided.at_threshold()["conf_threshold"] == 0.5
    assert plain.at_threshold()["conf_threshold"] == DEFAULT_CONF
    objects = Objects(boxes=(A, B, ELSEWHERE), labels=(0, 0, 1), ignore=(False, False, True))
    found = Detections("x.png", (A, ELSEWHERE, (0, 30, 5, 35), B), ("a", "b", "a", "a"), (0.9, 0.95, 0.7, 0.6))
    counts = report.match(objects, found, ["a", "b"], conf=0.65)
    assert (counts.tp.tolist(), counts.fp.tolist(), counts.fn.tolist()) == ([1, 0], [1, 0], [1, 0])


def test_predict_options_are_validated() -> None:
    assert PredictOptions().conf is None
    for bad in ({"max_det": 0}, {"max_det": 2.5}, {"conf": 1.5}, {"iou": 0.0}):
        with pytest.raises(UserError):
            PredictOptions(**bad)
    assert PredictOptions(max_det=1, agnostic=True).max_det == 1


# --- agnostic NMS and max detections ------------------------------------------------------------------------------


def _spec(num_classes: int = 2) -> DetectorSpec:
    return DetectorSpec(num_classes=num_classes, in_channels=1, imgsz=64, mean=[0.5], std=[0.25])


def test_agnostic_nms_removes_a_duplicate_of_another_class_that_per_class_nms_keeps() -> None:
    """Faster R-CNN's box head fed known proposals (zero regression: boxes are the proposals). Proposals 0 and 1
    overlap (IoU 0.82): 0 is class a (0.62) and 1 class b (0.73); per-class NMS keeps both, agnostic only the
    better, and max_det keeps the best box alone."""
    torch.manual_seed(0)
    heads = create_detector("fasterrcnn_mobilenet_v3_large_320_fpn", _spec()).eval().model.roi_heads
    proposals = [torch.tensor([[10.0, 10, 30, 30], [11, 11, 31, 31], [40, 40, 60, 60]])]
    logits = torch.tensor([[-5.0, 3, 2.5], [-5, 1, 2], [-5, 2, -5]])  # background, a, b (torchvision's labels)
    args = (logits, torch.zeros(3, 12), proposals, [(64, 64)])
    with thresholds(score=0.01):
        _, _, per_class = heads.postprocess_detections(*args)
    with thresholds(score=0.01, agnostic=True):
        boxes, _, agnostic = heads.postprocess_detections(*args)
    with thresholds(score=0.01, agnostic=True, max_det=1):
        _, scores, best = heads.postprocess_detections(*args)
    assert per_class[0].tolist() == [1, 2, 1]
    assert agnostic[0].tolist() == [1, 2]
    assert boxes[0].tolist() == [[40.0, 40, 60, 60], [11, 11, 31, 31]]
    assert best[0].tolist() == [1]
    assert scores[0].item() > 0.99
    assert (heads.nms_thresh, heads.detections_per_img) == (0.5, 100)  # the model was never changed


def _detector(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name.startswith("maskrcnn"):
        from imagerec.models.segmentation import create_instance_segmenter

        return create_instance_segmenter(name, _spec(3)).eval()
    return create_detector(name, _spec(3)).eval()


@pytest.mark.parametrize("name", [*DETECTORS.names(), "maskrcnn_resnet50_fpn"])
def test_agnostic_nms_and_max_det_on_every_detector(name: str) -> None:
    """Untrained, at score 0, every detector stacks boxes of different classes on one place; agnostic NMS leaves
    no two boxes overlapping above the model's NMS IoU, whatever their class, and max_det caps the count."""
    model = _detector(name)
    owner = model.thresholds_owner()
    before = (owner.score_thresh, owner.nms_thresh, owner.detections_per_img)
    image = [torch.rand(1, 64, 80, generator=torch.Generator().manual_seed(1))]
    with torch.no_grad(), thresholds(score=0.0):
        per_class = model(image)[0]
    with torch.no_grad(), thresholds(score=0.0, agnostic=True):
        agnostic = model(image)[0]
    with torch.no_grad(), thresholds(score=0.0, max_det=3):
        capped = model(image)[0]
    overlap = box_iou(agnostic["boxes"], agnostic["boxes"]).nan_to_num(0).fill_diagonal_(0)
    assert len(agnostic["boxes"]) > 0
    assert float(overlap.max()) <= owner.nms_thresh
    assert len(agnostic["boxes"]) <= len(per_class["boxes"])
    assert torch.equal(capped["scores"], per_class["scores"][:3])
    assert set(agnostic) == set(per_class)  # Mask R-CNN's masks are computed on the boxes kept
    assert (owner.score_thresh, owner.nms_thresh, owner.detections_per_img) == before


def test_threads_with_different_options_each_get_their_own() -> None:
    info = ModelInfo.model_validate({
        "format": 1, "task": "detect", "model": "fcos_lite", "classes": ["a", "b", "c"], "channels": 1, "imgsz": 64,
        "mean": [0.5], "std": [0.25], "instance": False, "backbone": None, "anchor_sizes": None, "resize": "",
    })  # fmt: skip
    task = task_from_info(info)
    torch.manual_seed(0)
    model = task.build_model(info).eval()
    images, names = [torch.rand(1, 64, 64) for _ in range(2)], ["x", "y"]
    options = [PredictOptions(conf=0.0, agnostic=True, max_det=4), PredictOptions(conf=0.0)]
    with torch.no_grad():
        alone = {o: [r.to_dict() for r in task.predict(model, images, names, o)] for o in options}
    assert len(alone[options[0]][0]["objects"]) == 4 < len(alone[options[1]][0]["objects"])
    mismatches = []

    def worker(chosen: PredictOptions) -> None:
        for _ in range(8):
            with torch.no_grad():
                if [r.to_dict() for r in task.predict(model, images, names, chosen)] != alone[chosen]:
                    mismatches.append(chosen)

    threads = [threading.Thread(target=worker, args=(o,)) for o in options]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not mismatches


# --- end to end: the threshold chosen after training, used by predict (tiny_detect_run: conftest.py) ---------------


def test_training_chooses_the_threshold_on_val_and_predict_keeps_the_boxes_above_it(
    tiny_detect_run: tuple[Path, Path],
) -> None:
    run, scenes = tiny_detect_run
    decision = json.loads((run / "model.json").read_text())["decision"]
    assert (decision["split"], decision["rule"]) == ("val", "f1")
    assert 0 <= decision["threshold"] <= 1
    predictor = imagerec.load(run, device="cpu")
    assert predictor.task.conf_threshold == decision["threshold"]
    sources = sorted((scenes / "images" / "test").glob("*.png"))
    chosen = predictor.predict(sources)
    everything = predictor.predict(sources, conf=0.0)
    for got, full in zip(chosen, everything, strict=True):
        keep = [i for i, score in enumerate(full.scores) if score >= decision["threshold"]]
        assert got.scores == tuple(full.scores[i] for i in keep)
        assert got.boxes == tuple(full.boxes[i] for i in keep)
    result = invoke("predict", run, *sources, "--format", "json", "--agnostic-nms", "--max-det", "2")
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert all(len(r["objects"]) <= 2 for r in printed)
    scores = [o["score"] for r in printed for o in r["objects"]]
    assert all(score >= decision["threshold"] - 1e-6 for score in scores)  # JSON rounds scores to 6 places


def test_the_report_counts_at_the_decision_and_draws_the_confidence_curve(tiny_detect_run: tuple[Path, Path]) -> None:
    from imagerec.outputs.report import build_context
    from imagerec.outputs.report.blocks import Figure, Table

    run, scenes = tiny_detect_run
    ctx = build_context(run, data=scenes, device="cpu")
    threshold = ctx.info.decision.threshold
    errors = next(s for s in report.sections(ctx) if s.id == "detection-errors")
    table = next(b for b in errors.blocks if isinstance(b, Table))
    assert f"at least {threshold:.3g} (the run's" in table.caption
    figures = [b for b in errors.blocks if isinstance(b, Figure)]
    assert [f.name for f in figures] in ([], ["detection_confidence.png"])
    assert np.isfinite(threshold)
