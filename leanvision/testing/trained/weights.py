"""Where the trained tiny models' weights live, and how they are saved and loaded.

Weights ship with the package as float16 safetensors (``weights/<name>.safetensors``); the
architectures are built from code, so a file holds tensors only. Loading casts each tensor to
the dtype of the module it fills.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

__all__ = ["WEIGHTS_DIR", "load_weights", "save_weights", "weights_path"]

WEIGHTS_DIR = Path(__file__).with_name("weights")


def weights_path(name: str) -> Path:
    """The shipped file of ``name``: ``weights_path("llava").name == "llava.safetensors"``."""
    return WEIGHTS_DIR / f"{name}.safetensors"


def save_weights(module: torch.nn.Module, name: str, directory: Path | None = None) -> Path:
    """Write ``module``'s state as float16 safetensors (integer buffers unchanged)."""
    path = (directory or WEIGHTS_DIR) / f"{name}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        key: (value.half() if value.is_floating_point() else value).detach().cpu().contiguous()
        for key, value in module.state_dict().items()
    }
    save_file(state, str(path), metadata={"name": name})
    return path


def load_weights(module: torch.nn.Module, name: str, directory: Path | None = None):
    """Fill ``module`` from ``name``'s file (every key must match) and return it in eval mode.

    >>> load_weights(torch.nn.Linear(2, 2), "no-such-model")
    Traceback (most recent call last):
    ...
    FileNotFoundError: no trained weights 'no-such-model' at .../no-such-model.safetensors; ...
    """
    path = (directory or WEIGHTS_DIR) / f"{name}.safetensors"
    if not path.exists():
        raise FileNotFoundError(
            f"no trained weights {name!r} at {path}; the training scripts in the repository's "
            "training/ folder write them (see docs/accuracy.md)"
        )
    own = module.state_dict()
    state = {
        key: value.to(own[key].dtype) if key in own else value
        for key, value in load_file(str(path)).items()
    }
    module.load_state_dict(state, strict=True)
    return module.eval()
