"""Segmentation metrics against values worked out by hand and against torchmetrics; the losses on tiny inputs;
mask AP against pycocotools' COCOeval run directly."""

from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchmetrics.functional.classification import multiclass_confusion_matrix, multiclass_jaccard_index

from imagerec.errors import UserError
from imagerec.metrics.detection import SUMMARY_KEYS, DetectionMetrics
from imagerec.metrics.segmentation import SegmentationMetrics, confusion_matrix
from imagerec.tasks.losses import build_loss

X = 255  # ignored


def t(rows: list[list[int]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.int64).unsqueeze(0)


def measure(preds: torch.Tensor, target: torch.Tensor, classes: list[str], **options: object) -> dict:
    metrics = SegmentationMetrics(classes, **options)
    metrics.update(preds, target)
    return metrics.compute()


# --- semantic metrics by hand ------------------------------------------------------------------------------------

TRUTH = t([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, X], [2, 2, 2, X]])
PRED = t([[0, 1, 1, 1], [0, 0, 1, 0], [2, 2, 1, 0], [2, 2, 2, 2]])
# Rows truth, columns prediction, the two ignored pixels (predicted 0 and 2) left out: 14 pixels.
#   truth 0: predicted 0, 1, 0, 0       → [3, 1, 0]
#   truth 1: predicted 1, 1, 1, 0       → [1, 3, 0]
#   truth 2: predicted 2, 2, 1, 2, 2, 2 → [0, 1, 5]
# TP = 3, 3, 5; truth pixels 4, 4, 6; predicted pixels 4, 5, 5.
# IoU  = 3/(4+4-3) = 3/5,  3/(4+5-3) = 1/2,  5/(6+5-5) = 5/6
# Dice = 6/8 = 3/4,        6/9 = 2/3,        10/11
# miou (foreground 1, 2) = (1/2 + 5/6) / 2 = 2/3; miou_all = (3/5 + 1/2 + 5/6) / 3 = 29/45
# dice (foreground) = (2/3 + 10/11) / 2 = 26/33; pixel accuracy = 11/14


def test_three_classes_by_hand() -> None:
    result = measure(PRED, TRUTH, ["background", "a", "b"])
    assert result["confusion_matrix"] == [[3, 1, 0], [1, 3, 0], [0, 1, 5]]
    assert result["per_class"]["background"] == {"iou": 0.6, "dice": 0.75, "pixels": 4}
    assert result["per_class"]["a"] == {"iou": 0.5, "dice": pytest.approx(2 / 3, abs=1e-6), "pixels": 4}
    b = result["per_class"]["b"]
    assert b == {"iou": pytest.approx(5 / 6, abs=1e-6), "dice": pytest.approx(10 / 11, abs=1e-6), "pixels": 6}
    assert result["miou"] == pytest.approx(2 / 3, abs=1e-6)
    assert result["miou_all"] == pytest.approx(29 / 45, abs=1e-6)
    assert result["dice"] == pytest.approx(26 / 33, abs=1e-6)
    assert result["pixel_accuracy"] == pytest.approx(11 / 14, abs=1e-6)
    assert result["count"] == 1
    assert "iou_fg" not in result
    json.dumps(result)


def test_scores_logits_and_one_hot_probabilities_give_the_same_numbers() -> None:
    logits = F.one_hot(PRED, 3).permute(0, 3, 1, 2).float() * 4 - 1  # argmax = PRED
    assert measure(logits, TRUTH, ["background", "a", "b"]) == measure(PRED, TRUTH, ["background", "a", "b"])
    assert measure(logits.softmax(1), TRUTH, ["background", "a", "b"])["miou"] == pytest.approx(2 / 3, abs=1e-6)


def test_absent_classes() -> None:
    # Four classes. "c" (3) occurs in neither truth nor prediction: undefined, None, left out of the means.
    # "b" (2) is predicted once but never true: IoU = Dice = 0, and it counts in the means.
    truth = t([[0, 0, 1], [0, 1, 1], [0, 0, 0]])
    pred = t([[0, 0, 1], [0, 1, 1], [0, 0, 2]])
    # background: TP 5, truth 6, predicted 5 → IoU 5/6, Dice 10/11; a: TP 3 of 3 → 1, 1; b: 0/1 → 0, 0.
    result = measure(pred, truth, ["background", "a", "b", "c"])
    assert result["per_class"]["c"] == {"iou": None, "dice": None, "pixels": 0}
    assert result["per_class"]["b"] == {"iou": 0.0, "dice": 0.0, "pixels": 0}
    assert result["miou"] == 0.5  # (1 + 0) / 2: "c" is not a zero
    assert result["dice"] == 0.5
    assert result["miou_all"] == pytest.approx((5 / 6 + 1 + 0) / 3, abs=1e-6)
    # A class that is true but never predicted scores 0 as well.
    assert measure(torch.zeros_like(truth), truth, ["background", "a"])["per_class"]["a"]["iou"] == 0.0


def test_binary_foreground_scores_from_one_logit() -> None:
    truth = t([[0, 1, 1], [0, 1, 1], [0, 0, X]])
    logit = torch.tensor([[-2.0, 3.0, -1.0], [0.5, 2.0, 1.0], [-3.0, -0.1, 4.0]]).view(1, 1, 3, 3)  # > 0: foreground
    # 8 kept pixels. Foreground: TP 3 (one missed, one false alarm) → IoU 3/5, Dice 6/8; background: IoU 3/5.
    result = measure(logit, truth, ["background", "cell"], binary=True)
    assert result["iou_fg"] == 0.6
    assert result["dice_fg"] == 0.75
    assert result["miou"] == 0.6  # the foreground's alone
    assert result["miou_all"] == 0.6
    assert result["pixel_accuracy"] == 0.75
    with pytest.raises(ValueError, match="2 classes"):
        SegmentationMetrics(["a", "b", "c"], binary=True)


def test_updates_accumulate_and_reset() -> None:
    generator = torch.Generator().manual_seed(0)
    truth = torch.randint(0, 4, (6, 13, 11), generator=generator)
    truth[truth == 3] = X
    logits = torch.randn(6, 3, 13, 11, generator=generator)
    classes = ["background", "a", "b"]
    metrics = SegmentationMetrics(classes)
    for start, stop in ((0, 1), (1, 4), (4, 6)):
        metrics.update(logits[start:stop], truth[start:stop])
    assert metrics.compute() == measure(logits, truth, classes)
    assert metrics.compute()["count"] == 6
    metrics.reset()
    empty = metrics.compute()
    assert empty["count"] == 0
    assert empty["miou"] is None
    assert empty["pixel_accuracy"] is None


def test_confusion_matrix_equals_torchmetrics() -> None:
    generator = torch.Generator().manual_seed(1)
    truth = torch.randint(0, 6, (4, 31, 29), generator=generator)
    truth[truth == 5] = X
    preds = torch.randint(0, 5, (4, 31, 29), generator=generator)
    ours = confusion_matrix(preds, truth, 5, ignore_index=X)
    assert torch.equal(ours, multiclass_confusion_matrix(preds, truth, 5, ignore_index=X))
    per_class = measure(preds, truth, list("vwxyz"))["per_class"]
    reference = multiclass_jaccard_index(preds, truth, 5, average="none", ignore_index=X)
    assert [per_class[c]["iou"] for c in "vwxyz"] == pytest.approx(reference.tolist(), abs=1e-6)


def test_bad_input_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="outside 0..2"):
        measure(t([[0, 3]]), t([[0, 1]]), ["background", "a", "b"])
    with pytest.raises(ValueError, match="differ"):
        measure(torch.zeros(1, 2, 3, dtype=torch.int64), torch.zeros(1, 3, 2, dtype=torch.int64), ["bg", "a"])
    with pytest.raises(ValueError, match="integers"):
        measure(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.int64), ["bg", "a"])


# --- losses ------------------------------------------------------------------------------------------------------


def loss(name: str, logits: torch.Tensor, target: torch.Tensor, **options: object) -> float:
    binary = logits.shape[1] == 1
    fn = build_loss(name, num_classes=max(2, logits.shape[1]), binary=binary, ignore_index=X, **options)
    return float(fn(logits, target).detach())


def test_uncertain_prediction_by_hand() -> None:
    # Two pixels, truth (0, 1), every logit 0: p = 1/2 for both classes.
    # CE = ln 2; soft Dice per class = 2·(1/2) / (1/2 + 1/2 + 1) = 1/2, loss 1/2; focal = (1 - 1/2)² · ln 2.
    target = torch.tensor([[[0, 1]]])
    for logits in (torch.zeros(1, 2, 1, 2), torch.zeros(1, 1, 1, 2)):  # softmax over two, and one sigmoid logit
        assert loss("ce", logits, target) == pytest.approx(math.log(2))
        assert loss("dice", logits, target) == pytest.approx(0.5)
        assert loss("ce_dice", logits, target) == pytest.approx(math.log(2) + 0.5)
        assert loss("focal", logits, target) == pytest.approx(0.25 * math.log(2))


def test_perfect_prediction_and_ignored_pixels() -> None:
    target = t([[0, 1, 2], [2, 2, X]])
    logits = F.one_hot(target.clamp(max=2), 3).permute(0, 3, 1, 2).float() * 30
    logits[0, :, 1, 2] = torch.tensor([0.0, 0.0, 50.0])  # any class on the ignored pixel: it cannot matter
    for name in ("ce", "dice", "focal", "ce_dice"):
        assert loss(name, logits, target) == pytest.approx(0.0, abs=1e-6), name
    # Binary: the same for one logit.
    binary = t([[0, 1], [1, X]])
    logit = (binary == 1).float().unsqueeze(1) * 60 - 30
    logit[0, 0, 1, 1] = 30.0  # the ignored pixel (its target, 255, is no valid 0/1 either)
    for name in ("ce", "dice", "focal", "ce_dice"):
        assert loss(name, logit, binary) == pytest.approx(0.0, abs=1e-6), name


def test_cross_entropy_equals_torch_and_survives_an_all_ignored_batch() -> None:
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 5, 4, generator=generator, requires_grad=True)
    target = torch.randint(0, 3, (2, 5, 4), generator=generator)
    target[0, 0] = X
    weights = [0.2, 1.0, 3.0]
    reference = F.cross_entropy(logits, target, weight=torch.tensor(weights), ignore_index=X)
    assert loss("ce", logits, target, class_weights=weights) == pytest.approx(float(reference.detach()), abs=1e-6)
    binary = target.clamp(max=1).where(target != X, X)
    kept = target != X
    bce = F.binary_cross_entropy_with_logits(logits.detach()[:, 0][kept], binary[kept].float())
    assert loss("ce", logits[:, :1], binary) == pytest.approx(float(bce), abs=1e-6)
    ignored = torch.full_like(target, X)
    for name in ("ce", "dice", "focal", "ce_dice"):
        value = build_loss(name, num_classes=3, binary=False, ignore_index=X)(logits, ignored)
        assert float(value.detach()) == 0.0, name
        value.backward()  # a graph, and no NaN in it
        assert torch.isfinite(logits.grad).all()


def test_loss_options_are_checked() -> None:
    with pytest.raises(UserError, match="3 values"):
        build_loss("ce", num_classes=3, binary=False, ignore_index=X, class_weights=[1.0, 2.0])
    with pytest.raises(UserError, match="unknown segmentation loss"):
        build_loss("lovasz", num_classes=3, binary=False, ignore_index=X)


# --- mask AP against pycocotools ----------------------------------------------------------------------------------

CLASSES = ["cell", "nucleus", "debris"]  # "debris" never occurs in the ground truth
SIZE = 160


def ellipse(cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    y, x = np.ogrid[:SIZE, :SIZE]
    return ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1


def random_object(rng: np.random.Generator) -> tuple[float, ...]:
    radius = {"small": (2, 8), "medium": (12, 26), "large": (40, 70)}[rng.choice(["small", "medium", "large"])]
    ry, rx = rng.uniform(*radius, size=2)
    cy, cx = rng.uniform(20, SIZE - 20, size=2)
    return cy, cx, ry, rx


def bounding_box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)] if len(xs) else [0.0] * 4


def mask_image(rng: np.random.Generator, index: int) -> tuple[dict, dict]:
    """One image: ground-truth ellipses (some crowd), and detections as probability maps: a found object's
    jittered ellipse at 0.9 inside a 0.4 halo (below the 0.5 threshold, so not part of the mask)."""
    shapes = [] if index % 5 == 0 else [random_object(rng) for _ in range(int(rng.integers(1, 6)))]
    gt_masks = [ellipse(*s) for s in shapes]
    labels = rng.integers(0, 2, size=len(shapes))
    found, found_labels = [], []
    for (cy, cx, ry, rx), label in zip(shapes, labels, strict=True):
        for _ in range(int(rng.integers(0, 3))):
            jy, jx = rng.normal(0, 0.15, size=2) * (ry, rx)
            scale = rng.uniform(0.8, 1.2)
            found.append(0.4 * ellipse(cy + jy, cx + jx, ry * scale + 3, rx * scale + 3))
            found[-1][ellipse(cy + jy, cx + jx, ry * scale, rx * scale)] = 0.9
            found_labels.append(label if rng.random() < 0.85 else int(rng.integers(0, len(CLASSES))))
    for _ in range(int(rng.integers(0, 3))):
        found.append(0.9 * ellipse(*random_object(rng)))
        found_labels.append(int(rng.integers(0, len(CLASSES))))
    truth = {
        "masks": np.array(gt_masks, dtype=np.uint8).reshape(-1, SIZE, SIZE),
        "boxes": np.array([bounding_box(m) for m in gt_masks], dtype=np.float32).reshape(-1, 4),
        "labels": labels.astype(np.int64),
        "ignore": rng.random(len(shapes)) < 0.15,
    }
    if index % 2:  # odd images state an area, as COCO JSON does; even ones fall back to the mask's
        truth["area"] = (truth["masks"].sum((1, 2)) * 1.1).astype(np.float32)
    probs = np.array(found, dtype=np.float32).reshape(-1, 1, SIZE, SIZE)
    outputs = {
        "masks": probs,
        "boxes": np.array([bounding_box(p[0] > 0.5) for p in probs], dtype=np.float32).reshape(-1, 4),
        "scores": rng.random(len(found)).astype(np.float32),
        "labels": np.array(found_labels, dtype=np.int64),
    }
    return outputs, truth


def reference_mask_coco(scenes: list[tuple[dict, dict]]) -> tuple[COCO, COCO]:
    """Ground truth and results as a COCO user writes them: RLE masks, results through loadRes."""
    images, annotations, results = [], [], []
    for i, (found, truth) in enumerate(scenes):
        images.append({"id": i + 1, "height": SIZE, "width": SIZE})
        for j, mask in enumerate(truth["masks"]):
            rle = coco_mask.encode(np.asfortranarray(mask))
            area = float(truth["area"][j]) if "area" in truth else float(coco_mask.area(rle))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": int(truth["labels"][j]) + 1,
                    "segmentation": rle,
                    "area": area,
                    "bbox": list(coco_mask.toBbox(rle)),
                    "iscrowd": int(truth["ignore"][j]),
                }
            )
        for prob, score, label in zip(found["masks"], found["scores"].tolist(), found["labels"].tolist(), strict=True):
            rle = coco_mask.encode(np.asfortranarray((prob[0] > 0.5).astype(np.uint8)))
            results.append({"image_id": i + 1, "category_id": label + 1, "segmentation": rle, "score": score})
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": k + 1, "name": n} for k, n in enumerate(CLASSES)],
        }
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
    return coco_gt, coco_dt


def test_mask_ap_equals_pycocotools_cocoeval() -> None:
    rng = np.random.default_rng(7)
    scenes = [mask_image(rng, i) for i in range(24)]
    metrics = DetectionMetrics(CLASSES, iou_type="segm")
    for start in (0, 10):  # two batches
        batch = scenes[start : start + 10] if start == 0 else scenes[start:]
        metrics.update(
            [{k: torch.from_numpy(v) for k, v in found.items()} for found, _ in batch],
            [{k: torch.from_numpy(np.asarray(v)) for k, v in truth.items()} for _, truth in batch],
        )
    ours = metrics.compute()
    coco_gt, coco_dt = reference_mask_coco(scenes)
    with contextlib.redirect_stdout(io.StringIO()):
        reference = COCOeval(coco_gt, coco_dt, iouType="segm")
        reference.evaluate()
        reference.accumulate()
        reference.summarize()
    assert len(coco_dt.dataset["annotations"]) > 40
    assert ours["objects"] > 30
    assert all(ours[k] is not None for k in SUMMARY_KEYS)  # small, medium and large masks all occur
    assert ours["per_class"]["debris"] is None
    assert metrics.coco_eval.stats.tolist() == reference.stats.tolist()
    for key, stat in zip(SUMMARY_KEYS, reference.stats, strict=True):
        assert ours[key] == pytest.approx(float(stat), abs=1e-4), key
    assert 0.1 < ours["map"] < 0.9  # neither trivial nor hopeless: the comparison means something


def test_mask_ap_by_hand() -> None:
    # One 40×40 object; a detection covering its left 24 columns (probability 0.8) plus a 0.3 halo on the right
    # (below 0.5: not part of the mask). Mask IoU = 24/40 = 0.6: matched at IoU .50, .55, .60 → AP = 3/10. Its box
    # covers the whole object (IoU 1), so box AP would be 1: the mask, not the box, is measured.
    truth = torch.zeros(1, 64, 64, dtype=torch.uint8)
    truth[0, 10:50, 10:50] = 1
    prob = torch.zeros(1, 1, 64, 64)
    prob[0, 0, 10:50, 10:34] = 0.8
    prob[0, 0, 10:50, 34:50] = 0.3
    box = torch.tensor([[10.0, 10.0, 50.0, 50.0]])
    metrics = DetectionMetrics(["cell"], iou_type="segm")
    metrics.update(
        [{"boxes": box, "scores": torch.tensor([0.9]), "labels": torch.tensor([0]), "masks": prob}],
        [{"boxes": box, "labels": torch.tensor([0]), "masks": truth}],
    )
    result = metrics.compute()
    assert result["map"] == pytest.approx(0.3, abs=1e-12)
    assert result["map50"] == 1.0
    assert result["map75"] == 0.0
    assert result["map_medium"] == pytest.approx(0.3, abs=1e-12)  # area 1,600 px: medium (32² to 96²)


def test_mask_map_takes_hundreds_of_masks_in_one_update() -> None:
    """Mask R-CNN keeps up to 100 objects per image, so a validation batch can hold more than 255 masks: that many
    once broke pycocotools' `mask.area` under NumPy 2 (OverflowError). Areas are the masks' pixel counts."""
    masks = torch.zeros(300, 1, 20, 20)
    for i in range(300):
        masks[i, 0, : 1 + i % 20, :10] = 0.9
    outputs = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 20.0]] * 300), "scores": torch.linspace(1, 0.1, 300),
                "labels": torch.zeros(300, dtype=torch.int64), "masks": masks}]  # fmt: skip
    target_mask = torch.zeros(1, 20, 20, dtype=torch.uint8)
    target_mask[0, :, :10] = 1
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 20.0]]), "labels": torch.tensor([0]), "masks": target_mask}]
    metrics = DetectionMetrics(["object"], iou_type="segm")
    metrics.update(outputs, targets)
    # Mask i covers rows 0..i%20 of the target's 20×10 pixels: IoU (i+1)/20. The nine best-scored masks (i < 9)
    # are false positives at IoU .50, so the true positive i = 9 (IoU 0.5) comes at precision 1/10.
    assert metrics.compute()["map50"] == pytest.approx(0.1)
