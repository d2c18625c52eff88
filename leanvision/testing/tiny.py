"""All tiny factories in one place: ``from leanvision.testing.tiny import tiny_llava``."""

from leanvision.testing.tiny_diffusion import *  # noqa: F403
from leanvision.testing.tiny_vision import *  # noqa: F403
from leanvision.testing.tiny_vlm import *  # noqa: F403
