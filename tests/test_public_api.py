"""The top-level namespace lists only what exists: every family imports, and so does ``*``."""

import importlib
import inspect
import pkgutil
import subprocess
import sys

import pytest

import leanvision


def test_star_import_works_and_binds_every_public_name():
    namespace: dict = {}
    exec("from leanvision import *", namespace)
    missing = [name for name in leanvision.__all__ if name not in namespace]
    assert not missing, missing


@pytest.mark.parametrize("family", leanvision.FAMILIES)
def test_every_family_is_a_package_that_imports(family):
    module = importlib.import_module(f"leanvision.{family}")
    assert hasattr(module, "__path__"), f"leanvision.{family} is not a package"
    assert getattr(leanvision, family) is module


# --- the public surface a newcomer meets through dir(), help() and tab completion -------------

METHOD_FAMILIES = ("vlm", "diffusion", "vision")
ENTRY_POINTS = {"vlm": "compress", "diffusion": "accelerate", "vision": "accelerate"}


def _packages() -> list[str]:
    found = ["leanvision"]
    for info in pkgutil.walk_packages(leanvision.__path__, "leanvision."):
        if info.ispkg:
            found.append(info.name)
    return found


@pytest.mark.parametrize("package", _packages())
def test_no_public_name_is_also_a_submodule(package):
    """A function named like a sibling module is replaced by the module once that module is
    imported (``lv.diffusion.few_step`` became a module): the names must differ."""
    module = importlib.import_module(package)
    submodules = {info.name for info in pkgutil.iter_modules(module.__path__)}
    public = set(getattr(module, "__all__", ()))
    clashes = sorted(name for name in public & submodules if name not in leanvision.FAMILIES)
    assert not clashes, f"{package}: public names that are also sub-modules: {clashes}"


@pytest.mark.parametrize("family", METHOD_FAMILIES)
def test_every_family_has_one_entry_shape_and_lists_its_methods(family):
    module = importlib.import_module(f"leanvision.{family}")
    entry = getattr(module, ENTRY_POINTS[family])
    parameters = list(inspect.signature(entry).parameters.values())
    assert [p.name for p in parameters[1:2]] == ["method"], parameters
    assert parameters[-1].kind is inspect.Parameter.VAR_KEYWORD

    listing = module.methods()
    registry = module.METHODS
    assert sorted(listing) == registry.names() and listing, listing
    shown = repr(registry)
    for name, entry_ in ((name, registry.entry(name)) for name in registry.names()):
        assert name in shown
        config = entry_.config_class
        assert getattr(module, config.__name__) is config, f"{config.__name__} not exported"
        assert config.__name__ in dir(module)
        line = listing[name]
        assert line and not line.startswith(f"{config.__name__}("), (name, line)
    assert "methods" in dir(module)


@pytest.mark.parametrize("family", METHOD_FAMILIES)
def test_a_fresh_interpreter_sees_every_method_without_loading_anything(family):
    code = f"import leanvision as lv; print(len(lv.{family}.METHODS.names()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout) >= 2, out


@pytest.mark.parametrize("family", METHOD_FAMILIES)
def test_a_typo_gets_did_you_mean(family):
    registry = importlib.import_module(f"leanvision.{family}").METHODS
    name = registry.names()[-1]
    typo = name[:-1] if len(name) > 4 else name + "x"
    with pytest.raises(ValueError, match=f"did you mean {name!r}"):
        registry.entry(typo)


def test_diffusion_lists_its_lazy_names():
    names = dir(leanvision.diffusion)
    for name in ("few_step", "distill", "ToMe", "metrics", "accelerate", "methods"):
        assert name in names, name
    assert callable(leanvision.diffusion.few_step)
    assert hasattr(leanvision.diffusion.metrics, "psnr")


def _public_functions() -> list[tuple[str, str]]:
    found = []
    for family in leanvision.FAMILIES:
        module = importlib.import_module(f"leanvision.{family}")
        for name in getattr(module, "__all__", ()):
            found.append((family, name))
    return found


@pytest.mark.parametrize(("family", "name"), _public_functions())
def test_every_public_function_has_a_docstring_with_an_example(family, name):
    value = getattr(importlib.import_module(f"leanvision.{family}"), name)
    if inspect.ismodule(value) or not callable(value):
        return
    doc = inspect.getdoc(value) or ""
    assert doc.strip(), f"lv.{family}.{name} has no docstring"
    if inspect.isfunction(value):
        assert ">>>" in doc, f"lv.{family}.{name}: its docstring has no >>> example"
