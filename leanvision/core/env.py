"""Facts about this environment: package versions, device, kernel mode, optional features.

Reads package metadata instead of importing packages, so it is cheap and initialises nothing.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
from typing import Any

# (label, distribution names to try in order)
PACKAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("torch", ("torch",)),
    ("torchvision", ("torchvision",)),
    ("triton", ("triton",)),
    ("transformers", ("transformers",)),
    ("diffusers", ("diffusers",)),
    ("timm", ("timm",)),
    ("decord", ("decord", "decord2")),
    ("av (PyAV)", ("av",)),
    ("gradio", ("gradio",)),
    ("open_clip", ("open_clip_torch",)),
)

# feature -> (module that must be importable, extra that installs it). Only features leanvision
# has code for: the Gradio demo joins when ``leanvision demo`` stops saying "not yet available".
FEATURES: dict[str, tuple[str, str]] = {
    "video decoding with decord": ("decord", "video"),
    "video decoding with PyAV": ("av", "video"),
    "CLIP score": ("open_clip", "clip"),
    "LoRA loading and LCM distillation": ("peft", "train"),
    "triton kernels": ("triton", "(comes with Linux CUDA builds of torch)"),
}


def package_version(*distributions: str) -> str | None:
    for name in distributions:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def cuda_device() -> str:
    import torch

    if not torch.cuda.is_available():
        return "none"
    index = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    return f"{torch.cuda.get_device_name(index)} (compute capability {major}.{minor})"


def environment_info() -> dict[str, Any]:
    """Everything ``leanvision info`` prints, as a dict (also stored in benchmark JSON)."""
    from leanvision import __version__
    from leanvision.kernels.dispatch import kernel_mode

    versions = {"python": platform.python_version(), "leanvision": __version__}
    for label, distributions in PACKAGES:
        versions[label] = package_version(*distributions) or "not installed"
    features = {
        feature: importlib.util.find_spec(module) is not None
        for feature, (module, _extra) in FEATURES.items()
    }
    return {
        "versions": versions,
        "platform": platform.platform(),
        "cuda_device": cuda_device(),
        "kernels": kernel_mode(),
        "features": features,
    }


def format_info(info: dict[str, Any]) -> str:
    lines = ["leanvision environment", ""]
    width = max(len(name) for name in info["versions"])
    lines += [f"  {name:<{width}}  {version}" for name, version in info["versions"].items()]
    lines += ["", f"  platform     {info['platform']}", f"  CUDA device  {info['cuda_device']}"]
    lines += [f"  kernels      {info['kernels']}", "", "optional features"]
    for feature, usable in info["features"].items():
        extra = FEATURES[feature][1]
        hint = "" if usable else f"  (install: pip install 'leanvision[{extra}]')"
        if not usable and extra.startswith("("):
            hint = f"  {extra}"
        lines.append(f"  {'yes' if usable else 'no ':<4} {feature}{hint}")
    return "\n".join(lines)
