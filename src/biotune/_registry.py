"""Named plug-in points: search strategies, pruners, executors, comparison methods.

Each registry holds, per name, the implementation and a one-line description, like timm's
``@register_model``: an implementation registers itself where it is defined
(``@STRATEGIES.register("tpe", "…")``), settings are checked against the names
(:meth:`Registry.check`), and the command line builds its ``choices`` and help from them. A registry
lives here, below every layer, so that settings (``config``) can check names without importing the
layers that implement them; the first lookup imports the implementing module (``module``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterator, TypeVar

from .errors import BioTuneError

__all__ = ["Entry", "Registry", "STRATEGIES", "PRUNERS", "EXECUTORS", "BASELINES", "TUNED"]

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered implementation: its name, the object (class or factory) and what it does."""

    name: str
    obj: T
    description: str


class Registry(Generic[T]):
    """Name → implementation, in registration order.

    Iterating a registry (or ``tuple(registry)``) gives its names; ``name in registry`` checks one.

    Example:
        >>> things = Registry("thing", module=__name__)
        >>> @things.register("a", "the first")
        ... def make_a():
        ...     return 1
        >>> tuple(things), things.get("a")(), things.describe("a")
        (('a',), 1, 'the first')
    """

    def __init__(self, kind: str, *, module: str) -> None:
        self.kind = kind
        self.module = module
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, description: str) -> Callable[[T], T]:
        """A decorator that registers the decorated class or function under ``name``."""

        def add(obj: T) -> T:
            self.add(name, obj, description)
            return obj

        return add

    def add(self, name: str, obj: T, description: str) -> None:
        if not name or not isinstance(name, str):
            raise TypeError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        if name in self._entries and self._entries[name].obj is not obj:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = Entry(name, obj, description)

    def _loaded(self) -> dict[str, Entry[T]]:
        if not self._entries:
            importlib.import_module(self.module)
        return self._entries

    def entries(self) -> tuple[Entry[T], ...]:
        return tuple(self._loaded().values())

    def get(self, name: str) -> T:
        """The implementation registered as ``name``.

        Raises:
            BioTuneError: an unknown name (the message lists the known ones).
        """
        self.check(name)
        return self._loaded()[name].obj

    def check(self, name: Any, field: str | None = None) -> None:
        """Raise a clear error unless ``name`` is registered (``field``: the setting's name)."""
        entries = self._loaded()
        if name not in entries:
            if field:
                raise BioTuneError(f"`{field}` must be one of {', '.join(entries)}, got {name!r}")
            raise BioTuneError(f"unknown {self.kind} {name!r}; known: {', '.join(entries)}")

    def describe(self, name: str) -> str:
        return self._loaded()[name].description

    def help(self) -> str:
        """``name: description; …`` for a command-line help text."""
        return "; ".join(f"{e.name}: {e.description}" for e in self.entries())

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(self._loaded()))

    def __contains__(self, name: object) -> bool:
        return name in self._loaded()

    def __len__(self) -> int:
        return len(self._loaded())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self)})"


STRATEGIES: Registry[Callable[..., Any]] = Registry("search strategy", module="biotune.search.engines")
PRUNERS: Registry[Callable[..., Any]] = Registry("pruner", module="biotune.search.pruning")
EXECUTORS: Registry[type] = Registry("executor", module="biotune.training.executor")
BASELINES: Registry[Callable[..., Any]] = Registry("baseline", module="biotune.compare.baselines")
TUNED: Registry[Callable[..., Any]] = Registry("tuned competitor", module="biotune.compare.tuned")
