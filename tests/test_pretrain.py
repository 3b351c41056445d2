"""Self-supervised pretraining (`imagerec pretrain`): the run it writes, training every task from it, resume,
determinism, the k-NN monitor and collapse check, each method, and its bad inputs."""

from __future__ import annotations

import csv
import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from rich.console import Console

import imagerec
from helpers import invoke, user_error
from imagerec.data.samples import write_digit_scenes
from imagerec.metrics.embedding import EmbeddingMetrics, leave_one_out_knn, spread

SMALL = {"model": "resnet18", "imgsz": 16, "batch": 32, "precision": "32"}


def _quiet() -> Console:
    return Console(file=io.StringIO())


def _rows(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def digits(digits_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 real digits of each class: imagerec splits them 160 / 20 / 20."""
    root = tmp_path_factory.mktemp("pretrain") / "digits"
    for folder in sorted(digits_dir.iterdir()):
        (root / folder.name).mkdir(parents=True)
        for image in sorted(folder.glob("*.png"))[:20]:
            shutil.copy(image, root / folder.name / image.name)
    return root


@pytest.fixture(scope="module")
def pretrained(digits: Path, tmp_path_factory: pytest.TempPathFactory) -> imagerec.Run:
    out = tmp_path_factory.mktemp("pretrained") / "run"
    return imagerec.pretrain(digits, epochs=2, seed=0, out=out, console=_quiet(), **SMALL)


def test_the_run_holds_the_backbone_and_what_the_monitor_measured(pretrained: imagerec.Run) -> None:
    from safetensors.torch import load_file

    from imagerec.models import create_model

    info = json.loads((pretrained.path / "model.json").read_text())
    assert info["classes"] == []
    assert info["model"] == "resnet18"
    assert info["head"] == {"kind": "pretrained", "layer": "fc", "dim": 512, "method": "simclr"}
    backbone = create_model("classify", "resnet18", num_outputs=1, in_channels=1, imgsz=16).state_dict()
    saved = load_file(pretrained.path / "best.safetensors")
    assert set(saved) == set(backbone) - {"fc.weight", "fc.bias"}  # no projection head, no classifier
    rows = _rows(pretrained.path)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    knn = [float(r["val_knn_accuracy"]) for r in rows]
    assert pretrained.best_epoch == 1 + int(np.argmax(knn))  # the k-NN accuracy on val picks the kept epoch
    kept = rows[pretrained.best_epoch - 1]
    recorded = json.loads((pretrained.path / "evaluation" / "val.json").read_text())
    assert recorded["knn_accuracy"] == pytest.approx(float(kept["val_knn_accuracy"]))
    assert recorded["embedding_spread"] == pytest.approx(float(kept["val_embedding_spread"]))
    assert recorded["count"] == 20
    assert 0.1 < recorded["embedding_spread"] <= 1.5
    assert recorded["knn_accuracy"] > 0.3  # ten classes: chance is 0.1


def test_the_report_shows_the_collapse_check_and_the_k_nn_monitor(pretrained: imagerec.Run, tmp_path: Path) -> None:
    """Pretraining writes report.html (and `imagerec report RUN` redraws it) with nothing evaluated: the embedding
    quality at the kept epoch, and the spread and k-NN accuracy per epoch as pictures."""
    written = (pretrained.path / "report.html").read_text()
    assert "self-supervised pretraining (simclr)" in written
    result = invoke("report", pretrained.path, "--out", tmp_path)
    assert result.exit_code == 0, result.output
    page = (tmp_path / "report.html").read_text()
    kept = _rows(pretrained.path)[pretrained.best_epoch - 1]
    assert f"{pretrained.best_epoch} (by val_knn_accuracy)" in page
    verdict = "collapsed" if float(kept["val_embedding_spread"]) < 0.1 else "not collapsed"
    assert f"{float(kept['val_embedding_spread']):.3f}: {verdict}" in page
    assert f"{float(kept['val_knn_accuracy']):.3f}" in page
    assert (tmp_path / "embedding_spread.png").stat().st_size > 5000
    assert "Metrics on the" not in page  # no classes: nothing evaluated


def test_every_task_trains_from_a_pretraining_run_without_naming_the_model(
    pretrained: imagerec.Run, digits: Path, tmp_path: Path
) -> None:
    scenes = write_digit_scenes(tmp_path / "scenes", n_train=16, n_val=2, n_test=2, size=64)
    cases = {"classify": (digits, "resnet18", None), "detect": (scenes, "fcos", "resnet18"),
             "segment": (scenes, "smp_unet", "resnet18")}  # fmt: skip
    for task, (data, model, backbone) in cases.items():
        run = imagerec.train(
            data, task=task, weights=str(pretrained.path), epochs=1, precision="32", out=tmp_path / task,
            console=_quiet(),
        )  # fmt: skip
        info = json.loads((run.path / "model.json").read_text())
        assert (info["model"], info.get("backbone")) == (model, backbone), task
        loaded = yaml.safe_load((run.path / "run.yaml").read_text())["resolved"]["weights"]
        assert loaded["loaded"] == 120, task
        assert loaded["source"].endswith("(a simclr pretraining run of resnet18)"), task


def test_resume_continues_to_the_numbers_of_an_uninterrupted_run(digits: Path, tmp_path: Path) -> None:
    """Weights, optimiser, data order and RNG come back: one epoch, then --resume to two, gives the numbers of two
    epochs in one go (with a schedule that does not depend on the total)."""
    from safetensors.torch import load_file

    options = {"seed": 0, "scheduler": "constant", "warmup_epochs": 0, "console": _quiet(), **SMALL}
    straight = imagerec.pretrain(digits, epochs=2, out=tmp_path / "straight", **options)
    first = imagerec.pretrain(digits, epochs=1, out=tmp_path / "run", **options)
    assert first.epochs == 1
    resumed = imagerec.pretrain(resume=first.path, epochs=2, console=_quiet())
    assert resumed.epochs == 2
    timing = ("images_per_s", "epoch_time_s")
    assert [{k: v for k, v in row.items() if k not in timing} for row in _rows(resumed.path)] == [
        {k: v for k, v in row.items() if k not in timing} for row in _rows(straight.path)
    ]
    for name, tensor in load_file(straight.path / "last.safetensors").items():
        assert torch.equal(tensor, load_file(resumed.path / "last.safetensors")[name]), name


@pytest.mark.parametrize("method", ["byol", "dino"])
def test_each_method_trains_the_backbone(method: str, digits: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    run = imagerec.pretrain(
        digits, method=method, epochs=1, out=tmp_path / "run", console=_quiet(), **{**SMALL, "batch": 16}
    )
    row = _rows(run.path)[0]
    assert np.isfinite(float(row["train_loss"]))
    assert float(row["val_embedding_spread"]) > 0.05
    fresh = load_file(run.path / "last.safetensors")
    assert json.loads((run.path / "model.json").read_text())["head"]["method"] == method
    assert not any(k.startswith(("teacher", "head", "projection")) for k in fresh)


def test_mae_trains_a_vision_transformer(digits: Path, tmp_path: Path) -> None:
    run = imagerec.pretrain(
        digits, method="mae", model="timm:vit_tiny_patch16_224", imgsz=32, epochs=1, batch=16, precision="32",
        out=tmp_path / "run", console=_quiet(),
    )  # fmt: skip
    assert np.isfinite(float(_rows(run.path)[0]["train_loss"]))
    assert json.loads((run.path / "model.json").read_text())["head"]["dim"] == 192


def test_a_folder_without_labels_and_of_mixed_channels(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    from skimage import data as samples

    photo = samples.astronaut()
    for i in range(12):
        crop = photo[i * 20 : i * 20 + 64, i * 25 : i * 25 + 64]
        Image.fromarray(crop).save(folder / f"rgb_{i:02d}.png")
        Image.fromarray(crop.mean(axis=2).astype(np.uint8)).save(folder / "sub" / f"grey_{i:02d}.png")
    result = invoke("pretrain", folder, "--epochs", "1", "--imgsz", "16", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "no class labels: all 24 images train the backbone" in result.output
    assert "images with 1 and 3 channels: all read as 3" in result.output
    recorded = json.loads((tmp_path / "run" / "evaluation" / "val.json").read_text())
    assert "knn_accuracy" not in recorded
    assert recorded["count"] == 24
    assert json.loads((tmp_path / "run" / "model.json").read_text())["channels"] == 3


def test_embed_and_neighbors_read_a_pretraining_run(pretrained: imagerec.Run, digits: Path, tmp_path: Path) -> None:
    index = tmp_path / "index.npz"
    assert invoke("embed", pretrained.path, digits, "--out", index).exit_code == 0
    query = sorted((digits / "3").glob("*.png"))[0]
    found = invoke("neighbors", pretrained.path, query, "--index", index, "--k", "3", "--json")
    assert found.exit_code == 0, found.output
    matches = json.loads(found.stdout)[0]["matches"]
    assert len(matches) == 3
    assert all(Path(m["path"]) != query for m in matches)


def test_knn_accuracy_and_spread() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16)) * 10
    labels = np.repeat(np.arange(3), 20)
    separated = centres[labels] + rng.normal(size=(60, 16))
    assert leave_one_out_knn(separated, labels) == 1.0
    assert leave_one_out_knn(rng.normal(size=(60, 16)), labels) < 0.6  # no structure: about chance
    assert spread(torch.ones(50, 8)) == pytest.approx(0.0, abs=1e-6)  # collapsed to one vector
    assert spread(torch.randn(4000, 64, generator=torch.Generator().manual_seed(0))) == pytest.approx(1.0, abs=0.05)
    metrics = EmbeddingMetrics()
    metrics.update(torch.from_numpy(separated[:30]), torch.from_numpy(labels[:30]))
    metrics.update(torch.from_numpy(separated[30:]), torch.full((30,), -1))  # unlabelled images: spread only
    scores = metrics.compute()
    assert scores["count"] == 60
    assert scores["knn_accuracy"] == 1.0


def test_bad_inputs_get_one_line(
    pretrained: imagerec.Run, digits: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch
) -> None:
    few = tmp_path / "few"
    few.mkdir()
    for image in sorted((digits / "0").glob("*.png"))[:10]:
        shutil.copy(image, few / image.name)
    assert "10 training images, fewer than one batch of 16" in user_error(capsys, monkeypatch, "pretrain", few)
    line = user_error(capsys, monkeypatch, "pretrain", digits, "--method", "mae", "--out", tmp_path / "a")
    assert "--method mae does not suit resnet18; use --method simclr | byol | dino" in line
    run = pretrained.path
    for verb in (("predict", run, digits / "0"), ("evaluate", run, digits), ("export", run)):
        assert "pretraining run has no classes" in user_error(capsys, monkeypatch, *verb), verb[0]
    line = user_error(capsys, monkeypatch, "train", digits, "--model", "seed_cnn", "--weights", run, "--epochs", "1")
    assert "(a simclr pretraining run of resnet18) does not fit seed_cnn" in line
    assert "imagerec pretrain --resume" in user_error(capsys, monkeypatch, "train", "--resume", run)
    assert "nothing to resume" in user_error(capsys, monkeypatch, "pretrain", "--resume", run)
    monkeypatch.setitem(sys.modules, "lightly", None)  # as if not installed
    line = user_error(capsys, monkeypatch, "pretrain", digits, "--out", tmp_path / "b")
    assert line.endswith("pip install 'imagerec[pretrain]'")


@pytest.mark.parametrize("method", ["simclr", "byol", "dino"])
def test_each_method_model_can_be_copied(method: str) -> None:
    """The time budget and autotune measure speed on a deep copy of the model (DINO's head once could not be)."""
    import copy

    from imagerec.models import create_model
    from imagerec.models.ssl import build_ssl_model, headless

    network = create_model("classify", "resnet18", num_outputs=1, in_channels=1, imgsz=16)
    _, width = headless(network)
    model = copy.deepcopy(build_ssl_model(method, network, width))
    views = [torch.rand(4, 1, 16, 16), torch.rand(4, 1, 16, 16), torch.rand(4, 1, 8, 8)]
    assert torch.isfinite(model(views))
    assert model(torch.rand(4, 1, 16, 16)).shape == (4, width)
