"""The detection and segmentation sections of the report, on real tiny runs over digit scenes and on hand-made
predictions whose errors are known.

The ReportContext is built here directly (the run, its Predictor over the test split, the evaluation JSON that
training wrote), not through the report framework's `build_context`, so that these tests pin the task sections
alone. Detection predictions are kept down to the evaluation threshold, as `imagerec evaluate` keeps them, so that
the report's curves reproduce the evaluated mAP.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import box_iou

import imagerec.api as api
from imagerec.data.formats import load_index
from imagerec.data.images import read_image
from imagerec.data.masks import instance_masks
from imagerec.data.samples import write_digit_scenes
from imagerec.data.targets import Objects
from imagerec.metrics.detection import SUMMARY_KEYS
from imagerec.models.detection import EVAL_SCORE_THRESHOLD
from imagerec.outputs.report import TASK_MODULES, detection, segmentation
from imagerec.outputs.report.blocks import Figure, Gallery, Panels, ReportContext, Section, Table
from imagerec.outputs.report.explanations import EXPLANATIONS_TITLE
from imagerec.outputs.visualize import MIN_DRAWN_SIDE
from imagerec.records import ModelInfo
from imagerec.runs import open_run
from imagerec.tasks.detection import DetectionTask, InstanceSegmentationTask
from imagerec.tasks.results import Detections, InstanceMasks, rle

DETECTION_TITLES = [
    "Precision–recall curves",
    "Average precision per class and object size",
    "False positives and false negatives",
    "Predictions against ground truth",
    "Predictions per image",
]
SEGMENTATION_TITLES = ["IoU and Dice per class", "Pixel confusion matrix", "Best and worst images",
                       "Predictions per image"]  # fmt: skip
CLASSES = [str(d) for d in range(10)]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64-pixel digit scenes; one test mask gets an 8×8 block of ignored pixels (255)."""
    out = write_digit_scenes(tmp_path_factory.mktemp("scenes") / "scenes", n_train=48, n_val=4, n_test=12, size=64)
    path = sorted((out / "masks" / "test").glob("*.png"))[0]
    mask = np.asarray(Image.open(path)).copy()
    mask[:8, :8] = 255
    Image.fromarray(mask).save(path)
    return out


def _context(run: Path, data: Path, *, fmt: str = "auto", **options: float) -> ReportContext:
    run_dir = open_run(run)
    predictor = api.load(run_dir)
    index = load_index(data, format=fmt)
    samples = index.samples("test")
    return ReportContext(
        run=run_dir,
        info=predictor.info,
        task=predictor.task,
        config=run_dir.read_config(),
        history=[],
        out=run,
        predictor=predictor,
        index=index,
        split="test",
        samples=samples,
        results=predictor.predict([s.path for s in samples], **options),
        metrics=json.loads(run_dir.evaluation("test").read_text()),
    )


@pytest.fixture(scope="module")
def detect_ctx(scenes: Path, tmp_path_factory: pytest.TempPathFactory) -> ReportContext:
    out = tmp_path_factory.mktemp("detect") / "run"
    api.train(
        scenes,
        task="detect",
        model="fcos_lite",
        epochs=8,
        imgsz=64,
        flip=False,
        precision="32",
        batch=8,
        lr=2e-3,
        out=out,
    )
    return _context(out, scenes, conf=EVAL_SCORE_THRESHOLD)


@pytest.fixture(scope="module")
def segment_ctx(scenes: Path, tmp_path_factory: pytest.TempPathFactory) -> ReportContext:
    out = tmp_path_factory.mktemp("segment") / "run"
    api.train(
        scenes, task="segment", model="unet", epochs=3, imgsz=64, flip=False, precision="32", batch=8, lr=3e-3, out=out
    )
    return _context(out, scenes, fmt="masks")


def _blocks(section: Section, kind: type) -> list:
    return [b for b in section.blocks if isinstance(b, kind)]


def _by_id(sections: list[Section]) -> dict[str, Section]:
    return {s.id: s for s in sections}


# --- detection: counting errors ---------------------------------------------------------------------------------


def _detections(boxes: list, labels: list, scores: list) -> Detections:
    return Detections("x.png", tuple(map(tuple, boxes)), tuple(CLASSES[i] for i in labels), tuple(scores))


TRUTH = Objects(boxes=((0, 0, 10, 10), (20, 20, 40, 40)), labels=(0, 1))


@pytest.mark.parametrize(
    ("boxes", "labels", "scores", "expected"),
    [
        ([(0, 0, 10, 10), (20, 20, 40, 40)], [0, 1], [0.9, 0.8], (2, 0, 0)),  # perfect
        ([(6, 0, 16, 10), (20, 20, 40, 40)], [0, 1], [0.9, 0.8], (1, 1, 1)),  # shifted: IoU 4/16 < 0.5
        ([(0, 0, 10, 10), (20, 20, 40, 40)], [1, 1], [0.9, 0.8], (1, 1, 1)),  # right place, wrong class
        ([(0, 0, 10, 10), (20, 20, 40, 40)], [0, 1], [0.9, 0.1], (1, 0, 1)),  # below the threshold: not counted
        ([(0, 0, 10, 10), (0, 0, 10, 11), (20, 20, 40, 40)], [0, 0, 1], [0.5, 0.9, 0.8], (2, 1, 0)),  # duplicate
        ([], [], [], (0, 0, 2)),
    ],
)
def test_match_counts_true_and_false_positives_and_negatives(boxes, labels, scores, expected) -> None:
    counts = detection.match(TRUTH, _detections(boxes, labels, scores), CLASSES, conf=0.25)
    assert (int(counts.tp.sum()), int(counts.fp.sum()), int(counts.fn.sum())) == expected
    assert counts.tp.shape == (len(CLASSES),)


def test_match_takes_the_best_score_first_and_ignores_ignored_objects() -> None:
    # The duplicate with the better score takes the object, although the other overlaps it more.
    counts = detection.match(
        TRUTH, _detections([(0, 0, 10, 10), (0, 0, 10, 11)], [0, 0], [0.5, 0.9]), CLASSES, conf=0.25
    )
    assert (counts.tp[0], counts.fp[0], counts.fn[1]) == (1, 1, 1)
    ignored = replace(TRUTH, ignore=(True, False))
    on_ignored = detection.match(ignored, _detections([(0, 0, 10, 10)], [0], [0.9]), CLASSES, conf=0.25)
    assert (int(on_ignored.tp.sum()), int(on_ignored.fp.sum()), int(on_ignored.fn.sum())) == (0, 0, 1)
    assert detection.match(ignored, _detections([], [], []), CLASSES, conf=0.25).fn.tolist() == [0, 1] + [0] * 8


def _hand_made(scenes: Path, *, instance: bool = False) -> ReportContext:
    """Two test scenes: the first predicted exactly, the second with its first box moved by its own width."""
    index = load_index(scenes)
    samples = index.samples("test")[:2]
    results = []
    for position, sample in enumerate(samples):
        objects: Objects = sample.target
        boxes = [list(b) for b in objects.boxes]
        if position == 1:
            boxes[0][0] += boxes[0][2] - boxes[0][0]
            boxes[0][2] += boxes[0][2] - boxes[0][0]
        found = {
            "boxes": tuple(map(tuple, boxes)),
            "labels": tuple(CLASSES[t] for t in objects.labels),
            "scores": tuple(0.9 - 0.1 * i for i in range(len(boxes))),
            "size": (64, 64),
        }
        if instance:
            masks = instance_masks(objects, 64, 64, sample.path)
            results.append(InstanceMasks(str(sample.path), **found, masks=tuple(rle(m) for m in masks)))
        else:
            results.append(Detections(str(sample.path), **found))
    info = ModelInfo.model_validate({
        "format": 1, "task": "segment" if instance else "detect", "model": "maskrcnn_resnet50_fpn", "classes": CLASSES,
        "channels": 1, "imgsz": 64, "mean": [0.1], "std": [0.2], "instance": instance, "resize": "inside the model",
    })  # fmt: skip
    return ReportContext(
        run=None,
        info=info,
        task=InstanceSegmentationTask(CLASSES) if instance else DetectionTask(CLASSES),
        config={},
        history=[],
        out=scenes,
        index=index,
        split="test",
        samples=samples,
        results=results,
    )


def test_detection_sections_count_a_known_error(scenes: Path) -> None:
    ctx = _hand_made(scenes)
    sections = detection.sections(ctx)
    assert [s.title for s in sections] == DETECTION_TITLES
    errors = _blocks(_by_id(sections)["detection-errors"], Table)[0]
    total = dict(zip(errors.columns, errors.rows[-1], strict=True))
    objects = sum(len(s.target.labels) for s in ctx.samples)
    assert total["class"] == "all"
    assert (total["objects"], total["TP"], total["FP"], total["FN"]) == (objects, objects - 1, 1, 1)
    assert "0.25" in errors.caption
    worst = _blocks(_by_id(sections)["detection-gallery"], Gallery)[0]
    first_image, first_caption = worst.images[0]
    assert first_caption.startswith(ctx.samples[1].path.name)
    assert worst.side == detection.SHOWN
    assert "1 FP, 1 FN" in first_caption
    assert worst.images[1][1].startswith(ctx.samples[0].path.name)
    assert "F1 1.00" in worst.images[1][1]
    assert first_image.dtype == np.uint8
    assert first_image.shape[2] == 3
    assert first_image.shape[1] == MIN_DRAWN_SIDE  # the 64-px scene enlarged 8× with square pixels, labels legible
    # Every image's counts, worst first: the moved box is one false positive and one false negative.
    table = _blocks(_by_id(sections)["predictions"], Table)[0]
    assert (table.sortable, table.file) == (True, "predictions.csv")
    first = dict(zip(table.columns, table.rows[0], strict=True))
    assert first["image"] == ctx.samples[1].path.relative_to(scenes).as_posix()
    objects = len(ctx.samples[1].target.labels)
    assert (first["objects"], first["predicted"], first["matched"], first["FP"], first["FN"]) == (
        objects, objects, objects - 1, 1, 1,
    )  # fmt: skip
    assert [row[-1] for row in table.rows] == sorted(row[-1] for row in table.rows)
    assert table.rows[1][-1] == 1.0
    # The model card's precision and recall over images, with bootstrap intervals around them.
    headline = {h.name: h for h in ctx.headlines}
    recall = headline["recall at score ≥ 0.25"]
    assert recall.value == pytest.approx(total["TP"] / total["objects"])
    assert recall.interval[0] <= recall.value <= recall.interval[1] <= 1
    assert headline["mAP50"].interval is None


def test_comparison_draws_truth_and_predictions_in_two_colours(scenes: Path) -> None:
    ctx = _hand_made(scenes)
    sample, result = ctx.samples[1], ctx.results[1]
    drawn = detection.draw_comparison(read_image(sample.path), sample.target, result, CLASSES, conf=0.25)
    pixels = drawn.permute(1, 2, 0).reshape(-1, 3)

    def share(colour: str) -> float:
        rgb = torch.tensor([int(colour[i : i + 2], 16) for i in (1, 3, 5)], dtype=torch.uint8)
        return float((pixels == rgb).all(1).float().mean())

    assert share(detection.TRUTH_COLOUR) > 0.005
    assert share(detection.PREDICTION_COLOUR) > 0.005
    assert drawn.shape[1:] == (MIN_DRAWN_SIDE + MIN_DRAWN_SIDE // 25, MIN_DRAWN_SIDE)  # the image, then the legend


def test_instance_runs_are_measured_by_mask_ap(scenes: Path) -> None:
    ctx = _hand_made(scenes, instance=True)
    metrics, values = detection.coco_metrics(ctx)
    assert metrics.iou_type == "segm"
    assert values["map"] == 1.0  # the masks are the true ones: only the moved box is wrong, and boxes don't count
    assert detection.coco_metrics(replace(ctx, task=DetectionTask(CLASSES)))[1]["map"] < 1.0
    assert TASK_MODULES[ctx.task.kind] == "detection"  # a Mask R-CNN run is a segment run: reported as detection is
    assert [s.title for s in detection.sections(ctx)] == DETECTION_TITLES


def test_no_evaluation_data_no_task_sections(scenes: Path) -> None:
    ctx = replace(_hand_made(scenes), split=None, samples=[], results=[])
    assert detection.sections(ctx) == []
    assert segmentation.sections(ctx) == []


# --- detection: a trained run ------------------------------------------------------------------------------------


def _f1(objects: Objects, found: Detections, conf: float) -> float:
    """Greedy matching written out again, for the test: best score first, same class, IoU ≥ 0.5, one-to-one."""
    keep = sorted((i for i, s in enumerate(found.scores) if s >= conf), key=lambda i: -found.scores[i])
    truth = torch.tensor(objects.boxes, dtype=torch.float64).reshape(-1, 4)
    free = set(range(len(objects.labels)))
    tp = 0
    for i in keep:
        ious = box_iou(torch.tensor([found.boxes[i]], dtype=torch.float64), truth)[0]
        same = [j for j in free if CLASSES[objects.labels[j]] == found.labels[i] and ious[j] >= 0.5]
        if same:
            free.remove(max(same, key=lambda j: float(ious[j])))
            tp += 1
    fp, fn = len(keep) - tp, len(free)
    return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def test_detection_report_of_a_trained_run(detect_ctx: ReportContext) -> None:
    ctx = detect_ctx
    from dataclasses import replace

    from imagerec.outputs.report import common

    rows = [{"epoch": e, "train_loss": 2.0 / e, "val_map50": 0.1 * e} for e in (1, 2)]  # a detector's: no val_loss
    curves = _blocks(common.training_section(replace(ctx, history=rows), "val_map50", "max"), Panels)[0]
    assert "validation split" not in curves.caption  # the caption names only the curves drawn
    with_val = [{**row, "val_loss": 1.0} for row in rows]
    assert "validation split" in _blocks(common.training_section(replace(ctx, history=with_val), "val_map50", "max"),
                                         Panels)[0].caption  # fmt: skip
    sections = detection.sections(ctx)
    assert [s.title for s in sections] == [*DETECTION_TITLES, EXPLANATIONS_TITLE]
    by_id = _by_id(sections)
    # The curves come from the COCOeval of the same predictions evaluate made: the same mAP, and no note.
    _, values = detection.coco_metrics(ctx)
    for key in SUMMARY_KEYS:
        assert values[key] == pytest.approx(ctx.metrics[key], abs=1e-6), key
    assert values["map50"] > 0.05
    assert [type(b) for b in by_id["detection-pr"].blocks] == [Panels]
    ap = _blocks(by_id["detection-ap"], Table)[0]
    per_class = {row[0]: row[2] for row in ap.rows[:-1]}
    for name, value in ctx.metrics["per_class"].items():
        assert per_class[name] == (detection.DASH if value is None else pytest.approx(value, abs=1e-4))
    # Counts at the run's threshold (chosen on val by F1) add up to the objects and to the predictions kept.
    conf = ctx.info.decision.threshold
    assert ctx.info.decision.split == "val"
    table = _blocks(by_id["detection-errors"], Table)[0]
    errors = dict(zip(table.columns, table.rows[-1], strict=True))
    assert errors["TP"] + errors["FN"] == sum(len(s.target.labels) for s in ctx.samples)
    assert errors["TP"] + errors["FP"] == sum(sum(s >= conf for s in r.scores) for r in ctx.results)
    # The first worst image has the lowest F1 of all, counted again here.
    f1 = {s.path.name: _f1(s.target, r, conf) for s, r in zip(ctx.samples, ctx.results, strict=True)}
    worst = _blocks(by_id["detection-gallery"], Gallery)[0]
    name = worst.images[0][1].split(" · ")[0]
    assert f1[name] == min(f1.values())
    assert f"F1 {f1[name]:.2f}" in worst.images[0][1]
    # The per-image table: every image once, the gallery's order, each F1 as counted again here.
    table = _blocks(by_id["predictions"], Table)[0]
    assert [Path(row[0]).name for row in table.rows][: len(worst.images)] == [
        caption.split(" · ")[0] for _, caption in worst.images
    ]
    assert {Path(row[0]).name: row[-1] for row in table.rows} == pytest.approx(f1)
    shown = [caption.split(" · ")[0] for g in _blocks(by_id["detection-gallery"], Gallery) for _, caption in g.images]
    assert len(shown) == len(set(shown)) == min(len(ctx.samples), 2 * detection.GALLERY_SIZE)
    # Heatmaps of at most two boxes on each of the worst images with a box at 0.25, worst first.
    (explained,) = _blocks(by_id["explanations"], Gallery)
    with_boxes = [
        s.path.name for s, r in zip(ctx.samples, ctx.results, strict=True) if max(r.scores, default=0) >= 0.25
    ]
    worst_with_boxes = min(with_boxes, key=lambda n: f1[n])
    names = [caption.split(" · ")[0] for _, caption in explained.images]
    assert f1[names[0]] == f1[worst_with_boxes]
    assert all(names.count(n) <= 2 for n in names)
    assert len(set(names)) == min(6, len(with_boxes))
    for image, caption in explained.images:
        assert image.dtype == np.uint8
        assert max(image.shape[:2]) == 192  # 64-px scenes enlarged 3×
        assert re.search(r" · map of \d \(\d\.\d\d\)$", caption)


# --- segmentation: a trained run ---------------------------------------------------------------------------------


def _image_scores(ctx: ReportContext) -> dict[str, float]:
    """Foreground IoU per image, counted again with numpy; images without foreground on either side left out."""
    scores = {}
    for sample, result in zip(ctx.samples, ctx.results, strict=True):
        truth = np.asarray(Image.open(sample.target.path)).astype(np.int64)
        keep = truth != 255
        ious = []
        for c in range(1, len(ctx.info.classes)):
            t, p = (truth == c) & keep, (result.mask == c) & keep
            if (t | p).any():
                ious.append((t & p).sum() / (t | p).sum())
        if ious:
            scores[sample.path.name] = float(np.mean(ious))
    return scores


def test_segmentation_report_of_a_trained_run(segment_ctx: ReportContext) -> None:
    ctx = segment_ctx
    sections = segmentation.sections(ctx)
    assert [s.title for s in sections] == [*SEGMENTATION_TITLES, EXPLANATIONS_TITLE]
    by_id = _by_id(sections)
    classes = ctx.info.classes
    # The bars are the evaluated per-class IoU and Dice, in class order.
    bars = _blocks(by_id["segmentation-classes"], Figure)[0].figure.axes[0].containers
    for container, key in zip(bars[:2], ("iou", "dice"), strict=True):
        expected = [ctx.metrics["per_class"][c][key] for c in classes]
        drawn = [None if np.isnan(v) else v for v in container.datavalues]
        assert drawn == pytest.approx(expected)
    # The pixel confusion matrix counts every pixel of the split once, ignored ones aside.
    table = _blocks(by_id["segmentation-confusion"], Table)[0]
    counts = np.array([row[1:-1] for row in table.rows])
    assert counts.tolist() == ctx.metrics["confusion_matrix"]
    masks = [np.asarray(Image.open(s.target.path)) for s in ctx.samples]
    assert counts.sum() == sum(m.size for m in masks) - 64
    assert "64 ignored pixels" in _blocks(by_id["segmentation-confusion"], Panels)[0].caption
    # The first worst image has the lowest foreground IoU, the first best the highest.
    scores = _image_scores(ctx)
    worst, best = _blocks(by_id["segmentation-gallery"], Gallery)
    assert scores[worst.images[0][1].split(" · ")[0]] == pytest.approx(min(scores.values()))
    assert scores[best.images[0][1].split(" · ")[0]] == pytest.approx(max(scores.values()))
    image = worst.images[0][0]
    assert image.dtype == np.uint8
    assert image.shape[1] == 3 * segmentation.PANEL + 2 * segmentation.GAP  # 64-px scenes enlarged 4×
    assert segmentation.PANEL < image.shape[0] <= segmentation.PANEL + 24  # and the legend band
    assert image.shape[2] == 3
    assert worst.side >= 3 * 128  # at least 128 px per panel on the page
    # The per-image table: worst first by the IoU counted again here, every image once.
    table = _blocks(by_id["predictions"], Table)[0]
    ious = {Path(row[0]).name: row[1] for row in table.rows if row[1] is not None}
    assert ious == pytest.approx(scores)
    assert table.rows[0][1] == pytest.approx(min(scores.values()))
    assert len(table.rows) == len(ctx.samples)
    # The model card's mean IoU is evaluate's, with a bootstrap interval over images around it.
    miou = next(h for h in ctx.headlines if h.name == "mean IoU")
    assert miou.value == ctx.metrics["miou"]
    assert miou.interval[0] <= miou.value <= miou.interval[1]
    # Heatmaps of the classes predicted in the worst images (background left out), worst image first.
    (explained,) = _blocks(by_id["explanations"], Gallery)
    first_name, first_class = re.fullmatch(
        r"(\S+) · IoU \S+ · map of (\d) \(\d\.\d\d\)", explained.images[0][1]
    ).groups()
    assert first_name == worst.images[0][1].split(" · ")[0]
    result = ctx.results[[s.path.name for s in ctx.samples].index(first_name)]
    assert classes.index(first_class) in set(np.unique(result.mask)) - {0}
    assert explained.images[0][0].shape[:2] == (192, 192)


def test_many_matrices_score_as_one_does() -> None:
    matrices = np.random.default_rng(0).integers(0, 5, size=(20, 4, 4))
    matrices[3, 1:, :] = matrices[3, :, 1:] = 0  # background alone: no foreground class present
    iou, dice = segmentation.mean_foreground(matrices)
    for i, matrix in enumerate(matrices):
        expected = segmentation.foreground_scores(torch.from_numpy(matrix))
        if expected[0] is None:
            assert np.isnan(iou[i])
        else:
            assert (iou[i], dice[i]) == pytest.approx(expected)


def test_segmentation_sections_measure_when_evaluation_is_missing(segment_ctx: ReportContext) -> None:
    measured = segmentation.sections(replace(segment_ctx, metrics={}))
    evaluated = segmentation.sections(segment_ctx)
    rows = [_blocks(s[1], Table)[0].rows for s in (measured, evaluated)]
    assert rows[0] == rows[1]


def test_the_configuration_lists_the_settings_the_task_reads(detect_ctx: ReportContext, segment_ctx) -> None:
    """A detector's table has its anchors and flips, not the classifier's binary head or positive class."""
    from imagerec.outputs.report.common import configuration_section

    def names(ctx: ReportContext) -> set[str]:
        tables = _blocks(configuration_section(ctx), Table)
        return {row[0] for table in tables if table.columns[0].endswith(" setting") for row in table.rows}

    detector, segmenter = names(detect_ctx), names(segment_ctx)
    assert {"anchor_sizes", "flip", "threshold_by", "lr", "imgsz"} <= detector
    assert not detector & {"binary_head", "positive", "head", "label_smoothing", "class_weights", "loss"}
    assert {"binary_head", "loss", "flip"} <= segmenter
    assert not segmenter & {"anchor_sizes", "positive", "threshold_by"}
