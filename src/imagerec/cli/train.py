"""`imagerec train`, `imagerec models`, `imagerec config` and `imagerec demo`."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from imagerec.cli.options import with_settings_options
from imagerec.cli.shared import JsonOpt, QuietOpt, SetOpt, finish_run, print_json, with_settings
from imagerec.errors import UserError

Opt = typer.Option


@with_settings_options()
def train(
    data: Annotated[Path | None, typer.Argument(help="Image folder or CSV (omit with --resume).")] = None,
    task: Annotated[
        str | None,
        Opt("--task", "-t", help="classify | detect | segment (default: from the data: labels, boxes or masks)"),
    ] = None,
    out: Annotated[Path | None, Opt("--out", "-o", help="Run directory (default runs/<task>-NNN).")] = None,
    config: Annotated[Path | None, Opt(help="YAML with data/model/train sections; options override it.")] = None,
    resume: Annotated[Path | None, Opt(help="Continue this run from its last finished epoch.")] = None,
    dry_run: Annotated[
        bool, Opt("--dry-run", help="Print what the recipe would choose, and why, without training.")
    ] = False,
    settings: SetOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    **options: Any,
) -> None:
    """Train a model; prints per-epoch metrics and the test metrics at the end."""
    from imagerec.api import train as train_run

    options = {k: v for k, v in options.items() if v is not None} | with_settings(settings)  # None: not given
    console = Console(soft_wrap=True, stderr=as_json, quiet=quiet)  # progress and epochs
    results = Console(soft_wrap=True, stderr=as_json)
    if dry_run:
        from imagerec.api import plan

        if resume is not None:
            raise UserError("--dry-run plans a new run; a resumed run keeps its own settings (see its run.yaml)")
        planned = plan(data, config=config, task=task, out=out, **options)
        results.print(f"[bold]{planned.cfg.task}[/] with [bold]{planned.cfg.model.name}[/] on {data}")
        for line in planned.lines():
            results.print(f"  {line}", markup=False)
        return
    try:
        if resume is not None:
            run = train_run(resume=resume, console=console, **options)
        else:
            run = train_run(data, config=config, task=task, out=out, console=console, **options)
    except KeyboardInterrupt:
        console.print(
            "[yellow]interrupted[/]: finished epochs are saved; continue with imagerec train --resume RUN_DIR"
        )
        raise typer.Exit(130) from None
    if not run.primary:
        return
    if run.metrics and not as_json:
        from imagerec.cli.predict import print_metrics

        fitted = f" (best epoch {run.best_epoch})" if run.epochs else ""  # --head knn|logistic runs have no epochs
        print_metrics(results, run.metrics, title=f"{run.split} metrics{fitted}")
    trained_on = data if data is not None else "DATA"
    steps = [f"imagerec predict {run.path} IMAGES", f"imagerec evaluate {run.path} {trained_on} --split test",
             f"imagerec export {run.path}"]  # fmt: skip
    if run.epochs:
        steps.append(f"tensorboard --logdir {run.path / 'tensorboard'}")
    finish_run(results, run, as_json=as_json, steps=steps, quiet=quiet)


def models(
    task: Annotated[str, Opt(help="classify | detect | segment")] = "classify",
    as_json: Annotated[bool, Opt("--json", help="Print the list as JSON.")] = False,
) -> None:
    """List what --model accepts, where each model comes from and the formats `imagerec export` writes it to."""
    from imagerec.models import list_models

    rows = list_models(task)
    if as_json:
        print_json(rows)
        return
    table = Table("name", "source", "export")
    for row in rows:
        table.add_row(row["name"], row["source"], row["export"])
    Console().print(table)


def config(
    print_defaults: Annotated[bool, Opt("--print", help="Print every setting with its default and meaning.")] = False,
    task: Annotated[str, Opt(help="classify | detect | segment: the defaults of this task.")] = "classify",
) -> None:
    """The settings a run has (what --config files hold and --set changes): --print writes them with their defaults
    as a commented YAML file."""
    from imagerec.config import build_config, describe_defaults
    from imagerec.tasks.build import task_defaults

    if not print_defaults:
        raise UserError("imagerec config --print [--task TASK] writes the settings and their defaults")
    build_config({"task": task, "data": {"path": "DATA"}})  # an unknown task: one line naming the tasks
    print(describe_defaults(task, task_defaults(task)), end="")


def demo(out: Annotated[Path, Opt(help="Where the demo writes its data and run.")] = Path("runs/demo")) -> None:
    """Train the seed ConvNet on scikit-learn's real handwritten digits, evaluate, predict, report."""
    from imagerec.api import evaluate as evaluate_run
    from imagerec.api import train as train_run
    from imagerec.data.samples import write_sample
    from imagerec.outputs.predict import load

    console = Console(soft_wrap=True)
    data = out / "digits"
    if not data.exists():
        write_sample("digits", data)
    shutil.rmtree(out / "run", ignore_errors=True)  # the demo's own previous run
    console.print(f"[bold]1/3 train[/] seed_cnn on {data} (1,797 real 8×8 scans of handwritten digits)")
    # The digits recipe chosen on validation (docs/benchmarks.md §2): 16 px, 20 epochs; the rest is the recipe's.
    run = train_run(data, model="seed_cnn", imgsz=16, epochs=20, out=out / "run", console=console)
    console.print("[bold]2/3 evaluate[/] on the held-out test split")
    metrics = evaluate_run(run.path, data, split="test")
    console.print("[bold]3/3 predict[/] a few test images")
    predictor = load(run.path)
    test_images = [data / p for p in predictor.run.read_split()["test"][::30]]
    for result in predictor.predict(test_images, topk=1):
        console.print(f"  {result.source}: {result.label} ({result.prob:.3f})")
    console.print(f"run directory: {run.path}  (metrics.csv, evaluation/test.json, best.safetensors, model.json)")
    console.print(f"[bold green]test accuracy: {metrics['accuracy']:.4f}[/] on {metrics['count']} images")
