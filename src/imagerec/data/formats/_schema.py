"""Checking the values read from annotation files with pydantic, and turning the first problem it finds into one
line naming the file and the key."""

from __future__ import annotations

import math
import re
from functools import cache
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BeforeValidator, Field, TypeAdapter, ValidationError

from imagerec.errors import UserError

_T = TypeVar("_T")
_SHOWN = 60  # characters of an offending value quoted in the error line
# pydantic's names for the steps inside a type (union members, validators, dict keys): they mean nothing to users.
# Our models' keys are lower case: a capitalised step is a model or TypedDict among a union's members.
_STEP = re.compile(r"^(function-[a-z-]+\[.*\]|[a-z-]+\[.*\]|\[key\]|int|str|float|bool|none|_?[A-Z]\w*)$")


def _name(value: Any) -> str:
    # YAML reads `names: [1, 2]` and `names: {0: 3}` as numbers: class names that are numbers are common (digits).
    if isinstance(value, bool):  # YAML 1.1 reads yes, no, on, off, true and false unquoted as booleans
        raise ValueError("a class name must be text or a number: put names such as yes or no in quotes")
    if not isinstance(value, str | int | float):
        raise ValueError("a class name must be text or a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("a class name must be text or a finite number")
    text = str(value).strip()
    if not text:
        raise ValueError("a class name must not be empty")
    return text


Name = Annotated[str, BeforeValidator(_name)]
"""A class name: text, or a number read as text (`7` → "7")."""


def _as_list(value: Any) -> Any:
    if isinstance(value, dict):
        keys = [k for k in value if isinstance(k, int) and not isinstance(k, bool)]
        if len(keys) != len(value) or sorted(keys) != list(range(len(keys))):
            shown = ", ".join(repr(k) for k in list(value)[:8])
            raise ValueError(f"keys of a dict of names must be 0, 1, 2, … without gaps (found {shown})")
        return [value[i] for i in range(len(keys))]
    if not isinstance(value, list):
        raise ValueError("give the class names as a list, or a dict of index: name")
    return value


def _unique(names: list[str]) -> list[str]:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"class {name!r} is listed twice; keep one")
        seen.add(name)
    return names


Names = Annotated[list[Name], BeforeValidator(_as_list), AfterValidator(_unique)]
"""Class names as YOLO and classes.yaml write them: a list, or a dict of index: name; each name once."""

Colour = tuple[
    Annotated[int, Field(strict=True, ge=0, le=255)],
    Annotated[int, Field(strict=True, ge=0, le=255)],
    Annotated[int, Field(strict=True, ge=0, le=255)],
]


def _location(loc: tuple[int | str, ...]) -> str:
    """pydantic's ('images', 3, 'id') as `images[3].id`."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif not _STEP.match(part):
            text += f".{part}" if text else part
    return text


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else f"{text[:_SHOWN]}…"


def problem_line(error: ValidationError) -> str:
    """pydantic's first error as `key: message (got value)`. A value that fits none of a union's types gets one
    error per type: of those, the deepest, from the type the value came closest to."""
    errors = error.errors(include_url=False)
    first = errors[0]
    loc = tuple(first["loc"])
    union = next((i for i, part in enumerate(loc) if isinstance(part, str) and _STEP.match(part)), None)
    if union is not None:
        first = max((e for e in errors if tuple(e["loc"])[:union] == loc[:union]), key=lambda e: len(e["loc"]))
    message = str(first["msg"]).removeprefix("Value error, ")
    where = _location(tuple(first["loc"]))
    value = first.get("input")
    scalar = first["type"] != "missing" and not isinstance(value, dict | list)  # the message says what a list lacks
    got = f" (got {_shown(value)})" if scalar else ""
    return f"{where + ': ' if where else ''}{message}{got}"


@cache
def _adapter(schema: Any) -> TypeAdapter:
    return TypeAdapter(schema)


def validated(schema: type[_T] | Any, data: Any, file: Path, *, where: str = "") -> _T:
    """`data` checked and converted by `schema` (a pydantic model or type); a UserError naming `file` (and `where`
    in it) and the first value that does not fit."""
    try:
        return _adapter(schema).validate_python(data)
    except ValidationError as error:
        at = f"{file}, {where}" if where else str(file)
        raise UserError(f"{at}: {problem_line(error)}; fix the file") from None
    except RecursionError:  # a structure nested deeper than the validator follows
        raise UserError(f"{file}: values nested too deeply; fix the file") from None
