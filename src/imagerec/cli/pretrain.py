"""`imagerec pretrain`: self-supervised pretraining on unlabelled images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from imagerec.cli.shared import JsonOpt, SetOpt, finish_run, with_settings

Opt = typer.Option


def pretrain(
    data: Annotated[
        Path | None, typer.Argument(help="Folder of images (any layout; labels ignored). Omit with --resume.")
    ] = None,
    model: Annotated[
        str | None,
        Opt(help="Backbone to pretrain (default resnet18): a classifier name; train from it with --weights RUN."),
    ] = None,
    method: Annotated[
        str | None, Opt(help="simclr (default) | byol | dino, or mae for vision transformers (timm:vit_*).")
    ] = None,
    epochs: Annotated[int | None, Opt(help="Epochs (default 20).")] = None,
    time: Annotated[str | None, Opt(help="Time budget, e.g. 10m, 1h: the epochs that fit are planned.")] = None,
    imgsz: Annotated[int | None, Opt(help="Input size (default: the images' median shorter side, 32–224).")] = None,
    batch: Annotated[
        int | None, Opt(help="Images per batch (default 64, or the training images there are, at least 16).")
    ] = None,
    lr: Annotated[float | None, Opt(help="Peak learning rate.")] = None,
    out: Annotated[Path | None, Opt(help="Run directory (default runs/pretrain-NNN).")] = None,
    device: Annotated[str | None, Opt(help="auto | cpu | cuda | mps")] = None,
    devices: Annotated[int | None, Opt(help="Processes/GPUs per node (DDP when > 1).")] = None,
    num_nodes: Annotated[int | None, Opt(help="Nodes (torchrun or SLURM).")] = None,
    precision: Annotated[str | None, Opt(help="auto | 32 | 16-mixed | bf16-mixed")] = None,
    seed: Annotated[int | None, Opt(help="Random seed (also draws the split, as train does).")] = None,
    threads: Annotated[int | None, Opt(help="CPU threads for torch (default: 1 on ≤ 2 cores, else all).")] = None,
    workers: Annotated[int | None, Opt(help="DataLoader processes decoding and augmenting images.")] = None,
    weights: Annotated[str | None, Opt(help="Start from these weights (as train --weights).")] = None,
    resume: Annotated[Path | None, Opt(help="Continue this pretraining run from its last finished epoch.")] = None,
    settings: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Pretrain a backbone on your own images without labels; then `imagerec train DATA --weights RUN`."""
    from imagerec.api import pretrain as pretrain_run

    options = {
        "model": model, "epochs": epochs, "time": time, "imgsz": imgsz, "batch": batch, "lr": lr, "device": device,
        "devices": devices, "num_nodes": num_nodes, "precision": precision, "seed": seed, "threads": threads,
        "workers": workers, "weights": weights,
    } | with_settings(settings)  # fmt: skip
    console = Console(soft_wrap=True, stderr=as_json)
    try:
        if resume is not None:
            run = pretrain_run(resume=resume, method=method, console=console, **options)
        else:
            run = pretrain_run(data, method=method, out=out, console=console, **options)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: finished epochs are saved; continue with imagerec pretrain --resume RUN")
        raise typer.Exit(130) from None
    if not run.primary:
        return
    shown = "  ".join(f"{k} {v:.4f}" for k, v in run.metrics.items() if isinstance(v, float))
    if shown and not as_json:
        console.print(f"val at epoch {run.best_epoch}: {shown}", markup=False)
    steps = [f"imagerec train {data if data is not None else 'DATA'} --weights {run.path}",
             f"tensorboard --logdir {run.path / 'tensorboard'}"]  # fmt: skip
    finish_run(console, run, as_json=as_json, steps=steps)
