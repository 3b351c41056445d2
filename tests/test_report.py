"""`imagerec report`: the HTML report of a real tiny run, its numbers against `imagerec evaluate`'s, the report
written at the end of training, and the errors a user can cause."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from rich.console import Console

import imagerec
from helpers import invoke, user_error
from imagerec.outputs.report import build_context, report_sections
from imagerec.outputs.report.classification import expected_calibration_error

TINY = {"model": "seed_cnn", "imgsz": 8, "batch": 64, "seed": 0}
CLASSIFICATION_SECTIONS = {
    "confusion-matrix", "per-class", "roc-pr", "calibration", "examples", "predictions", "explanations",
}  # fmt: skip
COMMON_SECTIONS = {
    "summary",
    "metrics",
    "training",
    "learning-rate",
    "speed",
    "inference",
    "model-card",
    "configuration",
}


def quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


@pytest.fixture(scope="module")
def digits_run(digits_dir, tmp_path_factory) -> imagerec.Run:
    out = tmp_path_factory.mktemp("report") / "digits-run"
    return imagerec.train(digits_dir, out=out, epochs=2, precision="32", console=quiet(), **TINY)


def section_ids(page: str) -> list[str]:
    return re.findall(r'<section id="([^"]+)">', page)


def test_report_command_writes_every_section_with_images_embedded_and_beside(digits_run, tmp_path):
    result = invoke("report", digits_run.path, "--out", tmp_path, "--device", "cpu")
    assert result.exit_code == 0, result.output
    page = (tmp_path / "report.html").read_text()
    assert set(section_ids(page)) == COMMON_SECTIONS | CLASSIFICATION_SECTIONS
    assert section_ids(page)[0] == "summary"
    assert section_ids(page)[-1] == "configuration"
    for section in section_ids(page):  # the table of contents links every section
        assert f'href="#{section}"' in page
    files = re.findall(r'data-file="([^"]+\.png)"', page)
    assert {"training_loss.png", "training_metric.png", "confusion_matrix.png", "roc.png", "calibration.png"} <= set(
        files
    )
    for name in files:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    uris = re.findall(r'src="(data:image/png;base64,[^"]+)"', page)
    assert len(uris) >= len(files) + 2  # plus the gallery thumbnails
    assert len(set(uris)) == len(uris)  # each image's bytes once: the lightbox enlarges the same element
    assert not re.search(r'(src|href)="(https?:|//)', page)  # nothing to fetch
    assert "true class → predicted class" in page
    assert "As <code>imagerec evaluate</code> measures them." in page  # commands set as code, no literal backticks
    assert "`" not in re.sub(r"<style>.*?</style>", "", page, flags=re.S)


def test_the_one_script_is_admitted_by_its_hash_and_nothing_else(digits_run):
    page = (digits_run.path / "report.html").read_text()
    scripts = re.findall(r"<script>(.*?)</script>", page, flags=re.S)
    assert len(scripts) == 1
    assert "<script " not in page  # no script loaded from anywhere
    policy = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page).group(1)
    digest = base64.b64encode(hashlib.sha256(scripts[0].encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in policy
    assert "unsafe-inline" not in policy.split("script-src")[1]
    assert policy.startswith("default-src 'none'; img-src data:;")


def test_every_image_opens_full_size_and_links_back(digits_run):
    page = (digits_run.path / "report.html").read_text()
    figures = re.findall(r'<figure class="[^"]*zoom[^"]*" id="(image-\d+)"[^>]*>(.*?)</figure>', page, flags=re.S)
    assert len(figures) == page.count("<img ")
    for target, inner in figures:
        number = target.split("-")[1]
        assert f'<a class="open" id="see-{number}" href="#{target}"' in inner
        assert f'<a class="close" href="#see-{number}">' in inner
    assert ":target" in page


def test_predictions_table_and_csv_list_every_image_worst_first(digits_run, digits_dir):
    page = (digits_run.path / "report.html").read_text()
    with (digits_run.path / "predictions.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 179
    assert list(rows[0]) == ["image", "true", "predicted", "p(predicted)", "p(true)", "correct"]
    truth = [float(r["p(true)"]) for r in rows]
    assert truth == sorted(truth)  # worst first: the lowest probability of the true class
    for row in rows:
        assert (Path(digits_dir) / row["image"]).is_file()  # relative to the data's root
        assert row["correct"] == ("yes" if row["true"] == row["predicted"] else "no")
        assert float(row["p(predicted)"]) >= float(row["p(true)"])
    wrong = sum(r["correct"] == "no" for r in rows)
    assert wrong == 179 - round(digits_run.metrics["accuracy"] * 179)
    table = re.search(r'<section id="predictions">.*?<table class="sortable">(.*?)</table>', page, flags=re.S).group(1)
    assert table.count("<tr>") == 1 + 179  # the header and every image: fewer than the 200 shown
    assert "<button" in table
    assert re.findall(r"<tbody><tr><td>([^<]+)</td>", table) == [rows[0]["image"]]


def test_a_long_table_shows_its_first_rows_and_writes_them_all(digits_run, tmp_path):
    from dataclasses import replace

    from imagerec.outputs.report.blocks import Section, Table
    from imagerec.outputs.report.html import render

    ctx = replace(build_context(digits_run.path, evaluate=False), out=tmp_path)
    rows = [[f"image {i}|x", i / 7 if i % 5 else None] for i in range(250)]
    table = Table(["name", "score"], rows, "Ranked.", sortable=True, file="long.csv", shown=200)
    page = render(ctx, [Section("long", "Long", [table])]).read_text()
    assert page.count("<tr>") == 201
    assert "The first 200 of 250 rows; all are in <code>long.csv</code>." in page
    assert 'data-v="0.14285714285714285"' in page  # unrounded, for sorting
    written = list(csv.reader((tmp_path / "long.csv").open(newline="")))
    assert written[0] == ["name", "score"]
    assert len(written) == 251
    assert written[1] == ["image 0|x", ""]
    assert float(written[2][1]) == 1 / 7


def test_model_card_in_the_page_and_beside_it(digits_run):
    from imagerec.metrics.classification import wilson_interval

    card = (digits_run.path / "model_card.md").read_text()
    correct = round(digits_run.metrics["accuracy"] * 179)
    low, high = wilson_interval(correct, 179)
    assert card.startswith("# Model card: ")
    assert f"| accuracy | {correct / 179:.4f} | {low:.3f}–{high:.3f} | Wilson, {correct} of 179 |" in card
    for heading in ("## Intended use", "## Limitations", "| model details |", "| training data |"):
        assert heading in card
    assert "| architecture | seed_cnn |" in card
    assert "| split sizes | 1439 train, 179 val, 179 test |" in card
    assert "Validated only on images like the test split" in card
    f1 = re.search(r"\| F1, macro average \| (\S+) \| (\S+)–(\S+) \| bootstrap", card).groups()
    assert float(f1[1]) <= float(f1[0]) <= float(f1[2])
    page = (digits_run.path / "report.html").read_text()
    section = re.search(r'<section id="model-card">(.*?)</section>', page, flags=re.S).group(1)
    assert "<h3>Intended use</h3>" in section
    assert "Wilson, " in section


def test_inference_speed_is_measured_on_the_evaluated_images(digits_run):
    page = (digits_run.path / "report.html").read_text()
    section = re.search(r'<section id="inference">(.*?)</section>', page, flags=re.S).group(1)
    values = dict(re.findall(r"<tr><td>([^<]+)</td><td[^>]*>([^<]+)</td></tr>", section))
    for row in ("latency per image at batch 1 (ms, median)", "throughput at batch 64 (images/s, median)"):
        assert float(values[row].replace(",", "")) > 0  # how fast is not asserted: CI machines are loaded
    assert values["device"] == "cpu"
    assert int(values["CPU threads"]) >= 1


def test_report_numbers_agree_with_evaluate(digits_run, digits_dir):
    ctx = build_context(digits_run.path, device="cpu")
    evaluated = imagerec.evaluate(digits_run.path, digits_dir, device="cpu")
    assert {k: v for k, v in ctx.metrics.items() if k != "data"} == {k: v for k, v in evaluated.items() if k != "data"}
    matrix = np.array(ctx.metrics["confusion_matrix"])
    assert matrix.sum() == evaluated["count"] == len(ctx.samples) == len(ctx.results) == 179
    probs, targets = torch.stack(ctx.outputs).numpy(), np.array([s.target for s in ctx.samples])
    assert probs.shape == (179, 10)
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    # The report's own predictions (through the Predictor) give evaluate's confusion matrix.
    recounted = np.zeros((10, 10), dtype=int)
    np.add.at(recounted, (targets, probs.argmax(1)), 1)
    assert (recounted == matrix).all()
    assert [r.label for r in ctx.results] == [ctx.info.classes[k] for k in probs.argmax(1)]
    assert [r.source for r in ctx.results] == [str(s.path) for s in ctx.samples]

    # ECE by its definition: 15 equal-width bins (lo, hi] of the top-class probability.
    confidence, correct = probs.max(1).astype(np.float64), probs.argmax(1) == targets
    ece = 0.0
    for b in range(15):
        inside = (confidence > b / 15) & (confidence <= (b + 1) / 15)
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    assert expected_calibration_error(confidence, correct) == pytest.approx(ece, abs=1e-12)
    from torchmetrics.classification import MulticlassCalibrationError

    measured = MulticlassCalibrationError(num_classes=10, n_bins=15)(torch.from_numpy(probs), torch.from_numpy(targets))
    assert float(measured) == pytest.approx(ece, abs=1e-5)

    sections = {s.id: s for s in report_sections(ctx)}
    calibration = " ".join(b.text for b in sections["calibration"].blocks if hasattr(b, "text"))
    assert f"Expected calibration error (ECE): {ece:.4f}" in calibration
    per_class = sections["per-class"].blocks[0]
    supports = [ctx.metrics["per_class"][str(c)]["support"] for c in range(10)]
    assert [row[4] for row in per_class.rows[:10]] == supports
    aucs = [row[2] for row in sections["roc-pr"].blocks[1].rows]
    assert np.mean(aucs) == pytest.approx(ctx.metrics["auc"], abs=1e-4)  # macro one-vs-rest AUC, as evaluate's
    for block in sections["examples"].blocks:
        assert 0 < len(block.images) <= 12
        assert all(image.dtype == np.uint8 and image.shape == (8, 8, 3) for image, _ in block.images)
    worst = sections["examples"].blocks[0].images[0][1]
    assert re.fullmatch(r"\d → \d \(\d\.\d\d\)", worst)

    # Heatmaps of the predicted class: on the most confident errors (true ≠ mapped), then successes (true = mapped).
    errors, successes = [b for b in sections["explanations"].blocks if hasattr(b, "images")]
    names = [s.path.name for s in ctx.samples]
    predicted = {n: (ctx.info.classes[k], p) for n, k, p in zip(names, probs.argmax(1), probs.max(1), strict=True)}
    for gallery, wrong in ((errors, True), (successes, False)):
        assert 0 < len(gallery.images) <= 6
        for image, caption in gallery.images:
            assert image.dtype == np.uint8
            assert image.shape == (192, 192, 3)  # the 8-px digit enlarged 24× with square pixels
            name, true, mapped, score = re.fullmatch(
                r"(\S+) · true (\d) · map of (\d) \((\d\.\d\d)\)", caption
            ).groups()
            assert (mapped, float(score)) == (predicted[name][0], pytest.approx(predicted[name][1], abs=0.006))
            assert (true != mapped) is wrong
    most_confident_error = max(probs.max(1)[probs.argmax(1) != targets])
    assert predicted[errors.images[0][1].split(" · ")[0]][1] == most_confident_error


def test_report_written_at_the_end_of_training(digits_run):
    page = (digits_run.path / "report.html").read_text()
    for setting, used in (("device", "cpu (auto)"), ("imgsz", "8")):  # what the run used, not "auto" or a dash
        assert re.search(rf"<td>{setting}</td>\s*<td[^>]*>{re.escape(used)}</td>", page), setting
    assert set(section_ids(page)) == COMMON_SECTIONS | CLASSIFICATION_SECTIONS
    assert f"{digits_run.metrics['accuracy']:.4f}" in page
    assert (digits_run.path / "confusion_matrix.png").exists()


def test_a_failing_report_does_not_lose_the_run(monkeypatch, tmp_path):
    from imagerec.api import report_after_training
    from imagerec.config import build_config
    from imagerec.engine.evaluate import SplitScores
    from imagerec.outputs import report
    from imagerec.runs import Run

    def broken(*args, **kwargs):
        raise RuntimeError("no fonts [today]")

    monkeypatch.setattr(report, "write_report", broken)
    out = io.StringIO()
    cfg = build_config({"data": {"path": str(tmp_path)}, "train": {"device": "cpu"}})
    scores = SplitScores({"accuracy": 1.0})
    report_after_training(Run(tmp_path, split="test"), cfg, scores, Console(file=out, width=200))
    assert out.getvalue().strip() == "warning: report.html not written: RuntimeError: no fonts [today]"


def test_binary_run_gets_roc_and_pr_for_the_positive_class(faces_dir, tmp_path):
    run = imagerec.train(faces_dir, out=tmp_path / "run", epochs=2, console=quiet(), **{**TINY, "imgsz": 16})
    ctx = build_context(run.path, device="cpu")
    sections = {s.id: s for s in report_sections(ctx)}
    assert set(sections) >= CLASSIFICATION_SECTIONS
    table = sections["roc-pr"].blocks[1]
    assert [row[:2] for row in table.rows] == [["non_face", 10]]  # classes[1], the sigmoid's positive class
    assert table.rows[0][2] == pytest.approx(ctx.metrics["auc"], abs=1e-4)
    assert "non_face as the positive class" in sections["roc-pr"].blocks[0].caption
    assert np.array(ctx.metrics["confusion_matrix"]).sum() == 20


def _multilabel_csv(digits_dir: Path, folder: Path) -> Path:
    """Each digit labelled even/odd, plus `big` when ≥ 5."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "labels.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        for image in sorted(Path(digits_dir).glob("*/*.png")):
            digit = int(image.parent.name)
            labels = ["even" if digit % 2 == 0 else "odd"] + (["big"] if digit >= 5 else [])
            writer.writerow([os.path.relpath(image, folder), ";".join(labels)])
    return path


def test_multilabel_run_gets_per_label_table_and_curves(digits_dir, tmp_path):
    data = _multilabel_csv(digits_dir, tmp_path / "csv")
    run = imagerec.train(data, out=tmp_path / "run", epochs=1, console=quiet(), **TINY)
    page = (run.path / "report.html").read_text()
    assert set(section_ids(page)) == COMMON_SECTIONS | {"per-class", "roc-pr", "omitted", "predictions"}
    ctx = build_context(run.path, device="cpu")
    sections = {s.id: s for s in report_sections(ctx)}
    assert [row[0] for row in sections["per-class"].blocks[0].rows] == ["big", "even", "odd"]
    aps = [row[3] for row in sections["roc-pr"].blocks[1].rows]
    assert np.mean(aps) == pytest.approx(ctx.metrics["map"], abs=1e-4)
    assert "confusion matrix" in sections["omitted"].blocks[0].text


def _moved(run: imagerec.Run, tmp_path: Path) -> Path:
    """A copy of the run whose training data is no longer where run.yaml says."""
    copy = tmp_path / "moved-run"
    shutil.copytree(run.path, copy, ignore=shutil.ignore_patterns("*.png", "report.html", "tensorboard"))
    config = yaml.safe_load((copy / "run.yaml").read_text())
    config["data"]["path"] = str(tmp_path / "gone")
    (copy / "run.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return copy


def test_no_evaluation_data_is_one_clear_error(capsys, monkeypatch, digits_run, tmp_path):
    moved = _moved(digits_run, tmp_path)
    line = user_error(capsys, monkeypatch, "report", moved, "--device", "cpu")
    assert "gone" in line
    assert "--data" in line
    assert "--no-eval" in line
    line = user_error(capsys, monkeypatch, "report", moved, "--data", tmp_path / "nowhere")
    assert "nowhere" in line


def test_no_eval_writes_the_training_sections_alone(digits_run, tmp_path):
    moved = _moved(digits_run, tmp_path)
    result = invoke("report", moved, "--no-eval")
    assert result.exit_code == 0, result.output
    page = (moved / "report.html").read_text()
    assert set(section_ids(page)) == COMMON_SECTIONS - {"metrics"}
    assert "No evaluation data" in page
    assert "Not measured: no evaluation data." in page
    assert "Evaluation: none in this report" in (moved / "model_card.md").read_text()


def test_data_given_for_a_moved_run(digits_run, digits_dir, tmp_path):
    """Other data than the run's own (here: the digits at another path) is evaluated whole, as evaluate does."""
    moved = _moved(digits_run, tmp_path)
    ctx = build_context(moved, data=digits_dir, device="cpu")
    assert len(ctx.samples) == ctx.metrics["count"] == 1797


def test_bad_split(capsys, monkeypatch, digits_run, tmp_path):
    line = user_error(capsys, monkeypatch, "report", digits_run.path, "--split", "tset", "--out", tmp_path)
    assert "--split tset" in line
    assert "train, val, test" in line


def test_maps_too_coarse_to_point_are_not_drawn(digits_run, monkeypatch):
    """Where the finest feature map is too coarse to localise, the "why" section says so instead of drawing maps
    (forced here by a model whose maps are 2×2; seed_cnn's at 8 px are 8×8, as fine as the image)."""
    from imagerec.models import cam_layers
    from imagerec.outputs.report.blocks import Gallery, Text

    ctx = build_context(digits_run.path, device="cpu")
    drawn = next(s for s in report_sections(ctx) if s.id == "explanations")
    assert any(isinstance(b, Gallery) for b in drawn.blocks)
    monkeypatch.setattr(cam_layers, "map_side", lambda *args, **kwargs: 2)
    why = next(s for s in report_sections(ctx) if s.id == "explanations")
    assert [type(b) for b in why.blocks] == [Text]
    assert why.blocks[0].text.startswith("No heatmaps: at 8 px the finest feature map of seed_cnn is 2×2, too coarse")


def test_gallery_images_take_the_smaller_of_png_and_jpeg():
    """A photo embeds as JPEG (several times smaller), an enlarged scan or a flat drawing as PNG (sharp, smaller)."""
    from imagerec.outputs.report.html import smallest

    rng = np.random.default_rng(0)
    photo = (rng.normal(128, 30, (64, 64, 3)).clip(0, 255).astype(np.uint8)).repeat(8, 0).repeat(8, 1)
    photo = (photo.astype(np.int16) + rng.integers(-12, 12, photo.shape)).clip(0, 255).astype(np.uint8)
    scan = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8).repeat(48, 0).repeat(48, 1)
    assert (smallest(photo).kind, smallest(scan).kind) == ("jpeg", "png")
    assert smallest(photo).uri.startswith("data:image/jpeg;base64,")
    assert (smallest(photo).width, smallest(photo).height) == (512, 512)
