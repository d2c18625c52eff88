"""The top-level namespace lists only what exists: every family imports, and so does ``*``."""

import importlib

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
