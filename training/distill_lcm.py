"""Distill the trained caption-image teacher into a 4-step LCM student with
``lv.diffusion.distill`` (latent consistency distillation, full guidance-embedded UNet).

    python training/distill_lcm.py --threads 1

Needs the teacher's weights (``training/train_sd.py``). The x0 latents come from real
train-split caption images (encoded by the teacher's VAE) with their captions as prompts.
Writes ``leanvision/testing/trained/weights/lcm_unet.safetensors`` and
``training/logs/lcm-loss.{json,png}``, then prints the student's judge accuracy at 4 steps
next to the teacher's at 50 DDIM steps, and the student's PSNR / SSIM against the teacher.
"""

from __future__ import annotations

import argparse

import common
import torch

from leanvision.diffusion.consistency import distill
from leanvision.diffusion.metrics import fidelity
from leanvision.testing.trained import sd
from leanvision.testing.trained.weights import save_weights, weights_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-size", type=int, default=10000)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--w-min", type=float, default=2.0, help="guidance w = scale - 1")
    parser.add_argument("--w-max", type=float, default=6.0)
    parser.add_argument("--ema-decay", type=float, default=0.95)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--report-prompts", type=int, default=64)
    args = common.common_arguments(parser).parse_args()
    start = common.setup(args)

    teacher = sd.build_pipeline("ddim")
    data = common.caption_data("train", args.train_size)
    student = distill(
        teacher,
        prompts=data["captions"],
        images=data["images"],
        student="unet",
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        lr_warmup_steps=50,
        resolution=32,
        num_ddim_timesteps=sd.TEACHER_STEPS,
        w_min=args.w_min,
        w_max=args.w_max,
        ema_decay=args.ema_decay,
        eval_every=args.eval_every,
        seed=args.seed,
        progress=not args.no_progress,
    )
    save_weights(student.unet, sd.WEIGHT_NAMES["lcm_unet"])
    print(f"distillation done after {common.elapsed(start)}")
    scores = report(args.report_prompts)
    print(f"wall time {common.elapsed(start)} with {args.threads} thread(s)")
    common.save_logs(
        "lcm",
        student.distill_history,
        "LCM distillation of the caption teacher (full UNet student)",
        {"args": vars(args), "report": scores},
        ylabel="pseudo-Huber consistency loss",
    )


@torch.no_grad()
def report(count: int) -> dict[str, float]:
    """Judge accuracy of the saved student (4 steps) and teacher (50 DDIM steps), and the
    student's fidelity to the teacher, on ``count`` test captions with the same seed."""
    teacher = sd.trained_sd_pipeline(num_prompts=count)
    student = sd.trained_lcm_pipeline(num_prompts=count)
    reference = teacher.model(**teacher.inputs).images
    images = student.model(**student.inputs).images
    scores = {f"student vs teacher {k}": v for k, v in fidelity(reference, images).items()}
    if weights_path("judge").exists():
        from leanvision.testing.trained.judge import scene_judge

        judge = scene_judge()
        prompts = teacher.inputs["prompt"]
        scores["teacher judge accuracy"] = judge.accuracy(reference, prompts)
        scores["student judge accuracy"] = judge.accuracy(images, prompts)
    print(f"{count} test captions: {scores}")
    return scores


if __name__ == "__main__":
    main()
