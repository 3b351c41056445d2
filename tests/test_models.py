"""Model registry contracts: every family builds for any channels and classes, trains, and survives save/load."""

from __future__ import annotations

import inspect

import pytest
import torch

import imagerec
from imagerec.errors import UserError
from imagerec.models import CLASSIFIERS, create_model
from imagerec.models.classification import TIMM_PREFIX
from imagerec.weights_io import load_weights, save_weights

# One cheap representative per family (plus our own and one timm model), all at a tiny input size.
REPRESENTATIVES = [
    "seed_cnn",
    "resnet18",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "convnext_tiny",
    "regnet_x_400mf",
    "shufflenet_v2_x0_5",
    "densenet121",
    "squeezenet1_0",
    "mnasnet0_5",
    "vit_b_16",
    "timm:resnet18",
]
IMGSZ = 32
# SqueezeNet ends in conv → ReLU → pool: at 32 px its fresh head outputs all zeros (and zero gradients).
IMGSZ_OVERRIDES = {"squeezenet1_0": 64}
NUM_OUTPUTS = 3


def _build(name: str, channels: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    imgsz = IMGSZ_OVERRIDES.get(name, IMGSZ)
    return create_model("classify", name, num_outputs=NUM_OUTPUTS, in_channels=channels, imgsz=imgsz)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_model_contract(name, channels, tmp_path):
    model = _build(name, channels, seed=0)
    size = IMGSZ_OVERRIDES.get(name, IMGSZ)
    images = torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(1))  # like normalised data

    # forward and backward in training mode
    model.train()
    logits = model(images)
    assert logits.shape == (2, NUM_OUTPUTS)
    assert torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, NUM_OUTPUTS - 1])).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads, "model has no trainable parameters"
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    with torch.no_grad():  # e.g. ViT's head starts at zero: perturb every weight so outputs are informative
        for param in model.parameters():
            param.add_(0.01 * torch.randn(param.shape, generator=torch.Generator().manual_seed(2)))

    # save/load round trip into a differently initialised model gives identical outputs
    model.eval()
    with torch.no_grad():
        expected = model(images)
    save_weights(tmp_path / "w.safetensors", model.state_dict())
    other = _build(name, channels, seed=1).eval()
    with torch.no_grad():
        assert not torch.allclose(other(images), expected), "a fresh model should differ before loading"
        other.load_state_dict(load_weights(tmp_path / "w.safetensors"))
        torch.testing.assert_close(other(images), expected, rtol=0, atol=0)


def test_one_channel_model_takes_one_channel_input():
    model = _build("resnet18", 1, seed=0)
    with pytest.raises(RuntimeError):
        model(torch.rand(1, 3, IMGSZ, IMGSZ))


def test_dropout_option_is_applied():
    torch.manual_seed(0)
    model = create_model("classify", "seed_cnn", num_outputs=2, in_channels=1, imgsz=8, dropout=0.5)
    assert any(isinstance(m, torch.nn.Dropout) and m.p == 0.5 for m in model.modules())


def test_unknown_model_suggests_close_names():
    with pytest.raises(UserError, match=r"unknown classification model 'resnet19'.*did you mean.*resnet18"):
        create_model("classify", "resnet19", num_outputs=2, in_channels=3, imgsz=32)


def test_unknown_model_without_close_names_points_to_the_list():
    with pytest.raises(UserError, match="imagerec models"):
        create_model("classify", "zzzzqqq", num_outputs=2, in_channels=3, imgsz=32)


def test_unknown_timm_model_suggests_close_names():
    with pytest.raises(UserError, match=r"unknown timm model 'resnet19'.*did you mean.*timm:resnet18"):
        create_model("classify", "timm:resnet19", num_outputs=2, in_channels=3, imgsz=32)


def test_every_registered_name_is_listed():
    listed = {row["name"]: row["source"] for row in imagerec.list_models()}
    assert set(CLASSIFIERS.names()) <= set(listed)
    assert listed["seed_cnn"] == "imagerec"
    assert listed["resnet18"] == "torchvision"
    assert any(name.startswith(TIMM_PREFIX) for name in listed)
    assert len(CLASSIFIERS) > 50  # torchvision's classification families are all registered


@pytest.mark.parametrize("name", CLASSIFIERS.names())
def test_every_builder_is_keyword_only(name):
    params = inspect.signature(CLASSIFIERS.get(name)).parameters.values()
    assert {"num_outputs", "in_channels", "imgsz"} <= {p.name for p in params}
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params)


def test_registry_refuses_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        CLASSIFIERS.add("seed_cnn", CLASSIFIERS.get("seed_cnn"))
