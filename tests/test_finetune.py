"""Fine-tuning: the backbone stages of every model family, freezing per strategy and epoch with BatchNorm kept in
evaluation mode, and discriminative learning rates."""

from __future__ import annotations

import io

import pytest
import torch
from lightning_fabric import Fabric
from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchvision.models import VisionTransformer

from imagerec.config import TrainConfig
from imagerec.engine.finetune import FineTuning, plan_finetuning
from imagerec.engine.loop import FitLoop, FitState, fit
from imagerec.engine.optim import build_optimizer, build_scheduler
from imagerec.errors import UserError
from imagerec.models import create_model
from imagerec.models.detection import DetectorSpec, create_detector
from imagerec.models.stages import Stages, model_stages
from imagerec.tasks.classification import ClassificationTask

IMGSZ = 32
RESNET_STAGES = ["stem", "layer1", "layer2", "layer3", "layer4"]


def classifier(name: str = "resnet18", imgsz: int = IMGSZ) -> nn.Module:
    torch.manual_seed(0)
    return create_model("classify", name, num_outputs=3, in_channels=3, imgsz=imgsz)


def plan(model: nn.Module, **options: object) -> FineTuning:
    return plan_finetuning(model, TrainConfig(lr=0.01, **options), name="resnet18", in_channels=3, imgsz=IMGSZ)


def partition(model: nn.Module, stages: Stages) -> None:
    """Every parameter is in exactly one stage or the head."""
    listed = [n for stage in stages.stages for n in stage] + stages.head
    assert sorted(listed) == sorted(n for n, _ in model.named_parameters())


# --- stages ------------------------------------------------------------------------------------------------------


def test_resnet18_stages_are_torchvisions_layers():
    model = classifier()
    stages = model_stages(model, in_channels=3, imgsz=IMGSZ)
    prefixes = [("conv1.", "bn1."), ("layer1.",), ("layer2.",), ("layer3.",), ("layer4.",)]
    assert stages.stages == [[n for n, _ in model.named_parameters() if n.startswith(p)] for p in prefixes]
    assert stages.head == ["fc.weight", "fc.bias"]
    assert stages.names == RESNET_STAGES
    assert stages.describe() == "stem, layer1 … layer4"


def _detector() -> nn.Module:
    spec = DetectorSpec(num_classes=2, in_channels=3, imgsz=64, mean=[0.5] * 3, std=[0.2] * 3)
    return create_detector("fcos_lite", spec)


def _tiny_vit() -> nn.Module:
    size = {"image_size": 32, "patch_size": 8, "num_layers": 3, "num_heads": 2, "hidden_dim": 16, "mlp_dim": 32}
    return VisionTransformer(**size, num_classes=3)


FAMILIES = {
    "mobilenet_v3_small": lambda: classifier("mobilenet_v3_small"),
    "timm:resnet10t": lambda: classifier("timm:resnet10t"),
    "seed_cnn": lambda: classifier("seed_cnn"),
    "fcos_lite": _detector,
    "unet": lambda: create_model("segment", "unet", num_outputs=2, in_channels=3, imgsz=64),
    "vit": _tiny_vit,
}


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_has_stages_and_a_head(family):
    model = FAMILIES[family]()
    stages = model_stages(model, in_channels=3, imgsz=IMGSZ)
    assert len(stages) >= 2
    assert stages.head
    partition(model, stages)
    assert len(stages.names) == len(stages)
    assert stages.names[0] == "stem"


def test_detector_and_segmenter_heads_are_everything_outside_the_backbone():
    stages = model_stages(_detector(), in_channels=3, imgsz=64)
    assert stages.names == ["stem", "stages.1", "stages.2", "stages.3", "stages.4"]  # LiteBackbone's five strides
    assert all(n.startswith("model.backbone.body.") for stage in stages.stages for n in stage)
    assert any(".fpn." in n for n in stages.head)
    assert any(".head." in n for n in stages.head)
    unet = model_stages(FAMILIES["unet"](), in_channels=3, imgsz=64)
    assert unet.names == ["stem", "downs.0", "downs.1", "downs.2", "downs.3"]
    assert all(n.startswith(("model.decoder.", "model.head.")) for n in unet.head)


def test_vit_blocks_are_stages():
    stages = model_stages(_tiny_vit(), in_channels=3, imgsz=IMGSZ)
    assert stages.names == ["stem"] + [f"encoder.layers.encoder_layer_{i}" for i in range(3)]
    assert {"class_token", "conv_proj.weight", "encoder.pos_embedding"} <= set(stages.stages[0])
    assert "encoder.ln.weight" in stages.stages[-1]
    assert stages.head == ["heads.head.weight", "heads.head.bias"]


def test_a_model_without_a_backbone_is_a_user_error():
    with pytest.raises(UserError, match="cannot tell a backbone from a head in Linear"):
        model_stages(nn.Linear(4, 2), in_channels=3, imgsz=IMGSZ)


# --- freezing ----------------------------------------------------------------------------------------------------


def one_step(strategy: str, **options: object) -> set[str]:
    """The state-dict entries of resnet18 that one real AdamW step in training mode changes."""
    model = classifier()
    finetuning = plan(model, finetune=strategy, **options)
    optimizer = build_optimizer(model, TrainConfig(lr=0.01), lr_scales=finetuning.lr_scales())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    finetuning.apply(1)
    torch.manual_seed(1)
    nn.functional.cross_entropy(model(torch.randn(4, 3, IMGSZ, IMGSZ)), torch.tensor([0, 1, 2, 0])).backward()
    optimizer.step()
    return {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}


def test_linear_changes_the_head_only():
    # Every backbone tensor stays bitwise equal, BatchNorm running statistics included.
    assert one_step("linear") == {"fc.weight", "fc.bias"}


def test_last_n_changes_the_last_stage_and_the_head_only():
    keys = classifier().state_dict()
    assert one_step("last-n", stages=1) == {k for k in keys if k.startswith(("layer4.", "fc."))}


def test_full_changes_everything():
    keys = classifier().state_dict()
    assert one_step("full", layer_decay=0.5) == set(keys)


def test_parameters_the_model_froze_itself_stay_frozen():
    model = classifier()
    model.conv1.weight.requires_grad_(False)  # as timm's fixed sin-cos position embeddings are
    finetuning = plan(model, finetune="gradual")
    for epoch in (1, 9):
        finetuning.apply(epoch)
        assert not model.conv1.weight.requires_grad
        assert model.bn1.weight.requires_grad == (epoch == 9)


def trainable_state(model: nn.Module) -> tuple[dict[str, bool], dict[str, bool]]:
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    return grads, modes


@pytest.mark.parametrize("epoch", [1, 3, 6, 9])
def test_gradual_state_is_a_function_of_the_epoch(epoch):
    stepwise, direct = classifier(), classifier()
    steps = plan(stepwise, finetune="gradual")
    for e in range(1, epoch + 1):
        stepwise.eval()  # evaluation between epochs, as fit does
        stepwise.train()
        steps.apply(e)
    direct.train()
    plan(direct, finetune="gradual").apply(epoch)  # a run resumed at `epoch`
    assert trainable_state(stepwise) == trainable_state(direct)
    grads, modes = trainable_state(direct)
    stages = steps.stages
    training = stages.head + [n for stage in stages.stages[len(stages) - min(epoch - 1, len(stages)) :] for n in stage]
    assert {n for n, g in grads.items() if g} == set(training)
    assert modes["layer4.0.bn1"] == (epoch >= 2)
    assert modes["bn1"] == (epoch >= 6)


def test_fit_keeps_frozen_batchnorm_in_eval_mode():
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, 3),
    )  # fmt: skip
    finetuning = plan_finetuning(model, TrainConfig(finetune="gradual"), name="toy", in_channels=1, imgsz=8)
    assert finetuning.stages.names == ["stem", "4–5"]
    seen = []
    model[5].register_forward_pre_hook(lambda m, _: seen.append(m.training) if torch.is_grad_enabled() else None)
    cfg = TrainConfig(lr=0.01, epochs=3)
    optimizer = build_optimizer(model, cfg, lr_scales=finetuning.lr_scales())
    loader = DataLoader(TensorDataset(torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,))), batch_size=4)
    fabric = Fabric(accelerator="cpu", devices=1)
    wrapped, optimizer = fabric.setup(model, optimizer)
    loop = FitLoop(
        optimizer=optimizer, scheduler=build_scheduler(optimizer, cfg, 2), train_loader=loader, val_loader=loader,
        epochs=3, monitor=("val_loss", "min"), on_epoch_start=finetuning.apply,
    )  # fmt: skip
    fit(fabric, ClassificationTask(["a", "b", "c"]), wrapped, loop, FitState(), Console(file=io.StringIO()))
    assert seen == [False, False, True, True, True, True]  # frozen in epoch 1, trains from epoch 2


# --- learning rates ----------------------------------------------------------------------------------------------


def lr_of(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, float]:
    group = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    return {n: group[id(p)]["lr"] for n, p in model.named_parameters()}


def test_layer_decay_learning_rates():
    model = classifier()
    finetuning = plan(model, layer_decay=0.5)
    optimizer = build_optimizer(model, TrainConfig(lr=0.01), lr_scales=finetuning.lr_scales())
    lrs = lr_of(model, optimizer)
    stages = finetuning.stages
    assert {lrs[n] for n in stages.head} == {0.01}
    for k, stage in enumerate(reversed(stages.stages), start=1):  # layer4 × 0.5 … stem × 0.5^5
        assert [lrs[n] for n in stage] == pytest.approx([0.01 * 0.5**k] * len(stage))
    assert optimizer.param_groups[0]["lr"] == 0.01  # the loop reports the first group's: the base learning rate
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert all(decay[id(p)] == (0.05 if p.ndim > 1 else 0.0) for p in model.parameters())
    assert len(optimizer.param_groups) == 2 * 6  # (decay, no decay) × (5 stages + head)


def test_onecycle_peaks_at_each_groups_learning_rate():
    model = classifier()
    cfg = TrainConfig(lr=0.01, scheduler="onecycle", epochs=2, backbone_lr_mult=0.1)
    optimizer = build_optimizer(model, cfg, lr_scales=plan(model, backbone_lr_mult=0.1).lr_scales())
    peaks = [g["lr"] for g in optimizer.param_groups]
    assert sorted(set(peaks)) == pytest.approx([0.001, 0.01])
    build_scheduler(optimizer, cfg, steps_per_epoch=4)
    assert [g["max_lr"] for g in optimizer.param_groups] == peaks


def test_full_at_one_learning_rate_needs_no_stages():
    model = nn.Linear(4, 2)  # no backbone at all: nothing to find when nothing is asked
    finetuning = plan(model)
    assert finetuning.stages is None
    assert finetuning.lr_scales() is None
    assert finetuning.summary() == ""
    finetuning.apply(1)
    assert len(build_optimizer(model, TrainConfig(), lr_scales=finetuning.lr_scales()).param_groups) == 2


# --- messages ----------------------------------------------------------------------------------------------------


def test_too_many_stages_names_the_count():
    with pytest.raises(UserError, match=r"^--stages 7: resnet18 has 5 stages \(stem, layer1 … layer4\)"):
        plan(classifier(), finetune="last-n", stages=7)


def test_both_learning_rate_scalings_are_a_user_error():
    with pytest.raises(UserError, match="--layer-decay and --backbone-lr-mult"):
        plan(classifier(), layer_decay=0.7, backbone_lr_mult=0.1)


def test_summary_lines():
    model = classifier()
    assert plan(model, finetune="linear").summary() == (
        "finetune linear: 11.2 M of 11.2 M parameters frozen (5 stages: stem, layer1 … layer4), head 1.5 k trainable"
    )
    assert plan(model, finetune="last-n", stages=2, layer_decay=0.5).summary() == (
        "finetune last-n 2: 683.1 k of 11.2 M parameters frozen (5 stages: stem, layer1 … layer4); layer3, layer4 "
        "and the head train; lr × 0.5 per stage below the head (stem × 0.031)"
    )
    assert "from epoch 6" in plan(model, finetune="gradual").summary()
