"""DetectionMetrics against pycocotools' COCOeval run directly, and against values worked out by hand."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from imagerec.metrics.detection import NO_GROUND_TRUTH, SUMMARY_KEYS, DetectionMetrics

CLASSES = ["cat", "dog", "bird", "fish", "frog"]  # "frog" never occurs in the ground truth
ABSENT = 4


def boxes(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)


def det(rows: list[list[float]], scores: list[float], labels: list[int] | None = None) -> dict:
    labels = labels if labels is not None else [0] * len(rows)
    return {"boxes": boxes(*rows), "scores": torch.tensor(scores), "labels": torch.tensor(labels)}


def gt(rows: list[list[float]], labels: list[int] | None = None, ignore: list[bool] | None = None) -> dict:
    target = {"boxes": boxes(*rows), "labels": torch.tensor(labels if labels is not None else [0] * len(rows))}
    if ignore is not None:
        target["ignore"] = torch.tensor(ignore)
    return target


def evaluate(outputs: list[dict], targets: list[dict], classes: list[str] = CLASSES) -> dict:
    metrics = DetectionMetrics(classes)
    metrics.update(outputs, targets)
    return metrics.compute()


# --- the random scene set, and pycocotools run on it without our code -------------------------------------


def random_box(rng: np.random.Generator, size: str) -> np.ndarray:
    side = {"small": (4, 30), "medium": (34, 94), "large": (100, 220)}[size]
    w, h = rng.uniform(*side, size=2)
    x, y = rng.uniform(0, 400, size=2)
    return np.array([x, y, x + w, y + h])


def jitter(rng: np.random.Generator, box: np.ndarray) -> np.ndarray:
    w, h = box[2] - box[0], box[3] - box[1]
    return box + rng.normal(0, 0.12, size=4) * np.array([w, h, w, h])


def image(rng: np.random.Generator, index: int) -> tuple[dict, dict]:
    """One image's raw arrays: gt boxes (some crowd, some with a mask-like area) and detections."""
    n_gt = 0 if index % 6 == 0 else int(rng.integers(1, 9))  # every sixth image has no ground truth
    gt_boxes = [random_box(rng, rng.choice(["small", "medium", "large"])) for _ in range(n_gt)]
    gt_labels = rng.integers(0, ABSENT, size=n_gt)
    ignore = rng.random(n_gt) < 0.12
    dt_boxes, dt_labels = [], []
    for box, label in zip(gt_boxes, gt_labels, strict=True):
        for _ in range(int(rng.integers(0, 3))):  # missed, found, or found twice (a duplicate is a FP)
            dt_boxes.append(jitter(rng, box))
            dt_labels.append(label if rng.random() < 0.85 else int(rng.integers(0, len(CLASSES))))
    for _ in range(int(rng.integers(0, 6))):  # background false positives, some of the absent class
        dt_boxes.append(random_box(rng, rng.choice(["small", "medium", "large"])))
        dt_labels.append(int(rng.integers(0, len(CLASSES))))
    if index == 7:  # more than maxDets=100 detections on one image: COCO keeps the top 100 per class
        extra = [random_box(rng, "small") for _ in range(110)]
        dt_boxes, dt_labels = dt_boxes + extra, dt_labels + [0] * 110
    truth = {
        "boxes": np.array(gt_boxes, dtype=np.float32).reshape(-1, 4),
        "labels": gt_labels.astype(np.int64),
        "ignore": ignore,
    }
    if index % 2:  # odd images state an area (as COCO does for masks); even ones fall back to the box area
        truth["area"] = (np.prod(truth["boxes"][:, 2:] - truth["boxes"][:, :2], axis=1) * 0.7).astype(np.float32)
    found = {
        "boxes": np.array(dt_boxes, dtype=np.float32).reshape(-1, 4),
        "scores": rng.random(len(dt_boxes)).astype(np.float32),
        "labels": np.array(dt_labels, dtype=np.int64),
    }
    return found, truth


@pytest.fixture(scope="module")
def scenes() -> list[tuple[dict, dict]]:
    rng = np.random.default_rng(20240603)
    return [image(rng, i) for i in range(30)]


def as_tensors(scenes: list[tuple[dict, dict]]) -> tuple[list[dict], list[dict]]:
    outputs = [{k: torch.from_numpy(v) for k, v in found.items()} for found, _ in scenes]
    targets = [{k: torch.from_numpy(np.asarray(v)) for k, v in truth.items()} for _, truth in scenes]
    return outputs, targets


def reference_coco(scenes: list[tuple[dict, dict]]) -> tuple[COCO, COCO]:
    """Ground truth and results as a COCO user would write them: 1-based ids, [x, y, w, h] boxes."""
    images, annotations, results = [], [], []
    for i, (found, truth) in enumerate(scenes):
        images.append({"id": i + 1, "width": 640, "height": 640})
        for j, (x1, y1, x2, y2) in enumerate(truth["boxes"].astype(np.float64).tolist()):
            area = float(truth["area"][j]) if "area" in truth else (x2 - x1) * (y2 - y1)
            annotations.append(
                {
                    "id": len(annotations) + 1,  # 1-based: COCOeval reads an id of 0 as "unmatched"
                    "image_id": i + 1,
                    "category_id": int(truth["labels"][j]) + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": area,
                    "iscrowd": int(truth["ignore"][j]),
                }
            )
        for (x1, y1, x2, y2), score, label in zip(
            found["boxes"].astype(np.float64).tolist(), found["scores"].tolist(), found["labels"].tolist(), strict=True
        ):
            results.append(
                {"image_id": i + 1, "category_id": label + 1, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score}
            )
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(CLASSES)]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {"images": images, "annotations": annotations, "categories": categories}
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
    return coco_gt, coco_dt


def reference_stats(coco_gt: COCO, coco_dt: COCO, cat_ids: list[int] | None = None) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval = COCOeval(coco_gt, coco_dt, iouType="bbox")
        if cat_ids is not None:
            coco_eval.params.catIds = cat_ids
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval.stats


def as_value(stat: float) -> float | None:
    return None if stat == -1 else float(stat)


def test_equals_pycocotools_cocoeval(scenes):
    """The issue's contract (1e-4): every summary number and per-class AP equal COCOeval's, here to 1e-6 (our
    JSON values are rounded to 6 decimals) and the unrounded summary exactly."""
    outputs, targets = as_tensors(scenes)
    metrics = DetectionMetrics(CLASSES)
    metrics.update(outputs, targets)
    ours = metrics.compute()
    coco_gt, coco_dt = reference_coco(scenes)
    stats = reference_stats(coco_gt, coco_dt)
    # The scene set really has the situations it is meant to have.
    assert len(coco_dt.dataset["annotations"]) > 300
    assert ours["count"] == 30
    assert ours["objects"] == sum(int((~t["ignore"]).sum()) for _, t in scenes) > 80
    assert all(ours[k] is not None for k in SUMMARY_KEYS)  # small, medium and large objects all occur
    assert ours["per_class"]["frog"] is None
    assert ours["per_class_ap50"]["frog"] is None
    assert metrics.coco_eval.stats.tolist() == stats.tolist()
    for key, stat in zip(SUMMARY_KEYS, stats, strict=True):
        assert ours[key] == pytest.approx(as_value(stat), abs=1e-6), key
    for k, name in enumerate(CLASSES):
        # Each class evaluated on its own by COCOeval: an independent route to the per-class AP.
        per_class = reference_stats(coco_gt, coco_dt, [k + 1])
        assert ours["per_class"][name] == pytest.approx(as_value(per_class[0]), abs=1e-6), name
        assert ours["per_class_ap50"][name] == pytest.approx(as_value(per_class[1]), abs=1e-6), name
    json.dumps(ours)  # plain Python numbers and None only


def test_updates_accumulate_and_reset(scenes):
    outputs, targets = as_tensors(scenes)
    metrics = DetectionMetrics(CLASSES)
    for start in (0, 7, 19):  # uneven batches
        stop = {0: 7, 7: 19, 19: 30}[start]
        metrics.update(outputs[start:stop], targets[start:stop])
    assert metrics.compute() == evaluate(outputs, targets)
    assert metrics.coco_eval is not None
    assert metrics.coco_eval.eval["precision"].shape == (10, 101, len(CLASSES), 4, 3)
    metrics.reset()
    result = metrics.compute()
    assert metrics.coco_eval is None
    assert result["count"] == 0
    assert result["objects"] == 0
    assert result["map"] is None
    assert result["note"] == NO_GROUND_TRUTH


# --- small cases worked out by hand ------------------------------------------------------------------------

BOX = [0.0, 0.0, 100.0, 100.0]  # area 10,000 ≥ 96²: a large object
ELSEWHERE = [200.0, 200.0, 300.0, 300.0]


def test_perfect_detector():
    truth = [gt([BOX, ELSEWHERE], labels=[0, 1]), gt([[10.0, 10.0, 30.0, 30.0]], labels=[2])]
    found = [det([BOX, ELSEWHERE], [0.9, 0.8], labels=[0, 1]), det([[10.0, 10.0, 30.0, 30.0]], [0.7], labels=[2])]
    result = evaluate(found, truth)
    for key in ("map", "map50", "map75", "map_small", "map_large", "mar1", "mar10", "mar100", "mar_large"):
        assert result[key] == 1.0, key
    assert result["map_medium"] is None
    assert result["mar_medium"] is None
    assert result["per_class"] == {"cat": 1.0, "dog": 1.0, "bird": 1.0, "fish": None, "frog": None}
    assert result["count"] == 2
    assert result["objects"] == 3


def test_iou_of_exactly_point_six():
    # IoU = 100·60 / 100·100 = 0.6: a match at thresholds .50, .55 and .60 (COCO matches IoU ≥ threshold), none
    # at .65 … .95; a single matched detection has precision 1 at every recall, so AP = 3/10.
    result = evaluate([det([[0.0, 0.0, 100.0, 60.0]], [0.9])], [gt([BOX])])
    assert result["map"] == pytest.approx(0.3, abs=1e-12)
    assert result["map50"] == 1.0
    assert result["map75"] == 0.0
    assert result["map_large"] == pytest.approx(0.3, abs=1e-12)
    assert result["mar100"] == pytest.approx(0.3, abs=1e-12)  # recalled at 3 of 10 thresholds
    # Undefined, not zero: there is no small or medium object.
    assert result["map_small"] is None
    assert result["map_medium"] is None
    assert result["mar_small"] is None
    assert result["mar_medium"] is None


def test_false_positive_ranked_first_halves_precision():
    # Ranked: FP (0.9), TP (0.8). Precision at recall 1 is 1/2, and COCO's interpolated precision is 1/2 at
    # every recall point, so AP = 0.5 at every IoU threshold. Only the FP survives maxDets=1: mar1 = 0.
    result = evaluate([det([ELSEWHERE, BOX], [0.9, 0.8])], [gt([BOX])])
    assert result["map"] == 0.5
    assert result["map50"] == 0.5
    assert result["mar1"] == 0.0
    assert result["mar10"] == 1.0
    # Ranked the other way, the TP comes first: precision 1 up to recall 1, AP = 1.
    assert evaluate([det([ELSEWHERE, BOX], [0.7, 0.8])], [gt([BOX])])["map"] == 1.0


def test_detections_on_an_image_without_ground_truth_are_false_positives():
    result = evaluate([det([BOX], [0.8]), det([BOX], [0.9])], [gt([BOX]), gt([])])
    assert result["map"] == 0.5
    assert result["count"] == 2
    assert result["objects"] == 1


def test_ignored_objects_are_neither_rewarded_nor_penalised():
    # The detection on the ignored box ranks first; were it a FP, AP would be 0.5 (the test above).
    truth = [gt([BOX, ELSEWHERE], ignore=[False, True])]
    result = evaluate([det([ELSEWHERE, BOX], [0.9, 0.8])], truth)
    assert result["map"] == 1.0
    assert result["objects"] == 1
    # Nor is an ignored box that nobody found a miss.
    assert evaluate([det([BOX], [0.8])], truth)["mar100"] == 1.0
    # COCO's crowd rule: a detection inside an ignored region is matched by intersection / detection area
    # (here 1) although its IoU with the region is 100² / 400² = 0.0625.
    region = [gt([BOX, [200.0, 0.0, 600.0, 400.0]], ignore=[False, True])]
    assert evaluate([det([[250.0, 50.0, 350.0, 150.0], BOX], [0.9, 0.8])], region)["map"] == 1.0


def test_no_detections_scores_zero():
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
    result = evaluate([empty, empty], [gt([BOX]), gt([ELSEWHERE], labels=[1])])
    assert result["map"] == 0.0
    assert result["map50"] == 0.0
    assert result["mar100"] == 0.0
    assert result["per_class"]["cat"] == 0.0
    assert result["per_class"]["fish"] is None


def test_no_ground_truth_leaves_everything_undefined():
    result = evaluate([det([BOX], [0.9]), det([], [])], [gt([]), gt([ELSEWHERE], ignore=[True])])
    assert all(result[k] is None for k in SUMMARY_KEYS)
    assert set(result["per_class"].values()) == {None}
    assert result["count"] == 2
    assert result["objects"] == 0
    assert result["note"] == NO_GROUND_TRUTH


def test_optional_fields_and_image_ids():
    metrics = DetectionMetrics(CLASSES)
    truth = gt([BOX])
    truth["area"] = torch.tensor([500.0])  # a small mask inside a large box: COCO ranks the object as small
    truth["image_id"] = "a.jpg"
    metrics.update([det([BOX], [0.9])], [truth])
    result = metrics.compute()
    assert result["map_small"] == 1.0
    assert result["map_large"] is None
    assert metrics.image_ids == ["a.jpg"]


def test_bad_input_is_a_programming_error():
    metrics = DetectionMetrics(CLASSES)
    with pytest.raises(ValueError, match="one of each per image"):
        metrics.update([det([BOX], [0.9])], [])
    with pytest.raises(ValueError, match="0-based"):
        metrics.update([det([BOX], [0.9], labels=[5])], [gt([BOX])])
    with pytest.raises(ValueError, match="iou_type"):
        DetectionMetrics(CLASSES, iou_type="keypoints")
