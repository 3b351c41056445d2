"""`--weights`: published names resolved offline, files and runs matched by name, channels adapted, misfits refused."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
import torchvision
import yaml

from helpers import invoke, user_error
from imagerec.api import train
from imagerec.errors import UserError
from imagerec.models import create_model
from imagerec.models.detection import DetectorSpec, create_detector
from imagerec.models.weights import _online, apply_weights, weights_preprocessing
from imagerec.weights_io import load_weights

TINY = {"epochs": 1, "batch": 64, "seed": 0, "precision": "32"}


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A torchvision resnet18's state dict saved the way users save one (1,000 ImageNet-style classes)."""
    torch.manual_seed(1)
    state = torchvision.models.resnet18().state_dict()
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(state, path)
    return path, state


@pytest.fixture(scope="module")
def digits_run(digits_dir, tmp_path_factory) -> Path:
    """A seed_cnn run on the digits (greyscale, 10 classes) to start other runs from."""
    return train(digits_dir, model="seed_cnn", imgsz=16, out=tmp_path_factory.mktemp("src") / "run", **TINY).path


def _backbone(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    return {
        k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix) and not k[len(prefix) :].startswith("fc.")
    }


def test_state_dict_file_loads_into_a_new_class_count(resnet18_file):
    path, state = resnet18_file
    model = create_model("classify", "resnet18", num_outputs=3, in_channels=3, imgsz=32)
    report = apply_weights(model, str(path), model_name="resnet18")
    loaded = model.state_dict()
    backbone = _backbone(state)
    assert len(backbone) == len(loaded) - 2
    assert all(torch.equal(loaded[k], v) for k, v in backbone.items())
    assert loaded["fc.weight"].shape == (3, 512)  # the head is new, for three classes
    assert report.fresh == ["fc.weight", "fc.bias"]
    assert report.ignored == ["fc.weight", "fc.bias"]


@pytest.mark.parametrize("channels", [1, 4])
def test_rgb_filters_are_summed_or_repeated_for_other_channel_counts(resnet18_file, channels):
    path, state = resnet18_file
    model = create_model("classify", "resnet18", num_outputs=2, in_channels=channels, imgsz=32)
    report = apply_weights(model, str(path), model_name="resnet18")
    rgb, adapted = state["conv1.weight"], model.conv1.weight.detach()
    # One band sees the sum of the colour filters (a grey image gives the RGB model's response); more bands take
    # the filters in turn, scaled so the total response keeps its size.
    expected = rgb.sum(dim=1, keepdim=True) if channels == 1 else rgb[:, [0, 1, 2, 0]] * 3 / 4
    assert torch.allclose(adapted, expected)
    assert report.adapted == [f"conv1.weight 3→{channels}"]
    grey = torch.rand(1, 1, 32, 32)
    if channels == 1:
        rgb_model = torchvision.models.resnet18().eval()
        rgb_model.load_state_dict(state)
        features = torch.nn.Sequential(*list(rgb_model.children())[:4])
        ours = torch.nn.Sequential(*list(model.eval().children())[:4])
        assert torch.allclose(features(grey.expand(1, 3, 32, 32)), ours(grey), atol=1e-5)


def test_classifier_backbone_starts_a_detector(resnet18_file):
    path, state = resnet18_file
    spec = DetectorSpec(num_classes=2, in_channels=3, imgsz=128, mean=[0.0] * 3, std=[1.0] * 3, backbone="resnet18")
    detector = create_detector("fcos", spec)
    report = apply_weights(detector, str(path), model_name="resnet18")
    loaded = detector.state_dict()
    prefix = next(k for k in loaded if k.endswith("layer1.0.conv1.weight"))[: -len("layer1.0.conv1.weight")]
    backbone = _backbone(state)
    assert all(torch.equal(loaded[prefix + k], v) for k, v in backbone.items())
    assert len(report.loaded) == len(backbone)
    assert any("fpn" in k for k in report.fresh)
    assert any("cls_logits" in k for k in report.fresh)


def test_run_directory_starts_a_run_on_other_classes(digits_run, faces_dir, tmp_path):
    new = train(faces_dir, model="seed_cnn", weights=str(digits_run), out=tmp_path / "run", **{**TINY, "lr": 1e-9})
    info = json.loads((new.path / "model.json").read_text())
    source = json.loads((digits_run / "model.json").read_text())
    assert (info["mean"], info["std"], info["imgsz"]) == (source["mean"], source["std"], source["imgsz"])
    recorded = yaml.safe_load((new.path / "run.yaml").read_text())["resolved"]["weights"]
    assert recorded["new"] == ["head.4.weight", "head.4.bias"]
    assert recorded["loaded"] > 0
    # At a learning rate of 1e-9 the convolutions are still the digits run's.
    before, after = load_weights(digits_run / "best.safetensors"), load_weights(new.path / "best.safetensors")
    assert torch.allclose(before["features.0.weight"], after["features.0.weight"], atol=1e-6)


def test_user_statistics_override_the_weights(digits_run, faces_dir, tmp_path):
    new = train(
        faces_dir, model="seed_cnn", weights=str(digits_run), mean=(0.5,), std=(0.25,), out=tmp_path / "r", **TINY
    )
    info = json.loads((new.path / "model.json").read_text())
    assert (info["mean"], info["std"]) == ([0.5], [0.25])


def test_published_weights_copied_in_by_hand_are_found_offline(resnet18_file, monkeypatch, tmp_path):
    """The hospital case: IT copied torchvision's file into IMAGEREC_WEIGHTS_DIR; nothing is downloaded."""
    path, state = resnet18_file
    monkeypatch.setenv("IMAGEREC_WEIGHTS_DIR", str(tmp_path))
    (tmp_path / "resnet18-f37072fd.pth").write_bytes(path.read_bytes())
    model = create_model("classify", "resnet18", num_outputs=2, in_channels=1, imgsz=32)
    report = apply_weights(model, "DEFAULT", model_name="resnet18")
    assert report.source == "ResNet18_Weights.IMAGENET1K_V1"
    assert len(report.loaded) == 120
    prep = weights_preprocessing("IMAGENET1K_V1", model_name="resnet18")
    assert prep["imgsz"] == 224
    assert prep["mean"] == pytest.approx((0.485, 0.456, 0.406))


def test_offline_default_weights_say_what_to_download_within_seconds(capsys, monkeypatch, tmp_path, faces_dir):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # the real connectivity check, not the shortcut
    if _online("https://download.pytorch.org"):
        pytest.skip("this machine reaches download.pytorch.org: the offline message cannot be checked here")
    monkeypatch.setenv("IMAGEREC_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    start = time.perf_counter()
    line = user_error(capsys, monkeypatch, "train", faces_dir, "--model", "resnet18", "--weights", "DEFAULT")
    assert time.perf_counter() - start < 10
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in line
    assert str(tmp_path / "weights" / "resnet18-f37072fd.pth") in line


def test_offline_timm_weights_name_the_hub_file(capsys, monkeypatch, tmp_path, faces_dir):
    monkeypatch.setenv("IMAGEREC_WEIGHTS_DIR", str(tmp_path))
    line = user_error(
        capsys, monkeypatch, "train", faces_dir, "--model", "timm:resnet18", "--weights", "timm:resnet18.a1_in1k"
    )
    assert "https://huggingface.co/timm/resnet18.a1_in1k/resolve/main/model.safetensors" in line
    assert str(tmp_path / "resnet18.a1_in1k.safetensors") in line


def test_weights_of_another_architecture_name_the_keys_and_shapes(capsys, monkeypatch, tmp_path, faces_dir):
    path = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet50().state_dict(), path)
    line = user_error(capsys, monkeypatch, "train", faces_dir, "--model", "resnet18", "--weights", path)
    assert "does not fit resnet18" in line
    assert "layer1.0.conv1.weight is [64, 64, 1, 1] in the file but [64, 64, 3, 3] in the model" in line


def test_deeper_network_of_the_same_family_is_refused(resnet18_file):
    model = create_model("classify", "resnet34", num_outputs=2, in_channels=3, imgsz=32)
    with pytest.raises(UserError, match=r"the model has layers the file lacks \(layer1\.2\.conv1\.weight"):
        apply_weights(model, str(resnet18_file[0]), model_name="resnet34")


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"not a checkpoint", "corrupt or truncated"), (None, "weights file not found")],
)
def test_unreadable_weights_file(capsys, monkeypatch, tmp_path, faces_dir, content, message):
    path = tmp_path / "weights.pth"
    if content is not None:
        path.write_bytes(content)
    line = user_error(capsys, monkeypatch, "train", faces_dir, "--model", "resnet18", "--weights", path)
    assert str(path) in line
    assert message in line


def test_pickled_whole_model_is_explained(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(torchvision.models.resnet18(), path)
    model = create_model("classify", "resnet18", num_outputs=2, in_channels=3, imgsz=32)
    with pytest.raises(UserError, match="pickled Python objects"):
        apply_weights(model, str(path), model_name="resnet18")


def test_checkpoint_wrappers_and_prefixes_are_unwrapped(resnet18_file, tmp_path):
    """A Lightning checkpoint ({"state_dict": {"model.<name>": …}}) and a DDP one ("module." prefixes)."""
    path, state = resnet18_file
    for name, wrapped in [
        ("lightning.ckpt", {"epoch": 3, "state_dict": {f"model.{k}": v for k, v in state.items()}}),
        ("ddp.pt", {"model": {f"module.{k}": v for k, v in state.items()}, "optimizer": {}}),
    ]:
        torch.save(wrapped, tmp_path / name)
        model = create_model("classify", "resnet18", num_outputs=2, in_channels=3, imgsz=32)
        apply_weights(model, str(tmp_path / name), model_name="resnet18")
        assert torch.equal(model.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])


def test_safetensors_file(resnet18_file, tmp_path):
    from safetensors.torch import save_file

    save_file(resnet18_file[1], tmp_path / "w.safetensors")
    model = create_model("classify", "resnet18", num_outputs=2, in_channels=3, imgsz=32)
    assert len(apply_weights(model, str(tmp_path / "w.safetensors"), model_name="resnet18").loaded) == 120


def test_run_of_an_incompatible_model_is_refused(capsys, monkeypatch, digits_run, faces_dir):
    line = user_error(capsys, monkeypatch, "train", faces_dir, "--model", "resnet18", "--weights", digits_run)
    assert "a classify run of seed_cnn" in line
    assert "does not fit resnet18" in line


def test_unknown_weight_name_lists_the_choices(capsys, monkeypatch, faces_dir):
    line = user_error(capsys, monkeypatch, "train", faces_dir, "--model", "resnet50", "--weights", "IMAGENET1K_V9")
    assert "IMAGENET1K_V1, IMAGENET1K_V2" in line


@pytest.mark.parametrize(
    ("task", "name", "classes", "head"),
    [
        ("detect", "fasterrcnn_mobilenet_v3_large_320_fpn", 91, "box_predictor"),
        ("segment", "lraspp_mobilenet_v3_large", 21, "classifier.low_classifier"),
    ],
)
def test_published_detection_and_segmentation_weights_keep_all_but_the_class_layers(
    monkeypatch, tmp_path, task, name, classes, head
):
    """COCO / VOC weights (here: a freshly drawn model saved under the published file name) into 3 classes."""
    torch.manual_seed(0)
    state = torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=classes).state_dict()
    filename = torchvision.models.get_model_weights(name).DEFAULT.url.rsplit("/", 1)[-1]
    torch.save(state, tmp_path / filename)
    monkeypatch.setenv("IMAGEREC_WEIGHTS_DIR", str(tmp_path))
    if task == "detect":
        spec = DetectorSpec(num_classes=3, in_channels=3, imgsz=320, mean=[0.0] * 3, std=[1.0] * 3)
        model = create_detector(name, spec)
    else:
        model = create_model("segment", name, num_outputs=3, in_channels=3, imgsz=64)
    report = apply_weights(model, "DEFAULT", model_name=name)
    loaded = model.state_dict()
    kept = {k: v for k, v in state.items() if head not in k and "high_classifier" not in k}
    assert all(torch.equal(loaded[f"model.{k}"], v) for k, v in kept.items())
    assert report.fresh
    assert all(head in k or "high_classifier" in k for k in report.fresh)
    assert weights_preprocessing("DEFAULT", model_name=name)["mean"] == pytest.approx((0.485, 0.456, 0.406))


def test_linear_probe_from_a_file_keeps_every_backbone_tensor(resnet18_file, faces_dir, tmp_path):
    """Through the CLI: a torchvision state dict, a new class count (2, one logit), `--finetune linear`: after a
    real epoch of training every backbone tensor, batch-norm statistics included, is still the file's."""
    path, state = resnet18_file
    out = tmp_path / "run"
    result = invoke(
        "train", faces_dir, "--model", "resnet18", "--weights", path, "--finetune", "linear", "--imgsz", 32,
        "--epochs", 1, "--precision", "32", "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "loaded 120 tensors" in result.output
    assert "finetune linear" in result.output
    trained = load_weights(out / "best.safetensors")
    backbone = _backbone(state) | {"conv1.weight": state["conv1.weight"].sum(1, keepdim=True)}  # grey faces
    differ = [k for k, v in backbone.items() if not torch.equal(trained[k], v)]
    assert not differ
    assert trained["fc.weight"].shape == (1, 512)


@pytest.fixture(scope="module")
def resnet18_run(digits_dir, tmp_path_factory) -> Path:
    """A resnet18 classification run on the digits, whose backbone starts a detector and a segmenter."""
    return train(digits_dir, model="resnet18", imgsz=32, out=tmp_path_factory.mktemp("r18") / "run", **TINY).path


@pytest.fixture(scope="module")
def small_scenes(tmp_path_factory) -> Path:
    from imagerec.data.samples import write_digit_scenes

    return write_digit_scenes(tmp_path_factory.mktemp("scenes") / "s", n_train=24, n_val=8, n_test=8, size=64)


@pytest.mark.parametrize(("task", "model"), [("detect", "fcos"), ("segment", "smp_unet")])
def test_classification_run_starts_a_frozen_backbone_for_detection_and_segmentation(
    resnet18_run, small_scenes, tmp_path, task, model
):
    """`--weights RUN --finetune linear` on the other tasks: after an epoch the backbone is still the run's."""
    new = train(
        small_scenes, task=task, model=model, backbone="resnet18", weights=str(resnet18_run), finetune="linear",
        imgsz=64, flip=False, out=tmp_path / "run", **{**TINY, "batch": 8},
    )  # fmt: skip
    source = _backbone(load_weights(resnet18_run / "best.safetensors"))
    trained = load_weights(new.path / "best.safetensors")
    prefix = next(k for k in trained if k.endswith("layer1.0.conv1.weight"))[: -len("layer1.0.conv1.weight")]
    assert all(torch.equal(trained[prefix + k], v) for k, v in source.items())
    recorded = yaml.safe_load((new.path / "run.yaml").read_text())["resolved"]["weights"]
    assert recorded["loaded"] == len(source)
