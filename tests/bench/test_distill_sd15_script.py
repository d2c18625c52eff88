"""benchmarks/distill_sd15.py end to end on a tiny SD 1.x pipeline saved to a local folder."""

from __future__ import annotations

import json

import pytest
import torch

from leanvision.testing import tiny_sd_pipeline


@pytest.fixture(scope="module")
def script(load_benchmark):
    return load_benchmark("distill_sd15")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-sd")
    tiny_sd_pipeline(seed=0).model.save_pretrained(folder)
    return folder


def test_distils_a_local_pipeline_and_writes_the_summary(script, model_dir, tmp_path, one_thread):
    pytest.importorskip("peft")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox\n\nsnow\na cat\n")
    out = tmp_path / "run"
    argv = ["--model", str(model_dir), "--device", "cpu", "--prompts", str(prompts)]
    argv += ["--steps", "4", "--batch-size", "2", "--resolution", "32", "--lora-rank", "4"]
    argv += ["--checkpoint-every", "2", "--sample-steps", "2", "--out", str(out)]
    assert script.main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["device"] == "cpu" and summary["student"] == "lora" and summary["steps"] == 4
    assert summary["seconds_per_step"] > 0 and summary["student_2_step_s"] > 0
    assert summary["speedup"] == pytest.approx(
        summary["teacher_50_step_s"] / summary["student_2_step_s"]
    )
    assert all(key in summary for key in ("eval_loss_first", "eval_loss_last"))
    # The blank line is not a prompt: three prompts, three sample images.
    assert sorted(p.name for p in out.glob("student_*.png")) == [
        f"student_{i}.png" for i in range(3)
    ]
    assert any((out / "checkpoints").iterdir())


def test_refuses_a_missing_folder(script, tmp_path, capsys):
    assert script.main(["--model", str(tmp_path / "absent"), "--device", "cpu"]) == 2
    assert "not a local folder" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU refusal")
def test_refuses_cuda_without_a_gpu(script, model_dir, capsys):
    assert script.main(["--model", str(model_dir), "--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err
