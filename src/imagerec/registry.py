"""The one registry type: a name → object dict with a decorator, refusing duplicates."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from imagerec.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named things of one kind (models of a task, augmentation presets, ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator registering an object under `name` (default: its `__name__`)."""

        def decorator(obj: T) -> T:
            self.add(name or obj.__name__, obj)  # type: ignore[attr-defined]
            return obj

        return decorator

    def add(self, name: str, obj: T) -> None:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = obj

    def get(self, name: str) -> T:
        """The object registered as `name`; a UserError suggesting close names otherwise."""
        try:
            return self._items[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._items), n=3, cutoff=0.6)
            hint = f"did you mean {', '.join(close)}?" if close else "see `imagerec models` for the list"
            raise UserError(f"unknown {self.kind} {name!r}: {hint}") from None

    def names(self) -> list[str]:
        return list(self._items)

    def values(self) -> list[T]:
        """The registered objects, in the order they were registered."""
        return list(self._items.values())

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)
