"""Launch configurations: heuristics in code, optionally overridden by a tuned JSON per GPU.

``benchmarks/tune_attention.py`` times candidate configs on one GPU and writes
``leanvision/kernels/tuned/<gpu-name>.json`` (or into ``$LEANVISION_TUNED_DIR``). When a file
for the current GPU exists, :func:`tuned_config` returns its entry for a shape key; otherwise
each op falls back to its heuristic. File format::

    {"device": "NVIDIA H100 80GB HBM3", "triton": "3.6.0",
     "configs": {"attention": {"<key>": {"BLOCK_M": 128, "BLOCK_N": 64,
                                         "num_warps": 8, "num_stages": 3}}}}
"""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path

import torch

from leanvision.kernels.dispatch import interpreter_enabled

TUNED_DIR = Path(__file__).with_name("tuned")


def device_slug(name: str) -> str:
    """File-name-safe form of a GPU name.

    >>> device_slug("NVIDIA H100 80GB HBM3")
    'nvidia-h100-80gb-hbm3'
    """
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def tuned_path(device_name: str) -> Path:
    """Where the tuned configs for ``device_name`` live (``$LEANVISION_TUNED_DIR`` wins)."""
    folder = Path(os.environ.get("LEANVISION_TUNED_DIR", TUNED_DIR))
    return folder / f"{device_slug(device_name)}.json"


@functools.cache
def _load(device_name: str) -> dict:
    path = tuned_path(device_name)
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text()).get("configs", {})
    except (OSError, ValueError):
        # A corrupt tuning file must never break a kernel call: fall back to heuristics.
        return {}


def tuned_config(op: str, key: str, device: torch.device) -> dict | None:
    """The tuned launch config of ``op`` for shape ``key`` on ``device``, if one was saved."""
    if device.type != "cuda":
        return None
    entry = _load(torch.cuda.get_device_name(device)).get(op, {}).get(key)
    return dict(entry) if entry else None


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"`` (the dtype part of a tuning key)."""
    return str(dtype).removeprefix("torch.")


def attention_key(block_d: int, dtype: torch.dtype, causal: bool, queries: int | None) -> str:
    """Tuning key of a prefill shape; ``queries=None`` gives the length-free fallback key.

    >>> attention_key(128, torch.bfloat16, True, 4000)
    'D128-bfloat16-causal-L4096'
    """
    key = f"D{block_d}-{dtype_name(dtype)}-{'causal' if causal else 'full'}"
    return key if queries is None else f"{key}-L{length_bucket(queries)}"


def attention_config(
    device: torch.device, dtype: torch.dtype, queries: int, block_d: int, causal: bool
) -> dict:
    """Launch config of the prefill kernel: the heuristic, updated by this GPU's tuned entry.

    Keys: BLOCK_M (query rows per program), BLOCK_N (keys per step), num_warps, num_stages.
    The tuned entry for the shape's length bucket wins over the length-free one.

    >>> attention_config(torch.device("cpu"), torch.float16, 1, 128, False)["BLOCK_M"]
    16
    """
    if interpreter_enabled():
        # One config with large blocks: the interpreter's cost is per program and per op, and
        # the tests force small blocks where they exercise the multi-block paths.
        return {"BLOCK_M": min(128, max(16, length_bucket(queries))), "BLOCK_N": 128}
    if block_d <= 64:
        config = {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3}
    elif block_d <= 128:
        config = {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3}
    else:
        config = {"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 8, "num_stages": 2}
    if dtype == torch.float32:
        # fp32 tiles take twice the shared memory of fp16 ones.
        config.update(BLOCK_N=min(config["BLOCK_N"], 32), num_stages=min(config["num_stages"], 2))
    for key in (
        attention_key(block_d, dtype, causal, None),
        attention_key(block_d, dtype, causal, queries),
    ):
        config.update(tuned_config("attention", key, device) or {})
    # Short query blocks (prefill chunks, a few rows) waste less work with a smaller BLOCK_M.
    config["BLOCK_M"] = min(config["BLOCK_M"], max(16, length_bucket(queries)))
    return config


def scores_config(device: torch.device, dtype: torch.dtype, rows: int, block_d: int) -> dict:
    """Launch config of the attention-scores kernel (BLOCK_M rows, BLOCK_N keys, ...)."""
    if interpreter_enabled():
        return {"BLOCK_M": min(128, max(16, length_bucket(rows))), "BLOCK_N": 128}
    block_n = 64 if block_d <= 128 and dtype != torch.float32 else 32
    config = {"BLOCK_M": 64, "BLOCK_N": block_n, "num_warps": 4, "num_stages": 2}
    config.update(tuned_config("attention_scores", f"D{block_d}-{dtype_name(dtype)}", device) or {})
    config["BLOCK_M"] = min(config["BLOCK_M"], max(16, length_bucket(rows)))
    return config


def length_bucket(length: int) -> int:
    """Round a sequence length up to a power of two so nearby shapes share one tuned entry.

    >>> length_bucket(577)
    1024
    """
    return 1 << max(0, int(length) - 1).bit_length()


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors on ``device`` (a small constant on CPU/interpreter)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def clear_cache() -> None:
    """Forget loaded tuning files (after the tune script wrote a new one)."""
    _load.cache_clear()
