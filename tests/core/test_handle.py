import pytest
import torch
from torch import nn

import leanvision
from leanvision import AlreadyPatchedError, Handle


def _toy() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def _patch_everything(model: nn.Module, handle: Handle) -> None:
    """Every kind of change a method makes: a hook, a forward override, a swapped
    parameter, a swapped child module and a new instance attribute."""
    handle.add_hook(model[0].register_forward_hook(lambda module, args, out: out * 2))
    original_forward = model[2].forward
    handle.set_attr(model[2], "forward", lambda x: original_forward(x) + 1)
    handle.set_attr(model[0], "bias", nn.Parameter(torch.zeros(8)))
    handle.set_attr(model, "1", nn.Tanh())
    handle.set_attr(model, "leanvision_note", "patched")


def test_remove_restores_outputs_parameters_and_attributes_exactly():
    model = _toy()
    x = torch.randn(4, 6)
    before = model(x)
    params_before = _snapshot(model)
    instance_keys = set(vars(model[2]))

    handle = Handle(model, family="toy", method="everything")
    _patch_everything(model, handle)
    patched = model(x)
    assert not torch.equal(patched, before)
    assert isinstance(model[1], nn.Tanh)

    handle.remove()
    assert torch.equal(model(x), before)
    after = _snapshot(model)
    assert after.keys() == params_before.keys()
    for name in params_before:
        assert torch.equal(after[name], params_before[name]), name
    assert isinstance(model[1], nn.ReLU)
    assert set(vars(model[2])) == instance_keys  # the forward override is gone, not copied
    assert not hasattr(model, "leanvision_note")
    assert Handle.active(model) == {}


def test_context_manager_removes_on_exit():
    model = _toy()
    x = torch.randn(2, 6)
    before = model(x)
    with Handle(model, family="toy", method="hook") as handle:
        handle.add_hook(model.register_forward_hook(lambda module, args, out: out + 5))
        assert torch.allclose(model(x), before + 5)
        assert Handle.active(model) == {"toy": handle}
    assert torch.equal(model(x), before)
    assert not handle.is_active


def test_same_family_twice_raises_and_other_family_is_allowed():
    model = _toy()
    first = Handle(model, family="vlm", method="fastv")
    with pytest.raises(AlreadyPatchedError, match="fastv"):
        Handle(model, family="vlm", method="visionzip")
    other = Handle(model, family="diffusion", method="deepcache")
    assert set(Handle.active(model)) == {"vlm", "diffusion"}
    first.remove()
    Handle(model, family="vlm", method="visionzip").remove()  # free again after remove
    other.remove()


def test_build_rolls_back_a_half_applied_patch():
    model = _toy()
    x = torch.randn(3, 6)
    before = model(x)
    with pytest.raises(ValueError, match="boom"), Handle.build(model, "toy", "broken") as handle:
        handle.add_hook(model.register_forward_hook(lambda module, args, out: out * 0))
        raise ValueError("boom")
    assert torch.equal(model(x), before)
    assert Handle.active(model) == {}


def test_remove_is_idempotent_and_steps_run_newest_first():
    model = _toy()
    order = []
    handle = Handle(model, family="toy", method="order")
    handle.on_remove(lambda: order.append("first"))
    handle.on_remove(lambda: order.append("second"))
    handle.remove()
    handle.remove()
    assert order == ["second", "first"]
    with pytest.raises(RuntimeError, match="already removed"):
        handle.on_remove(lambda: None)


def test_stats_are_a_per_handle_dict():
    model = _toy()
    with Handle(model, family="toy", method="stats") as handle:
        handle.stats["tokens_before"] = 576
        assert handle.stats == {"tokens_before": 576}
    assert "removed" in repr(handle)


def test_already_patched_says_how_to_find_the_handle_you_no_longer_hold():
    model = _toy()
    Handle(model, family="vlm", method="fastv")  # the handle is dropped on purpose
    with pytest.raises(AlreadyPatchedError) as caught:
        Handle(model, family="vlm", method="visionzip")
    message = str(caught.value)
    assert "lv.Handle.active(model)['vlm'].remove()" in message
    hint = message.split("no longer hold it: ")[1][: -len(")")]
    exec(hint, {"lv": leanvision, "model": model})
    assert Handle.active(model) == {}
