"""COCO detection metrics: pycocotools' COCOeval (the reference) run on results gathered in memory, for boxes
and for instance masks; and the counts at a confidence threshold (true and false positives, missed objects) from
which the run's threshold is chosen by F1 and the report's error tables are made.

The key names are the JSON contract of `imagerec evaluate`; docs/detection.md explains each one.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.ops import box_iou

from imagerec.records import Decision

# Main metric and whether higher is better, used for best checkpoints and early stopping.
MONITOR = ("map", "max")

# COCOeval.summarize() fills `stats` with these twelve numbers, in this order, for iouType "bbox" and "segm".
SUMMARY_KEYS = (
    "map",
    "map50",
    "map75",
    "map_small",
    "map_medium",
    "map_large",
    "mar1",
    "mar10",
    "mar100",
    "mar_small",
    "mar_medium",
    "mar_large",
)

NO_GROUND_TRUTH = "no ground-truth objects (other than ignored ones): every AP and AR is undefined"
DEFAULT_CONF = 0.25  # a detector's minimum box score until a run has chosen one on validation
MATCH_IOU = 0.5  # VOC's and COCO's AP50 rule: a prediction finds an object when box IoU reaches this
TRUE_POSITIVE, FALSE_POSITIVE, NEITHER = 1, 0, -1  # a prediction's outcome (NEITHER: it lies on an ignored object)


class DetectionMetrics:
    """COCO mAP and mAR for boxes (`iou_type="bbox"`) or instance masks ("segm"), equal to pycocotools' COCOeval
    with its default parameters.

    `update` takes one dict per image. Outputs: `boxes` (N×4 pixel corners x1, y1, x2, y2 in the original
    image), `scores` (N), `labels` (N, 0-based class index). Targets: `boxes`, `labels`, and optionally
    `ignore` (N bool: VOC `difficult`, COCO `iscrowd`), `area` (N: e.g. the mask area COCO states; the box
    area otherwise) and `image_id` (kept in `image_ids`, in update order).

    For "segm" both also carry `masks`: outputs N×1×H×W (or N×H×W) probabilities, as Mask R-CNN gives them, an
    object's pixels being those above 0.5; targets N×H×W (0/1 or bool). IoU is then mask IoU, as COCOeval computes
    it on run-length encodings (pycocotools'), and an object's area, which decides small/medium/large, is its mask's
    pixel count unless the target states `area`; a detection's area is its mask's, as COCO.loadRes sets it.

    `compute` returns `map` (AP averaged over IoU 0.50:0.05:0.95), `map50`, `map75`, `map_small/medium/large`,
    `mar1/10/100`, `mar_small/medium/large`, `per_class` and `per_class_ap50` (class name → AP), `count`
    (images) and `objects` (ground-truth objects not ignored); with a decision, also `at_threshold()`'s
    `conf_threshold`, `precision`, `recall`, `f1`, `tp`, `fp`, `fn` at its confidence. A value COCO cannot
    define (its -1: no small objects, a class absent from the ground truth, no ground truth at all) is None, JSON
    null, never 0: the engine and monitor must treat None as missing, not as a score. Without any ground truth
    every value is None and a `note` says why. Without any detection, `map` is 0.0.

    Ignored objects are given to COCO as `iscrowd=1`, the only ignore flag COCOeval honours (its evaluate()
    overwrites `ignore` with `iscrowd`). The consequence is COCO's crowd rule: a detection is matched to an
    ignored box when intersection / detection area, not IoU, reaches the threshold, and then counts neither
    as a true nor as a false positive; an ignored box is never a missed object.

    After `compute`, `coco_eval` holds the COCOeval object: `coco_eval.eval["precision"]` is [T, R, K, A, M]
    (IoU thresholds, 101 recall points, classes in `classes` order, area ranges all/small/medium/large,
    max detections 1/10/100) and `eval["recall"]` is [T, K, A, M]; the PR curves of the report read them.
    """

    def __init__(self, classes: list[str], *, iou_type: str = "bbox", decision: Decision | None = None) -> None:
        if iou_type not in ("bbox", "segm"):
            raise ValueError(f"iou_type must be 'bbox' or 'segm', not {iou_type!r}")
        self.classes = classes
        self.iou_type = iou_type
        self.decision = decision
        self.coco_eval: COCOeval | None = None
        self.image_ids: list[Any] = []
        self._dets: list[dict[str, np.ndarray]] = []
        self._gts: list[dict[str, np.ndarray]] = []

    def reset(self) -> None:
        self.coco_eval = None
        self.image_ids.clear()
        self._dets.clear()
        self._gts.clear()

    def update(self, outputs: Sequence[dict[str, Any]], targets: Sequence[dict[str, Any]]) -> None:
        """Adds one batch: a list of output dicts and a list of target dicts, one of each per image."""
        if len(outputs) != len(targets):
            raise ValueError(f"{len(outputs)} outputs for {len(targets)} targets: need one of each per image")
        first = len(self.image_ids)
        segm = self.iou_type == "segm"
        dets, gts = _gather_outputs(outputs, first, segm=segm), _gather_targets(targets, first, segm=segm)
        for kind, labels in (("output", dets["labels"]), ("target", gts["labels"])):
            if labels.size and (labels.min() < 0 or labels.max() >= len(self.classes)):
                raise ValueError(f"{kind} label outside 0..{len(self.classes) - 1}: labels are 0-based class indices")
        self._dets.append(dets)
        self._gts.append(gts)
        self.image_ids.extend(t.get("image_id") for t in targets)

    def decide(self, rule: str, *, split: str = "val") -> Decision:
        """The confidence threshold `rule` picks on the accumulated outputs of `split` (see `choose_threshold`)."""
        return choose_threshold(self.curve(), rule, split=split)

    def curve(self) -> ConfidenceCurve:
        """Precision, recall and F1 over all classes at every confidence threshold the accumulated outputs allow,
        predictions matched to objects by box IoU ≥ MATCH_IOU (`match_boxes`; for instance runs too)."""
        dets, gts = _concat(self._dets), _concat(self._gts)
        if not dets:
            return ConfidenceCurve.from_outcomes(np.zeros(0), np.zeros(0, dtype=np.int64), objects=0)
        count = len(self.image_ids)
        det_at = np.searchsorted(dets["image"], np.arange(count + 1))  # images were added in order
        gt_at = np.searchsorted(gts["image"], np.arange(count + 1))
        outcomes = np.concatenate([
            match_boxes(
                dets["boxes"][det_at[i] : det_at[i + 1]], dets["scores"][det_at[i] : det_at[i + 1]],
                dets["labels"][det_at[i] : det_at[i + 1]], gts["boxes"][gt_at[i] : gt_at[i + 1]],
                gts["labels"][gt_at[i] : gt_at[i + 1]], gts["ignore"][gt_at[i] : gt_at[i + 1]],
            )
            for i in range(count)
        ])  # fmt: skip
        return ConfidenceCurve.from_outcomes(dets["scores"], outcomes, objects=int((~gts["ignore"]).sum()))

    def at_threshold(self, threshold: float | None = None) -> dict[str, Any]:
        """`conf_threshold` (default: the decision's, else DEFAULT_CONF) and the `precision`, `recall`, `f1`,
        `tp`, `fp` and `fn` over all classes of the predictions scoring at least that."""
        if threshold is None:
            threshold = DEFAULT_CONF if self.decision is None else self.decision.threshold
        return {"conf_threshold": threshold, **self.curve().at(threshold)}

    def compute(self) -> dict[str, Any]:
        """Runs COCOeval over everything added since the last reset; the keys are listed in the class docstring."""
        dets, gts = _concat(self._dets), _concat(self._gts)
        objects = int((~gts["ignore"]).sum()) if gts else 0
        count = len(self.image_ids)
        if objects == 0:
            self.coco_eval = None
            undefined = dict.fromkeys(self.classes)
            return {
                **dict.fromkeys(SUMMARY_KEYS),
                "per_class": undefined,
                "per_class_ap50": dict(undefined),
                "count": count,
                "objects": 0,
                "note": NO_GROUND_TRUTH,
            }
        self.coco_eval = self._evaluate(count, dets, gts)
        result: dict[str, Any] = {key: _value(v) for key, v in zip(SUMMARY_KEYS, self.coco_eval.stats, strict=True)}
        # Area range "all" and the largest maxDets (100), as summarize() uses for its AP numbers.
        precision = self.coco_eval.eval["precision"][:, :, :, 0, -1]
        result["per_class"] = {name: _mean_defined(precision[:, :, k]) for k, name in enumerate(self.classes)}
        result["per_class_ap50"] = {name: _mean_defined(precision[0, :, k]) for k, name in enumerate(self.classes)}
        result["count"] = count
        result["objects"] = objects
        if self.decision is not None:  # the run's chosen confidence: what predict keeps
            result |= self.at_threshold()
        return result

    def _evaluate(self, count: int, dets: dict[str, np.ndarray], gts: dict[str, np.ndarray]) -> COCOeval:
        # Ids start at 1 everywhere: COCOeval takes an id of 0 for "unmatched".
        categories = [{"id": k + 1, "name": name} for k, name in enumerate(self.classes)]
        gt_anns = _annotations(gts, {"iscrowd": gts["ignore"].astype(int).tolist(), "area": gts["area"].tolist()})
        # The area and iscrowd COCO.loadRes sets for results; built here so that no detections is not a special case.
        dt_anns = _annotations(
            dets, {"score": dets["scores"].tolist(), "area": dets["area"].tolist(), "iscrowd": [0] * len(dets["area"])}
        )
        images = _images(count, gt_anns + dt_anns)
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress on every call
            coco_gt = _coco(images, categories, gt_anns)
            coco_dt = _coco(images, categories, dt_anns)
            coco_eval = COCOeval(coco_gt, coco_dt, iouType=self.iou_type)
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        return coco_eval


@dataclass(frozen=True)
class Counts:
    """True positives, false positives and false negatives per class (arrays of length K) in one image."""

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray

    @property
    def f1(self) -> float:
        """2·TP / (2·TP + FP + FN); 1.0 for an image with nothing to find and nothing found."""
        tp, errors = int(self.tp.sum()), int(self.fp.sum() + self.fn.sum())
        return 1.0 if tp + errors == 0 else 2 * tp / (2 * tp + errors)


def match_boxes(
    boxes: Any, scores: Any, labels: Any, truth_boxes: Any, truth_labels: Any, ignore: Any, *, iou: float = MATCH_IOU
) -> np.ndarray:
    """Each prediction's outcome in one image (TRUE_POSITIVE, FALSE_POSITIVE or NEITHER), in the order given.

    Predictions, best score first, each take the unmatched object of their class they overlap most, when box IoU
    ≥ `iou` (a true positive); one left without is a false positive, unless it overlaps an ignored object (VOC
    difficult, COCO crowd) of its class by `iou`, when it counts neither way (VOC's rule; COCOeval measures a
    crowd's overlap by intersection over the prediction's area). A prediction's outcome depends only on the better
    ones, so the outcomes of those scoring at least any threshold are the outcomes of matching them alone.
    """
    scores = torch.as_tensor(np.asarray(scores, dtype=np.float64))
    labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    truth = torch.as_tensor(np.asarray(truth_labels, dtype=np.int64))
    ignored = torch.as_tensor(np.asarray(ignore, dtype=bool))
    order = torch.argsort(scores, descending=True, stable=True)
    overlap = box_iou(_box_tensor(boxes)[order], _box_tensor(truth_boxes))
    overlap[labels[order][:, None] != truth[None, :]] = -1.0  # a box of another class never matches
    taken = ignored.clone()
    outcomes = np.full(len(order), FALSE_POSITIVE, dtype=np.int64)
    for rank, d in enumerate(order.tolist()):
        free = overlap[rank].masked_fill(taken, -1.0)
        best = int(free.argmax()) if len(free) else -1
        if best >= 0 and free[best] >= iou:
            taken[best] = True
            outcomes[d] = TRUE_POSITIVE
        elif bool((overlap[rank][ignored] >= iou).any()):
            outcomes[d] = NEITHER
    return outcomes


def count_outcomes(
    outcomes: np.ndarray, scores: Any, labels: Any, truth_labels: Any, ignore: Any, *, conf: float, num_classes: int
) -> Counts:
    """One image's counts per class among the predictions scoring at least `conf` (outcomes from `match_boxes`);
    objects left unmatched, ignored ones aside, are false negatives."""
    kept = np.asarray(scores, dtype=np.float64) >= conf
    labels = np.asarray(labels, dtype=np.int64)
    tp = np.bincount(labels[kept & (outcomes == TRUE_POSITIVE)], minlength=num_classes)
    fp = np.bincount(labels[kept & (outcomes == FALSE_POSITIVE)], minlength=num_classes)
    truth = np.asarray(truth_labels, dtype=np.int64)[~np.asarray(ignore, dtype=bool)]
    return Counts(tp, fp, np.bincount(truth, minlength=num_classes) - tp)


def _box_tensor(boxes: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(boxes, dtype=np.float64)).reshape(-1, 4)


@dataclass(frozen=True)
class ConfidenceCurve:
    """Counts over all classes when predictions scoring at least `thresholds[i]` are kept (thresholds: the
    distinct prediction scores, highest first): `tp`, `fp`, and `objects` to find; precision, recall and F1
    follow from them."""

    thresholds: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    objects: int

    @classmethod
    def from_outcomes(cls, scores: np.ndarray, outcomes: np.ndarray, *, objects: int) -> ConfidenceCurve:
        counted = outcomes != NEITHER
        scores, outcomes = np.asarray(scores, dtype=np.float64)[counted], outcomes[counted]
        order = np.argsort(-scores, kind="stable")
        scores, hits = scores[order], outcomes[order] == TRUE_POSITIVE
        tp, fp = np.cumsum(hits), np.cumsum(~hits)
        last = np.ones(len(scores), dtype=bool)  # a threshold keeps every prediction tied at it
        last[:-1] = scores[1:] != scores[:-1]
        return cls(scores[last], tp[last], fp[last], objects)

    @property
    def precision(self) -> np.ndarray:
        return self.tp / np.maximum(self.tp + self.fp, 1)

    @property
    def recall(self) -> np.ndarray:
        return self.tp / max(self.objects, 1)

    @property
    def f1(self) -> np.ndarray:
        return 2 * self.tp / np.maximum(self.tp + self.fp + self.objects, 1)

    def at(self, threshold: float) -> dict[str, Any]:
        """Precision, recall, F1 (None where undefined), TP, FP and FN keeping the scores ≥ `threshold`."""
        kept = np.flatnonzero(self.thresholds >= threshold)
        tp, fp = (int(self.tp[kept[-1]]), int(self.fp[kept[-1]])) if kept.size else (0, 0)
        fn = self.objects - tp
        return {
            "precision": _ratio(tp, tp + fp),
            "recall": _ratio(tp, self.objects),
            "f1": _ratio(2 * tp, 2 * tp + fp + fn),
            "tp": tp,
            "fp": fp,
            "fn": fn,
        }


def choose_threshold(curve: ConfidenceCurve, rule: str, *, split: str) -> Decision:
    """The Decision `rule` makes on `curve`. `auto` and `f1`: the threshold of highest F1 over all classes (the
    higher threshold on a tie); `sensitivity=X`: the highest threshold whose recall reaches X. `youden` and
    `specificity=X` need true negatives, which boxes do not have: the F1 choice is made instead, and `note` says
    so. Without objects, predictions or any true positive, or when recall X is out of reach, the threshold is
    DEFAULT_CONF and `note` says why. The threshold stored lies between the chosen score and the next lower one,
    so that models which keep scores strictly above it (torchvision's) and predict, which keeps scores at least
    it, keep the same boxes."""
    kind, _, target = ("f1" if rule == "auto" else rule).partition("=")
    chosen = "sensitivity" if kind == "sensitivity" else "f1"
    name = rule if chosen == "sensitivity" else "f1"
    note = None
    if chosen != kind:
        note = f"{rule} does not apply to detection (boxes have no true negatives); chosen by F1 instead"
    if curve.objects == 0 or not curve.tp.any():
        why = "no ground-truth objects" if curve.objects == 0 else "no prediction matching an object"
        default = f"{split} has {why}, so the threshold is the default {DEFAULT_CONF:g}"
        return Decision(threshold=DEFAULT_CONF, rule=name, split=split, note=default)
    if chosen == "sensitivity":
        reached = np.flatnonzero(curve.recall >= float(target))
        if not reached.size:
            best = float(curve.recall.max())
            default = f"no threshold reaches {rule} on {split} (best recall: {best:.3f}); threshold {DEFAULT_CONF:g}"
            return Decision(threshold=DEFAULT_CONF, rule=name, split=split, note=default)
        index, score = int(reached[0]), float(curve.recall[reached[0]])
    else:
        index = int(np.argmax(curve.f1))
        score = float(curve.f1[index])
    lower = curve.thresholds[index + 1] if index + 1 < len(curve.thresholds) else None
    threshold = _between(lower, float(curve.thresholds[index]))
    return Decision(threshold=threshold, rule=name, split=split, score=round(score, 6), note=note)


def _between(low: float | None, high: float) -> float:
    """The shortest decimal strictly between `low` and `high` as float32 sees them (scores are float32), else
    the float32 just below `high`; with no `low`, the float32 just below `high`."""
    below = float(np.nextafter(np.float32(high), np.float32(0)))
    if low is None or np.float32(low) >= np.float32(below):
        return below
    for digits in range(1, 9):
        value = round((low + high) / 2, digits)
        if np.float32(low) < np.float32(value) < np.float32(high):
            return value
    return below


def _ratio(numerator: int, denominator: int) -> float | None:
    return round(numerator / denominator, 6) if denominator else None


def _gather_outputs(outputs: Sequence[dict[str, Any]], first: int, *, segm: bool) -> dict[str, np.ndarray]:
    part = {
        "image": _image_index(outputs, first),
        "boxes": _to_numpy([o["boxes"] for o in outputs]).reshape(-1, 4),
        "scores": _to_numpy([o["scores"] for o in outputs]),
        "labels": _to_numpy([o["labels"] for o in outputs], torch.int64),
    }
    if segm:
        part["segm"], part["segm_area"] = _encode([o["masks"] for o in outputs])
    part["area"] = _shape_area(part)
    return part


def _gather_targets(targets: Sequence[dict[str, Any]], first: int, *, segm: bool) -> dict[str, np.ndarray]:
    labels = [torch.as_tensor(t["labels"]) for t in targets]
    # Defaults are made on each target's own device so that one concatenation serves the whole batch;
    # NaN marks "no area given", replaced by the box (or mask) area in one vectorised step.
    ignore = [t.get("ignore", torch.zeros_like(lab, dtype=torch.bool)) for t, lab in zip(targets, labels, strict=True)]
    area = [
        t.get("area", torch.full_like(lab, torch.nan, dtype=torch.float32))
        for t, lab in zip(targets, labels, strict=True)
    ]
    part = {
        "image": _image_index(targets, first),
        "boxes": _to_numpy([t["boxes"] for t in targets]).reshape(-1, 4),
        "labels": _to_numpy(labels, torch.int64),
        "ignore": _to_numpy(ignore, torch.bool),
    }
    if segm:
        part["segm"], part["segm_area"] = _encode([t["masks"] for t in targets])
    areas = _to_numpy(area)
    part["area"] = np.where(np.isnan(areas), _shape_area(part), areas)
    return part


def _encode(masks: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """COCO run-length encodings of every object's pixels (probability or value above 0.5), as an object array,
    and each object's pixel count (what `mask.area` gives; counted here because pycocotools 2.0.11's `area`
    fails under NumPy 2 for more than 255 masks in one call)."""
    encoded, areas = [], []
    for image_masks in masks:
        pixels = torch.as_tensor(image_masks).detach()
        pixels = (pixels.reshape(-1, *pixels.shape[-2:]) > 0.5).to(torch.uint8).cpu().numpy()
        if len(pixels):  # pycocotools encodes H×W×N, Fortran order
            encoded.extend(coco_mask.encode(np.asfortranarray(pixels.transpose(1, 2, 0))))
            areas.append(pixels.sum(axis=(1, 2), dtype=np.float64))
    out = np.empty(len(encoded), dtype=object)
    out[:] = encoded
    return out, np.concatenate(areas) if areas else np.zeros(0)


def _shape_area(part: dict[str, np.ndarray]) -> np.ndarray:
    """Each object's mask area where there are masks, its box area otherwise (what COCO.loadRes computes)."""
    if "segm" in part:
        return part.pop("segm_area")
    boxes = part["boxes"]
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _to_numpy(tensors: list[Any], dtype: torch.dtype = torch.float64) -> np.ndarray:
    """Concatenates on the tensors' device first, so that a batch costs one copy to the CPU per field."""
    if not tensors:
        return np.zeros(0, dtype=torch.empty(0, dtype=dtype).numpy().dtype)
    flat = torch.cat([torch.as_tensor(t).detach().reshape(-1) for t in tensors])
    # Converted after the copy: float64 is exact for every float input but not available on every device.
    return flat.cpu().to(dtype).numpy()


def _image_index(items: Sequence[dict[str, Any]], first: int) -> np.ndarray:
    counts = [len(item["labels"]) for item in items]
    return np.repeat(np.arange(first, first + len(items)), counts)


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if not parts:
        return {}
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def _annotations(part: dict[str, np.ndarray], extra: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """COCO annotation dicts: 1-based ids, image ids and category ids; boxes as [x, y, w, h]; masks as RLE."""
    xywh = part["boxes"].copy()
    xywh[:, 2:] -= xywh[:, :2]
    columns = {
        "id": list(range(1, len(xywh) + 1)),
        "image_id": (part["image"] + 1).tolist(),
        "category_id": (part["labels"] + 1).tolist(),
        "bbox": xywh.tolist(),
        **({"segmentation": list(part["segm"])} if "segm" in part else {}),
        **extra,
    }
    return [dict(zip(columns, row, strict=True)) for row in zip(*columns.values(), strict=True)]


def _images(count: int, anns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """COCO image records. With masks, COCO.annToRLE reads each image's height and width (compressed RLE carries
    its own, but the lookup comes first): they are taken from the encodings."""
    images = [{"id": i + 1} for i in range(count)]
    for ann in anns:
        if "segmentation" in ann:
            height, width = ann["segmentation"]["size"]
            images[ann["image_id"] - 1].update(height=height, width=width)
    return images


def _coco(images: list[dict[str, Any]], categories: list[dict[str, Any]], anns: list[dict[str, Any]]) -> COCO:
    coco = COCO()
    coco.dataset = {"images": images, "categories": categories, "annotations": anns}
    coco.createIndex()
    return coco


def _value(value: float) -> float | None:
    """COCO's -1 (undefined) becomes None; other values are rounded for JSON like the other metrics."""
    return None if value < 0 else round(float(value), 6)


def _mean_defined(precision: np.ndarray) -> float | None:
    # The same mean as summarize(): over the entries COCO could define, -1 when there are none.
    defined = precision[precision > -1]
    return _value(float(defined.mean())) if defined.size else None
