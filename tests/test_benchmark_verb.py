"""`imagerec benchmark` on tiny real runs: the report's structure, one row per requested runtime and precision,
ratios, metrics that fp32 runtimes share with eager, JSON, and one-line errors. Nothing here depends on timing:
the runs are tiny and the iterations few, so only the shape and sanity of the numbers are asserted."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import yaml

from helpers import invoke, user_error
from imagerec.engine.autotune import cpu_supports_bf16
from imagerec.outputs import benchmark as bench
from imagerec.outputs.benchmark import BenchmarkReport, benchmark
from serve_runs import trained_run

FAST = {"batches": (1, 3), "iterations": 2, "warmup": 1, "check_images": 16}
FP32_METRIC_TOL = 1e-6  # fp32 graphs agree with eager to ~1e-6 in outputs: the same decisions, the same metric


@pytest.fixture(scope="module")
def classify_run(tmp_path_factory: pytest.TempPathFactory, digits_dir: Path) -> Path:
    return trained_run("classify", tmp_path_factory.getbasetemp(), digits_dir)


@pytest.fixture(scope="module")
def classify_report(classify_run: Path) -> BenchmarkReport:
    return benchmark(classify_run, runtimes=["eager", "onnx", "openvino"], precisions=("fp32", "bf16", "int8"), **FAST)


def _measured(report: BenchmarkReport) -> list:
    return [row for row in report.rows if row.skipped is None]


def test_every_runtime_and_precision_has_a_row(classify_report: BenchmarkReport) -> None:
    pairs = [(row.runtime, row.precision) for row in classify_report.rows]
    expected = [("eager", "fp32"), ("eager", "bf16"), ("onnx", "fp32"), ("onnx", "int8"), ("openvino", "fp32"),
                ("openvino", "int8")]  # fmt: skip
    assert pairs == expected
    assert classify_report.batches == (1, 3)
    assert classify_report.input == (1, 8, 8)
    assert not classify_report.per_image
    bf16 = classify_report.row("eager", "bf16")
    assert (bf16.skipped is None) == cpu_supports_bf16()
    if bf16.skipped is not None:
        assert bf16.skipped.startswith("skipped: no bf16 on this CPU")


def test_timings_are_positive_and_ratios_are_to_eager(classify_report: BenchmarkReport) -> None:
    for row in _measured(classify_report):
        assert [t.batch for t in row.timings] == [1, 3]
        for timing in row.timings:
            values = (timing.p50_ms, timing.p95_ms, timing.images_per_s, timing.vs_eager)
            assert all(math.isfinite(v) and v > 0 for v in values), row
            assert timing.p95_ms >= timing.p50_ms
    assert all(t.vs_eager == pytest.approx(1.0) for t in classify_report.row("eager", "fp32").timings)


def test_fp32_runtimes_keep_eagers_metric(classify_report: BenchmarkReport) -> None:
    eager = classify_report.row("eager", "fp32").parity
    assert eager.metric == "accuracy"
    assert eager.images == FAST["check_images"]
    for row in _measured(classify_report):
        assert row.parity.eager == pytest.approx(eager.eager)
        assert row.runs_in
        if row.precision == "fp32":
            assert row.parity.exported == pytest.approx(eager.eager, abs=FP32_METRIC_TOL)
            assert row.parity.max_abs < 1e-3
        if row.runtime != "eager":
            assert row.setup_s > 0  # the export (and quantisation) was timed apart from the calls
    assert "int8" in classify_report.row("openvino", "int8").runs_in


def test_report_round_trips_through_json(classify_report: BenchmarkReport) -> None:
    data = classify_report.to_dict()
    again = json.loads(json.dumps(data))  # plain JSON types only: dumps refuses anything else
    assert again == json.loads(json.dumps(again))
    assert again["input"] == list(classify_report.input)
    assert [(r["runtime"], r["precision"]) for r in again["rows"]] == [
        (r.runtime, r.precision) for r in classify_report.rows
    ]
    eager = again["rows"][0]
    assert eager["timings"][0]["vs_eager"] == pytest.approx(1.0)
    assert eager["check"]["metric_drop"] == 0.0
    assert again["machine"]["cores"] >= 1


@pytest.mark.parametrize("task", ["detect", "segment"])
def test_detectors_and_segmenters(task: str, tmp_path_factory: pytest.TempPathFactory, digits_dir: Path) -> None:
    run = trained_run(task, tmp_path_factory.getbasetemp(), digits_dir)
    report = benchmark(run, runtimes=["onnx"], precisions=("fp32",), **FAST)
    assert [(r.runtime, r.precision) for r in report.rows] == [("eager", "fp32"), ("onnx", "fp32")]
    assert report.per_image == (task == "detect")  # detectors: per-image graphs, throughput over per-image calls
    assert report.input == (1, 64, 64)
    onnx = report.row("onnx", "fp32")
    assert all(t.images_per_s > 0 and math.isfinite(t.vs_eager) for t in onnx.timings)
    assert onnx.parity.exported == pytest.approx(onnx.parity.eager, abs=FP32_METRIC_TOL)


def test_cli_json_with_compile(classify_run: Path) -> None:
    result = invoke("benchmark", classify_run, "--runtimes", "compile", "--batch", "2,1", "--iterations", "1",
                    "--warmup", "0", "--check-images", "8", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["batches"] == [1, 2]
    rows = {(r["runtime"], r["precision"]): r for r in data["rows"]}
    assert ("eager", "fp32") in rows  # the reference of every ratio, measured even when not asked for
    compiled = rows["compile", "fp32"]
    if compiled["skipped"] is None:  # a machine without a C++ compiler gets a row saying torch.compile failed
        assert compiled["setup_s"] > 0
        assert compiled["check"]["exported"] == pytest.approx(compiled["check"]["eager"], abs=FP32_METRIC_TOL)
    else:
        assert compiled["skipped"].startswith("failed: torch.compile")


def test_a_runtime_not_installed_is_a_row(classify_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = bench.importlib.util.find_spec
    monkeypatch.setattr(bench.importlib.util, "find_spec", lambda name: None if name == "openvino" else real(name))
    result = invoke("benchmark", classify_run, "--runtimes", "eager,openvino", "--batch", "1", "--iterations", "1",
                    "--warmup", "0", "--check-images", "8", "--precision", "fp32,int8")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "openvino fp32: not installed: pip install 'imagerec[openvino]'" in result.stdout
    assert "openvino int8: not installed" in result.stdout
    assert "× eager b1" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch", "1,x"], "--batch 1,x: give batch sizes as positive integers"),
        (["--batch", "0,8"], "--batch 0,8: give positive batch sizes"),
        (["--runtimes", "eager,tensorrt"], "unknown runtime 'tensorrt'"),
        (["--precision", "fp64"], "--precision fp64: choose among fp32, bf16, int8"),
    ],
)
def test_bad_options_are_one_line(classify_run: Path, args: list[str], message: str, capsys, monkeypatch) -> None:
    assert message in user_error(capsys, monkeypatch, "benchmark", classify_run, *args)


def test_a_run_without_its_validation_data(classify_run: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    moved = shutil.copytree(classify_run, tmp_path / "run", ignore=shutil.ignore_patterns("report*", "*.png"))
    config = yaml.safe_load((moved / "run.yaml").read_text())
    config["data"]["path"] = str(tmp_path / "gone")
    (moved / "run.yaml").write_text(yaml.safe_dump(config))
    line = user_error(capsys, monkeypatch, "benchmark", moved, "--runtimes", "eager")
    assert "is not here to check the export on" in line
