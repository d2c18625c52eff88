"""Name -> config class -> apply function, one registry per family (vlm, diffusion, ...)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from leanvision.core.config import MethodConfig

ApplyFn = TypeVar("ApplyFn", bound=Callable[..., Any])


@dataclasses.dataclass(frozen=True)
class Entry(Generic[ApplyFn]):
    name: str
    config_class: type[MethodConfig]
    apply: ApplyFn


class Registry(Generic[ApplyFn]):
    """Methods of one family.

    >>> from dataclasses import dataclass
    >>> methods = Registry("demo")
    >>> @dataclass
    ... class Halve(MethodConfig):
    ...     keep: float = 0.5
    >>> @methods.register("halve", Halve)
    ... def apply_halve(model, config):
    ...     return config.keep
    >>> config, apply = methods.resolve("halve", keep=0.25)
    >>> apply(None, config)
    0.25
    """

    def __init__(self, family: str):
        self.family = family
        self._by_name: dict[str, Entry[ApplyFn]] = {}
        self._by_config: dict[type[MethodConfig], Entry[ApplyFn]] = {}

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
        return sorted(self._by_name)

    def entry(self, method: str | MethodConfig) -> Entry[ApplyFn]:
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
                f"unknown {self.family} method {method!r}; known: {', '.join(self.names())}"
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
            raise TypeError(
                f"{self.family} method {entry.name!r} has no option(s) {unknown}; "
                f"its options: {sorted(fields)}"
            )
        return entry.config_class(**options), entry.apply
