"""Feature extraction on real digits: embed to Parquet/NPZ, neighbours and duplicates, k-NN / logistic heads."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from threadpoolctl import threadpool_limits

import imagerec
from helpers import invoke, user_error
from imagerec.embedding_head import fit_head
from imagerec.outputs.embed import embed, read_embeddings
from imagerec.outputs.neighbors import duplicates

DIGITS = {"imgsz": 8, "batch": 64, "seed": 0, "precision": "32"}


def quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


@pytest.fixture(scope="module", autouse=True)
def _one_blas_thread():
    """scikit-learn's BLAS threads spin against the other processes sharing this machine's cores: a logistic
    regression on 1,400 digits took 1.4 s with two threads under load, 0.05 s with one."""
    with threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def base_run(digits_dir, tmp_path_factory) -> Path:
    """seed_cnn trained 2 epochs on the digits: features that separate the classes."""
    out = tmp_path_factory.mktemp("embed") / "base"
    imagerec.train(digits_dir, out=out, epochs=2, console=quiet(), **DIGITS)
    return out


@pytest.fixture(scope="module")
def gallery(digits_dir, tmp_path_factory) -> Path:
    """One real digit per class in GALLERY/<digit>/, plus an exact copy of the 3 (GALLERY/3/copy.png)."""
    root = tmp_path_factory.mktemp("gallery") / "gallery"
    for digit in range(10):
        (root / str(digit)).mkdir(parents=True)
        shutil.copy(sorted((digits_dir / str(digit)).glob("*.png"))[0], root / str(digit) / "a.png")
    shutil.copy(root / "3" / "a.png", root / "3" / "copy.png")
    return root


@pytest.fixture(scope="module")
def index(base_run, gallery, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("index") / "gallery.parquet"
    result = invoke("embed", base_run, gallery, "--out", out, "--batch", 4)
    assert result.exit_code == 0, result.output
    return out


def test_embed_writes_parquet_and_npz(base_run, gallery, index, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(index)
    assert table.column_names == ["path", "embedding", "label"]
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 256)  # seed_cnn's pre-logits: fc 256
    paths = table.column("path").to_pylist()
    assert len(paths) == 11
    assert paths[:4] == [str(gallery / "0" / "a.png"), str(gallery / "1" / "a.png"), str(gallery / "2" / "a.png"),
                         str(gallery / "3" / "a.png")]  # fmt: skip
    assert table.column("label").to_pylist() == ["0", "1", "2", "3", "3", "4", "5", "6", "7", "8", "9"]

    npz = tmp_path / "gallery.npz"
    assert invoke("embed", base_run, gallery, "--out", npz).exit_code == 0
    with np.load(npz, allow_pickle=False) as data:
        assert data["embeddings"].shape == (11, 256)
        assert data["embeddings"].dtype == np.float32
        assert data["paths"].tolist() == paths
        meta = json.loads(str(data["meta"]))
    assert meta["run"] == str(base_run.resolve())
    assert meta["features"] == "input of head.4"
    from_parquet = read_embeddings(index)
    # Another batch size may take other convolution kernels, which round differently in the last bits.
    np.testing.assert_allclose(from_parquet.vectors, read_embeddings(npz).vectors, rtol=1e-5, atol=1e-5)
    assert not list(tmp_path.glob(".*.tmp"))  # written through a temporary name


def test_a_copy_is_a_duplicate_and_different_digits_are_not(index, gallery):
    found = read_embeddings(index)
    pairs = duplicates(found)
    assert [(p.a, p.b) for p in pairs] == [(str(gallery / "3" / "a.png"), str(gallery / "3" / "copy.png"))]
    assert pairs[0].similarity >= 0.9999
    centred = found.vectors - found.vectors.mean(axis=0)  # as neighbors.py compares them
    unit = centred / np.linalg.norm(centred, axis=1, keepdims=True)
    sims = unit @ unit.T
    different = np.array([[a != b for b in found.labels] for a in found.labels])
    assert sims[different].max() < 0.9  # measured 0.76: far from the copy's 1.0


def test_duplicates_and_neighbors_commands(base_run, index, gallery):
    result = invoke("neighbors", "--index", index, "--duplicates", "--json")
    assert result.exit_code == 0, result.output
    assert [pair["b"] for pair in json.loads(result.stdout)] == [str(gallery / "3" / "copy.png")]

    query = gallery / "3" / "copy.png"
    result = invoke("neighbors", base_run, query, gallery / "7", "--index", index, "--k", 2, "--json")
    assert result.exit_code == 0, result.output
    copy, seven = json.loads(result.stdout)
    assert copy["query"] == str(query)
    first = copy["matches"][0]  # the query itself (also in the index) is never its own neighbour
    assert (first["path"], first["label"]) == (str(gallery / "3" / "a.png"), "3")
    assert first["similarity"] >= 0.9999
    assert len(copy["matches"]) == 2
    assert seven["matches"][0]["similarity"] < 0.98
    recorded = invoke("neighbors", query, gallery / "7", "--index", index, "--k", 2, "--json")  # run from the index
    assert recorded.exit_code == 0, recorded.output
    assert json.loads(recorded.stdout) == [copy, seven]

    table = invoke("neighbors", base_run, query, "--index", index, "--threshold", 0.999)
    assert table.exit_code == 0
    assert "similarity" in table.stdout
    assert "1.0000" in table.stdout


def test_layer_gives_its_pooled_output(base_run, gallery, tmp_path):
    maps = embed(base_run, [gallery / "0"], layer="features")  # N×128×4×4 feature maps, averaged
    assert maps.vectors.shape == (1, 128)
    hidden = embed(base_run, [gallery / "0"], layer="head.1")
    assert hidden.vectors.shape == (1, 256)
    assert hidden.meta["layer"] == "head.1"


def test_channels_last_stages_are_pooled_over_space() -> None:
    """Swin's stages give N×H×W×C maps: a layer's embedding averages its positions and keeps its channels."""
    from imagerec.models.classification import create_classifier
    from imagerec.models.embedding import extract

    swin = create_classifier("swin_t", num_outputs=2, in_channels=3, imgsz=64).eval()
    x = torch.rand(2, 3, 64, 64)
    stage = swin.features[:8](x)
    assert stage.shape == (2, 2, 2, 768)
    assert torch.allclose(extract(swin, x, layer="features.7"), stage.mean(dim=(1, 2)), atol=1e-6)


def test_a_classifier_name_embeds_with_fresh_weights_and_says_so(gallery, tmp_path):
    out = tmp_path / "fresh.npz"
    result = invoke("embed", "seed_cnn", gallery, "--out", out, "--imgsz", 16)
    assert result.exit_code == 0, result.output
    assert "untrained" in result.output
    with pytest.warns(UserWarning, match="fresh random weights"):
        again = embed("seed_cnn", [gallery], imgsz=16)  # fresh weights are drawn the same way every time
    np.testing.assert_allclose(read_embeddings(out).vectors, again.vectors, atol=1e-6)
    assert again.meta["imgsz"] == 16


def test_bad_layer_lists_the_available_ones(capsys, monkeypatch, base_run, gallery, tmp_path):
    line = user_error(capsys, monkeypatch, "embed", base_run, gallery, "--out", tmp_path / "x.npz", "--layer", "feat")
    assert "--layer feat" in line
    assert "did you mean features" in line
    assert "available: features, features.0," in line
    assert "head.4" in line


def test_bad_suffix_and_index_mismatch(capsys, monkeypatch, base_run, gallery, index, tmp_path):
    line = user_error(capsys, monkeypatch, "embed", base_run, gallery, "--out", tmp_path / "x.csv")
    assert ".parquet or .npz" in line
    assert not (tmp_path / "x.csv").exists()
    line = user_error(capsys, monkeypatch, "neighbors", "resnet18", gallery / "3", "--index", index)
    assert f"embedded with {base_run.resolve()}" in line
    assert "resnet18" in line
    line = user_error(capsys, monkeypatch, "neighbors", base_run, gallery, "--index", tmp_path / "missing.parquet")
    assert "no such embeddings file" in line


def _split(run: Path, data: Path, split: str) -> tuple[list[Path], np.ndarray]:
    """The images of a split of the run and their class indices (ImageFolder: the folder names the class)."""
    paths = [data / p for p in json.loads((run / "split.json").read_text())[split]]
    classes = json.loads((run / "model.json").read_text())["classes"]
    return paths, np.array([classes.index(p.parent.name) for p in paths])


def _refit(run: Path, data: Path, head: str):
    """The run's scikit-learn model fitted again on the run's own embeddings of train, chosen on val."""
    (train, train_y), (val, val_y) = (_split(run, data, s) for s in ("train", "val"))
    return fit_head(head, (embed(run, train).vectors, train_y), (embed(run, val).vectors, val_y))


@pytest.mark.parametrize("head", ["logistic", "knn"])
def test_head_on_frozen_embeddings_is_an_ordinary_run(head, base_run, digits_dir, tmp_path):
    run = imagerec.train(digits_dir, out=tmp_path / head, head=head, weights=str(base_run), console=quiet(), **DIGITS)
    assert run.split == "test"
    assert run.metrics["accuracy"] >= 0.9  # chance: 0.1
    info = json.loads((run.path / "model.json").read_text())
    assert info["head"]["kind"] == head
    assert info["head"]["layer"] == "head.4"
    assert imagerec.evaluate(run.path, digits_dir)["accuracy"] == pytest.approx(run.metrics["accuracy"], abs=1e-6)

    # The same scikit-learn model, fitted again from the run's own embeddings, predicts what the run predicts.
    fitted = _refit(run.path, digits_dir, head)
    test, _ = _split(run.path, digits_dir, "test")
    assert fitted.param == {k: info["head"][k] for k in fitted.param}
    expected = fitted.estimator.predict(embed(run.path, test).vectors)
    predicted = [int(r.label) for r in imagerec.load(run.path).predict(test, topk=1)]
    assert predicted == expected.tolist()
    result = invoke("predict", run.path, test[0], "--format", "json")
    assert json.loads(result.stdout)[0]["labels"][0] == str(expected[0])


def test_binary_logistic_head_uses_the_single_logit(faces_dir, tmp_path):
    run = imagerec.train(faces_dir, out=tmp_path / "faces", head="logistic", imgsz=25, seed=0, console=quiet())
    info = json.loads((run.path / "model.json").read_text())
    assert info["num_outputs"] == 1
    test, _ = _split(run.path, faces_dir, "test")
    fitted = _refit(run.path, faces_dir, "logistic")
    expected = fitted.estimator.predict_proba(embed(run.path, test).vectors)[:, 1]
    predictor = imagerec.load(run.path)
    batch = torch.stack([predictor.preprocess(p) for p in test])
    np.testing.assert_allclose(predictor.probabilities(batch)[:, 1].numpy(), expected, atol=1e-4)


def test_detection_run_embeds_from_its_backbone(tmp_path):
    from imagerec.data.samples import write_digit_scenes

    scenes = write_digit_scenes(tmp_path / "scenes", n_train=8, n_val=2, n_test=2)
    run = imagerec.train(
        scenes, task="detect", model="fcos_lite", epochs=1, batch=4, imgsz=64, out=tmp_path / "det", console=quiet()
    )
    images = sorted((scenes / "images").rglob("*.png"))[:3]
    together = embed(run.path, images, batch=3)
    assert together.meta["features"] == "output of model.backbone.body"
    assert together.vectors.shape[0] == 3
    alone = embed(run.path, images[1:2])  # one image at a time: an embedding never depends on its batch
    np.testing.assert_array_equal(alone.vectors[0], together.vectors[1])
