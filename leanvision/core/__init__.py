"""What every family shares: reversible handles, method registries, configs, errors."""

from leanvision.core.config import MethodConfig, check_choice, check_range
from leanvision.core.errors import (
    AlreadyPatchedError,
    MissingDependencyError,
    UnsupportedModelError,
    UpstreamVersionError,
)
from leanvision.core.handle import Handle
from leanvision.core.registry import Registry

__all__ = [
    "AlreadyPatchedError",
    "Handle",
    "MethodConfig",
    "MissingDependencyError",
    "Registry",
    "UnsupportedModelError",
    "UpstreamVersionError",
    "check_choice",
    "check_range",
]
