"""Fixtures of the vision tests."""

import pytest
from vision_helpers import TINY_SPEC, randomise_batchnorm


@pytest.fixture
def tiny_seg():
    """A narrow efficientvit_seg on the kernel's torch path, with randomised norms."""
    from leanvision.vision import efficientvit_seg

    model = efficientvit_seg("b0", num_classes=5, backend="torch", _spec=TINY_SPEC)
    return randomise_batchnorm(model).eval()


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """The vision tests run millisecond-sized models: one thread (see ``one_thread``)."""
