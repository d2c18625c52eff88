"""Accuracy of every visual-token method at 50%, 25% and 12.5% of the tokens, on the trained
tiny VLMs: scene VQA on images (LLaVA, Qwen2-VL) and motion VQA on clips (Qwen2-VL).

Each row is one (task, model, method, budget): exact-match accuracy on a fixed slice of the
test split, its retention (% of the uncompressed model's accuracy on the same questions), the
visual tokens kept and the language model's prefill FLOPs over the uncompressed prefill (both
from the method's handle). A method that cannot run on a model (ToMe on Qwen2-VL's tower, a
video method on images) is listed with the reason instead of numbers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from leanvision.bench.suites.vlm import IN_LLM, PRE_LLM, UNBUDGETED
from leanvision.core.errors import UnsupportedModelError
from leanvision.core.warn import warn_user

__all__ = ["BUDGETS", "VLMTask", "vlm_accuracy_rows", "vlm_tasks"]

BUDGETS = (0.5, 0.25, 0.125)
IMAGE_METHODS = (*PRE_LLM, *IN_LLM, "tome")
VIDEO_METHODS = (*IMAGE_METHODS, *UNBUDGETED, "temporal+visionzip")
BASELINE = "uncompressed"


@dataclasses.dataclass(frozen=True)
class VLMTask:
    """A trained model on one task: ``load()`` gives the :class:`TinyModel`, ``items(n)`` the
    first ``n`` test items."""

    task: str
    model: str
    load: Callable[[], Any]
    items: Callable[[int], list]
    count: int
    methods: tuple[str, ...]
    budgets: tuple[float, ...] = BUDGETS


def vlm_tasks(quick: bool) -> list[VLMTask]:
    """The tasks ``leanvision bench accuracy`` scores; ``quick`` scores fewer questions, and
    on Qwen2-VL only the 25% budget."""
    from leanvision.testing import trained
    from leanvision.testing.scenes import clip_item, vqa_item

    def images(count: int) -> list:
        return [vqa_item("test", index) for index in range(count)]

    def clips(count: int) -> list:
        return [clip_item("test", index) for index in range(count)]

    qwen_budgets = (0.25,) if quick else BUDGETS
    return [
        VLMTask(
            "scene-vqa",
            "llava",
            lambda: trained.trained_llava(),
            images,
            128 if quick else 1000,
            IMAGE_METHODS,
        ),
        VLMTask(
            "scene-vqa",
            "qwen2-vl",
            lambda: trained.trained_qwen2_vl(),
            images,
            64 if quick else 500,
            IMAGE_METHODS,
            qwen_budgets,
        ),
        VLMTask(
            "motion-vqa",
            "qwen2-vl",
            lambda: trained.trained_qwen2_vl(video=True),
            clips,
            48 if quick else 300,
            VIDEO_METHODS,
            qwen_budgets,
        ),
    ]


def method_options(method: str, budget: float | None) -> tuple[str, dict[str, Any]]:
    """``(registered name, options)`` of a row: ``keep=budget``; the video-only methods run at
    their own token count, ``temporal+visionzip`` merges repeats and then keeps ``budget``.

    >>> method_options("temporal+visionzip", 0.25)
    ('temporal', {'then': 'visionzip', 'keep': 0.25})
    """
    if method in UNBUDGETED:
        return method, {}
    if method == "temporal+visionzip":
        return "temporal", {"then": "visionzip", "keep": budget}
    return method, {"keep": budget}


@torch.inference_mode()
def _flops_and_tokens(tiny: Any, handle: Any) -> tuple[float, float]:
    """Prefill FLOPs ratio and kept fraction of the visual tokens, on the loader's batch."""
    tiny.model(**tiny.inputs)
    stats = handle.stats
    kept = sum(stats["tokens_after"]) / sum(stats["tokens_before"])
    return stats["prefill_flops_after"] / stats["prefill_flops_before"], kept


def _score(tiny: Any, items: list, progress: bool) -> dict[str, float]:
    from leanvision.testing.trained.vqa import vqa_accuracy

    return vqa_accuracy(tiny, items, batch_size=16, progress=progress)


def task_rows(task: VLMTask, progress: bool = False) -> list[dict[str, Any]]:
    """The baseline row, then one row per method and budget, for one task."""
    import leanvision as lv

    tiny = task.load()
    items = task.items(task.count)
    base = _score(tiny, items, progress)
    common = {"task": task.task, "model": task.model, "questions": len(items)}
    rows = [
        common
        | {"method": BASELINE, "budget": 1.0, "kept": 1.0, "flops_ratio": 1.0}
        | {"accuracy": base["all"], "retention": 1.0, "per_kind": base}
    ]
    plan = [(m, None) for m in task.methods if m in UNBUDGETED]
    plan += [(m, b) for b in task.budgets for m in task.methods if m not in UNBUDGETED]
    for method, budget in plan:
        name, options = method_options(method, budget)
        row = common | {"method": method, "budget": budget}
        try:
            handle = lv.vlm.compress(tiny.model, name, **options)
        except (ValueError, TypeError, UnsupportedModelError) as error:
            rows.append(row | {"skipped": str(error).split(";")[0]})
            continue
        try:
            scores = _score(tiny, items, progress)
            flops_ratio, kept = _flops_and_tokens(tiny, handle)
        finally:
            handle.remove()
        retention = scores["all"] / base["all"] if base["all"] else float("nan")
        rows.append(
            row
            | {"kept": kept, "flops_ratio": flops_ratio, "accuracy": scores["all"]}
            | {"retention": retention, "per_kind": scores}
        )
    return rows


def vlm_accuracy_rows(quick: bool, progress: bool = True) -> list[dict[str, Any]]:
    """Every task's rows; a task whose trained model is missing is skipped with a warning."""
    rows: list[dict[str, Any]] = []
    for task in vlm_tasks(quick):
        try:
            rows += task_rows(task, progress)
        except FileNotFoundError as error:
            warn_user(f"accuracy benchmark: skipping {task.model} / {task.task}: {error}")
    return rows
