"""Which implementation a kernel call runs: the Triton kernel or its torch reference.

``backend="auto"`` picks Triton for CUDA tensors on devices of compute capability >= 8.0, and
for CPU tensors when ``TRITON_INTERPRET=1`` (how the tests run the kernels on a CPU); torch
everywhere else. The environment variable ``LEANVISION_KERNELS=triton|torch`` overrides
``"auto"`` for a whole process.

Under the interpreter the Triton path computes bf16 inputs in fp32 and casts the result back
(see :func:`triton_compute_dtype`): the interpreter's bf16 ``tl.dot`` returns garbage.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

BACKENDS = ("auto", "triton", "torch")
MIN_CAPABILITY = (8, 0)


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_supports(device: torch.device) -> bool:
    """Whether the Triton path can run on tensors living on ``device``."""
    if not triton_installed():
        return False
    if device.type == "cpu":
        return interpreter_enabled()
    if device.type == "cuda":
        return interpreter_enabled() or torch.cuda.get_device_capability(device) >= MIN_CAPABILITY
    return False


def triton_compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the Triton path runs inputs of ``dtype`` in: fp32 for bf16 under the interpreter.

    The Triton interpreter (3.8 here) gets bf16 wrong: ``tl.dot`` on bf16 returns garbage
    (``linear_attention`` was off by 1e9 relative, with no error) and bf16 casts lose precision.
    Compiled kernels are unaffected, so outside the interpreter every dtype runs as it is.

    >>> triton_compute_dtype(torch.float16)
    torch.float16
    """
    if dtype == torch.bfloat16 and interpreter_enabled():
        return torch.float32
    return dtype


def resolve_backend(backend: str, device: torch.device) -> str:
    """Return ``"triton"`` or ``"torch"`` for a call with tensors on ``device``.

    >>> resolve_backend("torch", torch.device("cpu"))
    'torch'
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not allowed; choose one of {list(BACKENDS)}")
    if backend == "auto":
        override = os.environ.get("LEANVISION_KERNELS", "").strip().lower()
        if override and override not in ("triton", "torch", "auto"):
            raise ValueError(
                f"LEANVISION_KERNELS={override!r} is not allowed; choose triton, torch or auto"
            )
        backend = override if override in ("triton", "torch") else "auto"
    if backend == "torch":
        return "torch"
    if triton_supports(device):
        return "triton"
    if backend == "triton":
        raise RuntimeError(
            f"backend='triton' cannot run on {device}: "
            + (
                "triton is not installed"
                if not triton_installed()
                else "needs a CUDA device of compute capability >= 8.0, or TRITON_INTERPRET=1"
            )
        )
    return "torch"


def kernel_mode() -> str:
    """How kernels run in this process by default: compiled, interpreted or torch fallback.

    >>> kernel_mode().split(" ")[0] in ("compiled", "interpreted", "torch")
    True
    """
    if not triton_installed():
        return "torch fallback (triton not installed)"
    if interpreter_enabled():
        return "interpreted (TRITON_INTERPRET=1)"
    if torch.cuda.is_available() and torch.cuda.get_device_capability() >= MIN_CAPABILITY:
        return "compiled (triton on CUDA)"
    return "torch fallback (no CUDA device of compute capability >= 8.0)"
