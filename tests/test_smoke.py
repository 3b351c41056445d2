"""The smoke matrix: every verb on every task, given only the data and `--task` (and the outputs a verb cannot do
without, such as embed's `--out`), through the command line as a user types it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from helpers import invoke
from imagerec.data.samples import write_digit_scenes

TASKS = ("classify", "detect", "segment")


@pytest.fixture(scope="module")
def data(digits_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small real data per task: 6 digits of each class; 12 digit scenes to train on (boxes, and masks for segment).
    The recipe trains small data for many epochs: the smaller the data, the cheaper the matrix."""
    root = tmp_path_factory.mktemp("smoke")
    digits = root / "digits"
    for folder in sorted(digits_dir.iterdir()):
        (digits / folder.name).mkdir(parents=True)
        for image in sorted(folder.glob("*.png"))[:6]:
            shutil.copy(image, digits / folder.name / image.name)
    scenes = write_digit_scenes(root / "scenes", n_train=12, n_val=2, n_test=2, size=64)
    return {"classify": digits, "detect": scenes, "segment": scenes}


def _image(task: str, data: Path) -> Path:
    return next((data / "0").glob("*.png")) if task == "classify" else next((data / "images" / "test").glob("*.png"))


def _decisions(result: dict) -> object:
    """What a prediction decided: labels, objects' labels, or pixels per class."""
    return result.get("labels") or [o["label"] for o in result.get("objects", [])] or result.get("areas")


def _json(*args: object) -> object:
    """`imagerec ARGS --json`: exit code 0 and the JSON it printed on stdout (its progress went to stderr)."""
    result = invoke(*args, "--json")
    assert result.exit_code == 0, (args[0], result.output)
    return json.loads(result.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("task", TASKS)
def test_every_verb_runs_on_every_task_with_no_options(
    task: str, data: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each verb twice: as typed with no optional flags (exit 0), and with --json (exit 0, JSON on stdout)."""
    monkeypatch.chdir(tmp_path)  # runs/ is written here
    source = data[task]
    image = _image(task, source)
    trained = invoke("train", source, "--task", task)
    assert trained.exit_code == 0, trained.output
    assert "next: imagerec predict" in trained.stdout
    summary = _json("train", source, "--task", task)
    run = tmp_path / "runs" / f"{task}-002"
    assert summary["run"] == str(Path("runs") / f"{task}-002")
    assert summary["report"] == str(run.relative_to(tmp_path) / "report.html")
    info = json.loads((run / "model.json").read_text())
    assert info["kind"] == task
    assert (run / "report.html").is_file()

    assert invoke("evaluate", run, source).exit_code == 0
    metrics = _json("evaluate", run, source)
    measured_in_training = json.loads((run / "evaluation" / "test.json").read_text())
    shared = set(summary["metrics"]) & set(measured_in_training)  # the JSON summary gives the test metrics
    assert len(shared) > 3
    assert {k: summary["metrics"][k] for k in shared} == {k: measured_in_training[k] for k in shared}
    assert {k: v for k, v in metrics.items() if k != "data"} == {
        k: measured_in_training[k] for k in metrics if k != "data"
    }  # the same weights, numerics and batches: the same numbers

    assert invoke("predict", run, image).exit_code == 0
    predicted = _json("predict", run, image)
    assert predicted[0]["source"] == str(image)

    assert invoke("report", run).exit_code == 0
    assert Path(_json("report", run)["report"]) == run / "report.html"
    assert invoke("explain", run, image).exit_code == 0
    explained = _json("explain", run, image)
    assert explained["explanations"][0]["source"] == str(image)
    assert list((run / "explanations").glob("*.png"))
    assert invoke("embed", run, image.parent, "--out", tmp_path / "e.npz").exit_code == 0
    embedded = _json("embed", run, image.parent, "--out", tmp_path / "e.npz")
    assert (embedded["count"], embedded["failed"]) == (len(list(image.parent.glob("*.png"))), [])
    found = invoke("neighbors", run, image, "--index", tmp_path / "e.npz")
    assert found.exit_code == 0, found.output
    matches = _json("neighbors", run, image, "--index", tmp_path / "e.npz")[0]["matches"]
    assert matches
    assert all(Path(m["path"]).parent == image.parent and Path(m["path"]) != image for m in matches)

    exported = invoke("export", run)
    assert exported.exit_code == 0, exported.output
    assert _json("export", run)["path"] == str(run / "exports" / "model.onnx")
    from_file = _json("predict", run / "exports" / "model.onnx", image)
    assert _decisions(from_file[0]) == _decisions(predicted[0])

    # benchmark's defaults time every runtime at int8 too (minutes per task): the matrix times two at fp32, once;
    # tests/test_benchmark_verb.py covers the rest.
    timed = _json("benchmark", run, "--runtimes", "eager,onnx", "--precision", "fp32", "--batch", "1",
                  "--iterations", "1")  # fmt: skip
    assert [row["runtime"] for row in timed["rows"]] == ["eager", "onnx"]
    assert _json("data", "inspect", source)["images"]
    for args in (("models", "--task", task), ("version",)):
        assert invoke(*args).exit_code == 0
        assert _json(*args)


@pytest.mark.slow
def test_pretrain_then_train_from_it_with_no_options(
    data: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`imagerec pretrain DATA`, then `imagerec train DATA --weights runs/pretrain-001`: the model comes from the
    pretraining run, and embed / neighbors read the pretraining run as any other."""
    monkeypatch.chdir(tmp_path)
    source = data["classify"]
    pretrained = invoke("pretrain", source, "--json")
    assert pretrained.exit_code == 0, pretrained.output
    assert json.loads(pretrained.stdout)["run"] == str(Path("runs") / "pretrain-001")
    run = tmp_path / "runs" / "pretrain-001"
    assert json.loads((run / "model.json").read_text())["head"]["method"] == "simclr"
    assert "val_embedding_spread" in pretrained.output  # the collapse check is printed per epoch
    trained = invoke("train", source, "--weights", run)
    assert trained.exit_code == 0, trained.output
    info = json.loads((tmp_path / "runs" / "classify-001" / "model.json").read_text())
    assert info["model"] == "resnet18"
    embedded = invoke("embed", run, source, "--out", tmp_path / "e.npz")
    assert embedded.exit_code == 0, embedded.output
    image = _image("classify", source)
    found = invoke("neighbors", run, image, "--index", tmp_path / "e.npz", "--json")
    assert found.exit_code == 0, found.output
    assert json.loads(found.stdout)[0]["matches"]
