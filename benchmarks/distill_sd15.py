"""Latent consistency distillation of a local Stable Diffusion 1.5 on a GPU, then 4-step LCM
sampling vs the teacher's 50-step DDIM on the same prompts and seeds.

Needs diffusers, peft (``pip install 'leanvision[train]'``) and SD 1.5 weights in a local
folder (``StableDiffusionPipeline.from_pretrained`` layout); nothing is downloaded. Meant for a
GPU; ``--device cpu`` runs the same steps (the tests run it on a tiny saved pipeline).

    python benchmarks/distill_sd15.py --model /models/stable-diffusion-v1-5 \
        --images /data/laion-subset --student lora --steps 500 --out runs/lcd-sd15

Without ``--images`` the teacher first synthesises one x0 latent per prompt (data-free LCD).
Prints a JSON summary (final/initial fixed-batch loss, seconds per step, sampling latency of
teacher 50 steps vs student 4 steps) and writes it to ``<out>/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

DEFAULT_PROMPTS = [
    "a red fox in snow, photograph",
    "an astronaut riding a horse on the moon",
    "a bowl of ramen, studio lighting",
    "a lighthouse on a cliff at sunset, oil painting",
    "a portrait of an old fisherman, detailed",
    "a futuristic city skyline at night",
    "a watercolor of a hummingbird",
    "a cozy cabin in a pine forest",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="local SD 1.5 pipeline folder")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--images", default=None, help="folder of training images (optional)")
    parser.add_argument(
        "--prompts",
        default=None,
        help="text file, one prompt per line (default: 8 built-in prompts)",
    )
    parser.add_argument("--student", choices=("lora", "unet"), default="lora")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=None, help="default: 1e-4 lora, 1e-6 unet")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--lora-rank", type=int, default=64)
    parser.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="bf16")
    parser.add_argument(
        "--teacher-dtype",
        "--dtype",
        dest="dtype",
        choices=("fp16", "bf16", "fp32"),
        help="default: fp16 on CUDA, else fp32",
    )
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--sample-steps", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/lcd-sd15")
    return parser.parse_args(argv)


def _timed_sample(pipe, prompts, seed, **kwargs) -> float:
    """Seconds per prompt of sampling ``prompts`` one by one."""
    from leanvision.bench.runner import call_seconds

    def sample_all() -> None:
        for index, prompt in enumerate(prompts):
            pipe(prompt, generator=_generator(seed + index), **kwargs)

    return call_seconds(sample_all, pipe.device.type) / len(prompts)


def _generator(seed: int):
    import torch

    return torch.Generator("cpu").manual_seed(seed)  # the same noise on every device


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from leanvision.bench.script import device_label, device_missing, resolve_dtype

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device_missing(args):
        return 2
    if not os.path.isdir(args.model):
        print(f"--model {args.model!r} is not a local folder with SD 1.5 weights.", file=sys.stderr)
        return 2
    import diffusers

    from leanvision.diffusion.consistency import distill, few_step

    teacher = diffusers.StableDiffusionPipeline.from_pretrained(
        args.model,
        torch_dtype=resolve_dtype(args, cpu="fp32", cuda="fp16"),
        safety_checker=None,
        local_files_only=True,
    ).to(args.device)
    teacher.set_progress_bar_config(disable=True)
    prompts = DEFAULT_PROMPTS
    if args.prompts:
        with open(args.prompts) as handle:
            prompts = [line.strip() for line in handle if line.strip()]

    start = time.perf_counter()
    student = distill(
        teacher,
        prompts=prompts,
        images=args.images,
        student=args.student,
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        resolution=args.resolution,
        lora_rank=args.lora_rank,
        mixed_precision=args.mixed_precision,
        seed=args.seed,
        checkpoint_dir=os.path.join(args.out, "checkpoints"),
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        output_dir=args.out,
        eval_every=max(1, args.steps // 20),
    )
    train_seconds = time.perf_counter() - start
    history = student.distill_history
    student.set_progress_bar_config(disable=True)

    size = dict(height=args.resolution, width=args.resolution)
    shown = prompts[:4]
    teacher_s = _timed_sample(teacher, shown, args.seed, num_inference_steps=50, **size)
    with few_step(student, "lcm", steps=args.sample_steps):
        student_s = _timed_sample(student, shown, args.seed, **size)
        images = [
            student(p, generator=_generator(args.seed + i), **size).images[0]
            for i, p in enumerate(shown)
        ]
    for index, image in enumerate(images):
        image.save(os.path.join(args.out, f"student_{index}.png"))

    summary = {
        "device": device_label(args.device),
        "student": args.student,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "seconds_per_step": train_seconds / max(1, len(history["loss"])),
        "eval_loss_first": history["eval_loss"][0],
        "eval_loss_last": history["eval_loss"][-1],
        "teacher_50_step_s": teacher_s,
        f"student_{args.sample_steps}_step_s": student_s,
        "speedup": teacher_s / student_s,
    }
    with open(os.path.join(args.out, "summary.json"), "w") as handle:
        json.dump(summary, handle, indent=1)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
