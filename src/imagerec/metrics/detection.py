"""COCO detection metrics: pycocotools' COCOeval (the reference) run on results gathered in memory, for boxes
and for instance masks.

The key names are the JSON contract of `imagerec evaluate`; docs/detection.md explains each one.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

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
    (images) and `objects` (ground-truth objects not ignored). A value COCO cannot define (its -1: no small
    objects, a class absent from the ground truth, no ground truth at all) is None, JSON null, never 0: the
    engine and monitor must treat None as missing, not as a score. Without any ground truth every value is
    None and a `note` says why. Without any detection, `map` is 0.0.

    Ignored objects are given to COCO as `iscrowd=1`, the only ignore flag COCOeval honours (its evaluate()
    overwrites `ignore` with `iscrowd`). The consequence is COCO's crowd rule: a detection is matched to an
    ignored box when intersection / detection area, not IoU, reaches the threshold, and then counts neither
    as a true nor as a false positive; an ignored box is never a missed object.

    After `compute`, `coco_eval` holds the COCOeval object: `coco_eval.eval["precision"]` is [T, R, K, A, M]
    (IoU thresholds, 101 recall points, classes in `classes` order, area ranges all/small/medium/large,
    max detections 1/10/100) and `eval["recall"]` is [T, K, A, M]; the PR curves of the report read them.
    """

    def __init__(self, classes: list[str], *, iou_type: str = "bbox") -> None:
        if iou_type not in ("bbox", "segm"):
            raise ValueError(f"iou_type must be 'bbox' or 'segm', not {iou_type!r}")
        self.classes = classes
        self.iou_type = iou_type
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

    def decide(self, rule: str) -> Decision | None:
        """The decision threshold `rule` picks on the accumulated outputs (None: nothing to choose)."""
        return None

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
