"""One registry type for everything looked up by name in a job config (tasks, reward functions, algorithms,
advantage scalings, policy losses, extrapolators, trackers): registration refuses duplicates, lookups of an unknown
name list the valid ones, and a config Literal is checked against the keys so the two cannot drift apart."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Generic, TypeVar, get_args

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind. `register(name)` is a decorator; `get(name)` raises KeyError naming the choices."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorate(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered (by {self._entries[name]!r}); "
                                 f"choose another name")
            self._entries[name] = entry
            return entry

        return decorate

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; valid: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self):
        return iter(self.names())

    def check_literal(self, literal, exclude: Iterable[str] = ()) -> None:
        """Raise if a config Literal's choices differ from the registered names (less `exclude`)."""
        choices, names = set(get_args(literal)), set(self._entries) - set(exclude)
        if choices != names:
            raise AssertionError(f"{self.kind}: config choices {sorted(choices)} differ from the registry "
                                 f"{sorted(names)}")
