"""Train the tiny Qwen2-VL of ``leanvision.testing.trained`` on scene and motion VQA, from scratch.

Two stages:

1. **Tower + merger.** Every merged token (8 x 8 px of a frame pair) learns to say what covers
   it: the shape, colour and motion of the object there, or "empty". Labels come from each
   object's own rendering (tokens an object only grazes are left out). Images and clips are
   mixed; Qwen2-VL's tower attends within each 2-frame temporal patch, so motion must be read
   from the pair, and the LM does the rest of the temporal reasoning.
2. **Merger + LM.** The tower is frozen and its outputs are computed once; the merger and the
   M-RoPE Qwen2 LM learn to answer questions (loss on the answer tokens only). Every cached
   scene is asked ``--turns`` fresh questions, worded as ``scenes.py`` words them, in one
   conversation each time it is drawn; :func:`common.alignment_loss` makes each merged token
   name the words that describe it (shape, colour, and cell or motion).

Run: ``python training/train_qwen2_vl.py`` (63 minutes with ``--threads 1`` on 2 cores shared
with one other training job: tower 600 steps, then 2000 LM steps). Writes the weights to
``leanvision/testing/trained/weights/qwen2_vl.safetensors`` and the loss history and plot to
``training/logs/qwen2_vl-loss.{json,png}``; prints validation and test accuracy per kind.
"""

from __future__ import annotations

import argparse
import functools
import random
import time
from pathlib import Path

import common
import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from leanvision.diffusion.consistency.checkpoint import write_history
from leanvision.testing.scenes import (
    COLORS,
    COLUMNS,
    MOTIONS,
    ROWS,
    SHAPES,
    Clip,
    Scene,
    clip_item,
    clip_question,
    render_clip,
    render_scene,
    scene_question,
    vqa_item,
)
from leanvision.testing.trained.qwen2_vl import QWEN2_VL_SHAPE
from leanvision.testing.trained.vqa import build_scene_vlm, vqa_accuracy
from leanvision.testing.trained.weights import load_weights, save_weights

LOGS = Path(__file__).with_name("logs")
SHAPE_CLASSES = ("empty", *SHAPES)
COLOR_CLASSES = ("empty", *COLORS)
MOTION_CLASSES = ("still", *MOTIONS)
SIDE, TOKEN_PX = 96, 8  # image side; pixels per merged token (patch 4 x merge 2)
GRID = SIDE // TOKEN_PX
TOKENS = GRID * GRID  # merged tokens per image / per temporal patch


@functools.cache
def _blank(frames: int) -> np.ndarray:
    """The objects-free canvas of an image (``frames == 0``) or a clip, background 0."""
    if frames == 0:
        return render_scene(Scene((), background=0), SIDE)
    return render_clip(Clip((), (), (), frames, background=0), SIDE)


def object_masks(item) -> list[np.ndarray]:
    """Per object: its pixels in each temporal patch (groups, 96, 96) bool (a clip's frame
    pairs are merged; an image is one group)."""
    scene = item.scene
    if isinstance(scene, Scene):
        return [
            (render_scene(Scene((obj,), background=0), SIDE) != _blank(0)).any(-1)[None]
            for obj in scene.objects
        ]
    masks = []
    for obj, motion, start in zip(scene.objects, scene.motions, scene.appears, strict=True):
        alone = Clip((obj,), (motion,), (start,), scene.frames, background=0)
        pixels = (render_clip(alone, SIDE) != _blank(scene.frames)).any(-1)
        masks.append(pixels.reshape(-1, 2, SIDE, SIDE).any(1))
    return masks


def token_labels(item) -> torch.Tensor:
    """(groups * 144, 3) long: shape, colour, motion class of each merged token; -100 where
    an object covers under a quarter of the token (ambiguous), motion -100 on empty tokens."""
    masks = object_masks(item)
    groups = 1 if isinstance(item.scene, Scene) else item.scene.frames // 2
    cover = np.zeros((len(masks) + 1, groups, GRID, GRID))
    for index, mask in enumerate(masks):
        cover[index + 1] = mask.reshape(groups, GRID, TOKEN_PX, GRID, TOKEN_PX).mean((2, 4))
    best = cover.argmax(0)
    labels = torch.full((groups, GRID, GRID, 3), -100, dtype=torch.long)
    empty = cover.max(0) == 0
    labels[..., 0][torch.from_numpy(empty)] = 0
    labels[..., 1][torch.from_numpy(empty)] = 0
    motions = getattr(item.scene, "motions", None)
    for index, obj in enumerate(item.scene.objects):
        sure = torch.from_numpy((best == index + 1) & (cover[index + 1] >= 0.25))
        labels[..., 0][sure] = SHAPE_CLASSES.index(obj.shape)
        labels[..., 1][sure] = COLOR_CLASSES.index(obj.color)
        labels[..., 2][sure] = MOTION_CLASSES.index(motions[index] if motions else "still")
    return labels.view(-1, 3)


def tower_pixels(processor, images, clips) -> tuple[torch.Tensor, torch.Tensor]:
    """The processor's patches of ``images`` then ``clips``, and their (t, h, w) grids."""
    pixels, grids = [], []
    if images:
        out = processor.image_processor(images=images, return_tensors="pt")
        pixels.append(out["pixel_values"])
        grids.append(out["image_grid_thw"])
    if clips:
        out = processor.video_processor(videos=clips, return_tensors="pt")
        pixels.append(out["pixel_values_videos"])
        grids.append(out["video_grid_thw"])
    return torch.cat(pixels), torch.cat(grids)


def train_tower(model, processor, args) -> dict:
    visual = model.model.visual
    classes = (len(SHAPE_CLASSES), len(COLOR_CLASSES), len(MOTION_CLASSES))
    head = torch.nn.Linear(model.config.text_config.hidden_size, sum(classes))
    params = [*visual.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=args.tower_lr, weight_decay=0.05)
    history = common.new_history()

    def loss_and_right(images, clips):
        pixels, grids = tower_pixels(processor, [i.image for i in images], [c.image for c in clips])
        labels = torch.cat([token_labels(item) for item in [*images, *clips]])
        with common.autocast(args.bf16):
            logits = head(visual(pixels, grid_thw=grids).pooler_output).float()
        losses, right = [], []
        for part, target in zip(logits.split(classes, -1), labels.unbind(-1), strict=True):
            losses.append(F.cross_entropy(part, target, ignore_index=-100))
            keep = target != -100
            right.append((part.argmax(-1)[keep] == target[keep]).float().mean().item())
        return sum(losses), right

    val_images = [vqa_item("val", index) for index in range(64)]
    val_clips = [clip_item("val", index) for index in range(16)]
    visual.train()
    for step in tqdm(range(args.tower_steps), desc="tower + merger"):
        lr = common.schedule(optimizer, step, args.tower_steps, args.tower_lr, warmup=50)
        images = [vqa_item("train", step * args.tower_images + i) for i in range(args.tower_images)]
        clips = [clip_item("train", step * args.tower_clips + i) for i in range(args.tower_clips)]
        loss, _ = loss_and_right(images, clips)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        history["step"].append(step)
        history["loss"].append(loss.item())
        history["lr"].append(lr)
        if (step + 1) % args.eval_every == 0 or step + 1 == args.tower_steps:
            visual.eval()
            with torch.no_grad():
                loss, right = loss_and_right(val_images, val_clips)
            history["eval_step"].append(step)
            history["eval_loss"].append(loss.item())
            visual.train()
    visual.eval()
    print("tower: validation token accuracy shape={:.3f} color={:.3f} motion={:.3f}".format(*right))
    return {
        **history,
        "val_token_accuracy": dict(zip(("shape", "color", "motion"), right, strict=True)),
    }


@torch.no_grad()
def cache_tower(model, processor, items, bf16: bool, chunk: int = 64) -> torch.Tensor:
    """Frozen-tower outputs (before the merger), float16: (len(items), groups * 576, width)."""
    out = []
    for first in tqdm(range(0, len(items), chunk), desc="caching tower outputs", leave=False):
        part = [item.image for item in items[first : first + chunk]]
        videos = part[0].ndim == 4
        pixels, grids = tower_pixels(processor, [] if videos else part, part if videos else [])
        with common.autocast(bf16):
            hidden = model.model.visual(pixels, grid_thw=grids).last_hidden_state
        out.append(hidden.half().view(len(part), -1, hidden.shape[-1]))
    return torch.cat(out)


def token_words(item, word_ids) -> torch.Tensor:
    """Per merged token, the ids of the words that say what covers it (:func:`token_labels`):
    shape, colour, and its grid row and column on an image or its motion in a clip; -100 for
    none. (groups * 144, 4) for an image, (groups * 144, 3) for a clip."""
    labels = token_labels(item)
    shape, color, motion = labels.unbind(-1)
    objects = shape > 0
    words = [
        torch.where(objects, word_ids(SHAPE_CLASSES)[shape.clamp(min=0)], -100),
        torch.where(objects, word_ids(COLOR_CLASSES)[color.clamp(min=0)], -100),
    ]
    if isinstance(item.scene, Scene):
        cells = torch.arange(TOKENS)
        words.append(torch.where(objects, word_ids(ROWS)[cells // GRID * 3 // GRID], -100))
        words.append(torch.where(objects, word_ids(COLUMNS)[cells % GRID * 3 // GRID], -100))
    else:
        words.append(torch.where(motion > 0, word_ids(MOTION_CLASSES)[motion.clamp(min=0)], -100))
    return torch.stack(words, dim=-1)


def vqa_loss(model, hidden, rows, video: bool, pad_id: int, words=None) -> torch.Tensor:
    """Qwen2-VL's forward from cached tower outputs: merge, scatter, M-RoPE; the answer
    cross-entropy, plus :func:`common.alignment_loss` of the merged tokens given ``words``."""
    ids, labels, mask = common.collate(rows, pad_id)
    config = model.config
    types = (ids == config.image_token_id).long() + 2 * (ids == config.video_token_id).long()
    groups = QWEN2_VL_SHAPE.video_frames // 2 if video else 1
    grid = torch.tensor([[groups, GRID * 2, GRID * 2]] * len(rows))
    features = model.model.visual.merger(hidden.flatten(0, 1).float())
    embeds = model.get_input_embeddings()(ids)
    slots = (types > 0).unsqueeze(-1).expand_as(embeds)
    embeds = embeds.masked_scatter(slots, features.to(embeds.dtype))
    grids = {"video_grid_thw" if video else "image_grid_thw": grid}
    positions, _ = model.model.get_rope_index(ids, types, attention_mask=mask, **grids)
    out = model.model.language_model(
        inputs_embeds=embeds, attention_mask=mask, position_ids=positions
    )
    loss = common.answer_loss(model.lm_head, out.last_hidden_state, labels)
    if words is None:
        return loss
    embeddings = model.get_input_embeddings()
    return loss + common.alignment_loss(features, words.flatten(0, 1), embeddings)


def train_lm(model, processor, args) -> dict:
    tokenizer = processor.tokenizer
    images = [vqa_item("train", index) for index in range(args.lm_images)]
    clips = [clip_item("train", index) for index in range(args.lm_clips)]
    image_cache = cache_tower(model, processor, images, args.bf16)
    clip_cache = cache_tower(model, processor, clips, args.bf16)
    token_ids = tokenizer.convert_tokens_to_ids

    def word_ids(words) -> torch.Tensor:
        return torch.tensor(
            [-100 if word in ("empty", "still") else token_ids(word) for word in words]
        )

    image_words = torch.stack([token_words(item, word_ids) for item in images])
    clip_words = torch.stack([token_words(item, word_ids) for item in clips])
    image_turns = common.Turns(tokenizer, "qwen2_vl", "image", TOKENS)
    clip_turns = common.Turns(
        tokenizer, "qwen2_vl", "video", TOKENS * QWEN2_VL_SHAPE.video_frames // 2
    )
    model.model.visual.requires_grad_(False)
    merger = model.model.visual.merger.requires_grad_(True)
    params = [*merger.parameters(), *model.model.language_model.parameters()]
    params = list({id(p): p for p in [*params, *model.lm_head.parameters()]}.values())
    optimizer = torch.optim.AdamW(params, lr=args.lm_lr, weight_decay=0.05)
    rng = random.Random(args.seed)
    history = common.new_history()
    history["image_loss"], history["video_loss"] = [], []
    model.train()
    for step in tqdm(range(args.lm_steps), desc="merger + LM"):
        lr = common.schedule(optimizer, step, args.lm_steps, args.lm_lr, warmup=100)
        picks = [rng.randrange(len(images)) for _ in range(args.lm_batch_images)]
        rows = [
            image_turns([scene_question(images[i].scene, rng)[1:] for _ in range(args.turns)])
            for i in picks
        ]
        clip_picks = [rng.randrange(len(clips)) for _ in range(args.lm_batch_clips)]
        clip_rows = [
            clip_turns([clip_question(clips[i].scene, rng)[1:] for _ in range(args.turns)])
            for i in clip_picks
        ]
        image_align = image_words[picks] if args.align else None
        clip_align = clip_words[clip_picks] if args.align else None
        pad_id = tokenizer.pad_token_id
        with common.autocast(args.bf16):
            image_loss = vqa_loss(model, image_cache[picks], rows, False, pad_id, image_align)
            video_loss = vqa_loss(
                model, clip_cache[clip_picks], clip_rows, True, pad_id, clip_align
            )
        loss = image_loss + video_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        history["step"].append(step)
        history["loss"].append(loss.item())
        history["lr"].append(lr)
        history["image_loss"].append(image_loss.item())
        history["video_loss"].append(video_loss.item())
    model.eval()
    return history


def plot(path: Path, tower: dict, lm: dict) -> None:
    """Both stages' training losses (and the tower's validation loss), log scale."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4), dpi=110)
    FigureCanvasAgg(figure)
    left, right = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    left.plot(tower["step"], tower["loss"], alpha=0.6, label="train")
    left.plot(tower["eval_step"], tower["eval_loss"], "o-", label="validation")
    left.set_title("stage 1: tower + merger, per-token cross-entropy")
    for name in ("image_loss", "video_loss"):
        values = torch.tensor(lm[name])
        window = max(1, len(values) // 50)
        smooth = values.unfold(0, window, 1).mean(1)
        right.plot(lm["step"][window - 1 :], smooth, label=f"{name} (mean of {window})")
    right.set_title("stage 2: merger + LM, answer-token cross-entropy")
    for axes in (left, right):
        axes.set_yscale("log")
        axes.set_xlabel("optimizer step")
        axes.grid(alpha=0.3)
        axes.legend()
    figure.tight_layout()
    figure.savefig(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tower-steps", type=int, default=600)
    parser.add_argument("--tower-images", type=int, default=12, help="images per tower step")
    parser.add_argument("--tower-clips", type=int, default=3, help="clips per tower step")
    parser.add_argument("--tower-lr", type=float, default=2e-3)
    parser.add_argument("--lm-steps", type=int, default=2000)
    parser.add_argument("--lm-images", type=int, default=5000, help="distinct training images")
    parser.add_argument("--lm-clips", type=int, default=2000, help="distinct training clips")
    parser.add_argument("--lm-batch-images", type=int, default=16)
    parser.add_argument("--lm-batch-clips", type=int, default=8)
    parser.add_argument("--lm-lr", type=float, default=1e-3)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--eval-items", type=int, default=300, help="per split and media")
    common.answer_training_arguments(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=None, help="weights folder (default: shipped)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tiny = build_scene_vlm(QWEN2_VL_SHAPE, seed=args.seed)
    model, processor = tiny.model, tiny.info["processor"]
    start = time.time()
    tower = train_tower(model, processor, args)
    tower_seconds = time.time() - start
    lm = train_lm(model, processor, args)
    seconds = {"tower": tower_seconds, "total": time.time() - start}
    path = save_weights(model, "qwen2_vl", args.out)
    print(f"saved {path} ({path.stat().st_size / 1e6:.2f} MB) after {seconds['total']:.0f} s")
    # Score the saved (float16) weights as the loader will see them.
    tiny = build_scene_vlm(QWEN2_VL_SHAPE)
    load_weights(tiny.model, "qwen2_vl", args.out)
    scores = {}
    for split in ("val", "test"):
        for media, make in (("image", vqa_item), ("video", clip_item)):
            items = [make(split, index) for index in range(args.eval_items)]
            scores[f"{split}/{media}"] = vqa_accuracy(tiny, items, progress=True)
            shown = " ".join(f"{k}={v:.3f}" for k, v in scores[f"{split}/{media}"].items())
            print(f"{split} {media}: {shown}")
    LOGS.mkdir(exist_ok=True)
    extra = {"seconds": seconds, "args": {k: str(v) for k, v in vars(args).items()}}
    write_history(
        str(LOGS / "qwen2_vl-loss.json"), lm, {**extra, "tower": tower, "accuracy": scores}
    )
    plot(LOGS / "qwen2_vl-loss.png", tower, lm)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
