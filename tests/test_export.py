"""Export: each task to each format checks itself against eager PyTorch on the run's validation images, carries its
preprocessing record, predicts as the run does through every runtime, and refuses what it cannot stand behind."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import imagerec
from helpers import invoke, user_error
from imagerec.outputs.export import FP32_ATOL, export, refusal
from imagerec.outputs.runtimes import open_exported
from serve_runs import sample_images, trained_run

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed: pip install 'imagerec[onnx]'")
pytest.importorskip("openvino", reason="the openvino extra is not installed: pip install 'imagerec[openvino]'")

CASES = [("classify", "onnx"), ("detect", "onnx"), ("segment", "onnx"), ("classify", "openvino"),
         ("detect", "openvino"), ("segment", "openvino"), ("classify", "torchscript")]  # fmt: skip
SUFFIX = {"onnx": ".onnx", "openvino": ".xml", "torchscript": ".torchscript"}
PROB_TOL = 1e-4  # fp32 runtimes reorder sums: probabilities agree to about 1e-6 here
BOX_TOL = 1e-2  # pixels


@pytest.fixture(scope="module")
def runs(digits_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.getbasetemp()
    return {task: trained_run(task, root, digits_dir) for task in ("classify", "detect", "segment")}


def _same_results(eager: list, exported: list) -> None:
    """Exported predictions equal eager ones: labels, boxes and class maps, and scores within tolerance."""
    assert len(eager) == len(exported)
    for e, x in zip(eager, exported, strict=True):
        assert type(e) is type(x)
        assert (e.source, e.error) == (x.source, x.error)
        if hasattr(e, "labels") and not hasattr(e, "boxes"):
            assert e.labels == x.labels, e.source
        for key in ("probs",):
            if hasattr(e, key):
                np.testing.assert_allclose(getattr(x, key), getattr(e, key), atol=PROB_TOL)
        if hasattr(e, "boxes"):
            _same_boxes(e, x)
        if hasattr(e, "mask"):
            assert e.mask.shape == x.mask.shape
            assert (e.mask == x.mask).all(), e.source


def _same_boxes(eager, exported) -> None:
    """The same boxes, labels and scores (within tolerance) in any order: runtimes may order near-equal scores
    either way."""
    assert len(eager.boxes) == len(exported.boxes), eager.source
    left = list(zip(exported.labels, np.reshape(exported.boxes, (-1, 4)), exported.scores, strict=True))
    for label, box, score in zip(eager.labels, np.reshape(eager.boxes, (-1, 4)), eager.scores, strict=True):
        twin = next((i for i, (lab, b, s) in enumerate(left) if lab == label and np.abs(b - box).max() <= BOX_TOL
                     and abs(s - score) <= PROB_TOL), None)  # fmt: skip
        assert twin is not None, f"{eager.source}: no exported twin of {label} {box} {score}"
        left.pop(twin)


@pytest.mark.parametrize(("task", "fmt"), CASES)
def test_export_checks_itself_and_predicts_as_the_run(runs, digits_dir, tmp_path, task, fmt) -> None:
    run = runs[task]
    out = tmp_path / f"model{SUFFIX[fmt]}"
    result = export(run, format=fmt, out=out)
    assert result.path == out
    assert out.exists()
    assert result.refused is None
    check = json.loads(out.with_name(out.name + ".json").read_text())
    assert check["check"]["images"] == result.parity.images > 0
    assert check["check"]["max_abs"] <= FP32_ATOL
    assert check["check"]["agreement"] >= 0.99, check["check"]
    assert check["check"]["eager"] == pytest.approx(check["check"]["exported"], abs=1e-6)
    assert check["export"]["precision"] == "fp32"
    assert check["export"]["runs_in"] == "f32"

    exported = open_exported(out)  # the file alone says how to feed it and what comes out
    assert exported.info == imagerec.load(run, device="cpu").info
    assert exported.record.format == fmt
    assert exported.record.note

    images = sample_images(task, run, digits_dir)
    eager = imagerec.load(run, device="cpu").predict(images)
    _same_results(eager, imagerec.load(out).predict(images))


# torch.compile is checked by `imagerec benchmark`'s tests: compiling costs ~30 s on 2 cores.
@pytest.mark.parametrize("runtime", ["onnx", "openvino", "torchscript"])
def test_every_runtime_predicts_a_run_as_eager_does(runs, digits_dir, runtime) -> None:
    """`--runtime` on a run directory: exported in memory (or compiled), same results."""
    run = runs["classify"]
    images = sample_images("classify", run, digits_dir)
    predictor = imagerec.load(run, runtime=runtime)
    assert predictor.runtime == runtime
    _same_results(imagerec.load(run, device="cpu").predict(images), predictor.predict(images))


def test_predict_cli_on_an_exported_file_writes_what_the_run_writes(runs, digits_dir, tmp_path) -> None:
    run = runs["detect"]
    export(run, out=tmp_path / "detector.onnx")
    images = [str(p) for p in sample_images("detect", run, digits_dir)]
    from_run = invoke("predict", run, *images, "--format", "json")
    from_file = invoke("predict", tmp_path / "detector.onnx", *images, "--format", "json")
    assert from_run.exit_code == from_file.exit_code == 0, from_file.output
    for e, x in zip(json.loads(from_run.stdout), json.loads(from_file.stdout), strict=True):
        assert [o["label"] for o in e["objects"]] == [o["label"] for o in x["objects"]]
        assert [o["box"] for o in e["objects"]] == pytest.approx([o["box"] for o in x["objects"]], abs=0.02)
        assert (e["width"], e["height"]) == (x["width"], x["height"])


def test_export_cli_prints_the_graph_its_precision_and_its_check(runs, tmp_path) -> None:
    out = tmp_path / "m.onnx"
    result = invoke("export", runs["segment"], "--out", out)
    assert result.exit_code == 0, result.output
    assert "graph: logits: N×" in result.output
    assert "computed in f32" in result.output
    assert "pixel agreement 100.00%" in result.output
    assert f"exported to {out}" in result.output


def test_an_export_outside_tolerance_is_refused_and_leaves_no_file(runs, tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "strict.onnx"
    error = user_error(capsys, monkeypatch, "export", runs["classify"], "--out", out, "--atol", "1e-12")
    assert error.startswith("error: export refused, no file written: outputs differ from eager PyTorch by up to")
    assert not out.exists()
    assert not list(tmp_path.glob(".export-*"))
    assert json.loads((tmp_path / "strict.onnx.json").read_text())["refused"]
    forced = invoke("export", runs["classify"], "--out", out, "--atol", "1e-12", "--force")
    assert forced.exit_code == 0
    assert out.exists()
    assert "kept with --force" in forced.output


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_int8_reports_its_metric_drop_and_is_refused_above_the_limit(runs, digits_dir, tmp_path, fmt) -> None:
    out = tmp_path / f"int8{SUFFIX[fmt]}"
    result = export(runs["classify"], format=fmt, int8=True, out=out, max_drop=1.0)
    assert result.path == out
    assert result.record.precision == "int8"
    assert "int8" in result.record.runs_in
    assert result.parity.metric_drop == pytest.approx(result.parity.eager - result.parity.exported)
    assert result.parity.max_abs > FP32_ATOL  # int8 is not fp32: the check sees it
    assert imagerec.load(out).predict(sample_images("classify", runs["classify"], digits_dir))  # runs as any export
    drop = result.parity.metric_drop
    assert refusal(result.parity, int8=True, atol=FP32_ATOL, max_drop=drop - 0.001).startswith(
        f"int8 accuracy is {drop:.4f} below fp32's"
    )
    assert refusal(result.parity, int8=True, atol=FP32_ATOL, max_drop=drop) is None


def test_exported_detector_refuses_options_frozen_in_its_graph(runs, digits_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "d.onnx"
    export(runs["detect"], out=out)
    image = sample_images("detect", runs["detect"], digits_dir)[0]
    for option in (("--iou", "0.3"), ("--agnostic-nms",), ("--max-det", "5")):
        error = user_error(capsys, monkeypatch, "predict", out, image, *option)
        assert f"{option[0]}: an exported detector suppresses boxes inside its graph" in error
    assert "this export keeps boxes scoring at least 0.05" in user_error(
        capsys, monkeypatch, "predict", out, image, "--conf", "0.01"
    )


def test_bad_exports_are_one_line_errors(runs, tmp_path, capsys, monkeypatch) -> None:
    def bad(*args: object) -> str:
        return user_error(capsys, monkeypatch, *args)

    broken = tmp_path / "broken-run"
    shutil.copytree(runs["classify"], broken)
    for weights in broken.glob("*.safetensors"):
        weights.write_bytes(b"not safetensors")
    assert "damaged weights file" in bad("export", broken)
    for weights in broken.glob("*.safetensors"):
        weights.unlink()
    assert "weights missing" in bad("export", broken)
    assert "TorchScript exports stay fp32" in bad("export", runs["classify"], "--int8", "--format", "torchscript")
    assert "a onnx export is a .onnx file" in bad("export", runs["classify"], "--out", tmp_path / "m.txt")
    assert "unknown export format 'tflite'" in bad("export", runs["classify"], "--format", "tflite")
    (tmp_path / "a-file").write_text("")
    assert "cannot create this folder (a file is in the way)" in bad(
        "export", runs["classify"], "--out", tmp_path / "a-file" / "m.onnx"
    )
    damaged = tmp_path / "damaged.onnx"
    damaged.write_bytes(b"\x08\x01garbage")
    assert f"{damaged}: cannot be read as onnx" in bad("predict", damaged, tmp_path)


def test_calibration_and_check_data_must_be_the_runs(runs, digits_dir, capsys, monkeypatch) -> None:
    scenes = runs["detect"].parent / "serve-scenes"
    for run, option, data, needs in (
        (
            runs["segment"],
            "--check",
            digits_dir,
            "--task segment needs masks, but this is imagefolder data with class labels",
        ),
        (runs["classify"], "--calib", scenes, "--task classify needs class labels, but this is coco data with boxes"),
    ):
        extra = ("--int8",) if option == "--calib" else ()
        error = user_error(capsys, monkeypatch, "export", run, *extra, option, data)
        assert error.startswith(f"error: {data}: {needs}"), error


def test_an_exported_file_is_served_as_its_run(runs, digits_dir, tmp_path) -> None:
    pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'imagerec[serve]'")
    from fastapi.testclient import TestClient

    from imagerec.outputs.serve.app import Settings, create_app

    out = tmp_path / "segmenter.onnx"
    export(runs["segment"], out=out)
    predictor = imagerec.load(out)
    image = sample_images("segment", runs["segment"], digits_dir)[0]
    with TestClient(create_app(predictor, Settings(runtime=predictor.runtime))) as client:
        model = client.get("/v1/model").json()
        body = client.post("/v1/predict", files={"file": (image.name, image.read_bytes(), "image/png")}).json()
    assert model["runtime"] == "onnx"
    assert model["preprocessing"] == json.loads((runs["segment"] / "model.json").read_text())["preprocessing"]
    eager = imagerec.load(runs["segment"], device="cpu").predict(image)[0]
    assert body["results"][0]["areas"] == eager.areas


def test_an_fp32_export_whose_decisions_disagree_is_refused() -> None:
    """Differences are measured on what matches: a detector whose boxes stop matching is refused all the same."""
    from imagerec.outputs.parity import Parity

    parity = Parity(images=10, split="val", metric="map", eager=0.227, exported=0.122, max_abs=1e-6, max_rel=1e-6,
                    agreement=0.08, agreement_name="box match")  # fmt: skip
    assert refusal(parity, int8=False, atol=FP32_ATOL, max_drop=0.01).startswith("box match with eager PyTorch is 8.0%")
    assert refusal(replace(parity, agreement=0.99), int8=False, atol=FP32_ATOL, max_drop=0.01) is None


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_exported_detector_resizes_as_eager_at_every_size(tmp_path, fmt) -> None:
    """Images whose longest side scales exactly onto the input size (80 px onto 64: ×0.8) were resized one pixel
    short inside the graph (a float32 scale), shifting every pixel; every size now gives eager's boxes."""
    import torch

    from export_parity import Case, fresh_model
    from imagerec.outputs.graphs import FORMATS, OPSET, export_record, metadata
    from imagerec.outputs.parity import _Differences
    from imagerec.outputs.runtimes import RUNTIMES, Exported

    task, info, model = fresh_model(Case("detect", "fcos_lite", 64, channels=1))  # ~100 boxes an image to compare
    sig = task.export_signature(model, info, dynamic_batch=True)
    record = export_record(sig, fmt, int8=False, dynamic_batch=True, opset=OPSET)
    out = tmp_path / f"d{SUFFIX[fmt]}"
    FORMATS.get(fmt).write(sig, metadata(info, record), out, OPSET)
    graph = RUNTIMES.get(fmt)(Exported(out, fmt, info, record))
    generator = torch.Generator().manual_seed(1)
    for height, width in ((60, 80), (100, 160), (50, 66), (90, 50), (64, 64)):
        image = torch.rand(1, height, width, generator=generator)
        with torch.no_grad():
            eager = model([image])
        diffs = _Differences("boxes", conf=0.05)
        diffs.outputs(eager, graph([image]))
        assert diffs.total >= 10, (height, width)
        assert diffs.share == 1.0, (height, width, diffs.share)
        assert diffs.max_abs <= FP32_ATOL, (height, width, diffs.max_abs)
