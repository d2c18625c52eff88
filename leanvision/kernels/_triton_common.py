"""Helpers shared by the Triton launchers (imported only when the Triton path runs)."""

from __future__ import annotations

import torch

from leanvision.kernels.dispatch import interpreter_enabled, triton_compute_dtype


def reject_interpreted_dtype(launcher: str, dtype: torch.dtype) -> None:
    """Raise instead of returning garbage: the interpreter computes bf16 wrong.

    The public ops convert first (:func:`~leanvision.kernels.dispatch.triton_compute_dtype`);
    this guards direct calls of a launcher.
    """
    compute = triton_compute_dtype(dtype)
    if compute != dtype:
        raise TypeError(
            f"{launcher} got {dtype} inputs under the Triton interpreter, which computes "
            f"{dtype} wrong; pass {compute} inputs (the public op in leanvision.kernels does)"
        )


def next_pow2(value: int, minimum: int = 16) -> int:
    """Smallest power of two >= max(value, minimum); tl.dot needs block dims >= 16."""
    return max(minimum, 1 << max(0, int(value) - 1).bit_length())


def dot_precision(dtype: torch.dtype) -> str:
    """``input_precision`` for ``tl.dot`` on inputs of ``dtype``.

    Only fp32 inputs are affected (see :func:`fp32_dot_precision`); fp16/bf16 dots always run
    on tensor cores, and asking for "ieee" there is avoided so no Triton version falls back to
    FMA for them.
    """
    return fp32_dot_precision() if dtype == torch.float32 else "tf32"


def fp32_dot_precision() -> str:
    """Precision of fp32 ``tl.dot``: exact IEEE under the interpreter, else follow torch's flag.

    torch computes fp32 matmuls in full precision unless ``allow_tf32`` is set, so the kernels
    do the same, and fp32 callers get fp32-accurate results by default.
    """
    if interpreter_enabled():
        return "ieee"
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"


def launch_opts(config: dict) -> dict:
    """num_warps / num_stages for a launch (the interpreter ignores them, so pass none)."""
    if interpreter_enabled():
        return {}
    return {k: config[k] for k in ("num_warps", "num_stages") if k in config}
