"""`bench speed --comfyui`: the Train node's path timed against the CLI's (tools/speed_comfyui.py, a process of its
own, since the core never imports ComfyUI)."""
import os

import pytest

from .conftest import COMFYUI_PATH, stub_path


def test_bench_speed_times_the_comfyui_path_against_the_cli_path(monkeypatch):
    from dreamrelation_core import speed

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, (stub_path(), os.environ.get("PYTHONPATH")))))
    result = speed.benchmark(reps=1, comfyui=COMFYUI_PATH)
    comfy = result["comfy"]
    assert comfy["mode"] == "weight wrappers" and comfy["device"].startswith("cpu")
    assert len(comfy["cases"]) == 2
    for case in comfy["cases"].values():
        assert case["comfy_step"] > 0 and case["cli_step"] > 0
        assert case["comfy_over_cli"] == pytest.approx(case["comfy_step"] / case["cli_step"])
        # The two paths train the same: same base, exemplars, settings and draws, so the same first loss.
        cli_loss, comfy_loss = case["first_losses"]
        assert comfy_loss == pytest.approx(cli_loss, rel=1e-4)
    assert result["comfy_over_cli"] == list(comfy["cases"].values())[-1]["comfy_over_cli"]
    table = speed.markdown(result)
    assert "| case | ComfyUI path step (s) | CLI path step (s) | comfy / cli |" in table
    assert f"{result['comfy_over_cli']:.2f} |" in table


def test_bench_speed_names_a_folder_that_is_not_comfyui(tmp_path):
    from dreamrelation_core import speed

    with pytest.raises(RuntimeError, match="not a ComfyUI checkout"):
        speed.comfy_over_cli(tmp_path, reps=1)
