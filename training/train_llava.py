"""Train the tiny LLaVA-1.5 of ``leanvision.testing.trained`` on scene VQA, from scratch.

Two stages, as LLaVA itself is built:

1. **Tower.** The CLIP vision tower learns to read, from its CLS token, every grid cell's shape
   and colour (a multi-label objective: one classifier per cell), so its CLS attention points
   at the objects, as VisionZip and PruMerge+ assume of a CLIP tower. Each patch token of the
   layer LLaVA feeds its projector also learns to say what it shows and where (as a CLIP
   tower's patch tokens carry local content), which the 4-layer LM cannot learn from
   answers alone within the budget: trained on CLS alone, the tower left it at ~0.40
   validation loss after 1300 steps.
2. **Projector + LM.** The tower is frozen and its penultimate-layer patch features (the ones
   LLaVA feeds the LM) are computed once; the projector and the Llama LM learn to answer
   questions, with the loss on the answer tokens only. Each step asks every drawn image
   ``--turns`` fresh questions in one conversation (the first turn is the scored prompt).
   Beside the answer loss, :func:`common.alignment_loss` makes each projected object patch
   name the words that describe it, as LLaVA aligns its projector with words before
   instruction tuning. Without it the projector drifts to colour, the easiest attribute, and
   questions keyed by a shape stay at chance (57% overall after 1500 steps); with it, colour
   questions reach 99.6% after one cycle. Two cycles of 2000 steps, the second from the
   first's weights at half the peak learning rate.

Run: ``python training/train_llava.py``: tower 800 steps (14 minutes, one thread on a busy
2-core machine), then two cycles of 2000 steps (32 minutes alone on 2 cores; 56 with one
thread beside another job), so about 80 minutes alone, over issue 15's 60-minute budget.
``--vqa-cycles N --resume-cycle K`` continues stage 2 from the checkpoint of cycle K - 1
(kept in the git-ignored ``training/checkpoints/``). Writes the weights to
``leanvision/testing/trained/weights/llava.safetensors`` and the loss curves and history to
``training/logs/llava-{tower,vqa-cycle<K>}-loss.{png,json}``; prints validation and test
accuracy.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import common
import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from leanvision.testing.scenes import COLORS, COLUMNS, ROWS, SHAPES, scene_question, vqa_item
from leanvision.testing.trained.llava import LLAVA_SHAPE
from leanvision.testing.trained.vqa import build_scene_vlm, vqa_accuracy, vqa_inputs
from leanvision.testing.trained.weights import load_weights, save_weights

_SHAPE_CLASSES = ("empty", *SHAPES)
_COLOR_CLASSES = ("empty", *COLORS)


def pixels(items) -> torch.Tensor:
    """The CLIP processor's normalisation at the tower's own size: [0, 255] -> [-1, 1]."""
    images = np.stack([item.image for item in items])
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def cell_labels(items) -> tuple[torch.Tensor, torch.Tensor]:
    """Per item and grid cell: the shape class and the colour class (0 = empty)."""
    shapes = torch.zeros(len(items), 9, dtype=torch.long)
    colors = torch.zeros(len(items), 9, dtype=torch.long)
    for row, item in enumerate(items):
        for obj in item.scene.objects:
            cell = obj.row * 3 + obj.column
            shapes[row, cell] = _SHAPE_CLASSES.index(obj.shape)
            colors[row, cell] = _COLOR_CLASSES.index(obj.color)
    return shapes, colors


def log_step(history, step: int, loss: float, lr: float) -> None:
    history["step"].append(step)
    history["loss"].append(loss)
    history["lr"].append(lr)


class TowerHeads(torch.nn.Module):
    """Linear read-outs of the tower: every grid cell's shape and colour from the CLS token,
    and, from each patch token of LLaVA's feature layer, the shape and colour of the object it
    shows (or empty) and its grid cell."""

    def __init__(self, width: int):
        super().__init__()
        self.cells = torch.nn.Linear(width, 9 * (len(_SHAPE_CLASSES) + len(_COLOR_CLASSES)))
        self.patches = torch.nn.Linear(width, len(_SHAPE_CLASSES) + len(_COLOR_CLASSES) + 9)

    def forward(self, tower, items) -> tuple[torch.Tensor, ...]:
        output = tower(pixel_values=pixels(items), output_hidden_states=True)
        cells = self.cells(output.pooler_output).view(len(items), 9, -1)
        patch_features = output.hidden_states[LLAVA_FEATURE_LAYER][:, 1:]
        patches = self.patches(patch_features)
        shape_end, color_end = len(_SHAPE_CLASSES), len(_SHAPE_CLASSES) + len(_COLOR_CLASSES)
        return (
            cells[..., :shape_end],
            cells[..., shape_end:],
            patches[..., :shape_end],
            patches[..., shape_end:color_end],
            patches[..., color_end:],
        )


LLAVA_FEATURE_LAYER = -2  # the layer LLaVA-1.5 feeds its projector
_PATCH_CELL = torch.tensor([(i // 4) * 3 + j // 4 for i in range(12) for j in range(12)])


def patch_labels(items, shapes: torch.Tensor, colors: torch.Tensor):
    """Per patch (8 x 8 px, 12 x 12 of them): the shape and colour class of the object covering
    a fifth of it or more (0 = background), from the pixels; and every patch's grid cell."""
    images = torch.from_numpy(np.stack([item.image for item in items])).int()
    saturated = (images.amax(-1) - images.amin(-1)) > 60
    covered = saturated.view(len(items), 12, 8, 12, 8).float().mean((2, 4)).flatten(1) > 0.2
    patch_shapes = shapes[:, _PATCH_CELL] * covered
    patch_colors = colors[:, _PATCH_CELL] * covered
    return patch_shapes, patch_colors, _PATCH_CELL.expand(len(items), -1)


def train_tower(tower, args) -> None:
    """Stage 1: the CLS and patch read-outs of :class:`TowerHeads`, trained with the tower."""
    heads = TowerHeads(tower.config.hidden_size)
    params = [*tower.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(params, lr=args.tower_lr, weight_decay=0.05)
    evaluation = [vqa_item("val", index) for index in range(256)]
    history = common.new_history()
    start = time.time()
    tower.train()
    for step in tqdm(range(args.tower_steps), desc="tower"):
        lr = common.schedule(optimizer, step, args.tower_steps, args.tower_lr, warmup=100)
        first = step * args.batch
        items = [vqa_item("train", first + index) for index in range(args.batch)]
        loss = tower_loss(tower, heads, items)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        log_step(history, step, loss.item(), lr)
        if (step + 1) % args.eval_every == 0 or step + 1 == args.tower_steps:
            tower.eval()
            with torch.no_grad():
                history["eval_step"].append(step)
                history["eval_loss"].append(tower_loss(tower, heads, evaluation).item())
            tower.train()
    tower.eval()
    with torch.no_grad():
        scores = tower_accuracy(tower, heads, evaluation)
    print("tower validation: " + " ".join(f"{key}={value:.3f}" for key, value in scores.items()))
    extra = {"seconds": time.time() - start, "val_accuracy": scores}
    common.save_logs("llava-tower", history, "llava tower", extra, "cross-entropy")


def _targets(items) -> list[torch.Tensor]:
    shapes, colors = cell_labels(items)
    return [shapes, colors, *patch_labels(items, shapes, colors)]


def tower_loss(tower, heads, items) -> torch.Tensor:
    """Cross-entropy of the cell read-out from CLS plus that of the patch read-out."""
    pairs = zip(heads(tower, items), _targets(items), strict=True)
    return sum(F.cross_entropy(logits.flatten(0, 1), target.flatten()) for logits, target in pairs)


def tower_accuracy(tower, heads, items) -> dict[str, float]:
    """Cells read right from CLS (shape and colour both), and patches read right."""
    predictions = [logits.argmax(-1) for logits in heads(tower, items)]
    pairs = zip(predictions, _targets(items), strict=True)
    right = [prediction == target for prediction, target in pairs]
    return {
        "cls_cells": (right[0] & right[1]).float().mean().item(),
        "patches": (right[2] & right[3]).float().mean().item(),
        "patch_cells": right[4].float().mean().item(),
    }


def patch_words(items, tokenizer) -> torch.Tensor:
    """Per item and patch, the ids of the words that describe what the patch shows: its shape,
    colour, row and column (``-100`` on background patches); (N, 144, 4)."""
    shapes, colors = cell_labels(items)
    patch_shapes, patch_colors, cells = patch_labels(items, shapes, colors)
    ids = tokenizer.convert_tokens_to_ids
    shape_words = torch.tensor([-100, *ids(list(SHAPES))])
    color_words = torch.tensor([-100, *ids(list(COLORS))])
    row_words, column_words = torch.tensor(ids(list(ROWS))), torch.tensor(ids(list(COLUMNS)))
    words = torch.stack(
        [
            shape_words[patch_shapes],
            color_words[patch_colors],
            row_words[cells // 3],
            column_words[cells % 3],
        ],
        dim=-1,
    )
    return words.masked_fill((patch_shapes == 0).unsqueeze(-1), -100)


@torch.no_grad()
def cache_features(model, tokenizer, items, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen-tower features of ``items`` (the LLaVA feature layer, CLS dropped; float16) and
    the :func:`patch_words` of each of their patches."""
    features, words = [], []
    tower = model.model.vision_tower
    for first in tqdm(range(0, len(items), chunk), desc="caching tower features"):
        part = items[first : first + chunk]
        hidden = tower(pixel_values=pixels(part), output_hidden_states=True).hidden_states
        features.append(hidden[LLAVA_FEATURE_LAYER][:, 1:].half())
        words.append(patch_words(part, tokenizer))
    return torch.cat(features), torch.cat(words)


def vqa_loss(model, features, ids, labels, mask, words=None) -> torch.Tensor:
    """LLaVA's forward from cached tower features: project, scatter into the image slots; the
    cross-entropy of the answer tokens, plus :func:`common.alignment_loss` of the projected
    patches given their ``words`` (:func:`patch_words`)."""
    table = model.get_input_embeddings()
    embeds = table(ids)
    projected = model.model.multi_modal_projector(features.float())
    slots = (ids == model.config.image_token_id).unsqueeze(-1).expand_as(embeds)
    embeds = embeds.masked_scatter(slots, projected.to(embeds.dtype))
    hidden = model.model.language_model(inputs_embeds=embeds, attention_mask=mask)
    loss = common.answer_loss(model.lm_head, hidden.last_hidden_state, labels)
    if words is None:
        return loss
    return loss + common.alignment_loss(projected, words, table)


def train_vqa(model, processor, args, cycle: int) -> None:
    """Stage 2, one cycle: projector + LM on cached features, the tower frozen. Each step asks
    ``--turns`` fresh questions of each of ``--batch`` cached training images. Every cycle
    starts a fresh AdamW with its own warm-up and cosine decay (warm restarts, each cycle at
    half the previous peak) and draws from ``seed + cycle``, so a run resumed at a cycle
    repeats the uninterrupted one. The validation loss is that of the scored (first) answer
    of 256 validation items."""
    images = [vqa_item("train", index) for index in range(args.vqa_items)]
    val_items = [vqa_item("val", index) for index in range(256)]
    features, words = cache_features(model, processor.tokenizer, images)
    val_features, _ = cache_features(model, processor.tokenizer, val_items)
    turns = common.Turns(processor.tokenizer, "llava", "image", features.shape[1])
    val_rows = [turns([(item.question, item.answer)]) for item in val_items]
    scored = vqa_inputs(processor, "llava", val_items[:1], answers=True)["input_ids"][0]
    assert torch.equal(val_rows[0][0], scored[scored != processor.tokenizer.pad_token_id])
    params = [
        *model.model.multi_modal_projector.parameters(),
        *model.model.language_model.parameters(),
        *model.lm_head.parameters(),
    ]
    params = list({id(p): p for p in params}.values())  # embeddings may be tied to the head
    peak = args.vqa_lr * 0.5**cycle
    optimizer = torch.optim.AdamW(params, lr=peak, weight_decay=0.05)
    rng = random.Random(args.seed + cycle)
    pad_id = processor.tokenizer.pad_token_id
    history = common.new_history()
    start = time.time()
    model.train()
    progress = tqdm(range(args.vqa_steps), desc=f"projector + LM, cycle {cycle}")
    for step in progress:
        lr = common.schedule(optimizer, step, args.vqa_steps, peak, warmup=100)
        picks = [rng.randrange(len(images)) for _ in range(args.batch)]
        rows = [
            turns([scene_question(images[i].scene, rng)[1:] for _ in range(args.turns)])
            for i in picks
        ]
        with common.autocast(args.bf16):
            align = words[picks] if args.align else None
            loss = vqa_loss(model, features[picks], *common.collate(rows, pad_id), words=align)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        log_step(history, step, loss.item(), lr)
        if (step + 1) % args.eval_every == 0 or step + 1 == args.vqa_steps:
            model.eval()
            with torch.no_grad(), common.autocast(args.bf16):
                val_loss = vqa_loss(model, val_features, *common.collate(val_rows, pad_id)).item()
            history["eval_step"].append(step)
            history["eval_loss"].append(val_loss)
            progress.set_postfix(val_loss=f"{val_loss:.4f}")
            model.train()
    model.eval()
    extra = {"seconds": time.time() - start, "items": args.vqa_items, "cycle": cycle}
    name = f"llava-vqa-cycle{cycle}"
    common.save_logs(name, history, name, extra, "answer cross-entropy")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tower-steps", type=int, default=800)
    parser.add_argument("--vqa-steps", type=int, default=2000, help="steps per cycle")
    parser.add_argument("--vqa-cycles", type=int, default=2)
    parser.add_argument("--vqa-items", type=int, default=20000, help="distinct training items")
    parser.add_argument("--batch", type=int, default=64, help="images per step")
    common.answer_training_arguments(parser)
    parser.add_argument("--tower-lr", type=float, default=1e-3)
    parser.add_argument("--vqa-lr", type=float, default=1e-3)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--resume-cycle",
        type=int,
        default=None,
        help="start stage 2 at this cycle, from training/checkpoints/ (skips the tower)",
    )
    parser.add_argument("--out", type=Path, default=None, help="weights folder (default: shipped)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tiny = build_scene_vlm(LLAVA_SHAPE, seed=args.seed)
    model, processor = tiny.model, tiny.info["processor"]
    checkpoint = Path(__file__).with_name("checkpoints")
    first_cycle = args.resume_cycle or 0
    if args.resume_cycle is None:
        train_tower(model.model.vision_tower, args)
        save_weights(model, "llava-tower", checkpoint)
    # Each stage continues from the float16 weights it saved (those are what ship).
    load_weights(model, "llava-tower", checkpoint)
    if first_cycle:
        load_weights(model, f"llava-vqa-cycle{first_cycle - 1}", checkpoint)
    model.model.vision_tower.requires_grad_(False)
    for cycle in range(first_cycle, args.vqa_cycles):
        train_vqa(model, processor, args, cycle)
        save_weights(model, f"llava-vqa-cycle{cycle}", checkpoint)
        load_weights(model, f"llava-vqa-cycle{cycle}", checkpoint)
    path = save_weights(model, "llava", args.out)
    print(f"saved {path} ({path.stat().st_size / 1e6:.1f} MB)")
    for split in ("val", "test"):
        items = [vqa_item(split, index) for index in range(1000)]
        scores = vqa_accuracy(tiny, items, progress=True)
        print(split, " ".join(f"{kind}={value:.3f}" for kind, value in scores.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
