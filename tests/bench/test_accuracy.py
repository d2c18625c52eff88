"""``leanvision bench accuracy``: rows, tables, plots and the command, on the trained LLaVA."""

from __future__ import annotations

import dataclasses
import json

import pytest

import leanvision as lv
from leanvision import cli
from leanvision.bench import accuracy
from leanvision.bench.accuracy.vlm import task_rows, vlm_tasks
from leanvision.testing.trained.vqa import answer_questions


@pytest.fixture(scope="module")
def llava_rows():
    task = dataclasses.replace(
        vlm_tasks(quick=True)[0],
        count=24,
        methods=("visionzip", "random", "fastv", "temporal"),
        budgets=(0.25,),
    )
    return task, task_rows(task)


def test_rows_score_each_method_against_answers_computed_directly(llava_rows):
    task, rows = llava_rows
    base, *methods = rows
    items = task.items(task.count)
    tiny = task.load()
    answers = answer_questions(tiny, items)
    expected = sum(a == item.answer for a, item in zip(answers, items, strict=True)) / len(items)
    assert base["method"] == "uncompressed" and base["accuracy"] == pytest.approx(expected)
    by_method = {row["method"]: row for row in methods}
    with lv.vlm.compress(tiny.model, "random", keep=0.25):
        answers = answer_questions(tiny, items)
    random = sum(a == item.answer for a, item in zip(answers, items, strict=True)) / len(items)
    assert by_method["random"]["accuracy"] == pytest.approx(random)
    for method in ("visionzip", "random", "fastv"):
        row = by_method[method]
        assert row["retention"] == pytest.approx(row["accuracy"] / base["accuracy"])
        assert row["kept"] == pytest.approx(36 / 144)
        assert 0 < row["flops_ratio"] < 1
    # FastV keeps every token in its first layers, so it saves less than a pre-LLM method.
    assert by_method["fastv"]["flops_ratio"] > by_method["visionzip"]["flops_ratio"]
    assert "video" in by_method["temporal"]["skipped"]


def test_tables_and_plots_are_written(llava_rows, tmp_path):
    _, rows = llava_rows
    written = accuracy.write_results(rows, tmp_path / "acc.json", {"machine": "test"})
    payload = json.loads((tmp_path / "acc.json").read_text())
    assert payload["rows"][0]["method"] == "uncompressed"
    table = (tmp_path / "acc.md").read_text()
    assert "| visionzip |" in table and "| temporal | n/a |" in table
    assert "scene-vqa / llava" in table
    assert (tmp_path / "accuracy-scene-vqa-llava.png") in written


def test_diffusion_table_formats_the_reference_row():
    row = {"task": "shapes-t2i", "method": "ddim", "setting": "50 steps", "psnr": float("inf")}
    row |= {"ssim": 1.0, "judge_accuracy": 0.9, "judge_color": 1.0, "macs_ratio": 1}
    table = accuracy.diffusion_table([row])
    assert table.splitlines()[-1] == "| ddim | 50 steps | ref | 1.000 | 90.0% | 100.0% | 1.00 |"


def test_unknown_task_is_named():
    with pytest.raises(ValueError, match="unknown accuracy task"):
        accuracy.run_accuracy(tasks=["vlm", "audio"])


def test_command_writes_results_and_refuses_other_options(
    monkeypatch, tmp_path, capsys, llava_rows
):
    _, rows = llava_rows
    monkeypatch.setattr(accuracy, "run_accuracy", lambda quick: rows)
    path = tmp_path / "out" / "accuracy.json"
    assert cli.main(["bench", "accuracy", "--quick", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "scene-vqa / llava" in out and path.exists() and path.with_suffix(".md").exists()
    assert cli.main(["bench", "accuracy", "vlm"]) == 2
    assert "runs alone" in capsys.readouterr().err
    assert cli.main(["bench", "accuracy", "--plot", "x.png"]) == 2
    assert "--plot" in capsys.readouterr().err
    assert cli.main(["bench", "--list"]) == 0
    assert "accuracy" in capsys.readouterr().out
