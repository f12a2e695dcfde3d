import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from dreamrelation_core.bases import load_base
from dreamrelation_core.cli import main
from dreamrelation_core.config import load_config
from dreamrelation_core.triplet import load_relation_lora
from dreamrelation_core.sampling import generate
from dreamrelation_core.synthrel import write_exemplars
from dreamrelation_core.trainer import RelationTrainer
from dreamrelation_core.triplet import merge_inference_set
from dreamrelation_core.videoio import read_video

ROOT = Path(__file__).resolve().parents[1]
PAIRS = [(("red", "circle"), ("blue", "square"))]


@pytest.fixture
def run_config(tmp_path):
    write_exemplars(tmp_path / "data", "approaches", 2, PAIRS, frames=9, size=(32, 32))
    config = {"base": "tiny-wan", "name": "approach", "device": "cpu",
              "data": {"videos": "data", "frames": 9, "height": 32, "width": 32},
              "lora": {"rank": 4, "alpha": 4},
              "train": {"steps": 3, "warmup_steps": 1, "checkpoint_every": 0, "learning_rate": 0.02}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_train_sample_inspect(run_config, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["train", str(run_config), "--out", str(out), "--max-steps", "2"]) == 0
    lora = out / "approach.safetensors"
    assert lora.is_file() and (out / "checkpoints" / "step_000002" / "state.pt").is_file()
    assert main(["train", str(run_config), "--out", str(out), "--resume", str(out)]) == 0
    assert "resumed at step 2" in capsys.readouterr().out

    video = tmp_path / "sample.mp4"
    assert main(["sample", "--base", "tiny-wan", "--lora", str(lora), "--prompt", "a bear approaches a fox",
                 "--frames", "9", "--height", "32", "--width", "32", "--steps", "3", "--out", str(video)]) == 0
    frames, fps = read_video(video)
    assert frames.shape == (9, 32, 32, 3) and fps == pytest.approx(16)

    assert main(["inspect", str(lora)]) == 0
    printed = capsys.readouterr().out
    assert "architecture: wan" in printed and "role relation" in printed and "role ffn" in printed
    assert "subject" not in printed.split("metadata:")[0]


def test_saved_lora_reproduces_the_trainers_inference_set(run_config, tmp_path):
    config = load_config(run_config)
    trainer = RelationTrainer.from_config(config, output_dir=tmp_path / "o", progress=False)
    lora = trainer.train()
    trainer.backend.activate(("relation", "ffn"))
    kwargs = dict(frames=9, height=32, width=32, steps=3, cfg=4.0, seed=1, progress=False)
    expected = generate(trainer.backend.base, "a cat approaches a dog", **kwargs)
    base = load_base("tiny-wan")
    plain = generate(base, "a cat approaches a dog", **kwargs)
    load_relation_lora(base.transformer, lora)
    merge_inference_set(base.transformer)
    assert torch.allclose(generate(base, "a cat approaches a dog", **kwargs), expected, atol=1e-4)
    assert not torch.allclose(plain, expected, atol=1e-3)


def test_lora_on_high_noise_steps_only(run_config, tmp_path):
    """`lora_sigma_min`: the LoRA on the steps with σ ≥ it and the plain base below, exactly as if a LoRA-free copy
    denoised the low-noise steps; the LoRA is on again afterwards; the CLI samples with it; a merged LoRA or none,
    or a σ outside [0, 1], is refused."""
    import copy

    from dreamrelation_core.flow import sampling_schedule
    from dreamrelation_core.triplet import run_inference_set

    lora = RelationTrainer.from_config(load_config(run_config), output_dir=tmp_path / "o", progress=False).train()
    kwargs = dict(frames=9, height=32, width=32, steps=3, cfg=4.0, seed=1, progress=False)
    base = load_base("tiny-wan")
    plain_transformer = copy.deepcopy(base.transformer)
    plain = generate(base, "a cat approaches a dog", **kwargs)
    load_relation_lora(base.transformer, lora, ["relation", "ffn"])
    whole = generate(base, "a cat approaches a dog", **kwargs)
    cut = float(sampling_schedule(base.arch, 3)[1])             # the LoRA on the first two of three steps
    gated = generate(base, "a cat approaches a dog", lora_sigma_min=cut, **kwargs)
    assert torch.equal(generate(base, "a cat approaches a dog", **kwargs), whole)          # on again afterwards
    assert torch.equal(generate(base, "a cat approaches a dog", lora_sigma_min=0.0, **kwargs), whole)
    split = dataclasses.replace(base, sigma_range=(cut, 1.0), companion=plain_transformer)
    assert torch.allclose(gated, generate(split, "a cat approaches a dog", **kwargs), atol=1e-6)
    assert not torch.allclose(gated, whole, atol=1e-4) and not torch.allclose(gated, plain, atol=1e-4)

    video = tmp_path / "gated.mp4"
    assert main(["sample", "--base", "tiny-wan", "--lora", str(lora), "--prompt", "a bear approaches a fox",
                 "--frames", "9", "--height", "32", "--width", "32", "--steps", "3", "--lora-sigma-min", "0.5",
                 "--out", str(video)]) == 0
    assert read_video(video)[0].shape == (9, 32, 32, 3)
    with pytest.raises(ValueError, match=r"lora_sigma_min must be a σ in \[0, 1\], got 1.5"):
        generate(base, "a dog", lora_sigma_min=1.5, **kwargs)
    merge_inference_set(base.transformer)
    with pytest.raises(ValueError, match="lora_sigma_min: the transformer holds no unmerged LoRA"):
        generate(base, "a dog", lora_sigma_min=0.5, **kwargs)
    run_inference_set(base.transformer)                       # unmerged again: switchable
    assert torch.allclose(generate(base, "a cat approaches a dog", lora_sigma_min=cut, **kwargs), gated, atol=1e-5)


def test_bad_config_is_a_clear_error(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("base: tiny-wan\ntrain:\n  stepz: 3\n")
    assert main(["train", str(path)]) == 2
    assert "train.stepz" in capsys.readouterr().err


@pytest.mark.parametrize("text, message", [
    ("train:\n  steps: 0\n", "train.steps: must be greater than 0, got 0"),
    ("train:\n  steps: -5\n", "train.steps: must be greater than 0, got -5"),
    ("train:\n  steps: many\n", "train.steps: expected int, got 'many'"),
    ("train:\n  gradient_checkpointing: maybe\n", "train.gradient_checkpointing: expected bool"),
    ("lora:\n  rank: 4.5\n", "lora.rank: expected int, got 4.5"),
    ("train:\n  steps: [3\n", "is not valid YAML"),
    ("- a\n- b\n", "a run config is a mapping"),
    ("base: tiny-wan\n", "data.videos is not set"),
])
def test_bad_config_values_are_named(tmp_path, capsys, text, message):
    """Wrong values, types and YAML are refused by key before anything runs (no traceback, no untrained LoRA)."""
    path = tmp_path / "bad.yaml"
    path.write_text(("" if text.startswith(("- ", "base")) else "data:\n  videos: clips\n") + text)
    assert main(["train", str(path)]) == 2
    assert message in capsys.readouterr().err


def test_yaml_floats_without_a_dot_are_numbers(tmp_path):
    """YAML 1.1 reads 2e-4 as a string; the config takes it as the float it means."""
    from dreamrelation_core.config import load_config

    path = tmp_path / "ok.yaml"
    path.write_text("data:\n  videos: clips\ntrain:\n  learning_rate: 2e-4\n  mask_weight: 50\n")
    config = load_config(path)
    assert config.train.learning_rate == 2e-4 and isinstance(config.train.mask_weight, float)


def test_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "dreamrelation_core", "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and "train" in result.stdout and "sample" in result.stdout


def test_demo_writes_lora_side_by_side_and_metrics(tmp_path):
    import json

    from dreamrelation_core.demo import run_demo

    from dreamrelation_core.demo import LABEL_HEIGHT

    result = run_demo(tmp_path, steps=2, progress=False)
    frames, _ = read_video(result["video"])
    # 4 seeds (rows) × exemplar | base | DreamRelation | direct LoRA | without HMT | the three LoRAs at high noise
    # only, the protocol's clips upscaled 4× under a label
    from dreamrelation_core.synthrel.protocol import DEFAULT
    from dreamrelation_core.synthrel.recipe import HIGH_NOISE_SIGMA
    (height, width), length = DEFAULT.size, DEFAULT.frames
    assert frames.shape == (length, 4 * (LABEL_HEIGHT + 4 * height), 8 * 4 * width, 3) and result["lora"].is_file()
    metrics = json.loads(result["metrics"].read_text())
    assert metrics["relation"] == "pushes" and set(metrics) >= {"base", "dreamrelation", "direct_lora", "no_hmt",
                                                                "prompt"}
    assert metrics["seeds"] == [0, 1, 2, 3] and len(metrics["direct_lora"]["verdicts"]) == 4
    assert 0.0 <= metrics["dreamrelation"]["relation_accuracy"] <= 1.0
    assert (tmp_path / "direct_lora" / "relation.safetensors").is_file()
    groups = {name: [json.loads(line)["group"] for line in (folder / "log.jsonl").read_text().splitlines()]
              for name, folder in (("dreamrelation", tmp_path), ("no_hmt", tmp_path / "no_hmt"))}
    assert groups["no_hmt"] == [None, None] and None not in groups["dreamrelation"]      # every role every step
    assert (tmp_path / "no_hmt" / "relation.safetensors").is_file() and len(metrics["no_hmt"]["verdicts"]) == 4
    # the high-noise columns sample the same LoRAs again (no training folder of their own), gated at the recipe's σ
    assert {metrics[m]["lora_sigma_min"] for m in ("dreamrelation", "direct_lora", "no_hmt", "base")} == {None}
    for method in ("dreamrelation", "direct_lora", "no_hmt"):
        assert metrics[f"{method}_high_noise"]["lora_sigma_min"] == HIGH_NOISE_SIGMA
        assert len(metrics[f"{method}_high_noise"]["verdicts"]) == 4
        assert not (tmp_path / f"{method}_high_noise").exists()


def test_a_missing_trainer_dependency_names_the_cli_extra(run_config, tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "peft", None)          # as with only requirements.txt installed
    assert main(["train", str(run_config), "--out", str(tmp_path / "out")]) == 2
    assert "the headless trainer needs peft" in capsys.readouterr().err
