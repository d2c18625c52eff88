"""Benchmark ``vlm``: what visual-token compression buys at prefill and decode.

One row per model x input (image, or a 16-frame video) x batch x method x budget. The timed
call is one prefill (``model(**inputs, logits_to_keep=1)``, what ``generate`` runs first); the
row named ``uncompressed`` is each group's baseline, so "vs baseline" is the prefill speedup
(the runner times each row in turn with it, and switches the patch untimed, in ``setup``).
Each row's ``FLOPs ratio`` is its ``compute_ratio``: a prefill speedup above ``1 / FLOPs
ratio`` (the vision tower is not counted, so the bound is loose) is flagged as noise.
Budgets are written ``@N``: keep ``N / 576`` of every image's (video frame's) visual tokens,
i.e. N of LLaVA-1.5's 576. In-LLM methods keep N visual tokens after their last stage (the
KV cache decoding reads); their average over layers is the ``avg visual/layer`` column.

Extra columns, measured once per row while the suite is built:

- ``visual tokens``: per prompt, after compression; ``GFLOPs``/``FLOPs ratio``: estimated
  prefill FLOPs of the language model for the whole batch (``leanvision.vlm.flops``);
- ``decode tok/s``: generated tokens per second after the first token (``generate`` with
  ``new_tokens`` tokens, step times from a streamer); ``decode vs base``: the median of
  per-pair ratios, each method's ``generate`` run in turn with the uncompressed one
  (``repeats`` pairs after a warm-up pair), and ``decode IQR`` their quartiles (``n=K`` under 3);
- ``KV MiB``: the KV cache after prefill (every device); ``prefill MiB`` (CUDA only): peak
  memory allocated during one prefill above what was allocated before it (weights excluded).

The scoring/selection cost of pre-LLM methods is not a column: leanvision does not time its
scoring step apart from the prefill, and the difference of two noisy prefill medians that
stood in for it read 0 even for methods that capture ViT attention.

Models: on the CPU, ``vlm_shaped("llava-1.5-7b")`` (images) and ``"llava-onevision-7b"``
(video) narrowed and shortened (real token counts: 576 per image, 196 per video frame); on
CUDA the full 7B shapes in bf16 with random weights, at batch 1 and 8; ``options.model``:
a local checkpoint loaded with ``AutoModelForImageTextToText``/``AutoProcessor``.

In-LLM methods get one budget, the visual tokens left after their last stage; leanvision
derives their stages and places the papers' layers at the same relative depth of the model.

>>> method_options("pdrop", 64)
('pdrop', {'keep': 0.1111111111111111})
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import time
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from leanvision.bench.registry import BenchOptions, Case, register_benchmark
from leanvision.bench.runner import alternate, paired_ratio
from leanvision.bench.suites._vlm_models import Patches, build_model, make_inputs
from leanvision.compat import transformers as tf_compat

REFERENCE_TOKENS = 576  # LLaVA-1.5's visual tokens per image: budgets are written against it
BUDGETS = (192, 128, 64)
PRE_LLM = ("visionzip", "prumerge+", "bipartite-merge", "divprune", "random", "pool")
IN_LLM = ("fastv", "pdrop", "sparsevlm")
VIDEO_ONLY = ("temporal", "temporal+visionzip", "progressive_pool")
UNBUDGETED = ("temporal", "progressive_pool")  # their token count follows from the video
BASELINE = "uncompressed"


@dataclasses.dataclass
class VLMBenchConfig:
    """What the suite builds; :func:`default_config` picks it from :class:`BenchOptions`.

    ``image_model``/``video_model``: a ``REAL_SHAPES`` name (built by ``vlm_shaped`` at
    ``scales``/``video_scales`` = (width, depth)) or a checkpoint path; None skips that input.
    ``repeats``: interleaved pairs (after a warm-up pair) of the decode measurement.
    """

    image_model: str | None = "llava-1.5-7b"
    video_model: str | None = "llava-onevision-7b"
    scales: tuple[float, float] = (1 / 16, 1 / 8)
    video_scales: tuple[float, float] = (1 / 64, 1 / 8)
    video_frames: int = 16
    budgets: tuple[int, ...] = BUDGETS
    image_methods: tuple[str, ...] = PRE_LLM + IN_LLM
    video_methods: tuple[str, ...] = ("pool", "visionzip", "fastv", *VIDEO_ONLY)
    batches: tuple[int, ...] = (1,)
    new_tokens: int = 8
    repeats: int = 3
    prompt_words: int = 40


def default_config(options: BenchOptions) -> VLMBenchConfig:
    """The suite's settings for ``options``: shaped models on a CPU, full 7B shapes at batch 1
    and 8 on CUDA, fewer budgets/methods/samples with ``quick``.

    >>> default_config(BenchOptions(quick=True)).budgets
    (64,)
    """
    config = VLMBenchConfig()
    if options.device.startswith("cuda"):
        config = dataclasses.replace(
            config,
            scales=(1.0, 1.0),
            video_scales=(1.0, 1.0),
            batches=(1, 8),
            new_tokens=32,
            repeats=3,
        )
    if options.model:
        config = dataclasses.replace(config, image_model=options.model, video_model=options.model)
    if options.quick:
        config = dataclasses.replace(
            config,
            budgets=(64,),
            video_frames=8 if not options.device.startswith("cuda") else 16,
            video_methods=("pool", "fastv", *VIDEO_ONLY),
            batches=config.batches[-1:],
            new_tokens=4,
            repeats=1,
        )
        if not options.device.startswith("cuda"):
            config = dataclasses.replace(config, scales=(1 / 32, 1 / 8))
    return config


def method_options(method: str, budget: int | None) -> tuple[str, dict[str, Any]]:
    """``(registered name, options)`` of ``method`` at ``budget`` (of 576 tokens per image or
    frame).

    >>> method_options("visionzip", 64)
    ('visionzip', {'keep': 0.1111111111111111})
    """
    keep = None if budget is None else budget / REFERENCE_TOKENS
    if method in UNBUDGETED:
        return method, {}
    if keep is None:
        raise ValueError(f"method {method!r} needs a budget; only {UNBUDGETED} run without one")
    if method in PRE_LLM + IN_LLM:
        return method, {"keep": keep}
    if method == "temporal+visionzip":
        return "temporal", {"then": "visionzip", "keep": keep}
    known = PRE_LLM + IN_LLM + VIDEO_ONLY
    raise ValueError(f"method must be one of {known}, got {method!r}")


@dataclasses.dataclass
class _Workload:
    """One model with one batch of prompts (images or a video)."""

    group: str
    model: Any
    inputs: dict[str, Any]
    patches: Patches
    batch: int
    device: str

    def prefill(self) -> Any:
        with torch.no_grad():
            return self.model(**self.inputs, logits_to_keep=1)


class _StepClock:
    """A ``generate`` streamer that only records when each step's tokens arrive."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value: Any) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def _decode_seconds(work: _Workload, new_tokens: int) -> float:
    """Seconds per generated token (all rows) of the decode steps of one ``generate``, the
    prompt and the first token excluded; NaN when fewer than two steps were decoded."""
    clock = _StepClock()
    with torch.no_grad():
        work.model.generate(
            **work.inputs,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            streamer=clock,
        )
    # put() #0 is the prompt, #1 the first token (after prefill), then one per step
    steps = len(clock.times) - 2
    if steps < 1:
        return float("nan")
    return (clock.times[-1] - clock.times[1]) / (work.batch * steps)


def _decode_pairs(
    work: _Workload, target: tuple, config: VLMBenchConfig
) -> tuple[list[float], list[float]]:
    """Seconds per decoded token of the uncompressed model and of ``target``, measured in turn:
    ``config.repeats`` pairs after a warm-up pair."""

    def measure(method: str | None, options: dict) -> float:
        work.patches.use(method, options)
        return _decode_seconds(work, config.new_tokens)

    base, own = alternate(lambda: measure(None, {}), lambda: measure(*target), config.repeats + 1)
    return base[1:], own[1:]


def _cache_mib(cache: Any) -> float:
    total = 0
    for layer in getattr(cache, "layers", None) or []:
        for name in ("keys", "values"):
            tensor = getattr(layer, name, None)
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()
    return total / 2**20


def _memory(work: _Workload) -> dict[str, float]:
    """KV cache after one prefill, and on CUDA the prefill's peak memory above its start."""
    if not work.device.startswith("cuda"):
        return {"KV MiB": _cache_mib(tf_compat.output_cache(work.prefill()))}
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    output = work.prefill()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - before) / 2**20
    return {"KV MiB": _cache_mib(tf_compat.output_cache(output)), "prefill MiB": peak}


def _baseline_facts(work: _Workload) -> dict[str, float]:
    from leanvision.vlm import get_adapter, prefill_flops

    adapter = get_adapter(work.model)
    input_ids = work.inputs["input_ids"]
    visual = adapter.visual_token_mask(work.model, input_ids).sum().item() / work.batch
    flops = prefill_flops(adapter.text_config(work.model), input_ids.shape[1]) * work.batch
    return {"visual tokens": visual, "avg visual/layer": visual, "GFLOPs": flops / 1e9}


def _method_facts(stats: dict[str, Any], batch: int, base: dict[str, float]) -> dict[str, float]:
    # pre-LLM: one count per image / video; in-LLM: one per row; either way, sum per prompt
    visual = sum(stats["tokens_after"]) / batch
    flops = stats["prefill_flops_after"]
    return {
        "visual tokens": visual,
        "avg visual/layer": stats.get("avg_visual_tokens_per_layer", visual),
        "GFLOPs": flops / 1e9,
        "FLOPs ratio": flops / (base["GFLOPs"] * 1e9),
    }


def _workload_cases(
    work: _Workload, methods: Iterable[str], config: VLMBenchConfig
) -> Iterator[Case]:
    from leanvision.core.errors import UnsupportedModelError

    work.patches.use(None, {})
    base = _baseline_facts(work) | {"FLOPs ratio": 1.0} | _memory(work)
    decode = [_decode_seconds(work, config.new_tokens) for _ in range(config.repeats + 1)]
    base |= {"decode tok/s": 1 / statistics.median(decode[1:]), "decode vs base": 1.0}
    yield _case(work, BASELINE, (None, {}), base, baseline=True)
    plan = [(m, None) for m in methods if m in UNBUDGETED]
    plan += [(m, b) for b in config.budgets for m in methods if m not in UNBUDGETED]
    for method, budget in plan:
        label = method if budget is None else f"{method} @{budget}"
        try:
            target = method_options(method, budget)
            handle = work.patches.use(*target)
            memory = _memory(work)  # its prefill also fills handle.stats
            metrics = _method_facts(handle.stats, work.batch, base) | memory
            base_decode, decode = _decode_pairs(work, target, config)
            ratio = paired_ratio(base_decode, decode)
            metrics |= {
                "decode tok/s": 1 / statistics.median(decode),
                "decode vs base": ratio.median,
                "decode IQR": ratio.interval(),
            }
        except (ValueError, TypeError, UnsupportedModelError) as error:
            work.patches.use(None, {})
            warnings.warn(f"vlm benchmark: skipping {work.group} / {label}: {error}", stacklevel=2)
            continue
        yield _case(work, label, target, metrics)


def _case(work: _Workload, name: str, target: tuple, metrics: dict, baseline: bool = False) -> Case:
    # The patch is switched in setup (untimed), before every sample: the runner alternates
    # each row with the baseline, which shares the model.
    return Case(
        name=name,
        fn=work.prefill,
        setup=functools.partial(work.patches.use, *target),
        items=work.batch,
        unit="prompts",
        group=work.group,
        baseline=baseline,
        metrics=metrics,
        compute_ratio=None if baseline else metrics["FLOPs ratio"],
    )


def vlm_cases(options: BenchOptions, config: VLMBenchConfig | None = None) -> Iterator[Case]:
    """The suite's cases: builds the models, measures the once-per-row columns, and yields one
    prefill :class:`Case` per row (group ``"<model> <input> b<batch>"``).

    >>> from leanvision.bench import run_cases                                  # doctest: +SKIP
    >>> rows = run_cases("vlm", vlm_cases(BenchOptions(quick=True)))            # doctest: +SKIP
    """
    from leanvision.vlm import get_adapter

    config = config or default_config(options)
    jobs = [("image", config.image_model, config.scales, config.image_methods)]
    jobs.append(("video", config.video_model, config.video_scales, config.video_methods))
    loaded: dict[tuple, Any] = {}
    for media, name, scales, methods in jobs:
        if name is None:
            continue
        if (name, scales) not in loaded:
            loaded[name, scales] = build_model(name, scales, options.device, options.dtype)
        model = loaded[name, scales]
        if media == "video" and not get_adapter(model.model).supports_video:
            warnings.warn(f"vlm benchmark: {model.label} takes no video; skipped", stacklevel=2)
            continue
        kind = "image" if media == "image" else f"video {config.video_frames}f"
        for batch in config.batches:
            inputs = make_inputs(
                model, media, batch, config.video_frames, config.prompt_words, options.device
            )
            group = f"{model.label} {kind} b{batch}"
            work = _Workload(group, model.model, inputs, model.patches, batch, options.device)
            yield from _workload_cases(work, methods, config)


@register_benchmark(
    "vlm", "VLM visual-token compression: prefill, decode, KV/memory, FLOPs per method x budget"
)
def vlm_suite(options: BenchOptions) -> Iterable[Case]:
    """Registered entry: :func:`vlm_cases` with :func:`default_config` ``(options)``."""
    return vlm_cases(options)
