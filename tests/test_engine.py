"""The task-agnostic engine: LR schedules, optimizer groups, atomic writes, autotuning, fit, training options."""

from __future__ import annotations

import errno
import io
import math
from pathlib import Path

import pytest
import torch
from lightning_fabric import Fabric
from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import imagerec
from imagerec.config import TrainConfig
from imagerec.engine import autotune
from imagerec.engine.autotune import ComputeSettings, choose_cpu_settings, default_settings
from imagerec.engine.checkpoint import Checkpointer
from imagerec.engine.evaluate import SplitScores
from imagerec.engine.loop import FitLoop, FitState, fit
from imagerec.engine.optim import WARMUP_START, build_optimizer, build_scheduler
from imagerec.errors import UserError
from imagerec.runs import RunDir, atomic_write, write_text
from imagerec.tasks.classification import ClassificationTask
from imagerec.weights_io import load_weights, save_weights

LR = 0.1
STEPS_PER_EPOCH = 10


def quiet() -> Console:
    return Console(file=io.StringIO())


def lr_trace(
    scheduler: str, *, epochs: int = 4, steps: int = STEPS_PER_EPOCH, warmup: float = 1, **options
) -> list[float]:
    """The LR at every optimizer step 0..total (inclusive); by default 4 epochs of 10 steps, one of them warmup."""
    cfg = TrainConfig(lr=LR, epochs=epochs, scheduler=scheduler, warmup_epochs=warmup, **options)
    optimizer = build_optimizer(nn.Linear(2, 2), cfg)
    sched = build_scheduler(optimizer, cfg, steps)
    trace = [optimizer.param_groups[0]["lr"]]
    for _ in range(epochs * steps):
        optimizer.step()
        sched.step()
        trace.append(optimizer.param_groups[0]["lr"])
    return trace


# --- learning-rate schedules ----------------------------------------------------------------------------------


def test_cosine_with_warmup():
    lr = lr_trace("cosine")  # 40 steps, 10 of warmup
    assert lr[0] == pytest.approx(LR * WARMUP_START)
    assert lr[5] == pytest.approx(LR * (WARMUP_START + (1 - WARMUP_START) * 0.5))
    assert lr[10] == pytest.approx(LR)  # peak right after warmup
    assert lr[25] == pytest.approx(LR * 0.5)  # halfway through the cosine
    assert lr[40] == pytest.approx(0.0, abs=1e-12)
    assert all(a < b for a, b in zip(lr[:10], lr[1:11], strict=True))  # rises during warmup
    assert all(a >= b for a, b in zip(lr[10:40], lr[11:41], strict=True))  # then only falls


def test_step_with_warmup():
    lr = lr_trace("step", step_size=1)  # drop ×0.1 every epoch after warmup
    assert lr[0] == pytest.approx(LR * WARMUP_START)
    assert lr[10] == pytest.approx(LR)
    assert lr[19] == pytest.approx(LR)
    assert lr[20] == pytest.approx(LR * 0.1)
    assert lr[30] == pytest.approx(LR * 0.01)


def test_constant_with_warmup():
    lr = lr_trace("constant")
    assert lr[0] == pytest.approx(LR * WARMUP_START)
    assert lr[10:] == pytest.approx([LR] * 31)


def test_onecycle_with_warmup():
    lr = lr_trace("onecycle")  # torch's OneCycleLR: starts at max/25, peaks when warmup ends, ends at max/25/1e4
    peak = max(range(len(lr) - 1), key=lr.__getitem__)
    assert lr[0] == pytest.approx(LR / 25)
    assert peak == 10  # the same step as the other schedules' peak
    assert lr[peak] == pytest.approx(LR)
    assert lr[39] == pytest.approx(LR / 25 / 1e4)
    assert all(a < b for a, b in zip(lr[:peak], lr[1 : peak + 1], strict=True))
    assert all(a > b for a, b in zip(lr[peak:39], lr[peak + 1 : 40], strict=True))


@pytest.mark.parametrize("scheduler", ["cosine", "step", "onecycle", "constant"])
@pytest.mark.parametrize(
    ("epochs", "steps", "warmup"), [(1, 1, 1), (2, 1, 1), (1, 2, 1), (3, 1, 1), (4, 10, 0), (1, 10, 1)]
)
def test_short_runs_and_no_warmup(scheduler, epochs, steps, warmup):
    # A dataset smaller than one batch gives one step per epoch; warmup may cover the whole run, or be zero.
    lr = lr_trace(scheduler, epochs=epochs, steps=steps, warmup=warmup)
    assert len(lr) == epochs * steps + 1
    assert all(math.isfinite(v) and 0 <= v <= LR * (1 + 1e-9) for v in lr)
    if epochs * steps >= 3:
        assert max(lr[:-1]) == pytest.approx(LR, rel=0.2)  # the peak LR is (nearly) reached


# --- optimizer ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "cls"), [("adamw", torch.optim.AdamW), ("adam", torch.optim.Adam), ("sgd", torch.optim.SGD)]
)
def test_optimizer_no_decay_groups(name, cls):
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    model[0].weight.requires_grad_(False)  # frozen ones go in too: skipped while grad is None
    optimizer = build_optimizer(model, TrainConfig(optimizer=name, weight_decay=0.05, lr=0.01))
    assert isinstance(optimizer, cls)
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.05
    assert no_decay["weight_decay"] == 0.0
    ids = lambda group: {id(p) for p in group["params"]}  # noqa: E731
    assert ids(decay) == {id(model[0].weight), id(model[3].weight)}
    assert ids(no_decay) == {id(model[0].bias), id(model[1].weight), id(model[1].bias), id(model[3].bias)}


# --- atomic writes --------------------------------------------------------------------------------------------


def _disk_full(tmp):
    tmp.write_bytes(b"half a fi")
    raise OSError(errno.ENOSPC, "No space left on device")


def test_atomic_write_keeps_previous_file_when_disk_is_full(tmp_path):
    path = tmp_path / "metrics.csv"
    write_text(path, "epoch\n1\n")
    with pytest.raises(UserError, match="disk space") as caught:
        atomic_write(path, _disk_full)
    assert str(path) in str(caught.value)
    assert "\n" not in str(caught.value)
    assert path.read_text() == "epoch\n1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]  # no temporary file left behind


def test_atomic_write_reraises_other_os_errors(tmp_path):
    def failing(tmp):
        raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(OSError, match="Input/output error"):
        atomic_write(tmp_path / "x.json", failing)
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_to_a_place_it_cannot_write_is_a_user_error(tmp_path):
    def denied(tmp):
        raise OSError(errno.EACCES, "Permission denied")

    with pytest.raises(UserError, match=r"x.json: cannot write here \(Permission denied\); choose another output"):
        atomic_write(tmp_path / "x.json", denied)
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_save_on_full_disk_keeps_the_previous_epoch(tmp_path, monkeypatch):
    run = RunDir(tmp_path)
    checkpointer = Checkpointer(run)
    weights = {"w": torch.ones(2)}
    checkpointer.save_epoch(history=[{"epoch": 1}], weights=weights, state={"fit": {"epoch": 1}}, best=True)

    real_write = Path.write_bytes

    def full(path: Path, data: bytes) -> None:  # how save_weights writes: the disk fills half way through
        real_write(path, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(UserError, match="disk space"):
        checkpointer.save_epoch(
            history=[{"epoch": 1}, {"epoch": 2}], weights={"w": torch.zeros(2)}, state={"fit": {"epoch": 2}}, best=True
        )
    monkeypatch.undo()
    assert torch.equal(load_weights(run.last)["w"], torch.ones(2))
    assert torch.equal(load_weights(run.best)["w"], torch.ones(2))
    assert checkpointer.load_state()["fit"]["epoch"] == 1  # state.pt, the commit point, still says epoch 1
    assert not list(tmp_path.glob(".*.tmp"))


def test_damaged_weights_and_state_are_user_errors(tmp_path):
    run = RunDir(tmp_path)
    run.best.write_bytes(b"not safetensors")
    run.state.write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="damaged weights"):
        load_weights(run.best)
    with pytest.raises(UserError, match="damaged training state"):
        Checkpointer(run).load_state()
    with pytest.raises(UserError, match="weights missing"):
        load_weights(run.last)


def test_weights_round_trip_keeps_module_versions(tmp_path):
    state = nn.BatchNorm2d(3).state_dict()
    save_weights(tmp_path / "w.safetensors", state)
    loaded = load_weights(tmp_path / "w.safetensors")
    assert loaded._metadata == state._metadata
    assert set(loaded) == set(state)


# --- autotune -------------------------------------------------------------------------------------------------


def _probe():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)
    )
    batch = (torch.rand(8, 3, 16, 16), torch.randint(0, 3, (8,)))
    return model, batch, lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1])


def test_autotune_returns_a_measured_valid_setting(real_timing):
    model, batch, loss_fn = _probe()
    before = [p.detach().clone() for p in model.parameters()]
    settings = choose_cpu_settings(model, batch, loss_fn, steps=2)
    assert settings.precision in ("32-true", "bf16-mixed")
    assert isinstance(settings.channels_last, bool)
    assert {"32-true/NCHW", "32-true/channels_last"} <= set(settings.measured)
    assert all(v > 0 for v in settings.measured.values())
    assert f"{settings.precision}/{'channels_last' if settings.channels_last else 'NCHW'}" in settings.measured
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))  # measured on a copy
    assert all(p.grad is None for p in model.parameters())


def test_autotune_respects_a_requested_precision_and_skips_layouts_without_convs():
    _, batch, _ = _probe()
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(768, 3))
    settings = choose_cpu_settings(mlp, batch, lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]), requested="32")
    assert set(settings.measured) == {"32-true/NCHW"}
    assert settings == ComputeSettings("32-true", False, settings.measured)


@pytest.mark.parametrize(
    ("speeds", "expected"),
    [
        ({"32-true/NCHW": 100, "bf16-mixed/NCHW": 200, "32-true/channels_last": 105, "bf16-mixed/channels_last": 150},
         ("bf16-mixed", False)),
        ({"32-true/NCHW": 100, "bf16-mixed/NCHW": 90, "32-true/channels_last": 130, "bf16-mixed/channels_last": 120},
         ("32-true", True)),
        # within the 10% noise margin: keep the plain fp32/NCHW baseline
        ({"32-true/NCHW": 100, "bf16-mixed/NCHW": 108, "32-true/channels_last": 105, "bf16-mixed/channels_last": 95},
         ("32-true", False)),
    ],
)  # fmt: skip
def test_autotune_picks_the_fastest_beyond_the_noise_margin(monkeypatch, speeds, expected):
    model, batch, loss_fn = _probe()
    monkeypatch.setattr(autotune, "cpu_supports_bf16", lambda: True)

    def fake_speed(m, b, fn, precision, steps):
        layout = "channels_last" if b[0].is_contiguous(memory_format=torch.channels_last) else "NCHW"
        return speeds[f"{precision}/{layout}"]

    monkeypatch.setattr(autotune, "images_per_second", fake_speed)
    settings = choose_cpu_settings(model, batch, loss_fn)
    assert (settings.precision, settings.channels_last) == expected
    assert settings.measured == speeds


def test_default_settings_without_measuring():
    model, _, _ = _probe()
    assert default_settings(model, accelerator="cpu", requested="auto") == ComputeSettings("32-true", False)
    assert default_settings(model, accelerator="cpu", requested="bf16-mixed").precision == "bf16-mixed"


# --- fit ------------------------------------------------------------------------------------------------------


def _toy_fit(monitor: tuple[str, str], patience: int = 0, epochs: int = 10):
    torch.manual_seed(0)
    x, y = torch.randn(64, 1, 4, 4), torch.randint(0, 2, (64,))
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    task = ClassificationTask(["a", "b", "c"])
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # nothing changes: val_loss never improves after epoch 1
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    fabric = Fabric(accelerator="cpu", devices=1)
    model, optimizer = fabric.setup(model, optimizer)
    saved = []
    loop = FitLoop(
        optimizer=optimizer, scheduler=scheduler, train_loader=loader, val_loader=loader, epochs=epochs,
        monitor=monitor, patience=patience, save=lambda state, best: saved.append((state.epoch, best)),
    )  # fmt: skip
    return fit(fabric, task, model, loop, FitState(), quiet()), saved


def test_fit_stops_early_when_the_monitor_stalls():
    state, saved = _toy_fit(("val_loss", "min"), patience=2)
    assert state.stopped_early
    assert state.epoch == 3
    assert state.best_epoch == 1
    assert saved == [(1, True), (2, False), (3, False)]
    assert [row["epoch"] for row in state.history] == [1, 2, 3]
    assert {"train_loss", "lr", "val_loss", "val_accuracy"} <= set(state.history[0])


def test_fit_breaks_ties_of_the_monitor_with_the_validation_loss(monkeypatch):
    scripted = iter([{"accuracy": 0.8}] * 3)
    scripted_loss = [0.5, 0.4, 0.45]
    monkeypatch.setattr(
        "imagerec.engine.loop.evaluate_split", lambda *args, **kwargs: SplitScores(next(scripted), scripted_loss.pop(0))
    )
    state, saved = _toy_fit(("val_accuracy", "max"), epochs=3)
    assert saved == [(1, True), (2, True), (3, False)]
    assert (state.best, state.best_loss, state.best_epoch) == (0.8, 0.4, 2)


def test_fit_refuses_a_monitor_it_does_not_measure():
    with pytest.raises(UserError, match=r"monitor 'val_acc' is not a measured metric.*val_accuracy"):
        _toy_fit(("val_acc", "max"), epochs=1)


# --- training options on a tiny real run ----------------------------------------------------------------------


def test_ema_accumulate_and_clip_train(digits_dir, tmp_path):
    run = imagerec.train(
        digits_dir, out=tmp_path / "run", epochs=1, imgsz=8, batch=64, ema=0.9, accumulate=2, clip_grad=1.0,
        precision="32", console=quiet(),
    )  # fmt: skip
    state = torch.load(run.path / "state.pt", weights_only=False)
    train_batches = len(RunDir(run.path).read_split()["train"]) // 64  # drop_last
    assert state["scheduler"]["last_epoch"] == -(-train_batches // 2)  # one optimizer step per 2 batches
    assert state["ema"] is not None
    assert state["ema"]["n_averaged"] > 0
    assert math.isfinite(run.metrics["loss"])
    assert run.metrics["accuracy"] > 0.5  # 10 classes: far above chance after one epoch
    # best.safetensors holds the EMA weights, which differ from the raw weights in state.pt
    best = load_weights(run.path / "best.safetensors")
    raw = state["model"]
    assert any(not torch.equal(best[k], raw[k]) for k in best if best[k].is_floating_point())
