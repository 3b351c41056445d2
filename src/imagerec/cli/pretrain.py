"""`imagerec pretrain`: self-supervised pretraining on unlabelled images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from imagerec.cli.options import with_settings_options
from imagerec.cli.shared import JsonOpt, QuietOpt, SetOpt, finish_run, with_settings

Opt = typer.Option


@with_settings_options(
    leave_out=("recipe", "augment", "monitor"),  # pretraining plans no recipe, draws its method's views, monitors k-NN
    help_for={
        "model": "Backbone to pretrain (default resnet18): a classifier name; train from it with --weights RUN.",
        "epochs": "Epochs (default 20).",
        "imgsz": "Input size (default: the images' median shorter side, 32–224).",
        "batch": "Images per batch (default 64, or the training images there are, at least 16).",
    },
    task_specific=False,
)
def pretrain(
    data: Annotated[
        Path | None, typer.Argument(help="Folder of images (any layout; labels ignored). Omit with --resume.")
    ] = None,
    method: Annotated[
        str | None, Opt(help="simclr (default) | byol | dino, or mae for vision transformers (timm:vit_*).")
    ] = None,
    out: Annotated[Path | None, Opt("--out", "-o", help="Run directory (default runs/pretrain-NNN).")] = None,
    resume: Annotated[Path | None, Opt(help="Continue this pretraining run from its last finished epoch.")] = None,
    settings: SetOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    **options: Any,
) -> None:
    """Pretrain a backbone on your own images without labels; then `imagerec train DATA --weights RUN`."""
    from imagerec.api import pretrain as pretrain_run

    options = {k: v for k, v in options.items() if v is not None} | with_settings(settings)  # None: not given
    console = Console(soft_wrap=True, stderr=as_json, quiet=quiet)  # progress and epochs
    results = Console(soft_wrap=True, stderr=as_json)
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
        results.print(f"val at epoch {run.best_epoch}: {shown}", markup=False)
    steps = [f"imagerec train {data if data is not None else 'DATA'} --weights {run.path}",
             f"tensorboard --logdir {run.path / 'tensorboard'}"]  # fmt: skip
    finish_run(results, run, as_json=as_json, steps=steps, quiet=quiet)
