"""Train the scene judge (``leanvision.testing.trained.judge``) on caption images.

    python training/train_judge.py --threads 1

Writes ``leanvision/testing/trained/weights/judge.safetensors`` and
``training/logs/judge-loss.{json,png}``, and prints per-attribute accuracy on the test split.
"""

from __future__ import annotations

import argparse

import common
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from leanvision.testing.trained.judge import ATTRIBUTES, JudgeNet, SceneJudge
from leanvision.testing.trained.weights import save_weights


def augment(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Blur, brightness, shift and noise, so imperfect generated images read correctly."""
    count = pixels.shape[0]
    # Blur: mix each image with its 3x3 box-blurred self by a random amount.
    blurred = F.avg_pool2d(F.pad(pixels, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    mix = torch.rand(count, 1, 1, 1, generator=generator) * 0.8
    pixels = pixels * (1 - mix) + blurred * mix
    pixels = pixels * (0.85 + 0.3 * torch.rand(count, 1, 1, 1, generator=generator))
    shifts = torch.randint(-2, 3, (2,), generator=generator).tolist()
    pixels = torch.roll(pixels, shifts=shifts, dims=(2, 3))
    sigma = torch.rand(count, 1, 1, 1, generator=generator) * 0.06
    pixels = pixels + sigma * torch.randn(pixels.shape, generator=generator)
    return pixels.clamp(0, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-size", type=int, default=20000)
    parser.add_argument("--test-size", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--eval-every", type=int, default=250)
    args = common.common_arguments(parser).parse_args()
    start = common.setup(args)

    train = common.caption_data("train", args.train_size)
    val = common.caption_data("val", 1000)
    net = JudgeNet()
    optimizer = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(args.seed)
    order = common.batches(args.train_size, args.batch_size, generator)
    history = common.new_history()

    def evaluate(step: int) -> None:
        net.eval()
        with torch.no_grad():
            logits = net(val["images"])
            loss = sum(F.cross_entropy(logits[n], val["labels"][n]) for n in ATTRIBUTES)
        history["eval_step"].append(step)
        history["eval_loss"].append(float(loss))
        net.train()

    evaluate(0)
    net.train()
    bar = tqdm(range(args.steps), desc="judge", disable=args.no_progress)
    for step in bar:
        lr = common.schedule(optimizer, step, args.steps, args.lr, warmup=100)
        index = next(order)
        logits = net(augment(train["images"][index], generator))
        loss = sum(F.cross_entropy(logits[n], train["labels"][n][index]) for n in ATTRIBUTES)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history["step"].append(step + 1)
        history["loss"].append(loss.item())
        history["lr"].append(lr)
        if (step + 1) % args.eval_every == 0:
            evaluate(step + 1)
            bar.set_postfix(loss=f"{loss.item():.3f}", val=f"{history['eval_loss'][-1]:.3f}")

    net.eval()
    save_weights(net, "judge")
    test = common.caption_data("test", args.test_size)
    scores = SceneJudge(net).attribute_accuracy(test["images"], test["captions"])
    print(f"judge test accuracy ({args.test_size} images): {scores}")
    print(f"wall time {common.elapsed(start)} with {args.threads} thread(s)")
    common.save_logs(
        "judge",
        history,
        "scene judge: sum of three cross-entropies",
        {"args": vars(args), "test_accuracy": scores},
        ylabel="cross-entropy (colour + shape + position)",
    )


if __name__ == "__main__":
    main()
