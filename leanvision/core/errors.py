"""Exceptions that are part of leanvision's public API."""

from __future__ import annotations


class UnsupportedModelError(TypeError):
    """The model given to a leanvision entry point is not of a supported family.

    The message names the model's class and lists the families that are supported.
    """

    def __init__(
        self,
        model: object,
        supported: list[str] | tuple[str, ...],
        what: str = "model",
        family: str | None = None,
    ):
        self.model_class = type(model).__name__
        self.supported = tuple(supported)
        super().__init__(
            f"{what} of class {self.model_class!r} is not supported; "
            f"supported families: {', '.join(self.supported)}{other_family_hint(model, family)}"
        )


# Where a model of each upstream library goes, by the top-level package of its class.
ENTRY_POINTS = {
    "diffusers": ("diffusion", "lv.diffusion.accelerate(pipe, method)"),
    "transformers": ("vlm", "lv.vlm.compress(model, method)"),
    "timm": ("vision", "lv.vision.accelerate(model, method)"),
}


def other_family_hint(model: object, family: str | None) -> str:
    """``" (this is a diffusers model: use lv.diffusion.accelerate(pipe, method))"`` when
    ``model`` belongs to another family than ``family``, the family that refused it; else ``""``.

    >>> import types
    >>> pipe = types.new_class("StableDiffusionPipeline")()
    >>> type(pipe).__module__ = "diffusers.pipelines"
    >>> other_family_hint(pipe, "vlm")
    '; this is a diffusers model: use lv.diffusion.accelerate(pipe, method)'
    >>> other_family_hint(pipe, "diffusion")
    ''
    """
    library = (type(model).__module__ or "").split(".")[0]
    target = ENTRY_POINTS.get(library)
    if family is None or target is None or target[0] == family:
        return ""
    return f"; this is a {library} model: use {target[1]}"


class AlreadyPatchedError(RuntimeError):
    """A leanvision family already patches this model; remove its Handle first."""


class MissingDependencyError(ImportError):
    """An optional dependency needed for this feature is not installed."""

    def __init__(self, package: str, extra: str, feature: str):
        self.package = package
        self.extra = extra
        super().__init__(
            f"{feature} needs the optional package {package!r}; "
            f"install it with: pip install 'leanvision[{extra}]'"
        )


class UpstreamVersionError(RuntimeError):
    """transformers, diffusers or timm no longer offers something leanvision reads from it.

    The message names leanvision's version, what was not found, the installed version of the
    upstream library (``library``) and the window leanvision supports.
    """

    def __init__(self, message: str, library: str):
        self.library = library
        super().__init__(message)
