"""Every ``>>>`` example in leanvision's docstrings runs, so a documented example cannot rot.

One test per module. Examples run on the CPU, offline, on the ``leanvision.testing`` tiny
models; lines that need a download or a GPU say ``# doctest: +SKIP``.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import leanvision

# Import-time side effects: ``__main__`` modules run a program.
SKIPPED = ("__main__",)


def _modules() -> list[str]:
    names = ["leanvision"]
    for info in pkgutil.walk_packages(leanvision.__path__, "leanvision."):
        if info.name.rsplit(".", 1)[-1] not in SKIPPED:
            names.append(info.name)
    return names


@pytest.mark.parametrize("name", _modules())
def test_doctests(name):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, name):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
