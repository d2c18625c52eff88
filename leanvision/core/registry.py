"""Name -> config class -> apply function, one registry per family (vlm, diffusion, ...)."""

from __future__ import annotations

import dataclasses
import difflib
import importlib
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from leanvision.core.config import MethodConfig

ApplyFn = TypeVar("ApplyFn", bound=Callable[..., Any])


@dataclasses.dataclass(frozen=True)
class Entry(Generic[ApplyFn]):
    name: str
    config_class: type[MethodConfig]
    apply: ApplyFn


def summary(config_class: type) -> str:
    """The first line of a config class's docstring: its one-line description."""
    doc = (config_class.__doc__ or "").strip()
    return doc.splitlines()[0].strip() if doc else config_class.__name__


def did_you_mean(name: str, known: list[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest known name, or ``""``.

    >>> did_you_mean("visonzip", ["fastv", "visionzip"])
    "; did you mean 'visionzip'?"
    """
    close = difflib.get_close_matches(name.lower(), known, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


class Registry(Generic[ApplyFn]):
    """Methods of one family. ``modules`` are imported (they register their methods) the first
    time the registry is read, so a fresh registry already lists every method.

    >>> from dataclasses import dataclass
    >>> methods = Registry("demo")
    >>> @dataclass
    ... class Halve(MethodConfig):
    ...     '''Keep half of everything.'''
    ...     keep: float = 0.5
    >>> @methods.register("halve", Halve)
    ... def apply_halve(model, config):
    ...     return config.keep
    >>> config, apply = methods.resolve("halve", keep=0.25)
    >>> apply(None, config)
    0.25
    >>> methods
    demo methods:
      halve  Keep half of everything.
    """

    def __init__(self, family: str, modules: tuple[str, ...] = ()):
        self.family = family
        self.modules = modules
        self._loaded = not modules
        self._by_name: dict[str, Entry[ApplyFn]] = {}
        self._by_config: dict[type[MethodConfig], Entry[ApplyFn]] = {}

    def load(self) -> Registry[ApplyFn]:
        """Import the method modules (once) and return the populated registry."""
        if not self._loaded:
            self._loaded = True
            for module in self.modules:
                importlib.import_module(module)
        return self

    def register(self, name: str, config_class: type[MethodConfig]) -> Callable[[ApplyFn], ApplyFn]:
        key = name.lower()
        if key in self._by_name:
            raise ValueError(f"{self.family} method {name!r} is already registered")

        def decorator(apply: ApplyFn) -> ApplyFn:
            entry = Entry(key, config_class, apply)
            self._by_name[key] = entry
            self._by_config[config_class] = entry
            return apply

        return decorator

    def names(self) -> list[str]:
        """Every registered method name, sorted."""
        return sorted(self.load()._by_name)

    def describe(self) -> dict[str, str]:
        """Method name -> its one-line description (the config class's first docstring line)."""
        self.load()
        return {name: summary(self._by_name[name].config_class) for name in self.names()}

    def __repr__(self) -> str:
        rows = self.describe()
        width = max((len(name) for name in rows), default=0)
        lines = [f"  {name.ljust(width)}  {text}" for name, text in rows.items()]
        return "\n".join([f"{self.family} methods:", *lines])

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self.load()._by_name

    def entry(self, method: str | MethodConfig) -> Entry[ApplyFn]:
        self.load()
        if isinstance(method, MethodConfig):
            entry = self._by_config.get(type(method))
            if entry is None:
                raise TypeError(
                    f"{type(method).__name__} is not a {self.family} method config; "
                    f"known methods: {', '.join(self.names())}"
                )
            return entry
        if not isinstance(method, str):
            raise TypeError(
                f"method must be a name or a config, got {type(method).__name__}; "
                f"known {self.family} methods: {', '.join(self.names())}"
            )
        entry = self._by_name.get(method.lower())
        if entry is None:
            raise ValueError(
                f"unknown {self.family} method {method!r}"
                f"{did_you_mean(method, self.names()) or ';'} known: {', '.join(self.names())}"
            )
        return entry

    def resolve(self, method: str | MethodConfig, **options: Any) -> tuple[MethodConfig, ApplyFn]:
        """Build (or check) the config for ``method`` and return it with its apply function."""
        entry = self.entry(method)
        if isinstance(method, MethodConfig):
            if options:
                raise TypeError(
                    f"pass options either in the config or as keywords, not both: {sorted(options)}"
                )
            return method, entry.apply
        fields = {f.name for f in dataclasses.fields(entry.config_class) if f.init}
        unknown = sorted(set(options) - fields)
        if unknown:
            hints = "".join(did_you_mean(name, sorted(fields)) for name in unknown) or ";"
            raise TypeError(
                f"{self.family} method {entry.name!r} has no option(s) {unknown}{hints} "
                f"its options: {sorted(fields)}"
            )
        return entry.config_class(**options), entry.apply

    def resolve_many(
        self,
        method: str | MethodConfig | list[MethodConfig] | tuple[MethodConfig, ...],
        **options: Any,
    ) -> list[tuple[MethodConfig, ApplyFn]]:
        """:meth:`resolve` for one method, or for a list of configs applied together in one
        handle (each method at most once; options then go inside the configs).

        >>> from dataclasses import dataclass
        >>> methods = Registry("demo")
        >>> @dataclass
        ... class Halve(MethodConfig):
        ...     '''Keep half of everything.'''
        >>> _ = methods.register("halve", Halve)(lambda model, config: None)
        >>> [type(config).__name__ for config, _ in methods.resolve_many([Halve()])]
        ['Halve']
        >>> methods.resolve_many([Halve(), Halve()])
        Traceback (most recent call last):
        ValueError: each demo method may appear once in a list, got ['halve', 'halve']
        """
        if not isinstance(method, (list, tuple)):
            return [self.resolve(method, **options)]
        if options:
            raise TypeError("pass options inside the configs when giving a list of methods")
        if not method:
            raise ValueError("the method list is empty; give at least one config")
        resolved = [self.resolve(config) for config in method]
        names = [self.entry(config).name for config, _ in resolved]
        if len(set(names)) != len(names):
            raise ValueError(f"each {self.family} method may appear once in a list, got {names}")
        return resolved
