"""The public surface of ``lv.vlm``: one budget rule on every family, errors that say what to
do next, and discovery (``methods()``, ``METHODS``, exported config classes)."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys

import pytest
import torch
from vlm_helpers import FAMILIES, IMAGE_METHODS, build, logits

import leanvision as lv
from leanvision import Handle, UnsupportedModelError
from leanvision.vlm import METHODS

# the one wording, at compress() (token count fixed) or at the forward (dynamic resolution)
TOO_MANY = (
    r"tokens=1000 is more than the \d+ visual tokens per (image|image crop|video frame|ViT "
    r"input) of this \w+ model; allowed: 1\.\.\d+, or keep= \(a ratio\)"
)
# families whose visual token count is fixed by the model: the error comes at compress()
FIXED = {"llava", "idefics3"}
BUDGET_CASES = [(family, method) for family in FAMILIES for method in IMAGE_METHODS] + [
    (family, "temporal") for family in FAMILIES if family.endswith("_video")
]


@pytest.mark.parametrize(("family", "method"), BUDGET_CASES)
def test_a_budget_above_the_images_tokens_raises_on_every_family(family: str, method: str):
    tiny = build(family, batch=2)
    before = logits(tiny)
    options = {"tokens": 1000, **({"then": "visionzip"} if method == "temporal" else {})}
    handle = None
    try:
        with lv.vlm.compress(tiny.model, method, **options) as handle:
            logits(tiny)
    except ValueError as error:
        assert re.search(TOO_MANY, str(error)), str(error)
    else:
        pytest.fail(f"tokens=1000 on {family} / {method}: no error")
    assert (handle is None) == (family in FIXED), "raise at compress() where the count is known"
    if handle is not None:
        assert "tokens_before" not in handle.stats, "raised before anything was compressed"
    assert Handle.active(tiny.model) == {}
    assert torch.equal(logits(tiny), before)


def test_the_issues_qwen2_vl_case_names_the_images_tokens_and_the_budget() -> None:
    tiny = build("qwen2_vl")
    with (
        lv.vlm.compress(tiny.model, "visionzip", tokens=100),
        pytest.raises(ValueError, match="tokens=100 is more than the 48 visual tokens per image"),
    ):
        logits(tiny)
    with lv.vlm.compress(tiny.model, "visionzip", tokens=48) as handle:  # exactly all: fine
        logits(tiny)
    assert handle.stats["tokens_after"] == [48]


def test_a_diffusers_pipeline_is_pointed_at_lv_diffusion() -> None:
    pipe_class = type("StableDiffusionPipeline", (), {"__module__": "diffusers.pipelines.sd"})
    with pytest.raises(UnsupportedModelError, match=r"lv\.diffusion\.accelerate\(pipe, method\)"):
        lv.vlm.compress(pipe_class(), "visionzip")
    with pytest.raises(UnsupportedModelError) as caught:  # not a diffusers object: no hint
        lv.vlm.compress(torch.nn.Linear(2, 2), "visionzip")
    assert "lv.diffusion" not in str(caught.value)


def test_a_typo_gets_did_you_mean() -> None:
    tiny = build("llava")
    with pytest.raises(
        ValueError, match=r"unknown vlm method 'visonzip'; did you mean 'visionzip'"
    ):
        lv.vlm.compress(tiny.model, "visonzip", tokens=8)
    with pytest.raises(TypeError, match=r"did you mean 'tokens'"):
        lv.vlm.compress(tiny.model, "visionzip", token=8)
    assert Handle.active(tiny.model) == {}


def test_methods_lists_every_method_with_one_line() -> None:
    described = lv.vlm.methods()
    assert described == METHODS.describe()
    assert set(described) == set(METHODS.names())
    assert {"visionzip", "tome", "temporal", "progressive_pool", "fastv", "sparsevlm"} <= set(
        described
    )
    for name, line in described.items():
        assert line and "\n" not in line and len(line) <= 100, name
        assert line.endswith("."), f"{name}: {line!r} is not a one-line sentence"
    assert repr(METHODS).splitlines()[0] == "vlm methods:"


def test_every_method_config_is_exported_and_documented() -> None:
    exported = set(dir(lv.vlm))
    assert "methods" in exported and "METHODS" in exported
    for name in METHODS.names():
        config_class = METHODS.entry(name).config_class
        assert config_class.__name__ in exported, f"{name}: lv.vlm.{config_class.__name__}"
        assert getattr(lv.vlm, config_class.__name__) is config_class
        assert dataclasses.is_dataclass(config_class)
        first, _, rest = config_class.__doc__.strip().partition("\n")
        assert first.strip() == lv.vlm.methods()[name]
        assert not rest or rest.startswith("\n"), f"{name}: a blank line after the summary"


def test_methods_are_listed_in_a_fresh_interpreter_without_load_methods() -> None:
    code = (
        "import leanvision as lv; names = lv.vlm.METHODS.names(); "
        "assert 'visionzip' in names and 'fastv' in names, names; "
        "assert callable(lv.vlm.methods) and 'pdrop' in lv.vlm.methods(); print(len(names))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == len(METHODS.names())
