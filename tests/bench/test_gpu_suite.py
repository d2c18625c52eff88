"""benchmarks/gpu_suite.sh --dry-run: every step of the GPU run, on the CPU at toy sizes, so the
script cannot rot before a GPU is lent."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_suite.sh"
STEPS = ("environment", "pytest-gpu", "tune-attention", "kernels-attention", "vlm", "diffusion")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path, Path]:
    out = tmp_path_factory.mktemp("gpu-suite")
    device_out = tmp_path_factory.mktemp("device-out")
    env = {**os.environ, "OUT": str(device_out), "PYTHON": sys.executable}
    env.pop("TRITON_INTERPRET", None)  # the script decides, as on a fresh machine
    result = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=1500,
    )
    return result, out, device_out


def test_every_step_runs_and_passes(dry_run):
    result, out, _ = dry_run
    summary = (out / "summary.txt").read_text()
    for step in (*STEPS, "seg"):
        assert re.search(rf"^{step}: rc=0 in \d+ s$", summary, re.M), (step, summary)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "gpu_suite: 0 failed step(s)" in summary


def test_tables_and_logs_land_in_one_folder(dry_run):
    _, out, _ = dry_run
    for name in ("vlm", "diffusion", "seg"):
        assert (out / f"{name}.txt").read_text().strip(), name
        assert (out / f"{name}.json").stat().st_size > 0, name
    for step in STEPS:
        assert (out / f"{step}.log").exists(), step
    assert "leanvision environment" in (out / "environment.log").read_text()


def test_device_out_gets_a_tarball_and_the_summary(dry_run):
    _, out, device_out = dry_run
    assert (device_out / "summary.txt").read_text() == (out / "summary.txt").read_text()
    listing = subprocess.run(
        ["tar", "tzf", str(device_out / "gpu-suite-cpu-dry-run.tgz")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "./vlm.json" in listing and "./summary.txt" in listing


def test_bad_arguments_and_a_missing_gpu_are_refused():
    bad = subprocess.run(["bash", str(SCRIPT), "--nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown argument --nope" in bad.stderr
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable}
    no_gpu = subprocess.run(
        ["bash", str(SCRIPT)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
    )
    assert no_gpu.returncode == 2 and "use --dry-run" in no_gpu.stderr
