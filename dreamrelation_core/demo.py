"""The no-download demo: toy exemplars of one relation -> relation LoRA on tiny-wan -> samples on new subjects."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .config import DataConfig, RunConfig, SampleConfig, TrainConfig

DEMO_PAIRS = [(("red", "circle"), ("blue", "square")), (("green", "square"), ("cyan", "circle"))]
DEMO_PROMPT = "a yellow triangle approaches a purple diamond"


def demo_config(out: Path, steps: int) -> RunConfig:
    return RunConfig(
        base="tiny-wan", name="approaches", output_dir=str(out), device="cpu",
        data=DataConfig(videos=str(out / "exemplars"), frames=17, height=64, width=64),
        train=TrainConfig(steps=steps, learning_rate=1e-3, warmup_steps=min(10, steps), checkpoint_every=0,
                          gradient_checkpointing=False),
        sample=SampleConfig(steps=10, seed=0))


def run_demo(out: Path, steps: int = 30, progress: bool = True) -> dict:
    """Write 6 toy exemplars of "approaches", train `steps` steps, sample base vs. relation LoRA side by side."""
    from .bases import load_base
    from .sampling import generate, to_uint8_frames
    from .synthrel import write_exemplars
    from .trainer import RelationTrainer
    from .triplet import activate
    from .videoio import write_video

    out = Path(out)
    config = demo_config(out, steps)
    write_exemplars(out / "exemplars", "approaches", 6, DEMO_PAIRS, frames=17, size=(64, 64))
    d, s = config.data, config.sample
    base_video = generate(load_base("tiny-wan"), DEMO_PROMPT, d.frames, d.height, d.width, s.steps, None, s.seed,
                          progress=False)
    trainer = RelationTrainer(config, progress=progress)
    lora = trainer.train()
    trainer.backend.activate(("relation", "ffn"))
    lora_video = generate(trainer.backend.base, DEMO_PROMPT, d.frames, d.height, d.width, s.steps, None, s.seed,
                          progress=False)
    side_by_side = np.concatenate([to_uint8_frames(base_video), to_uint8_frames(lora_video)], axis=2)
    video = write_video(out / "base_vs_relation.gif", side_by_side, fps=8)
    return {"lora": lora, "video": video, "log": out / "log.jsonl"}
