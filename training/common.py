"""Helpers shared by the training scripts: seeding and threads, caption data as tensors (judge,
SD, LCM), the learning-rate schedule, EMA, and the loss plot / history files."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from leanvision.diffusion.consistency.checkpoint import plot_history, write_history
from leanvision.testing.scenes import caption_item
from leanvision.testing.trained.vqa import vqa_prompt

LOG_DIR = Path(__file__).with_name("logs")


def common_arguments(parser: argparse.ArgumentParser, seed: int = 0) -> argparse.ArgumentParser:
    """``--seed``, ``--threads`` (default: all cores) and ``--no-progress``."""
    parser.add_argument("--seed", type=int, default=seed)
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="torch CPU threads"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def answer_training_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The VLM answer stage's ``--turns``, ``--align/--no-align`` and ``--bf16/--no-bf16``."""
    parser.add_argument("--turns", type=int, default=4, help="questions per image or clip")
    parser.add_argument(
        "--align",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="align the projected media tokens with the words describing them",
    )
    parser.add_argument(
        "--bf16", action=argparse.BooleanOptionalAction, default=True, help="bf16 autocast"
    )
    return parser


def setup(args: argparse.Namespace) -> float:
    """Seed torch and numpy, set the thread count; returns the start time."""
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.set_num_threads(args.threads)
    return time.time()


def caption_data(split: str, count: int, start: int = 0) -> dict[str, Any]:
    """``count`` caption items of ``split`` as tensors: ``images`` (N, 3, 32, 32) in [0, 1],
    ``captions`` (list of str) and integer ``labels`` per attribute (N,)."""
    from leanvision.testing.trained.judge import ATTRIBUTES, LABELS

    items = [caption_item(split, start + index) for index in range(count)]
    pixels = np.stack([item.image for item in items]).astype(np.float32) / 255.0
    labels = {
        name: torch.tensor([LABELS[name].index(getattr(item, name)) for item in items])
        for name in ATTRIBUTES
    }
    return {
        "images": torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous(),
        "captions": [item.caption for item in items],
        "labels": labels,
    }


def autocast(enabled: bool) -> torch.autocast:
    """bf16 autocast on the CPU (about 1.4x faster on this AVX-512 machine), or nothing."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


def alignment_loss(
    projected: torch.Tensor, words: torch.Tensor, embeddings: torch.nn.Embedding
) -> torch.Tensor:
    """Cross-entropy of each projected media token, read against the LM's input word
    embeddings, naming every word that describes what it shows (its shape, colour, ...).

    LLaVA aligns its projector with words (captions) before it learns to answer; here the
    alignment runs beside the answer loss and keeps every attribute the tower reads salient
    in the LM's input, where the answer loss alone drifts to the easiest one (colour: shape
    fell from 37% to 10% of the projected variance, and questions keyed by shape stayed at
    chance). ``projected``: (..., D); ``words``: (..., K) word ids, ``-100`` for none.
    """
    known = (words != -100).any(-1)
    logits = projected[known].float() @ embeddings.weight.float().T
    per_word = logits.unsqueeze(1).expand(-1, words.shape[-1], -1)
    return F.cross_entropy(per_word.flatten(0, 1), words[known].flatten(), ignore_index=-100)


def learning_rate(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up to ``peak`` over ``warmup`` steps, then cosine decay to 5% of it."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * progress)))


def schedule(
    optimizer: torch.optim.Optimizer, step: int, total: int, peak: float, warmup: int
) -> float:
    """Set :func:`learning_rate` of ``step`` on every group of ``optimizer`` and return it."""
    rate = learning_rate(step, total, peak, warmup)
    for group in optimizer.param_groups:
        group["lr"] = rate
    return rate


# A conversation's second and later user turns, after the scored first one.
_NEXT_TURN = {
    "llava": " USER: {question} ASSISTANT:",
    "qwen2_vl": " <|im_start|> user {question} <|im_end|> <|im_start|> assistant",
}


class Turns:
    """Token ids and answer labels of a conversation about one image or clip.

    The first turn is exactly the prompt the model is scored on (:func:`vqa_prompt` with its
    media placeholder repeated ``media_tokens`` times) and its answer; every further turn asks
    another question of the same media. Several answers per image make a step several times
    as informative for a fraction more compute (the media tokens dominate the sequence).
    """

    def __init__(self, tokenizer, family: str, media: str, media_tokens: int):
        self.tokenizer, self.family, self.media, self.memo = tokenizer, family, media, {}
        self.placeholder = "<|video_pad|>" if media == "video" else "<|image_pad|>"
        if family == "llava":
            self.placeholder = "<image>"
        self.count = media_tokens

    def turn(self, question: str, answer: str, first: bool) -> tuple[torch.Tensor, torch.Tensor]:
        key = (question, answer, first)
        if key not in self.memo:
            if first:
                prompt = vqa_prompt(self.family, question, self.media)
                prompt = prompt.replace(self.placeholder, self.placeholder * self.count)
            else:
                prompt = _NEXT_TURN[self.family].format(question=question)
            prompt_ids = self.tokenizer(prompt)["input_ids"]
            answer_ids = self.tokenizer(f" {answer} {self.tokenizer.eos_token}")["input_ids"]
            ids = torch.tensor(prompt_ids + answer_ids)
            labels = torch.cat([torch.full((len(prompt_ids),), -100), ids[len(prompt_ids) :]])
            self.memo[key] = (ids, labels)
        return self.memo[key]

    def __call__(self, questions) -> tuple[torch.Tensor, torch.Tensor]:
        """``questions``: (question, answer) pairs, the one the model is scored on first."""
        parts = [self.turn(*pair, first=index == 0) for index, pair in enumerate(questions)]
        return torch.cat([ids for ids, _ in parts]), torch.cat([labels for _, labels in parts])


def collate(rows, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, labels and mask of :class:`Turns` rows (positions then start at 0 in
    every row, as in left-padded generation, whose positions count only real tokens)."""
    length = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), length), pad_id)
    labels = torch.full((len(rows), length), -100)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for row, (row_ids, row_labels) in enumerate(rows):
        ids[row, : len(row_ids)] = row_ids
        labels[row, : len(row_ids)] = row_labels
        mask[row, : len(row_ids)] = 1
    return ids, labels, mask


def answer_loss(
    lm_head: torch.nn.Module, hidden: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Next-token cross-entropy on the labelled (answer) positions only."""
    target = labels[:, 1:]
    keep = target != -100
    return F.cross_entropy(lm_head(hidden[:, :-1][keep]).float(), target[keep])


class EMA:
    """Exponential moving average of a module's floating-point state."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {
            key: value.detach().clone()
            for key, value in module.state_dict().items()
            if value.is_floating_point()
        }

    @torch.no_grad()
    def update(self, module: torch.nn.Module, step: int) -> None:
        # Warm-up of the decay: early averages do not drag in the random initial weights.
        decay = min(self.decay, (1 + step) / (10 + step))
        for key, value in module.state_dict().items():
            if key in self.shadow:
                self.shadow[key].lerp_(value.detach(), 1 - decay)

    def copy_to(self, module: torch.nn.Module) -> None:
        state = module.state_dict()
        state.update({key: value.clone() for key, value in self.shadow.items()})
        module.load_state_dict(state)


def new_history() -> dict[str, list]:
    return {"step": [], "loss": [], "lr": [], "eval_step": [], "eval_loss": []}


def save_logs(
    name: str, history: dict[str, list], title: str, extra: dict[str, Any], ylabel: str
) -> None:
    """``training/logs/<name>-loss.json`` (history + ``extra``) and ``<name>-loss.png``."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    write_history(str(LOG_DIR / f"{name}-loss.json"), history, extra)
    plot_history(str(LOG_DIR / f"{name}-loss.png"), history, title)
    # plot_history labels the y axis for consistency distillation; relabel for other losses.
    if ylabel:
        _relabel(LOG_DIR / f"{name}-loss.png", history, title, ylabel)


def _relabel(path: Path, history: dict[str, list], title: str, ylabel: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    steps, losses = history["step"], history["loss"]
    axes.plot(steps, losses, color="tab:blue", alpha=0.3, linewidth=1, label="train loss")
    window = max(1, len(losses) // 20)
    if len(losses) >= window:
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        axes.plot(steps[window - 1 :], smooth, color="tab:blue", label=f"train (mean of {window})")
    if history["eval_step"]:
        axes.plot(history["eval_step"], history["eval_loss"], "o-", color="tab:orange",
                  label="fixed eval batch")  # fmt: skip
    if any(value > 0 for value in losses + history["eval_loss"]):
        axes.set_yscale("log")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)


def batches(count: int, batch_size: int, generator: torch.Generator) -> Iterable[torch.Tensor]:
    """Endless random mini-batches of indices into ``count`` items (a new permutation per pass)."""
    while True:
        order = torch.randperm(count, generator=generator)
        for start in range(0, count - batch_size + 1, batch_size):
            yield order[start : start + batch_size]


def elapsed(start: float) -> str:
    minutes, seconds = divmod(time.time() - start, 60)
    return f"{int(minutes)} min {seconds:.0f} s"
