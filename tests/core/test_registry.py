import dataclasses

import pytest

from leanvision.core import MethodConfig, Registry, check_choice, check_range


@dataclasses.dataclass
class Prune(MethodConfig):
    keep: float = 0.5
    layer: int = 2
    mode: str = "mean"

    def validate(self) -> None:
        check_range("keep", self.keep, 0.0, 1.0, low_inclusive=False)
        check_range("layer", self.layer, 0)
        check_choice("mode", self.mode, ["mean", "max"])


@dataclasses.dataclass
class Other(MethodConfig):
    pass


@pytest.fixture
def methods():
    registry = Registry("demo")
    registry.register("prune", Prune)(lambda model, config: ("pruned", model, config))
    return registry


def test_name_and_config_reach_the_same_handler(methods):
    by_name, apply_a = methods.resolve("prune", keep=0.25, layer=3)
    by_config, apply_b = methods.resolve(Prune(keep=0.25, layer=3))
    assert by_name == by_config
    assert apply_a is apply_b
    assert apply_a("m", by_name) == ("pruned", "m", Prune(keep=0.25, layer=3))


def test_names_are_case_insensitive_and_listed(methods):
    config, _ = methods.resolve("PRUNE")
    assert config == Prune()
    assert methods.names() == ["prune"]


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"keep": 0.0}, ValueError, r"keep=0.0 is out of range; allowed: \(0.0, 1.0\]"),
        ({"keep": 1.5}, ValueError, "keep=1.5"),
        ({"layer": -1}, ValueError, "layer=-1"),
        (
            {"mode": "median"},
            ValueError,
            r"mode='median' is not allowed; choose one of \['mean', 'max'\]",
        ),
        ({"keep": "half"}, TypeError, "keep must be a number"),
        ({"keep": True}, TypeError, "keep must be a number"),
        (
            {"ratio": 0.5},
            TypeError,
            r"no option\(s\) \['ratio'\]; its options: \['keep', 'layer', 'mode'\]",
        ),
    ],
)
def test_bad_options_name_the_field_and_the_allowed_values(methods, options, error, message):
    with pytest.raises(error, match=message):
        methods.resolve("prune", **options)


def test_unknown_method_lists_known_ones(methods):
    with pytest.raises(ValueError, match="unknown demo method 'fastv'; known: prune"):
        methods.resolve("fastv")
    with pytest.raises(TypeError, match="Other is not a demo method config"):
        methods.resolve(Other())
    with pytest.raises(TypeError, match="method must be a name or a config"):
        methods.resolve(42)


def test_config_plus_keywords_is_ambiguous(methods):
    with pytest.raises(TypeError, match="not both"):
        methods.resolve(Prune(), keep=0.1)


def test_registering_a_name_twice_raises(methods):
    with pytest.raises(ValueError, match="already registered"):
        methods.register("Prune", Prune)
