import importlib.util
import json
import re
from pathlib import Path

import pytest

from leanvision import cli
from leanvision.core.env import FEATURES, environment_info, format_info

# Each optional feature `leanvision info` may list -> the leanvision function that provides it.
# A feature belongs in the list only when such a function exists and uses the dependency.
PROVIDED_BY = {
    "video decoding with decord": "leanvision.datasets.video:load_video",
    "video decoding with PyAV": "leanvision.datasets.video:load_video",
    "CLIP score": "leanvision.diffusion.metrics:clip_score",
    "LoRA loading and LCM distillation": "leanvision.diffusion.few_step.students:make_lora_student",
    "triton kernels": "leanvision.kernels.attention.triton:attention_triton",
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
