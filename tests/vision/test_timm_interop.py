"""from_timm (reversible instance patch) and load_timm_backbone (timm weights into ours)."""

import pytest
import timm
import torch
from timm.models import FeatureListNet
from timm.models.efficientvit_mit import LiteMLA as TimmLiteMLA
from vision_helpers import TINY_SPEC, randomise_batchnorm, rel_err

from leanvision import AlreadyPatchedError, Handle, UnsupportedModelError
from leanvision.testing import tiny_efficientvit
from leanvision.vision import LiteMLA, efficientvit_seg, from_timm, load_timm_backbone
from leanvision.vision.backbone import VariantSpec


def _timm_attention(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, TimmLiteMLA)}


def test_from_timm_gives_the_original_outputs_and_remove_restores_exactly():
    tiny = tiny_efficientvit(batch=2, resolution=64)
    model, x = tiny.model, tiny.inputs["x"]
    before_modules = _timm_attention(model)
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        expected = model(x)
    handle = from_timm(model, backend="torch")
    assert handle.stats["replaced"] == len(before_modules) == 2
    assert _timm_attention(model) == {}
    ours = [m for m in model.modules() if isinstance(m, LiteMLA)]
    assert len(ours) == 2
    with torch.no_grad():
        patched = model(x)
    assert rel_err(patched, expected) <= 1e-5
    handle.remove()
    assert _timm_attention(model) == before_modules  # the very same module objects
    assert not any(isinstance(m, LiteMLA) for m in model.modules())
    after_state = model.state_dict()
    assert list(after_state) == list(before_state)
    assert all(torch.equal(after_state[k], before_state[k]) for k in before_state)
    with torch.no_grad():
        assert torch.equal(model(x), expected)
    assert Handle.active(model) == {}


def test_from_timm_on_a_real_variant_layout_matches():
    model = randomise_batchnorm(timm.create_model("efficientvit_b0", pretrained=False)).eval()
    x = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        expected = model(x)
        with from_timm(model, backend="torch") as handle:
            patched = model(x)
    assert handle.stats["replaced"] == 4
    assert rel_err(patched, expected) <= 1e-5


def test_from_timm_twice_raises_and_leaves_the_first_patch():
    model = tiny_efficientvit().model
    handle = from_timm(model, backend="torch")
    with pytest.raises(AlreadyPatchedError):
        from_timm(model)
    assert handle.is_active and len([m for m in model.modules() if isinstance(m, LiteMLA)]) == 2
    handle.remove()


def test_from_timm_rejects_models_without_lite_mla_and_bad_arguments():
    resnet_like = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU())
    with pytest.raises(UnsupportedModelError, match="efficientvit"):
        from_timm(resnet_like)
    with pytest.raises(UnsupportedModelError, match="class 'str'.*timm EfficientViT"):
        from_timm("efficientvit_b0")  # a name, not a model
    with pytest.raises(ValueError, match="backend"):
        from_timm(tiny_efficientvit().model, backend="fast")
    assert Handle.active(resnet_like) == {}


# tiny_efficientvit's layout, as a leanvision spec.
TIMM_TINY_SPEC = VariantSpec((8, 16, 16, 32, 32), (1, 1, 1, 1, 1), 8, 8, 1)


def _timm_tiny_and_ours():
    theirs = randomise_batchnorm(tiny_efficientvit().model).eval()
    ours = efficientvit_seg("b0", num_classes=19, backend="torch", _spec=TIMM_TINY_SPEC)
    return theirs, ours


def _features_match(theirs, ours, x):
    with torch.no_grad():
        expected = theirs.forward_intermediates(x, intermediates_only=True)
        got = ours.backbone(x)
    return all(rel_err(a, b) <= 1e-5 for a, b in zip(got, expected, strict=True))


@pytest.mark.parametrize("source", ["model", "state_dict", "pth", "safetensors", "features_only"])
def test_load_timm_backbone_from_every_source(source, tmp_path):
    theirs, ours = _timm_tiny_and_ours()
    x = torch.randn(1, 3, 64, 64)
    assert not _features_match(theirs, ours, x)
    if source == "model":
        weights = theirs
    elif source == "state_dict":
        weights = theirs.state_dict()
    elif source == "pth":
        weights = tmp_path / "b0.pth"
        torch.save({"state_dict": theirs.state_dict()}, weights)
    elif source == "safetensors":
        from safetensors.torch import save_file

        weights = str(tmp_path / "b0.safetensors")
        save_file(theirs.state_dict(), weights)
    else:
        # A features_only wrapper names the stages stages_0..3 and the stem stem_in_conv...
        weights = FeatureListNet(theirs, out_indices=(1, 2, 3), flatten_sequential=True)
        assert any(key.startswith("stages_0.") for key in weights.state_dict())
    info = load_timm_backbone(ours, weights)
    assert info["loaded"] == len(ours.backbone.state_dict())
    assert all(key.startswith("head.") for key in info["ignored"])
    if source != "features_only":
        assert info["ignored"]
    assert _features_match(theirs, ours, x)


def test_load_timm_backbone_of_another_variant_raises_and_changes_nothing():
    ours = efficientvit_seg("b0", num_classes=19)
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    with pytest.raises(ValueError, match="'b0' backbone"):
        load_timm_backbone(ours, tiny_efficientvit().model)
    assert all(torch.equal(v, before[k]) for k, v in ours.state_dict().items())


def test_load_timm_backbone_bad_sources():
    ours = efficientvit_seg("b0", num_classes=19, _spec=TINY_SPEC)
    with pytest.raises(ValueError, match="no such file"):
        load_timm_backbone(ours, "/nonexistent/weights.pth")
    with pytest.raises(TypeError, match="state dict"):
        load_timm_backbone(ours, 42)
    with pytest.raises(UnsupportedModelError):
        load_timm_backbone(torch.nn.Linear(2, 2), {})
