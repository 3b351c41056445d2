"""The Task contract and the typed run records: code outside tasks/ asks the Task, never which kind it is; model.json
is read only through ModelInfo; runs written before the record was versioned still load and predict; per-call
prediction options never change the model."""

from __future__ import annotations

import ast
import json
import shutil
import threading
from pathlib import Path

import pytest
import torch

import imagerec
from imagerec.records import ModelInfo
from imagerec.runs import RunDir
from imagerec.tasks.base import PredictOptions
from imagerec.tasks.build import task_from_info
from imagerec.tasks.detection import DetectionTask

SRC = Path(__file__).resolve().parents[1] / "src" / "imagerec"
FIXTURES = Path(__file__).parent / "fixtures" / "run-format-1"
KINDS = {"classify", "detect", "segment", "instance"}
TASK_CLASSES = {"ClassificationTask", "DetectionTask", "InstanceSegmentationTask", "SegmentationTask"}


def _outside_tasks() -> list[Path]:
    return [p for p in sorted(SRC.rglob("*.py")) if "tasks" not in p.relative_to(SRC).parts]


def _where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(SRC)}:{node.lineno}"


def test_no_code_outside_tasks_asks_which_kind_of_task_it_holds() -> None:
    found = []
    for path in _outside_tasks():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                operands = [node.left, *node.comparators]
                if any(isinstance(o, ast.Constant) and o.value in KINDS for o in operands):
                    found.append(f"{_where(path, node)}: compares with a task kind")
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("isinstance", "issubclass"):
                names = {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)}
                if names & TASK_CLASSES:
                    found.append(f"{_where(path, node)}: isinstance on a task class")
    assert not found, "\n".join(found)


def _reads_by_key(node: ast.AST) -> bool:
    """`info["x"]`, `x.info["x"]` or `info.get("x")` on something named info (model.json's usual name)."""

    def named_info(value: ast.AST) -> bool:
        name = value.attr if isinstance(value, ast.Attribute) else getattr(value, "id", "")
        return name == "info"

    if isinstance(node, ast.Subscript):
        return named_info(node.value) and isinstance(node.slice, ast.Constant)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
        return named_info(node.func.value)
    return False


def test_model_json_is_read_only_through_its_typed_record() -> None:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text())
        found += [f"{_where(path, n)}: reads model info by key" for n in ast.walk(tree) if _reads_by_key(n)]
        mentions = [n for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value == "model.json"]
        if mentions and path.name not in ("runs.py", "records.py"):  # the run layout and the record itself
            found.append(f"{_where(path, mentions[0])}: opens model.json itself")
    assert not found, "\n".join(found)


@pytest.mark.parametrize("kind", ["classify", "detect", "segment", "instance"])
def test_records_of_the_first_run_format_load_with_their_preprocessing(kind: str) -> None:
    old = json.loads((FIXTURES / kind / "model.json").read_text())
    info = ModelInfo.model_validate(old)
    assert info.kind == kind
    assert info.record_version == 1
    p = info.preprocessing
    assert (p.channels, p.size, list(p.mean), list(p.std)) == (old["channels"], old["imgsz"], old["mean"], old["std"])
    assert p.inside_model is (kind != "classify")
    assert p.resize == {"classify": "shorter_side_centre_crop", "segment": "none"}.get(kind, "longest_side_pad")
    assert task_from_info(info).kind == kind


def test_a_new_record_keeps_every_old_field_and_adds_the_typed_ones(tmp_path: Path) -> None:
    old = json.loads((FIXTURES / "classify" / "model.json").read_text())
    info = ModelInfo.model_validate(old)
    task = task_from_info(info)
    fresh = info.model_copy(update={"record_version": 2, "preprocessing": task.preprocessing(
        channels=info.channels, imgsz=info.imgsz, mean=info.mean, std=info.std)})  # fmt: skip
    RunDir(tmp_path).write_model_info(fresh)
    written = json.loads((tmp_path / "model.json").read_text())
    assert {k: written[k] for k in old} == old
    assert set(written) - set(old) == {"record_version", "kind", "preprocessing"}
    assert RunDir(tmp_path).read_model_info() == fresh


def test_a_run_directory_of_the_first_format_predicts_as_it_did(digits_dir: Path, tmp_path: Path) -> None:
    run = shutil.copytree(FIXTURES / "classify", tmp_path / "run")
    expected = json.loads((run / "expected_predictions.json").read_text())
    sources = [sorted((digits_dir / str(d)).glob("*.png"))[0] for d in range(10)]
    results = imagerec.load(run, device="cpu").predict(sources, topk=3)
    got = {Path(r.source).name: {"labels": list(r.labels), "probs": [round(p, 6) for p in r.probs]} for r in results}
    assert got.keys() == expected.keys()
    for name, want in expected.items():
        assert got[name]["labels"] == want["labels"], name
        assert got[name]["probs"] == pytest.approx(want["probs"], abs=1e-5), name
    assert json.loads((run / "model.json").read_text()).get("record_version") is None  # loading never rewrites it


def test_a_damaged_record_names_the_file_and_the_field(tmp_path: Path, capsys, monkeypatch) -> None:
    from helpers import user_error

    run = shutil.copytree(FIXTURES / "classify", tmp_path / "run")
    info = json.loads((run / "model.json").read_text())
    info["channels"] = "three"
    (run / "model.json").write_text(json.dumps(info))
    line = user_error(capsys, monkeypatch, "predict", run, FIXTURES)
    assert "model.json: channels:" in line


def _detector() -> tuple[DetectionTask, torch.nn.Module]:
    info = ModelInfo.model_validate({
        "format": 1, "task": "detect", "model": "fcos_lite", "classes": ["a", "b"], "channels": 1, "imgsz": 64,
        "mean": [0.5], "std": [0.25], "instance": False, "backbone": None, "anchor_sizes": None, "resize": "",
    })  # fmt: skip
    task = task_from_info(info)
    torch.manual_seed(0)
    return task, task.build_model(info).eval()


def test_prediction_options_apply_to_one_call_and_never_change_the_model() -> None:
    """Two threads predicting with one detector at other thresholds each get what they would get alone."""
    task, model = _detector()
    torch.manual_seed(1)
    images = [torch.rand(1, 64, 64) for _ in range(2)]
    names = ["x", "y"]
    strict, loose = PredictOptions(conf=0.5, iou=0.3), PredictOptions(conf=0.0)
    with torch.no_grad():
        alone = {o: [r.to_dict() for r in task.predict(model, images, names, o)] for o in (strict, loose)}
    assert len(alone[loose][0]["objects"]) > len(alone[strict][0]["objects"])
    before = {k: v for k, v in vars(model.model).items() if k in ("score_thresh", "nms_thresh")}
    mismatches = []

    def worker(options: PredictOptions) -> None:
        for _ in range(10):
            with torch.no_grad():
                got = [r.to_dict() for r in task.predict(model, images, names, options)]
            if got != alone[options]:
                mismatches.append(options)

    threads = [threading.Thread(target=worker, args=(o,)) for o in (strict, loose)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not mismatches
    assert {k: v for k, v in vars(model.model).items() if k in ("score_thresh", "nms_thresh")} == before


@pytest.mark.parametrize(("task", "model"), [("classify", "seed_cnn"), ("detect", "fcos_lite"), ("segment", "unet")])
def test_each_task_has_its_own_default_model(task: str, model: str, tmp_path: Path) -> None:
    from imagerec.api import resolve_config

    assert resolve_config(tmp_path, task=task).model.name == model
    assert resolve_config(tmp_path, task=task, model="resnet18").model.name == "resnet18"


def test_each_task_names_the_settings_only_it_reads_and_their_descriptions_say_so() -> None:
    """Task.settings decide which task-specific settings a run refuses; the config's description of each starts with
    the tasks that read it, which is what `imagerec train -h` shows and how `pretrain -h` leaves them out."""
    from imagerec.cli.options import task_readers
    from imagerec.config import SECTIONS
    from imagerec.tasks.build import TASKS, _task_class

    fields = {name: info for schema in SECTIONS.values() for name, info in schema.model_fields.items()}
    readers: dict[str, list[str]] = {}
    for task in TASKS:
        for setting in _task_class(task).settings:
            assert setting in fields, (task, setting)
            readers.setdefault(setting, []).append(task)
    assert {name: task_readers(info) for name, info in fields.items() if task_readers(info)} == readers


def test_the_typed_prediction_options_are_the_prediction_options() -> None:
    """`predictor.predict(images, **PredictSettings)`: the TypedDict editors read has PredictOptions' fields."""
    from dataclasses import fields
    from typing import get_type_hints

    from imagerec.tasks.base import PredictSettings

    assert get_type_hints(PredictSettings) == {
        f.name: get_type_hints(PredictOptions)[f.name] for f in fields(PredictOptions)
    }
