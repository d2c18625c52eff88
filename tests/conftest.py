"""Test setup: offline, no telemetry, and the Triton interpreter when there is no GPU.

TRITON_INTERPRET must be set before any kernel module is imported, so it is decided here,
at collection time, from whether CUDA is usable.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Multithreaded OpenBLAS makes the Triton interpreter's many tiny matmuls orders of magnitude
# slower on a loaded 2-core machine.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_report_header(config):
    """Which end of the supported window this run tests (see ``make test-oldest``)."""
    from leanvision.compat.versions import UPSTREAM, installed_version

    return "upstream: " + ", ".join(f"{name} {installed_version(name)}" for name in UPSTREAM)


def pytest_collection_modifyitems(config, items):
    if CUDA:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module's tests: tiny models on a shared 2-core runner spend
    more time in thread hand-offs (OpenMP spin-waits) than in compute with two."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def load_benchmark():
    """Load ``benchmarks/<name>.py`` (the folder is not a package) as a module, by path."""
    import importlib.util
    from pathlib import Path

    def load(name: str):
        script = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"{name}_bench", script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
