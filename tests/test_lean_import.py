"""`import leanvision` must stay cheap: no CUDA, no transformers/diffusers/gradio."""

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "diffusers", "gradio", "timm")


def _modules_after(statements: str) -> dict:
    """Run ``statements`` in a fresh interpreter; report which heavy modules got imported and
    whether CUDA was initialised."""
    code = f"""
import json, sys
{statements}
torch = sys.modules.get("torch")
print(json.dumps({{
    "loaded": [name for name in {HEAVY!r} if name in sys.modules],
    "cuda_initialised": bool(torch is not None and torch.cuda.is_initialized()),
}}))
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_import_loads_nothing_heavy():
    report = _modules_after("import leanvision as lv; lv.core.Handle; lv.UnsupportedModelError")
    assert report == {"loaded": [], "cuda_initialised": False}


def test_kernel_dispatch_and_bench_need_torch_only():
    report = _modules_after(
        "import leanvision.kernels.dispatch as d; d.kernel_mode(); import leanvision.bench"
    )
    assert report == {"loaded": ["torch"], "cuda_initialised": False}


def test_unknown_attribute_raises():
    import leanvision

    with pytest.raises(AttributeError, match="does_not_exist"):
        leanvision.does_not_exist  # noqa: B018
