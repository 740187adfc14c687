"""A tiny name -> object registry with did-you-mean errors (timm's register/create idea)."""
from __future__ import annotations

import difflib
from typing import Any, Callable, Generic, Iterator, TypeVar

from bench.errors import ConfigError

T = TypeVar("T")


def did_you_mean(name: str, choices: list[str] | tuple[str, ...]) -> str:
    """Return ' (did you mean 'x'?)' for the closest choice, or '' when none is close."""
    close = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown(kind: str, name: str, choices, where: str = "") -> ConfigError:
    """Build the standard one-line error for an unknown name."""
    choices = sorted(choices)
    loc = f" in {where}" if where else ""
    return ConfigError(
        f"unknown {kind} '{name}'{loc}{did_you_mean(name, choices)}; choose one of: {', '.join(choices)}"
    )


class Registry(Generic[T]):
    """Maps names to objects; ``get`` raises a ConfigError with a did-you-mean."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}
        self.meta: dict[str, dict[str, Any]] = {}

    def register(self, name: str, **meta: Any) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' registered twice")
            self._items[name] = obj
            self.meta[name] = meta
            return obj

        return deco

    def get(self, name: str, where: str = "") -> T:
        try:
            return self._items[name]
        except KeyError:
            raise unknown(self.kind, name, self._items, where) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
