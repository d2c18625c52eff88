"""The supported window of each upstream library, and the error for leaving it.

The lower bounds are the ones ``pyproject.toml`` declares (read back from the installed
package's metadata, so there is one source); CI runs the whole suite at those exact versions
(``make test-oldest``) and at the newest releases (``make test``). ``NEWEST_TESTED`` records
the newest release CI had run when this leanvision was made.

>>> window("transformers").startswith("transformers >=")
True
"""

from __future__ import annotations

import importlib.metadata
import sys

from leanvision.core.errors import UpstreamVersionError

UPSTREAM = ("transformers", "diffusers", "timm")

# the newest release of each library the whole suite passed on (update with each landing)
NEWEST_TESTED = {"transformers": "5.24.0", "diffusers": "0.42.1", "timm": "1.0.31"}


def lower_bounds() -> dict[str, str]:
    """``{distribution: minimum version}`` of leanvision's required (not extra) dependencies,
    from its installed metadata (empty when leanvision runs from a source tree without being
    installed)."""
    from packaging.requirements import Requirement

    try:
        requirements = importlib.metadata.requires("leanvision") or []
    except importlib.metadata.PackageNotFoundError:
        return {}
    bounds = {}
    for text in requirements:
        requirement = Requirement(text)
        if requirement.marker is not None:  # an extra's requirement
            continue
        for specifier in requirement.specifier:
            if specifier.operator == ">=":
                bounds[requirement.name] = specifier.version
    return bounds


def lower_bound(library: str) -> str | None:
    """The minimum version of ``library`` leanvision requires (``None`` when unknown)."""
    return lower_bounds().get(library)


def installed_version(library: str) -> str:
    """The installed version of ``library`` ("not installed" when absent)."""
    module = sys.modules.get(library)
    version = getattr(module, "__version__", None)
    if version:
        return str(version)
    try:
        return importlib.metadata.version(library)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def window(library: str) -> str:
    """The supported window of ``library``, e.g. ``"transformers >=5.5.0 (tested up to
    5.24.0)"``."""
    low = lower_bound(library)
    low_text = f">={low}" if low else "(lower bound: see pyproject.toml)"
    return f"{library} {low_text} (tested up to {NEWEST_TESTED[library]})"


def upstream_error(library: str, problem: str) -> UpstreamVersionError:
    """An :class:`UpstreamVersionError` that says ``problem`` happened with the installed
    ``library`` and gives the supported window; the caller raises it."""
    from leanvision import __version__

    return UpstreamVersionError(
        f"leanvision {__version__}: {problem} (installed: {library} "
        f"{installed_version(library)}). leanvision supports {window(library)}; install a "
        f"version in that window or a leanvision release that supports yours.",
        library=library,
    )


# reused from the main venv by ``make test-oldest``: torch is the one CI can install
NOT_PINNED = ("torch", "torchvision")


def oldest_pins() -> list[str]:
    """``["transformers==A", "diffusers==B", ...]``: every required dependency but torch at its
    lower bound, for ``make test-oldest``."""
    bounds = lower_bounds()
    missing = [library for library in UPSTREAM if library not in bounds]
    if missing:
        raise SystemExit(f"no lower bound for {missing} in leanvision's installed metadata")
    return [f"{name}=={version}" for name, version in bounds.items() if name not in NOT_PINNED]


def check_oldest() -> list[str]:
    """The pinned dependencies whose installed version is not their lower bound."""
    from packaging.version import Version

    wrong = []
    for pin in oldest_pins():
        name, version = pin.split("==")
        if Version(importlib.metadata.version(name)) != Version(version):
            wrong.append(f"{name} {importlib.metadata.version(name)} (expected {version})")
    return wrong


def main(argv: list[str] | None = None) -> int:
    """``--pins``: print the oldest pins; ``--check``: exit 1 unless they are installed."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m leanvision.compat.versions")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--pins", action="store_true", help="print the lower-bound pins")
    group.add_argument("--check", action="store_true", help="check they are installed")
    args = parser.parse_args(argv)
    if args.pins:
        print(" ".join(oldest_pins()))
        return 0
    wrong = check_oldest()
    for line in wrong:
        print(f"not at its lower bound: {line}", file=sys.stderr)
    if not wrong:
        versions = ", ".join(f"{library} {installed_version(library)}" for library in UPSTREAM)
        print(f"oldest supported versions installed: {versions}")
    return 1 if wrong else 0


if __name__ == "__main__":
    raise SystemExit(main())
