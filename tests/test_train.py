"""End to end through the Python API on real data: train, the run directory, evaluate, predict, every head."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from rich.console import Console

import imagerec
from imagerec.weights_io import load_weights

# Digits are 8×8 scans: training at their own size keeps a run to seconds on two slow cores.
DIGITS = {"imgsz": 8, "batch": 64, "seed": 0}
EPOCHS = 4  # test accuracy over seeds 0-5: ≥ 0.977 at 4 epochs, ≥ 0.972 at 3, 0.944 at 2: the 0.95 bar keeps a margin


def quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


@pytest.fixture(scope="module")
def digits_run(digits_dir, tmp_path_factory) -> imagerec.Run:
    """seed_cnn trained on the digits in fp32 (so evaluate() must reproduce the numbers exactly)."""
    out = tmp_path_factory.mktemp("train") / "digits-run"
    return imagerec.train(digits_dir, out=out, epochs=EPOCHS, precision="32", console=quiet(), **DIGITS)


def test_seed_cnn_learns_the_digits(digits_run):
    assert digits_run.split == "test"
    assert digits_run.epochs == EPOCHS
    assert 1 <= digits_run.best_epoch <= EPOCHS
    assert digits_run.metrics["accuracy"] >= 0.95
    assert digits_run.metrics["f1_macro"] >= 0.93
    assert digits_run.metrics["count"] == 179  # 10% of 1,797, stratified


def test_run_directory_contents(digits_run, digits_dir):
    path = digits_run.path
    assert {"run.yaml", "model.json", "best.safetensors", "last.safetensors", "state.pt", "metrics.csv"} <= {
        p.name for p in path.iterdir()
    }
    config = yaml.safe_load((path / "run.yaml").read_text())
    assert Path(config["data"]["path"]) == Path(digits_dir).resolve()
    assert config["model"]["name"] == "seed_cnn"
    assert config["train"]["epochs"] == EPOCHS
    assert config["train"]["seed"] == 0
    assert config["resolved"]["versions"]["torch"] == torch.__version__
    assert len(config["resolved"]["data_fingerprint"]) == 16

    info = json.loads((path / "model.json").read_text())
    assert info["task"] == "classify"
    assert info["model"] == "seed_cnn"
    assert info["classes"] == [str(d) for d in range(10)]
    assert info["channels"] == 1
    assert info["imgsz"] == 8
    assert info["num_outputs"] == 10
    assert info["multilabel"] is False
    assert len(info["mean"]) == len(info["std"]) == 1
    assert 0.1 < info["mean"][0] < 0.5
    assert 0.1 < info["std"][0] < 0.5

    best, last = load_weights(path / "best.safetensors"), load_weights(path / "last.safetensors")
    assert best.keys() == last.keys()
    assert "head.4.weight" in best
    state = torch.load(path / "state.pt", weights_only=False)
    assert state["fit"]["epoch"] == EPOCHS
    assert {"model", "optimizer", "scheduler", "rng"} <= set(state)

    with (path / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == list(range(1, EPOCHS + 1))
    assert all(math.isfinite(float(r["train_loss"])) and 0 <= float(r["val_accuracy"]) <= 1 for r in rows)
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])

    recorded = json.loads((path / "evaluation" / "test.json").read_text())
    assert recorded["split"] == "test"
    assert {k: v for k, v in recorded.items() if k not in ("split", "data")} == digits_run.metrics

    split = json.loads((path / "split.json").read_text())
    sets = [set(split[s]) for s in ("train", "val", "test")]
    assert sum(map(len, sets)) == 1797 == len(set.union(*sets))  # disjoint and complete


def test_evaluate_reproduces_the_recorded_test_split(digits_run, digits_dir):
    (digits_run.path / "evaluation" / "test.json").unlink()
    result = imagerec.evaluate(digits_run.path, digits_dir, device="cpu")
    expected = {k: v for k, v in digits_run.metrics.items() if k != "loss"}
    assert {k: v for k, v in result.items() if k not in ("split", "data")} == expected
    assert json.loads((digits_run.path / "evaluation" / "test.json").read_text()) == result
    val = imagerec.evaluate(digits_run.path, digits_dir, split="val", device="cpu")
    split = json.loads((digits_run.path / "split.json").read_text())
    assert val["count"] == len(split["val"])
    assert val["accuracy"] >= 0.9


def test_evaluate_new_data_with_a_subset_of_the_classes(digits_run, digits_dir, tmp_path):
    for digit in ("3", "7"):
        shutil.copytree(Path(digits_dir) / digit, tmp_path / digit)
    result = imagerec.evaluate(digits_run.path, tmp_path, device="cpu")
    assert result["count"] == len(list(tmp_path.rglob("*.png")))
    assert set(result["per_class"]) == {str(d) for d in range(10)}  # still the model's ten classes
    assert result["per_class"]["3"]["support"] + result["per_class"]["7"]["support"] == result["count"]
    assert result["accuracy"] >= 0.9


def _test_files(run: imagerec.Run, digits_dir: Path, n: int) -> list[Path]:
    split = json.loads((run.path / "split.json").read_text())
    return [Path(digits_dir) / rel for rel in split["test"][:: len(split["test"]) // n][:n]]


def test_predict_files(digits_run, digits_dir):
    files = _test_files(digits_run, digits_dir, 40)
    results = imagerec.load(digits_run.path, device="cpu").predict(files, topk=3)
    assert [r.source for r in results] == [str(f) for f in files]
    correct = sum(r.label == f.parent.name for r, f in zip(results, files, strict=True))
    assert correct >= 36
    for r in results:
        assert r.error is None
        assert len(r.labels) == len(r.probs) == 3
        assert list(r.probs) == sorted(r.probs, reverse=True)
        assert 0 < sum(r.probs) <= 1 + 1e-6
        data = json.loads(json.dumps(r.to_dict()))
        assert data["source"] == r.source
        assert data["labels"] == list(r.labels)
        assert data["error"] is None


def test_prediction_options_of_another_task_or_misspelt_are_refused(digits_run, digits_dir):
    predictor = imagerec.load(digits_run.path, device="cpu")
    image = _test_files(digits_run, digits_dir, 1)[0]
    with pytest.raises(imagerec.UserError, match="^conf does not apply to a classify model; its prediction options"):
        predictor.predict(image, conf=0.3)
    with pytest.raises(imagerec.UserError, match="^'top_k' is not a prediction option; the options are topk, conf"):
        predictor.predict(image, top_k=2)
    assert len(predictor.predict(image, topk=2, conf=None)[0].labels) == 2  # another task's option at its default


def test_predict_folder(digits_run, digits_dir):
    folder = Path(digits_dir) / "4"
    results = imagerec.load(digits_run.path, device="cpu").predict(folder, topk=1)
    files = sorted(folder.glob("*.png"))
    assert [r.source for r in results] == [str(f) for f in files]
    assert sum(r.label == "4" for r in results) / len(results) >= 0.9  # includes training images: near perfect


def test_predict_arrays_pil_images_and_tensors_agree_with_files(digits_run, digits_dir):
    predictor = imagerec.load(digits_run.path, device="cpu")
    file = _test_files(digits_run, digits_dir, 5)[2]
    from_file = predictor.predict(file, topk=10)[0]
    grey = np.asarray(Image.open(file))
    assert grey.ndim == 2
    assert grey.dtype == np.uint8
    rgb = Image.open(file).convert("RGB")
    tensor = torch.from_numpy(grey.copy()).float().div(255).unsqueeze(0)
    results = predictor.predict([grey, Image.open(file), rgb, tensor], topk=10)
    assert [r.source for r in results] == [f"<image {i}>" for i in range(4)]
    for r in results:
        assert r.labels == from_file.labels
        assert r.probs == pytest.approx(from_file.probs, abs=1e-5)


def test_sixteen_bit_images_in_memory_match_their_files(digits_run, digits_dir, tmp_path):
    predictor = imagerec.load(digits_run.path, device="cpu")
    file = _test_files(digits_run, digits_dir, 5)[3]
    deep = np.asarray(Image.open(file)).astype(np.uint16) * 257  # the same picture at 16 bits: v/255 == 257v/65535
    Image.fromarray(deep).save(tmp_path / "deep.png")
    expected = predictor.predict(file, topk=10)[0]
    results = predictor.predict([tmp_path / "deep.png", Image.open(tmp_path / "deep.png"), deep], topk=10)
    for r in results:
        assert r.labels == expected.labels
        assert r.probs == pytest.approx(expected.probs, abs=1e-5)


def test_corrupt_file_in_a_folder_is_reported_and_the_rest_predicted(digits_run, digits_dir, tmp_path):
    good = _test_files(digits_run, digits_dir, 4)
    for i, file in enumerate(good):
        shutil.copy(file, tmp_path / f"{i}_{file.parent.name}.png")
    (tmp_path / "2_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    results = imagerec.load(digits_run.path, device="cpu").predict(tmp_path, batch=2)
    assert len(results) == 5
    broken = [r for r in results if r.error is not None]
    assert [Path(r.source).name for r in broken] == ["2_broken.png"]
    assert "2_broken.png" in broken[0].error
    assert broken[0].labels == ()
    assert broken[0].label is None
    assert broken[0].to_dict()["error"] == broken[0].error
    fine = [r for r in results if r.error is None]
    assert sum(r.label == Path(r.source).stem.split("_")[1] for r in fine) >= 3


@pytest.mark.slow
@pytest.mark.parametrize(("binary_head", "outputs"), [("sigmoid", 1), ("softmax", 2)])
def test_binary_faces(faces_dir, tmp_path, binary_head, outputs):
    run = imagerec.train(
        faces_dir, out=tmp_path / "run", epochs=5, imgsz=16, seed=0, binary_head=binary_head, console=quiet()
    )
    info = json.loads((run.path / "model.json").read_text())
    assert info["classes"] == ["face", "non_face"]
    assert info["num_outputs"] == outputs
    assert info["binary_head"] == binary_head
    assert run.metrics["count"] == 20
    assert run.metrics["accuracy"] >= 0.75  # seeds 0-3 reach 0.8-1.0 with either head
    assert run.metrics["auc"] >= 0.85
    assert len(run.metrics["confusion_matrix"]) == 2
    predictor = imagerec.load(run, device="cpu")
    result = predictor.predict(sorted(Path(faces_dir, "face").glob("*.png"))[:1])[0]
    assert set(result.labels) == {"face", "non_face"}
    assert sum(result.probs) == pytest.approx(1.0, abs=1e-5)


def _multilabel_csv(digits_dir: Path, folder: Path) -> Path:
    """Each digit labelled even/odd, plus `big` when ≥ 5: one or two labels per image."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for image in sorted(Path(digits_dir).glob("*/*.png")):
        digit = int(image.parent.name)
        labels = ["even" if digit % 2 == 0 else "odd"] + (["big"] if digit >= 5 else [])
        rows.append((os.path.relpath(image, folder), ";".join(labels)))
    path = folder / "labels.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows(rows)
    return path


@pytest.mark.slow
def test_multilabel_csv(digits_dir, tmp_path):
    data = _multilabel_csv(digits_dir, tmp_path / "csv")
    run = imagerec.train(data, out=tmp_path / "run", epochs=3, console=quiet(), **DIGITS)
    info = json.loads((run.path / "model.json").read_text())
    assert info["multilabel"] is True
    assert info["classes"] == ["big", "even", "odd"]
    assert info["num_outputs"] == 3
    assert "accuracy" not in run.metrics
    assert run.metrics["map"] >= 0.9
    assert run.metrics["exact_match"] >= 0.7
    with (run.path / "metrics.csv").open() as handle:
        assert "val_map" in next(csv.DictReader(handle))
    seven = sorted(Path(digits_dir, "7").glob("*.png"))[:10]
    results = imagerec.load(run, device="cpu").predict(seven)
    assert sum(set(r.labels) == {"odd", "big"} for r in results) >= 7
    assert all(p >= 0.5 for r in results for p in r.probs[1:])  # every label shown beyond the first is above 0.5
    evaluated = imagerec.evaluate(run.path, data, device="cpu")
    assert evaluated["map"] == pytest.approx(run.metrics["map"], abs=0.02)


@pytest.mark.parametrize(
    "options",
    [
        {"class_weights": True},
        {"balanced_sampler": True},
        {"label_smoothing": 0.1},
        {"augment": "heavy"},  # RandAugment, RandomErasing and, per batch, MixUp or CutMix
        {"augment": "medium", "optimizer": "sgd", "lr": 0.05, "scheduler": "onecycle"},
    ],
    ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()),
)
def test_training_options_run(digits_dir, tmp_path, options):
    run = imagerec.train(digits_dir, out=tmp_path / "run", epochs=2, console=quiet(), **{**DIGITS, **options})
    assert math.isfinite(run.metrics["loss"])
    assert run.metrics["accuracy"] > 0.3  # ten classes: chance is 0.1
    saved = yaml.safe_load((run.path / "run.yaml").read_text())
    for key, value in options.items():
        section = "data" if key in ("augment", "balanced_sampler") else "train"
        assert saved[section][key] == value


def test_balanced_sampler_on_multilabel_data_is_a_user_error(digits_dir, tmp_path):
    data = _multilabel_csv(digits_dir, tmp_path / "csv")
    with pytest.raises(imagerec.UserError, match="multi-label"):
        imagerec.train(data, out=tmp_path / "run", epochs=1, balanced_sampler=True, console=quiet(), **DIGITS)


def test_unknown_option_is_refused(digits_dir, tmp_path):
    with pytest.raises(TypeError, match="unknown training option 'epoch'"):
        imagerec.train(digits_dir, out=tmp_path / "run", epoch=1)


def test_mixed_precision_is_named_once_by_imagerec_not_by_lightning(digits_dir, tmp_path, caplog):
    """Lightning Fabric logs "Using bfloat16 Automatic Mixed Precision (AMP)" (to stderr, outside pytest); the run's
    own first line already names the precision."""
    console = Console(file=io.StringIO())
    with caplog.at_level(logging.INFO):
        imagerec.train(digits_dir, out=tmp_path / "run", epochs=1, console=console, **DIGITS, precision="bf16-mixed")
    assert not [r for r in caplog.records if "Automatic Mixed Precision" in r.getMessage()]
    assert "precision bf16-mixed" in console.file.getvalue()


def test_evaluate_shows_its_progress_on_a_terminal(digits_run, digits_dir):
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, force_interactive=True, width=120)
    metrics = imagerec.evaluate(digits_run.path, digits_dir, console=console)
    shown = buffer.getvalue()
    assert "evaluate (test split)" in shown
    assert f"0/{metrics['count']}" in shown  # the bar over every image (transient: its last state is erased)


def test_evaluation_counts_every_image_for_the_progress_bar(digits_run, digits_dir):
    from torch.utils.data import DataLoader

    from imagerec.data.targets import Sample
    from imagerec.engine.evaluate import evaluate_split

    predictor = imagerec.load(digits_run.path, device="cpu")
    paths = predictor.run.read_split()["test"][:70]
    samples = [Sample(digits_dir / p, predictor.classes.index(Path(p).parent.name)) for p in paths]
    dataset = predictor.task.dataset(samples, info=predictor.info, augment=None, cache=False)
    counted: list[int] = []
    loader = DataLoader(dataset, batch_size=32, collate_fn=predictor.task.collate())
    evaluate_split(predictor.task, predictor.model, loader, progress=counted.append)
    assert counted == [32, 32, 6]
