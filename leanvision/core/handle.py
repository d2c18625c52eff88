"""A reversible, instance-level patch of a model.

Every leanvision method returns a :class:`Handle`. Everything the method changed on the
model (forward hooks, instance attributes, attention implementations) is recorded in the
handle as an undo step, and :meth:`Handle.remove` runs those steps in reverse order, which
restores the model bit for bit.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from leanvision.core.errors import AlreadyPatchedError

# model -> {family: handle}. Weak keys: the registry never keeps a model alive.
_ACTIVE: weakref.WeakKeyDictionary[Any, dict[str, Handle]] = weakref.WeakKeyDictionary()

_MISSING = object()


class Handle:
    """Undo record of one method applied to one model.

    Use it directly, ``h.remove()``, or as a context manager. ``stats`` is a dict the
    method fills (tokens before/after, MACs, cache hits...).

    >>> import torch
    >>> layer = torch.nn.Linear(2, 2)
    >>> with Handle.build(layer, family="demo", method="double") as h:
    ...     h.set_attr(layer, "weight", torch.nn.Parameter(layer.weight * 2))
    >>> h.remove()
    >>> Handle.active(layer)
    {}
    """

    def __init__(self, model: Any, family: str, method: str, config: Any = None):
        current = _ACTIVE.get(model, {})
        if family in current:
            raise AlreadyPatchedError(
                f"{type(model).__name__} already has a leanvision {family!r} patch "
                f"({current[family].method!r}); call .remove() on its Handle before applying "
                f"{method!r} (if you no longer hold it: "
                f"lv.Handle.active(model)[{family!r}].remove())"
            )
        self._model_ref = weakref.ref(model)
        self.family = family
        self.method = method
        self.config = config
        self.stats: dict[str, Any] = {}
        self._undo: list[Callable[[], None]] = []
        self._removed = False
        _ACTIVE.setdefault(model, {})[family] = self

    @classmethod
    @contextlib.contextmanager
    def build(cls, model: Any, family: str, method: str, config: Any = None) -> Iterator[Handle]:
        """Create a handle and roll every recorded step back if patching raises."""
        handle = cls(model, family, method, config)
        try:
            yield handle
        except BaseException:
            handle.remove()
            raise

    @staticmethod
    def active(model: Any) -> dict[str, Handle]:
        """The live handles on ``model``, by family."""
        return dict(_ACTIVE.get(model, {}))

    @property
    def model(self) -> Any:
        return self._model_ref()

    @property
    def is_active(self) -> bool:
        return not self._removed

    def on_remove(self, undo: Callable[[], None]) -> None:
        """Record an undo step; steps run in reverse order of recording."""
        if self._removed:
            raise RuntimeError("this Handle was already removed")
        self._undo.append(undo)

    def add_hook(self, removable: Any) -> Any:
        """Record a torch ``RemovableHandle`` (or anything with ``.remove()``)."""
        self.on_remove(removable.remove)
        return removable

    def set_attr(self, obj: Any, name: str, value: Any) -> None:
        """Set ``obj.name = value`` on the instance, restoring the exact prior state on remove.

        If the attribute came from the class (not the instance), removal deletes the instance
        attribute again rather than copying the class value onto the instance.
        """
        own = _own_attribute(obj, name)
        setattr(obj, name, value)

        def undo() -> None:
            if own is _MISSING:
                delattr(obj, name)
            else:
                setattr(obj, name, own)

        self.on_remove(undo)

    def remove(self) -> None:
        """Undo every change, newest first. Calling it twice is harmless."""
        if self._removed:
            return
        self._removed = True
        errors = []
        while self._undo:
            step = self._undo.pop()
            try:
                step()
            except Exception as error:  # keep undoing the rest, then report
                errors.append(error)
        model = self.model
        if model is not None:
            families = _ACTIVE.get(model, {})
            if families.get(self.family) is self:
                del families[self.family]
        if errors:
            raise RuntimeError(f"{len(errors)} undo step(s) failed: {errors!r}") from errors[0]

    def __enter__(self) -> Handle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "active" if self.is_active else "removed"
        return f"Handle(family={self.family!r}, method={self.method!r}, {state})"


def _own_attribute(obj: Any, name: str) -> Any:
    """The value ``obj`` holds itself under ``name`` (not inherited), or ``_MISSING``."""
    for store in ("_parameters", "_buffers", "_modules"):
        table = getattr(obj, "__dict__", {}).get(store)
        if isinstance(table, dict) and name in table:
            return table[name]
    return getattr(obj, "__dict__", {}).get(name, _MISSING)
