"""Accuracy of every diffusion caching setting, and of the distilled LCM student, on the
trained caption-image pipeline (:mod:`leanvision.testing.trained.sd`).

The reference row is the teacher at 50 DDIM steps with classifier-free guidance. Each setting
of the speed suite's ``SD_SETTINGS`` (:mod:`leanvision.bench.suites.diffusion`) is applied to
the same teacher with ``lv.diffusion.accelerate`` and run on the same prompts and seed; the
LCM student samples in 4 steps from the same initial noise. Every row reports:

* ``psnr`` / ``ssim``: fidelity to the reference images (``inf`` / 1.0 for the reference);
* ``judge_accuracy``: the fraction of images in which the scene judge reads the prompt's
  colour, shape and position (:func:`leanvision.testing.trained.scene_judge`);
* ``macs_ratio``: MACs of the denoising loop per image over the reference's
  (:func:`leanvision.diffusion.macs.denoising_macs`);
* ``prompts`` (how many were scored) and ``judge_color`` / ``judge_shape`` /
  ``judge_position``, the judge's accuracy per attribute.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tqdm.auto import tqdm

from leanvision.bench.suites.diffusion import QUICK_SETTINGS, SD_SETTINGS, Setting
from leanvision.diffusion.macs import denoising_macs
from leanvision.diffusion.metrics import fidelity

__all__ = ["PROMPTS", "TASK", "diffusion_accuracy_rows", "method_label", "settings_for"]

TASK = "shapes-t2i"
PROMPTS = {True: 16, False: 64}  # test captions scored, by ``quick``
REFERENCE = ("teacher", "ddim 50 steps (reference)")
STUDENT = ("lcm student", "4 steps")


def settings_for(quick: bool) -> list[Setting]:
    """The speed suite's SD settings; ``quick`` keeps its quick subset.

    >>> [label for label, _ in settings_for(quick=True)][:2]
    ['tome r=0.5', 'deepcache interval=3']
    """
    return [setting for setting in SD_SETTINGS if not quick or setting[0] in QUICK_SETTINGS]


def method_label(methods: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """The ``method`` column of a setting: its method names joined by ``+``.

    >>> method_label([("deepcache", {"interval": 3}), ("tome", {"ratio": 0.5})])
    'deepcache+tome'
    """
    return "+".join(name for name, _ in methods)


def _run(pipe: Any, inputs: dict[str, Any]) -> tuple[Any, float]:
    """Images (N, 32, 32, 3) and denoising MACs per image of one pipeline call."""
    report = denoising_macs(pipe, inputs)
    return report.output.images, report.per_image


def _row(
    method: str,
    setting: str,
    images: Any,
    macs: float,
    reference: tuple[Any, float],
    judge: Any,
    prompts: list[str],
) -> dict[str, Any]:
    scores = fidelity(reference[0], images)
    read = judge.attribute_accuracy(images, prompts)
    return {
        "task": TASK,
        "method": method,
        "setting": setting,
        "psnr": scores["psnr"],
        "ssim": scores["ssim"],
        "judge_accuracy": read["all"],
        "macs_ratio": macs / reference[1],
        "prompts": len(prompts),
        # Per attribute: which part of the prompt a setting loses.
        **{f"judge_{name}": read[name] for name in ("color", "shape", "position")},
    }


def diffusion_accuracy_rows(
    quick: bool,
    progress: bool = True,
    settings: Sequence[Setting] | None = None,
    num_prompts: int | None = None,
    student: bool = True,
) -> list[dict[str, Any]]:
    """The reference row, one row per caching setting, then the LCM student's row (see the
    module docstring). ``quick`` scores 16 test captions and the quick settings instead of 64
    and all; ``settings`` / ``num_prompts`` / ``student`` narrow a run further (tests).

    >>> rows = diffusion_accuracy_rows(quick=True, progress=False, settings=[],
    ...                                num_prompts=2, student=False)
    >>> [(row["method"], row["psnr"], row["macs_ratio"]) for row in rows]
    [('teacher', inf, 1.0)]
    """
    import torch

    from leanvision.diffusion.api import accelerate
    from leanvision.diffusion.registry import load_methods
    from leanvision.testing.trained import scene_judge, trained_lcm_pipeline, trained_sd_pipeline

    count = num_prompts if num_prompts is not None else PROMPTS[bool(quick)]
    chosen = settings_for(quick) if settings is None else list(settings)
    teacher = trained_sd_pipeline(num_prompts=count)
    pipe, make_inputs = teacher.model, teacher.info["make_inputs"]
    prompts = list(teacher.inputs["prompt"])
    judge, registry = scene_judge(), load_methods()
    bar = tqdm(total=1 + len(chosen) + student, desc="diffusion accuracy", disable=not progress)
    with torch.no_grad():
        reference = _run(pipe, make_inputs())
        rows = [_row(*REFERENCE, *reference, reference, judge, prompts)]
        bar.update(1)
        for label, methods in chosen:
            configs = [registry.resolve(name, **options)[0] for name, options in methods]
            with accelerate(pipe, configs):
                images, macs = _run(pipe, make_inputs())
            rows.append(_row(method_label(methods), label, images, macs, reference, judge, prompts))
            bar.update(1)
        if student:
            lcm = trained_lcm_pipeline(prompts=prompts, seed=teacher.info["seed"])
            images, macs = _run(lcm.model, lcm.info["make_inputs"]())
            rows.append(_row(*STUDENT, images, macs, reference, judge, prompts))
            bar.update(1)
    bar.close()
    return rows
