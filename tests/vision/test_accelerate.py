"""lv.vision.accelerate: the method registry, reversible fold-batchnorm, stacking, refusals."""

import types

import pytest
import torch
from vision_helpers import TINY_SPEC, randomise_batchnorm, rel_err

import leanvision as lv
from leanvision import AlreadyPatchedError, Handle, UnsupportedModelError
from leanvision.testing import tiny_efficientvit
from leanvision.vision import (
    FoldBatchNorm,
    LinearAttention,
    LiteMLA,
    accelerate,
    efficientvit_seg,
    from_timm,
    optimize_for_inference,
)


def _snapshot(model):
    """Everything remove() must restore: state (values, strides), parameter and module objects."""
    state = model.state_dict()
    return {
        "values": {key: value.clone() for key, value in state.items()},
        "strides": {key: value.stride() for key, value in state.items()},
        "pointers": {key: value.data_ptr() for key, value in state.items()},
        "parameters": list(model.parameters()),
        "modules": dict(model.named_modules()),
        "memory_format": getattr(model, "memory_format", None),
    }


def _assert_restored(model, before):
    state = model.state_dict()
    assert list(state) == list(before["values"])
    for key, value in state.items():
        assert torch.equal(value, before["values"][key]), key
        assert value.stride() == before["strides"][key], key
        assert value.data_ptr() == before["pointers"][key], key
    assert all(a is b for a, b in zip(model.parameters(), before["parameters"], strict=True))
    modules = dict(model.named_modules())
    assert modules.keys() == before["modules"].keys()
    assert all(modules[name] is before["modules"][name] for name in modules)
    assert getattr(model, "memory_format", None) == before["memory_format"]
    assert Handle.active(model) == {}


def _seg():
    model = efficientvit_seg("b0", num_classes=5, backend="torch", _spec=TINY_SPEC)
    return randomise_batchnorm(model).eval()


MODELS = {"timm": lambda: randomise_batchnorm(tiny_efficientvit(batch=2).model), "seg": _seg}


def _batchnorms(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("kind", ["timm", "seg"])
def test_fold_batchnorm_keeps_outputs_and_remove_restores_bit_for_bit(kind, channels_last):
    model = MODELS[kind]()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
    before = _snapshot(model)
    count = len(_batchnorms(model))
    handle = accelerate(model, "fold-batchnorm", channels_last=channels_last)
    assert handle.family == "vision" and handle.method == "fold-batchnorm"
    assert handle.stats == {"folded": count, "channels_last": channels_last}
    assert _batchnorms(model) == []
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    layout = torch.channels_last if channels_last else torch.contiguous_format
    assert all(c.weight.is_contiguous(memory_format=layout) for c in convs)
    assert channels_last == (not all(c.weight.is_contiguous() for c in convs))
    if kind == "seg":
        assert model.memory_format == (
            torch.channels_last if channels_last else torch.contiguous_format
        )
    with torch.no_grad():
        assert rel_err(model(x), expected) <= 1e-5
    handle.remove()
    _assert_restored(model, before)
    with torch.no_grad():
        assert torch.equal(model(x), expected)


def test_remove_restores_the_layout_of_tensors_that_were_not_folded():
    # EfficientViT's unfolded weights (depthwise k x k, 1x1) are channels-last already; give
    # the model a full 3x3 conv that owns its weight, one whose weight is a view of a larger
    # tensor, and a 4-D buffer, so each must be converted and converted back.
    model = tiny_efficientvit().model
    model.owning = torch.nn.Conv2d(4, 6, 3)
    model.viewing = torch.nn.Conv2d(4, 6, 3)
    big = torch.randn(2 * model.viewing.weight.numel())
    view = big[model.viewing.weight.numel() :].view(model.viewing.weight.shape)
    model.viewing.weight = torch.nn.Parameter(view)
    model.register_buffer("grid", torch.randn(2, 3, 4, 5))
    assert model.viewing.weight.storage_offset() > 0
    before = _snapshot(model)
    with accelerate(model, FoldBatchNorm()):
        for tensor in (model.owning.weight, model.viewing.weight, model.grid):
            assert tensor.is_contiguous(memory_format=torch.channels_last)
            assert not tensor.is_contiguous()
    _assert_restored(model, before)
    assert model.viewing.weight.untyped_storage().data_ptr() == big.untyped_storage().data_ptr()


def test_methods_stack_in_one_handle_and_undo_in_any_order():
    model = randomise_batchnorm(tiny_efficientvit(batch=2).model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
    before = _snapshot(model)
    handle = accelerate(model, [LinearAttention(backend="torch"), FoldBatchNorm()])
    assert handle.method == "linear-attention+fold-batchnorm"
    assert handle.stats == {"replaced": 2, "folded": 16, "channels_last": True}
    assert sum(isinstance(m, LiteMLA) for m in model.modules()) == 2
    with torch.no_grad():
        assert rel_err(model(x), expected) <= 1e-5
    handle.remove()
    _assert_restored(model, before)


def test_one_vision_handle_at_a_time():
    model = tiny_efficientvit().model
    handle = from_timm(model, backend="torch")
    assert handle.method == "linear-attention"  # from_timm is the alias
    with pytest.raises(AlreadyPatchedError, match=r"Handle.active\(model\)\['vision'\]"):
        accelerate(model, "fold-batchnorm")
    assert handle.is_active and _batchnorms(model)
    handle.remove()


def test_training_mode_is_refused_and_nothing_changes():
    model = tiny_efficientvit().model.train()
    before = _snapshot(model)
    with pytest.raises(ValueError, match=r"eval mode \(model.eval\(\)\)"):
        accelerate(model, [LinearAttention(), FoldBatchNorm()])
    _assert_restored(model, before)
    model.eval()
    _batchnorms(model)[3].train()  # one BatchNorm left in training mode
    with pytest.raises(ValueError, match="eval mode"):
        accelerate(model, "fold-batchnorm")


class _FakeTransformersVLM(torch.nn.Module):
    pass


_FakeTransformersVLM.__module__ = "transformers.models.llava.modeling_llava"


def test_unsupported_models_are_pointed_at_their_family():
    with pytest.raises(UnsupportedModelError, match="ConvNormAct"):
        accelerate(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3)), "fold-batchnorm")
    with pytest.raises(UnsupportedModelError, match=r"lv\.vlm\.compress"):
        accelerate(_FakeTransformersVLM(), "linear-attention")
    pipe = types.new_class("StableDiffusionPipeline")()
    type(pipe).__module__ = "diffusers.pipelines.stable_diffusion"
    with pytest.raises(UnsupportedModelError, match=r"lv\.diffusion\.accelerate"):
        accelerate(pipe, "fold-batchnorm")
    ours = _seg()  # already runs leanvision's LiteMLA: nothing to swap
    with pytest.raises(UnsupportedModelError, match="efficientvit_seg models run this kernel"):
        accelerate(ours, "linear-attention")
    assert Handle.active(ours) == {}


def test_bad_method_names_and_options_say_what_is_allowed():
    model = tiny_efficientvit().model
    with pytest.raises(ValueError, match="did you mean 'fold-batchnorm'"):
        accelerate(model, "fold-batchnrom")
    with pytest.raises(TypeError, match="did you mean 'channels_last'"):
        accelerate(model, "fold-batchnorm", channel_last=True)
    with pytest.raises(TypeError, match="channels_last must be a bool"):
        accelerate(model, "fold-batchnorm", channels_last="yes")
    with pytest.raises(ValueError, match="backend"):
        accelerate(model, "linear-attention", backend="fast")
    with pytest.raises(ValueError, match="once"):
        accelerate(model, [FoldBatchNorm(), FoldBatchNorm(channels_last=False)])
    with pytest.raises(TypeError, match="inside the configs"):
        accelerate(model, [FoldBatchNorm()], channels_last=False)
    assert Handle.active(model) == {}


def test_discovery_lists_every_method_with_one_line():
    described = lv.vision.methods()
    assert set(described) == {"linear-attention", "fold-batchnorm"}
    assert described["fold-batchnorm"] == FoldBatchNorm.__doc__.splitlines()[0]
    assert described["linear-attention"] == LinearAttention.__doc__.splitlines()[0]
    text = repr(lv.vision.METHODS)
    assert text.splitlines()[0] == "vision methods:" and len(text.splitlines()) == 3
    names = dir(lv.vision)
    for name in ("accelerate", "methods", "METHODS", "FoldBatchNorm", "LinearAttention"):
        assert name in names and name in lv.vision.__all__


def test_one_way_shortcuts_leave_no_handle():
    model = tiny_efficientvit().model
    assert optimize_for_inference(model) is model
    assert Handle.active(model) == {} and _batchnorms(model) == []
    accelerate(model, "linear-attention", backend="torch").remove()  # still free to patch
