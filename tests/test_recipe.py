"""Good models by default: the task inferred from the data, the recipe's choices and their reasons, the time
budget, the machine cache of the precision probe, torch threads, and the fixes to resume, splits and configs."""

from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path

import pytest
import torch
import yaml
from lightning_fabric import Fabric
from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import imagerec
from helpers import invoke
from imagerec.api import plan
from imagerec.config import TrainConfig, duration_seconds
from imagerec.data.samples import write_digit_scenes
from imagerec.engine import autotune
from imagerec.engine.autotune import ComputeSettings, cached_cpu_settings
from imagerec.engine.budget import RESERVE, TimeBudget
from imagerec.engine.loop import FitLoop, FitState, fit
from imagerec.errors import UserError
from imagerec.tasks.classification import ClassificationTask
from imagerec.training import torch_threads


def quiet() -> Console:
    return Console(file=open("/dev/null", "w"))  # noqa: SIM115 - closed with the process


def _subset(source: Path, out: Path, per_class: dict[str, int]) -> Path:
    for name, n in per_class.items():
        (out / name).mkdir(parents=True)
        for image in sorted((source / name).glob("*.png"))[:n]:
            shutil.copy(image, out / name / image.name)
    return out


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_digit_scenes(tmp_path_factory.mktemp("recipe") / "scenes", n_train=16, n_val=4, n_test=4, size=64)


# --- the plan ---------------------------------------------------------------------------------------------------


def test_the_task_is_inferred_from_the_data(digits_dir: Path, scenes: Path) -> None:
    classify = plan(digits_dir)
    assert classify.cfg.task == "classify"
    assert classify.cfg.model.name == "seed_cnn"
    assert "class labels" in next(c.reason for c in classify.choices if c.setting == "task")
    segment = plan(scenes)  # digit scenes hold both boxes and masks: mask files win, and the reason says so
    assert segment.cfg.task == "segment"
    assert segment.cfg.model.name == "unet"
    assert "mask files" in next(c.reason for c in segment.choices if c.setting == "task")
    detect = plan(scenes, task="detect")
    assert detect.cfg.model.name == "fcos_lite"
    assert all(c.setting != "task" for c in detect.choices)  # given, so not chosen


def test_the_recipe_fits_the_data_and_given_settings_win(digits_dir: Path, tmp_path: Path) -> None:
    digits = plan(digits_dir)
    chosen = {c.setting: c for c in digits.choices}
    # 1,439 training images of 10 balanced classes: ~25,000 images seen → 17 epochs; accuracy is the monitor.
    assert digits.cfg.train.epochs == chosen["train.epochs"].value == 17
    assert digits.cfg.train.monitor == "val_accuracy"
    assert digits.cfg.train.label_smoothing == 0.0  # not measured to help: left off
    assert all(c.reason for c in digits.choices)

    binary = _subset(digits_dir, tmp_path / "binary", {"0": 60, "1": 15})  # 4:1, two classes
    planned = plan(binary, epochs=3, augment="none")
    chosen = {c.setting: c for c in planned.choices}
    assert planned.cfg.train.monitor == "val_auc"
    assert planned.cfg.train.epochs == 3
    assert planned.cfg.data.augment == "none"
    assert "train.epochs" not in chosen
    assert "data.augment" not in chosen
    assert {"train.epochs", "data.augment"} <= planned.given
    assert planned.cfg.data.batch == planned.data.images // 4 < 64  # small data: at least 4 steps per epoch
    assert any(line.startswith("given: ") and "train.epochs = 3" in line for line in planned.lines())

    longer = plan(binary, recipe="best")
    assert longer.cfg.train.epochs == 2 * plan(binary).cfg.train.epochs


def test_dry_run_prints_the_plan_and_trains_nothing(digits_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke("train", digits_dir, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "task = classify: inferred" in result.output
    assert "train.epochs = 17: recipe balanced" in result.output
    assert not (tmp_path / "runs").exists()


def test_detection_trains_at_320_px_on_a_cpu_unless_objects_are_small(scenes: Path, tmp_path: Path) -> None:
    from imagerec.recipe import DataProfile, plan_recipe
    from imagerec.tasks.detection import DetectionTask

    cfg = plan(scenes, task="detect", epochs=1).cfg
    task = DetectionTask(["a"])
    photos = DataProfile(images=100, classes=1, counts=[100], shapes=[(480, 640)] * 5, object_sides=[0.3] * 5)
    planned, _ = plan_recipe(cfg, task, photos, given=set())
    assert planned.data.imgsz == 320
    tiny = DataProfile(images=100, classes=1, counts=[100], shapes=[(480, 640)] * 5, object_sides=[0.02] * 5)
    assert plan_recipe(cfg, task, tiny, given=set())[0].data.imgsz == 640  # 6 px objects at 320: too small
    assert plan_recipe(cfg, task, photos, given=set(), cpu=False)[0].data.imgsz == 640


# --- the time budget --------------------------------------------------------------------------------------------


def test_durations() -> None:
    assert [duration_seconds(t) for t in ("90s", "10m", "1.5h")] == [90, 600, 5400]
    with pytest.raises(ValueError, match="should match pattern"):
        TrainConfig(time="10 minutes")


def test_a_budget_too_small_for_one_epoch_names_the_epoch_time_and_the_smallest_budget(monkeypatch) -> None:
    clock = [0.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    budget = TimeBudget(60, start=0.0)
    assert budget.first_estimate(10.0, text="1m") == 5  # 57 s usable
    with pytest.raises(UserError, match=r"one epoch takes about 90 s here.*at least --time 2m"):
        budget.first_estimate(90.0, text="1m")


def test_the_schedule_is_planned_after_the_first_epoch_and_shortened_when_epochs_slow_down(monkeypatch) -> None:
    clock = [0.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    durations = iter([10, 10, 10, 30, 30, 30, 30, 30])
    torch.manual_seed(0)
    x, y = torch.randn(32, 1, 4, 4), torch.randint(0, 3, (32,))
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    fabric = Fabric(accelerator="cpu", devices=1)
    model, optimizer = fabric.setup(model, optimizer)
    planned: list[int] = []

    def save(state: FitState, best: bool) -> None:
        clock[0] += next(durations)  # the epoch "took" this long

    def replan(epochs: int):
        planned.append(epochs)
        return scheduler

    loop = FitLoop(
        optimizer=optimizer, scheduler=scheduler, train_loader=loader, val_loader=loader, epochs=3,
        monitor=("val_loss", "min"), save=save, budget=TimeBudget(100, start=0.0), replan=replan,
    )  # fmt: skip
    state = fit(fabric, ClassificationTask(["a", "b", "c"]), model, loop, FitState(), quiet())
    usable = 100 * (1 - RESERVE)
    # After epoch 1 (10 s): 1 + (95 - 10) // 10 = 9 epochs. After epoch 4 (t = 60, median 10 s): 4 + 3 = 7.
    # After epoch 5 (t = 90): nothing more fits, so the run ends there, within the budget.
    assert planned == [9, 7, 5]
    assert state.epoch == 5
    assert clock[0] <= usable


def test_time_and_epochs_plan_a_run_within_its_budget(digits_dir: Path, tmp_path: Path) -> None:
    small = _subset(digits_dir, tmp_path / "small", {str(d): 10 for d in range(10)})
    run = imagerec.train(small, time="8s", imgsz=8, out=tmp_path / "run", console=quiet())
    saved = yaml.safe_load((run.path / "run.yaml").read_text())
    assert saved["train"]["time"] == "8s"
    assert run.epochs == saved["train"]["epochs"] >= 1  # run.yaml records the planned epochs it trained
    rows = list(csv.DictReader((run.path / "metrics.csv").open()))
    assert sum(float(r["epoch_time_s"]) for r in rows) < 8


# --- same command, same numerics --------------------------------------------------------------------------------


def test_the_precision_probe_is_measured_once_per_machine_model_and_shape(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("IMAGEREC_CACHE_DIR", str(tmp_path))
    calls = []

    def measure(result: ComputeSettings):
        def run() -> ComputeSettings:
            calls.append(result)
            return result

        return run

    first = cached_cpu_settings("classify seed_cnn (1, 8, 8)", measure(ComputeSettings("bf16-mixed", True)))
    again = cached_cpu_settings("classify seed_cnn (1, 8, 8)", measure(ComputeSettings("32-true", False)))
    assert (again.precision, again.channels_last) == (first.precision, first.channels_last) == ("bf16-mixed", True)
    assert len(calls) == 1
    other = cached_cpu_settings("classify seed_cnn (1, 16, 16)", measure(ComputeSettings("32-true", False)))
    assert other.precision == "32-true"
    assert len(calls) == 2
    (tmp_path / "compute.json").write_text("{damaged")
    assert cached_cpu_settings("x", measure(ComputeSettings("32-true", False))).precision == "32-true"
    assert autotune.machine() in json.loads((tmp_path / "compute.json").read_text()).popitem()[0]


def test_torch_threads(monkeypatch) -> None:
    assert torch_threads(TrainConfig(threads=3)) == 3
    monkeypatch.setenv("IMAGEREC_THREADS", "2")
    assert torch_threads(TrainConfig()) == 2
    monkeypatch.delenv("IMAGEREC_THREADS")
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    assert torch_threads(TrainConfig()) == 1


# --- fixes ------------------------------------------------------------------------------------------------------


def test_resume_extends_a_finished_run(digits_dir: Path, tmp_path: Path) -> None:
    small = _subset(digits_dir, tmp_path / "small", {str(d): 12 for d in range(10)})
    run = imagerec.train(small, imgsz=8, epochs=2, out=tmp_path / "run", console=quiet())
    extended = imagerec.train(resume=run.path, epochs=4, console=quiet())
    assert extended.epochs == 4
    assert yaml.safe_load((run.path / "run.yaml").read_text())["train"]["epochs"] == 4  # "4 of 4", not "4 of 2"
    rows = list(csv.DictReader((run.path / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert float(rows[2]["lr"]) > 0  # the extension trains on a longer schedule, not at the finished one's 0
    with pytest.raises(UserError, match="--time and --recipe plan a new run"):
        imagerec.train(resume=run.path, time="1m", console=quiet())


def test_a_val_split_drawn_from_train_is_the_one_evaluate_and_report_use(digits_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    _subset(digits_dir, data / "train", {str(d): 10 for d in range(10)})
    _subset(digits_dir, data / "test", {str(d): 2 for d in range(10)})
    run = imagerec.train(data, imgsz=8, epochs=1, out=tmp_path / "run", console=quiet())
    val = json.loads((run.path / "split.json").read_text())["val"]
    assert val  # carved out of train/
    metrics = imagerec.evaluate(run.path, data, split="val")
    assert metrics["count"] == len(val)
    trained = list(csv.DictReader((run.path / "metrics.csv").open()))
    assert float(trained[0]["val_accuracy"]) == pytest.approx(metrics["accuracy"], abs=1e-6)


def test_a_runs_own_run_yaml_is_a_config(digits_dir: Path, tmp_path: Path) -> None:
    small = _subset(digits_dir, tmp_path / "small", {str(d): 12 for d in range(10)})
    first = imagerec.train(small, imgsz=8, epochs=1, out=tmp_path / "first", console=quiet())
    output = tmp_path / "log.txt"
    with output.open("w") as log:
        again = imagerec.train(
            config=first.path / "run.yaml", out=tmp_path / "again", console=Console(file=log, width=200)
        )
    assert "its resolved and out part is ignored" in output.read_text()
    assert again.path == tmp_path / "again"
    assert again.metrics["accuracy"] == first.metrics["accuracy"]  # the same recipe and seed: the same model
