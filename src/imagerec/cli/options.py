"""Every setting of a run (DataConfig, ModelConfig, TrainConfig) as a command-line option, generated from the
config schema: its name, type, choices, help and default come from the field, so no setting is left without an
option (`--optimizer sgd`, `--ema 0.999`) and none is described twice.

A generated option defaults to None, meaning "not given": the recipe, the task or the schema then decides, and
`-h` says which. Options are grouped in help by section; a task-specific setting's description starts with the
tasks that read it (tests/test_task_contract.py holds it to the Task classes' `settings`).
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable, Iterable
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import typer
from pydantic.fields import FieldInfo

from imagerec.config import SECTIONS, Task
from imagerec.recipe import CHOSEN

F = TypeVar("F", bound=Callable[..., Any])

OPTION_NAMES = {"name": "model"}  # fields whose option reads better under another name (--model, not --name)
SHORT_FLAGS = {"model": "-m", "epochs": "-e", "batch": "-b", "imgsz": "-s", "device": "-d"}
PANELS = {"data": "Data", "model": "Model", "train": "Training"}
SKIPPED = {"path"}  # the DATA argument
TASK_NAMES = get_args(Task)


def option_name(field: str) -> str:
    """The keyword a field has in the Python API and on the command line (`model` for the model's name)."""
    return OPTION_NAMES.get(field, field)


def setting_parameters(
    *, leave_out: Iterable[str] = (), help_for: dict[str, str] | None = None, task_specific: bool = True
) -> list[inspect.Parameter]:
    """Keyword parameters, Typer options, for the settings not in `leave_out` (API keyword names), and without
    those only some tasks read unless `task_specific`; `help_for` replaces a field's description where a command
    means something else by it (pretrain's default model)."""
    skipped = SKIPPED | set(leave_out)
    parameters = []
    for section, schema in SECTIONS.items():
        for field, info in schema.model_fields.items():
            name = option_name(field)
            if field in skipped or name in skipped or (not task_specific and task_readers(info)):
                continue
            about = (help_for or {}).get(name) or _help(info, recipe=f"{section}.{field}" in CHOSEN)
            parameters.append(_parameter(name, info, about[:1].upper() + about[1:], PANELS[section]))
    return parameters


def with_settings_options(
    *, leave_out: Iterable[str] = (), help_for: dict[str, str] | None = None, task_specific: bool = True
) -> Callable[[F], F]:
    """Give a command taking `**options` one option per setting (see `setting_parameters`), after its own."""

    def decorate(command: F) -> F:
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        generated = setting_parameters(
            leave_out={p.name for p in own} | set(leave_out), help_for=help_for, task_specific=task_specific
        )
        command.__signature__ = signature.replace(parameters=own + generated)  # type: ignore[attr-defined]
        return command

    return decorate


def task_readers(info: FieldInfo) -> list[str]:
    """The tasks a task-specific setting's description starts with (`classify, segment: ...`); [] for the others.
    The Task classes' `settings` decide; descriptions are held to them by a test, and read here because the task
    modules import torch, which `imagerec -h` must not wait for."""
    head, colon, _ = (info.description or "").partition(":")
    named = [t.strip() for t in head.split(",")]
    return named if colon and all(t in TASK_NAMES for t in named) else []


def _help(info: FieldInfo, *, recipe: bool) -> str:
    """The field's description, then its choices (unless the description lists them) and its default (unless the
    description says what it is; `recipe`: the recipe chooses it from the data)."""
    about = (info.description or "").rstrip(".")
    kind = value_type(info.annotation)
    notes = []
    if get_origin(kind) is Literal and "|" not in about:
        notes.append(" | ".join(get_args(kind)))
    if recipe and "default" not in about:
        notes.append("default: chosen from the data, see --dry-run")
    elif "default" not in about and info.default is not None:
        default = info.default
        shown = ", ".join(map(str, default)) if isinstance(default, tuple) else str(default)
        notes.append(f"default: {shown.lower() if isinstance(default, bool) else shown}")
    return f"{about} ({'; '.join(notes)})".strip() if notes else about


def _parameter(name: str, info: FieldInfo, about: str, panel: str) -> inspect.Parameter:
    kind = value_type(info.annotation)
    flag = f"--{name.replace('_', '-')}"
    declared = [
        f"{flag}/--no-{flag[2:]}" if kind is bool else flag,
        *([SHORT_FLAGS[name]] if name in SHORT_FLAGS else []),
    ]
    if get_origin(kind) is tuple:  # a value per channel: the option is repeated
        kind = list[float]
    metavar = "<choice>" if get_origin(kind) is Literal else None  # the choices are in the help, where they wrap
    option = typer.Option(*declared, help=about, rich_help_panel=panel, show_default=False, metavar=metavar)
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[kind | None, option]
    )


def value_type(annotation: Any) -> Any:
    """The type a field holds, without None and pydantic's metadata: int, float, bool, str, Path, a Literal or a
    tuple."""
    if get_origin(annotation) is Annotated:
        return value_type(get_args(annotation)[0])
    if get_origin(annotation) in (Union, types.UnionType):
        kinds = [k for k in get_args(annotation) if k is not type(None)]
        return value_type(kinds[0])
    return annotation
