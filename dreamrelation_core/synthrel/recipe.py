"""How SynthRel relation LoRAs are trained and sampled: one recipe for the quality benchmark, the demo and
workflow 4 (whose Train widgets repeat these constants; tests/comfyui checks that they agree)."""
from __future__ import annotations

from pathlib import Path

from ..archs import SYNTHREL
from ..config import DataConfig, RCLConfig, RunConfig, SampleConfig, TrainConfig
from ..triplet import TripletConfig
from .protocol import DEFAULT, Protocol

STEPS, CFG = SYNTHREL.sample_steps, SYNTHREL.sample_cfg        # how every SynthRel clip here is sampled
# LoRA training steps per method (benchmark, demo, workflow 4's widget). On the 48k-step base a LoRA rendered
# "pushes" on its own training subjects in 1 of 6 clips at 300 steps, 3 of 6 at 1500; on the shipped 72k base more
# steps still help a little (docs/benchmarks.md).
TRAIN_STEPS = 1500
# LoRA training σ range: U(TRAIN_SIGMA_MIN, 1) for every method. The base predicts x0 and trains on the velocity it
# implies, (z − x̂0)/σ, whose error is the x0 error weighted by 1/σ²: with σ ~ U(0, 1), nine tenths of that weight
# fall on σ < 0.2, where a clip's layout and motion are already fixed and only its colours and edges are refined.
# From 0.4 up, the relation's trajectories get the updates and the exemplars' colours fewer (docs/benchmarks.md).
TRAIN_SIGMA_MIN = 0.4
# The benchmark's rows "…_high_noise" sample with the LoRA on σ ≥ HIGH_NOISE_SIGMA only (6 of the 20 steps), the
# base alone below: the relation is decided in those steps and the exemplars' looks mostly after them. Chosen on
# base C, tested in advance on base D (docs/benchmarks.md, "Applying the LoRA only at high noise").
HIGH_NOISE_SIGMA = 0.75


def run_config(out: Path, exemplars: Path, steps: int, overrides: dict, seed: int,
               protocol: Protocol = DEFAULT) -> RunConfig:
    return RunConfig(
        base="synthrel", name="relation", output_dir=str(out), device="cpu",
        data=DataConfig(videos=str(exemplars), frames=protocol.frames, height=protocol.size[0],
                        width=protocol.size[1]),
        lora=TripletConfig(rank=8, alpha=8, placement=overrides.get("placement")),
        train=TrainConfig(steps=steps * overrides.get("steps_factor", 1), learning_rate=1e-3, checkpoint_every=0,
                          mask_weight=overrides.get("mask_weight", TrainConfig.mask_weight),
                          group_weights=overrides.get("group_weights", [1.0, 1.0, 1.0]),
                          sigma_min=overrides.get("train_sigma_min", TRAIN_SIGMA_MIN),
                          gradient_checkpointing=False, hybrid_masks=overrides.get("hybrid_masks", True),
                          subject_loras=overrides.get("subject_loras", True), seed=seed),
        rcl=RCLConfig(enabled=overrides.get("rcl", True)),
        sample=SampleConfig())


def sample_clip(base, prompt: str, seed: int, steps: int, cfg: float, protocol: Protocol = DEFAULT,
                lora_sigma_min: float | None = None):
    from ..sampling import generate, to_uint8_frames

    height, width = protocol.size
    return to_uint8_frames(generate(base, prompt, protocol.frames, height, width, steps, cfg, seed, progress=False,
                                    lora_sigma_min=lora_sigma_min))
