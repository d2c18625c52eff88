import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from leanvision import (
    AlreadyPatchedError,
    MissingDependencyError,
    UnsupportedModelError,
    UpstreamVersionError,
    cli,
)
from leanvision.core.env import FEATURES, environment_info, format_info

# Each optional feature `leanvision info` may list -> the leanvision function that provides it.
# A feature belongs in the list only when such a function exists and uses the dependency.
PROVIDED_BY = {
    "video decoding with decord": "leanvision.datasets.video:load_video",
    "video decoding with PyAV": "leanvision.datasets.video:load_video",
    "CLIP score": "leanvision.diffusion.metrics:clip_score",
    "LoRA loading and LCM distillation": "leanvision.diffusion.consistency.students:make_lora_student",
    "triton kernels": "leanvision.kernels.ops.attention.triton:attention_triton",
}


def test_info_prints_versions_device_kernel_mode_and_features(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    for name in ("python", "torch", "triton", "transformers", "diffusers", "timm", "decord"):
        assert name in out
    assert "av (PyAV)" in out and "gradio" in out
    assert "CUDA device" in out
    assert "kernels" in out
    assert "optional features" in out


def test_environment_info_matches_this_process():
    import torch

    info = environment_info()
    assert info["versions"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    expected_device = "none" if not torch.cuda.is_available() else torch.cuda.get_device_name()
    assert info["cuda_device"].startswith(expected_device)
    assert info["kernels"].split()[0] in ("compiled", "interpreted", "torch")
    assert set(info["features"]) == set(FEATURES)


def test_missing_feature_says_how_to_install():
    info = environment_info()
    info["features"] = {feature: False for feature in info["features"]}
    text = format_info(info)
    assert "pip install 'leanvision[video]'" in text
    assert "pip install 'leanvision[clip]'" in text


def test_demo_says_not_yet_available(capsys):
    assert cli.main(["demo"]) == 1
    assert "not yet available" in capsys.readouterr().out


def test_info_lists_only_features_that_exist():
    # Read the source, not import it: the optional dependencies need not be installed here.
    assert set(FEATURES) == set(PROVIDED_BY)
    for feature, (dependency, _extra) in FEATURES.items():
        module, function = PROVIDED_BY[feature].split(":")
        source = Path(importlib.util.find_spec(module).origin).read_text()
        assert f"def {function}(" in source, feature
        assert re.search(rf"\b{dependency}\b", source), (feature, dependency)


def test_info_claims_no_demo_while_the_demo_is_not_available(capsys):
    assert cli.main(["demo"]) == 1  # "not yet available": no demo to report
    assert not any(dependency == "gradio" for dependency, _ in FEATURES.values())
    capsys.readouterr()
    assert cli.main(["info"]) == 0
    features = capsys.readouterr().out.split("optional features", 1)[1]
    assert "demo" not in features and "gradio" not in features


def test_bench_list_names_the_decode_suite(capsys):
    assert cli.main(["bench", "--list"]) == 0
    assert "decode" in capsys.readouterr().out


def test_bench_rejects_unknown_names(capsys):
    assert cli.main(["bench", "no-such-benchmark"]) == 2
    assert "no-such-benchmark" in capsys.readouterr().err


def test_bench_writes_table_json_and_plot(tmp_path, capsys, monkeypatch):
    from leanvision.bench import Case, register_benchmark, suites

    calls = []

    @register_benchmark("cli-test", "a tiny suite for the CLI test")
    def _suite(options):
        yield Case(
            "slow",
            lambda: calls.append(sum(range(20000))),
            items=10,
            unit="things",
            group="g",
            baseline=True,
            metrics={"quick": options.quick},
        )
        yield Case(
            "fast", lambda: calls.append(sum(range(2000))), items=10, unit="things", group="g"
        )

    monkeypatch.setitem(suites.SUITES, "cli-test", __name__)
    json_path, plot_path = tmp_path / "out.json", tmp_path / "out.png"
    argv = [
        "bench",
        "cli-test",
        "--quick",
        "--repeat",
        "3",
        "--json",
        str(json_path),
        "--plot",
        str(plot_path),
    ]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "baseline" in out and "things/s" in out
    payload = json.loads(json_path.read_text())
    assert payload["environment"]["versions"]["torch"]
    rows = {row["case"]: row for row in payload["results"]}
    assert rows["slow"]["speedup"] == pytest.approx(1.0)
    assert rows["fast"]["speedup"] > 1.0  # 10x less work: measurably faster
    assert rows["slow"]["metrics"] == {"quick": True}
    assert plot_path.stat().st_size > 1000
    assert calls


# --- every bad invocation: one line on stderr, exit status 2, no traceback -----------------


def _assert_one_line_error(capsys, argv, match):
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("leanvision: error: ")
    assert "Traceback" not in captured.err + captured.out
    assert re.search(match, lines[0]), lines[0]
    return lines[0]


BAD_COMMAND_LINES = {
    "no command": ([], r"required: \{info,bench,demo\}"),
    "unknown command": (["bogus"], r"invalid choice: 'bogus'.*leanvision --help"),
    "unknown option": (["info", "--nope"], r"unrecognized arguments: --nope"),
    "unknown benchmark": (["bench", "no-such-benchmark"], r"unknown benchmark.*available"),
    "benchmark typo": (["bench", "vl"], r"did you mean 'vlm'"),
    "zero repeats": (["bench", "--repeat", "0"], r"--repeat: 0 is not allowed; give an int >= 1"),
    "negative warmup": (["bench", "--warmup", "-1"], r"--warmup: -1 is not allowed"),
    "repeat not an int": (["bench", "--repeat", "many"], r"--repeat: 'many' is not an int"),
    "bad device": (["bench", "--device", "tpu"], r"'tpu' is not a device; give cpu, cuda"),
    "bad dtype": (["bench", "--dtype", "float64"], r"invalid choice: 'float64'"),
    "hub id as model": (
        ["bench", "vlm", "--model", "llava-hf/llava-1.5-7b-hf"],
        r"not a local directory.*hf download llava-hf/llava-1.5-7b-hf --local-dir DIR",
    ),
    "shape name for diffusion": (
        ["bench", "diffusion", "--model", "llava-1.5-7b"],
        r"not a local directory; give a checkpoint directory$",
    ),
    "model for a suite without models": (
        ["bench", "seg", "--model", "llava-1.5-7b"],
        r"read by the vlm and diffusion benchmarks only",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_COMMAND_LINES))
def test_bad_command_lines_fail_in_one_line_with_status_2(capsys, case):
    argv, match = BAD_COMMAND_LINES[case]
    _assert_one_line_error(capsys, argv, match)


def test_bad_paths_fail_in_one_line(capsys, tmp_path):
    missing = str(tmp_path / "no-such-checkpoint")
    _assert_one_line_error(capsys, ["bench", "vlm", "--model", missing], "not a local directory")
    a_file = tmp_path / "model.safetensors"
    a_file.write_bytes(b"x")
    _assert_one_line_error(capsys, ["bench", "vlm", "--model", str(a_file)], "is a file")
    _assert_one_line_error(capsys, ["bench", "--json", str(tmp_path)], "is a directory")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a CUDA device is present")
def test_cuda_without_a_device_fails_in_one_line(capsys):
    _assert_one_line_error(capsys, ["bench", "--device", "cuda"], "no CUDA device")


def _failing_suite(monkeypatch, error):
    from leanvision.bench import register_benchmark, suites

    name = f"cli-fails-{type(error).__name__}-{id(error)}"

    @register_benchmark(name, "raises when its cases are built")
    def _suite(options):
        raise error

    monkeypatch.setitem(suites.SUITES, name, __name__)
    return name


LIBRARY_ERRORS = [
    ValueError("tokens=100 is more than the 48 visual tokens"),
    TypeError("keep must be a number"),
    FileNotFoundError(2, "No such file or directory", "street.jpg"),
    UnsupportedModelError(object(), ("LLaVA",), family="vlm"),
    MissingDependencyError("decord", "video", "the decode benchmark"),
    AlreadyPatchedError("LlavaForConditionalGeneration already has a leanvision 'vlm' patch"),
    UpstreamVersionError("transformers 9.0 no longer has LlavaModel", library="transformers"),
    ModuleNotFoundError("No module named 'decord'"),
    ValueError("a message\nthat spans\n\nthree lines"),
]


@pytest.mark.parametrize("error", LIBRARY_ERRORS, ids=lambda e: type(e).__name__)
def test_library_user_errors_become_one_line(capsys, monkeypatch, error):
    name = _failing_suite(monkeypatch, error)
    line = _assert_one_line_error(capsys, ["bench", name, "--repeat", "1"], ".")
    assert " ".join(str(error).split()) in " ".join(line.split())


def test_a_bug_still_shows_its_traceback(monkeypatch):
    name = _failing_suite(monkeypatch, RuntimeError("a leanvision bug"))
    with pytest.raises(RuntimeError, match="a leanvision bug"):
        cli.main(["bench", name])


@pytest.mark.parametrize(
    "argv_env",
    [
        (["--debug", "bench"], {}),
        (["bench", "--debug"], {}),
        (["bench"], {"LEANVISION_DEBUG": "1"}),
    ],
)
def test_debug_shows_the_traceback(monkeypatch, argv_env):
    argv, env = argv_env
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    name = _failing_suite(monkeypatch, ValueError("bad budget"))
    with pytest.raises(ValueError, match="bad budget"):
        cli.main([*argv, name])


def test_bench_help_says_what_model_accepts_and_exits_0(capsys):
    assert cli.main(["bench", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "hub id" not in text
    assert "nothing is downloaded" in text and "local transformers checkpoint directory" in text
    assert "llava-1.5-7b" in text and "Stable Diffusion 1.x pipeline directory" in text


@pytest.mark.parametrize(
    "argv",
    [["bench", "--repeat", "0"], ["bench", "vlm", "--model", "llava-hf/llava-1.5-7b-hf"]],
)
def test_the_installed_command_fails_in_one_line(argv):
    child = subprocess.run(
        [sys.executable, "-m", "leanvision.cli", *argv],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "LEANVISION_DEBUG": ""},
    )
    assert child.returncode == 2
    assert child.stderr.count("\n") == 1 and child.stderr.startswith("leanvision: error: ")
    assert "Traceback" not in child.stderr
