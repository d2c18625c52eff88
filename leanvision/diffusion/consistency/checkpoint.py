"""Checkpoints, loss history JSON and the loss plot of a distillation run.

A checkpoint is one ``checkpoint-<step>.pt`` file (written atomically) holding the trainable
tensors, their EMA copies, the optimizer state, the loss history and the config that shaped
the run, which is all a resumed run needs to continue bit for bit.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import torch

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)\.pt$")
# Config fields a resumed run must share with the checkpoint: they shape the parameters,
# the data order or the objective. (steps, checkpoint_every, output_dir may change.)
RESUME_FIELDS = (
    "student",
    "num_ddim_timesteps",
    "w_min",
    "w_max",
    "timestep_scaling",
    "sigma_data",
    "huber_c",
    "ema_decay",
    "batch_size",
    "seed",
    "resolution",
    "lora_rank",
    "lora_target_modules",
    "time_cond_proj_dim",
)


def checkpoint_path(directory: str, step: int) -> str:
    return os.path.join(directory, f"checkpoint-{step:07d}.pt")


def latest_checkpoint(directory: str) -> str | None:
    """The checkpoint with the highest step in ``directory``, or ``None``."""
    if not os.path.isdir(directory):
        return None
    found = []
    for name in os.listdir(directory):
        match = CHECKPOINT_PATTERN.match(name)
        if match:
            found.append((int(match.group(1)), name))
    return os.path.join(directory, max(found)[1]) if found else None


def save_checkpoint(directory: str, step: int, state: dict[str, Any], keep: int) -> str:
    """Write ``state`` as ``checkpoint-<step>.pt`` and keep only the newest ``keep`` files."""
    os.makedirs(directory, exist_ok=True)
    path = checkpoint_path(directory, step)
    temporary = path + ".tmp"
    torch.save(state, temporary)
    os.replace(temporary, path)  # a crash mid-write never leaves a truncated checkpoint
    names = sorted(n for n in os.listdir(directory) if CHECKPOINT_PATTERN.match(n))
    for name in names[:-keep]:
        os.remove(os.path.join(directory, name))
    return path


def load_checkpoint(path: str, config: dict[str, Any]) -> dict[str, Any]:
    """Load a checkpoint and check it was made with the same training-defining settings."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    saved = state.get("config", {})
    different = {
        name: (saved.get(name), config.get(name))
        for name in RESUME_FIELDS
        if _plain(saved.get(name)) != _plain(config.get(name))
    }
    if different:
        details = ", ".join(
            f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in different.items()
        )
        raise ValueError(f"cannot resume from {path!r}: settings differ ({details})")
    return state


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (tuple, list)) else value


def write_history(path: str, history: dict[str, list[float]], extra: dict[str, Any]) -> None:
    """The loss history as JSON: ``{"step": [...], "loss": [...], "lr": [...],
    "eval_step": [...], "eval_loss": [...], "config": {...}}``."""
    with open(path, "w") as handle:
        json.dump({**history, **extra}, handle, indent=1)


def plot_history(path: str, history: dict[str, list[float]], title: str) -> None:
    """Training loss (raw and smoothed) and the fixed-batch evaluation loss, log scale."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # A bare Figure (not pyplot) keeps no global state and needs no display.
    figure = Figure(figsize=(7, 4), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    steps, losses = history["step"], history["loss"]
    if steps:
        axes.plot(steps, losses, color="tab:blue", alpha=0.3, linewidth=1, label="train loss")
        window = max(1, len(losses) // 20)
        smooth = torch.tensor(losses).unfold(0, window, 1).mean(1).tolist()
        axes.plot(steps[window - 1 :], smooth, color="tab:blue", label=f"train (mean of {window})")
    if history["eval_step"]:
        axes.plot(
            history["eval_step"],
            history["eval_loss"],
            "o-",
            color="tab:orange",
            label="fixed eval batch",
        )
    if any(value > 0 for value in losses + history["eval_loss"]):
        axes.set_yscale("log")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("pseudo-Huber consistency loss")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
