"""Never lose a run, refuse bad input clearly (docs/reliability.md): signals, exact resume, run folders, guarded
files, sampling arguments and masks."""
import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from dreamrelation_core import files, formats
from dreamrelation_core.cli import main
from dreamrelation_core.config import config_from_dict
from dreamrelation_core.data import check_subject_masks, prepare_clip, read_colour_masks
from dreamrelation_core.synthrel import write_exemplars
from dreamrelation_core.trainer import NonFiniteLoss, RelationTrainer
from test_trainer import PAIRS, losses, make_config, make_trainer

ROOT = Path(__file__).resolve().parents[1]
STEPS = 40


@pytest.fixture(scope="module")
def exemplars(tmp_path_factory):
    return write_exemplars(tmp_path_factory.mktemp("exemplars") / "wan", "approaches", 3, PAIRS, frames=9,
                           size=(32, 32))


def cli_config(folder: Path, videos: Path, **train) -> Path:
    config = {"base": "tiny-wan", "name": "rel", "device": "cpu",
              "data": {"videos": str(videos), "frames": 9, "height": 32, "width": 32},
              "lora": {"rank": 4, "alpha": 4}, "rcl": {"n_pos": 2, "n_neg": 4},
              "train": {"steps": STEPS, "warmup_steps": 2, "checkpoint_every": 0, "learning_rate": 1e-3, "seed": 5,
                        **train}}
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def cli(*args, **popen):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "dreamrelation_core", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def lora_tensors(out: Path) -> dict:
    return {**load_file(str(out / "rel.safetensors")), **load_file(str(out / "rel.subjects.safetensors"))}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, exemplars):
    folder = tmp_path_factory.mktemp("full")
    run = cli("train", str(cli_config(folder, exemplars)), "--out", str(folder / "out"))
    _, err = run.communicate(timeout=600)
    assert run.returncode == 0, err
    return folder / "out"


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_at_a_random_step_then_resume_is_bit_identical(tmp_path, exemplars, uninterrupted, signum, code):
    at = random.Random().randrange(2, STEPS - 5)
    config, out = cli_config(tmp_path, exemplars), tmp_path / "out"
    run = cli("train", str(config), "--out", str(out))
    log = out / "log.jsonl"
    deadline = time.time() + 300
    while (not log.is_file() or len(log.read_text().splitlines()) < at) and run.poll() is None:
        assert time.time() < deadline
        time.sleep(0.01)
    run.send_signal(signum)
    _, err = run.communicate(timeout=300)
    assert run.returncode == code, f"signal at step ~{at}: {err}"
    assert "interrupted after step" in err and "Traceback" not in err
    stopped = len(log.read_text().splitlines())
    assert (out / "checkpoints" / f"step_{stopped:06d}" / "state.pt").is_file()
    resumed = cli("train", str(config), "--out", str(out), "--resume", str(out))
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert losses(out) == losses(uninterrupted), f"signal after step {stopped}"
    expected, got = lora_tensors(uninterrupted), lora_tensors(out)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected), f"signal after step {stopped}"


def test_an_error_inside_a_step_discards_it_and_resume_is_exact(tmp_path, exemplars):
    full = make_trainer("wan", exemplars, tmp_path / "full", steps=6, checkpoint_every=0)
    full.train()
    part = make_trainer("wan", exemplars, tmp_path / "part", steps=6, checkpoint_every=0)
    velocity, calls = part.backend.velocity, []

    def failing(*args):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("CUDA out of memory (simulated)")
        return velocity(*args)

    part.backend.velocity = failing
    with pytest.raises(RuntimeError, match="simulated"):
        part.train()
    assert sorted(p.name for p in (tmp_path / "part" / "checkpoints").iterdir()) == ["step_000003"]
    resumed = make_trainer("wan", exemplars, tmp_path / "part", steps=6, checkpoint_every=0)
    assert resumed.resume(tmp_path / "part") == 3
    resumed.train()
    assert losses(tmp_path / "part") == losses(tmp_path / "full")


def test_a_non_finite_loss_stops_with_the_last_good_state(tmp_path, exemplars, capsys):
    trainer = make_trainer("wan", exemplars, tmp_path, steps=6, checkpoint_every=0)
    velocity = trainer.backend.velocity
    trainer.backend.velocity = lambda *a: velocity(*a) * (float("nan") if trainer.step == 2 else 1.0)
    with pytest.raises(NonFiniteLoss, match=r"the loss is nan at step 3 .*last good state \(step 2\).*max_grad_norm"):
        trainer.train()
    assert (tmp_path / "checkpoints" / "step_000002" / "state.pt").is_file()
    assert len(losses(tmp_path)) == 2


def test_gradient_clipping_and_the_logged_gradient_norm(tmp_path, exemplars):
    runs = {}
    for clip in (None, 1e-4):
        out = tmp_path / str(clip)
        trainer = make_trainer("wan", exemplars, out, steps=3, checkpoint_every=0, warmup_steps=0,
                               learning_rate=1e-3, max_grad_norm=clip)
        before = {k: v.detach().clone() for k, v in trainer.params.items()}
        trainer.train()
        runs[clip] = sum((trainer.params[k].detach() - before[k]).norm() for k in before)
        norms = [json.loads(l)["grad_norm"] for l in (out / "log.jsonl").read_text().splitlines()]
        assert len(norms) == 3 and all(n > 0 for n in norms)
    assert runs[1e-4] < runs[None]   # AdamW normalises, but the clipped first moments move the weights less


def test_fp16_autocast_trains_with_a_grad_scaler(tmp_path, exemplars):
    trainer = make_trainer("wan", exemplars, tmp_path, steps=2, checkpoint_every=0, mixed_precision="fp16")
    assert trainer.scaler.is_enabled()
    trainer.train()
    assert all(torch.isfinite(p).all() for p in trainer.params.values())
    state = torch.load(tmp_path / "checkpoints" / "step_000002" / "state.pt", weights_only=True)
    assert state["scaler"]["scale"] > 0


# ---- run folders ---------------------------------------------------------------------------------------------

def test_a_folder_holding_another_run_is_refused_or_started_fresh(tmp_path, exemplars):
    make_trainer("wan", exemplars, tmp_path, steps=4, checkpoint_every=2).train()
    other = make_config("wan", exemplars, tmp_path, steps=2, checkpoint_every=1)
    other.lora.rank = 8
    with pytest.raises(ValueError, match=r"holds checkpoints of another run \(lora.rank \(4 → 8\)\), up to step 4"):
        RelationTrainer.from_config(other, progress=False).train()
    same = make_config("wan", exemplars, tmp_path, steps=2, checkpoint_every=1)
    with pytest.raises(ValueError, match="a run with these settings.*--resume"):
        RelationTrainer.from_config(same, progress=False).train()
    with pytest.raises(ValueError, match=r"trained with other settings: lora.rank \(4 → 8\)"):
        RelationTrainer.from_config(other, progress=False).resume(tmp_path)
    RelationTrainer.from_config(other, progress=False, overwrite=True).train()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_000001", "step_000002"]
    assert len(losses(tmp_path)) == 2


def test_old_checkpoints_of_another_rank_are_refused_by_shape(tmp_path, exemplars):
    make_trainer("wan", exemplars, tmp_path, steps=2, checkpoint_every=0).train()
    state_path = tmp_path / "checkpoints" / "step_000002" / "state.pt"
    state = torch.load(state_path, weights_only=True)
    del state["settings"]                               # as saved before checkpoints carried their settings
    torch.save(state, state_path)
    other = make_config("wan", exemplars, tmp_path, steps=2)
    other.lora.rank = 8
    with pytest.raises(ValueError, match=r"\(4, 32\) there, \(8, 32\) here \(another lora.rank\?\)"):
        RelationTrainer.from_config(other, progress=False).resume(tmp_path)


def test_resuming_an_earlier_checkpoint_prunes_by_step(tmp_path, exemplars):
    make_trainer("wan", exemplars, tmp_path, steps=6, checkpoint_every=2, keep_checkpoints=3).train()
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["step_000002", "step_000004", "step_000006"]
    again = make_trainer("wan", exemplars, tmp_path, steps=6, checkpoint_every=1, keep_checkpoints=2)
    again.resume(folder / "step_000002")
    again.train(max_steps=3)
    assert sorted(p.name for p in folder.iterdir()) == ["step_000002", "step_000003"]


def test_changing_only_the_length_and_cadence_resumes(tmp_path, exemplars):
    make_trainer("wan", exemplars, tmp_path, steps=2, checkpoint_every=0).train()
    longer = make_trainer("wan", exemplars, tmp_path, steps=4, checkpoint_every=1, warmup_steps=3)
    assert longer.resume(tmp_path) == 2
    longer.train()
    assert len(losses(tmp_path)) == 4


# ---- files ----------------------------------------------------------------------------------------------------

def test_saved_files_are_0644_and_a_full_disk_keeps_the_previous_pair(tmp_path, exemplars, monkeypatch, capsys):
    trainer = make_trainer("wan", exemplars, tmp_path, steps=1, checkpoint_every=0)
    relation = trainer.train()
    subjects = tmp_path / "rel.subjects.safetensors"
    os.umask(mask := os.umask(0o022))
    assert oct(relation.stat().st_mode & 0o777) == oct(subjects.stat().st_mode & 0o777) == oct(0o666 & ~mask)
    old = relation.read_bytes(), subjects.read_bytes()
    synced = []

    def full_disk(fd):
        synced.append(fd)
        if len(synced) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full_disk)
    trainer.step = 99
    with pytest.raises(OSError) as caught:
        trainer.save_lora()
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(subjects)
    assert (relation.read_bytes(), subjects.read_bytes()) == old
    assert sorted(p.name for p in tmp_path.glob("*.tmp")) == [] and not list(tmp_path.glob(".rel*"))


def test_cli_names_a_full_disk_in_one_line(tmp_path, exemplars, monkeypatch, capsys):
    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full_disk)
    config = cli_config(tmp_path, exemplars, steps=1)
    assert main(["train", str(config), "--out", str(tmp_path / "out")]) == 2
    last = capsys.readouterr().err.splitlines()[-1]     # after the progress bar
    assert last.startswith("error: no space left on the device writing ") and last.endswith(".safetensors")


def test_damaged_and_non_finite_loras_are_refused_by_name(tmp_path, exemplars):
    make_trainer("wan", exemplars, tmp_path, steps=1, checkpoint_every=0).train()
    path = tmp_path / "rel.safetensors"
    tensors, meta = formats.read_safetensors(path)
    info = json.loads(meta["dreamrelation"])
    del info["roles"]
    save_file(tensors, str(tmp_path / "no_roles.safetensors"), {"dreamrelation": json.dumps(info)})
    with pytest.raises(ValueError, match=r"no_roles.safetensors is a damaged DreamRelation LoRA: 'roles' is missing"):
        formats.load_lora(tmp_path / "no_roles.safetensors")
    first = sorted(tensors)[0]
    save_file({k: v for k, v in tensors.items() if k != first}, str(tmp_path / "cut.safetensors"), meta)
    with pytest.raises(ValueError, match=rf"cut.safetensors is a damaged DreamRelation LoRA: '{first}' is missing"):
        formats.load_lora(tmp_path / "cut.safetensors")
    save_file({k: v * float("nan") for k, v in tensors.items()}, str(tmp_path / "nan.safetensors"), meta)
    with pytest.raises(ValueError, match="nan.safetensors: the .* LoRA of .* holds NaN or infinite weights"):
        formats.load_lora(tmp_path / "nan.safetensors")


def test_converting_a_subjects_file_is_refused(tmp_path, exemplars, capsys):
    make_trainer("wan", exemplars, tmp_path, steps=1, checkpoint_every=0).train()
    out = tmp_path / "converted.safetensors"
    assert main(["convert", str(tmp_path / "rel.subjects.safetensors"), str(out)]) == 2
    assert "a .subjects file holds only the subject LoRAs" in capsys.readouterr().err
    assert not out.exists()


# ---- sampling arguments ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("flag, value", [("--frames", "0"), ("--steps", "-3"), ("--height", "0"), ("--cfg", "nan")])
def test_sample_refuses_bad_numbers_before_loading(flag, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["sample", "--base", "tiny-wan", "--prompt", "x", "--out", str(tmp_path / "v.mp4"), flag, value])
    assert stop.value.code == 2 and f"argument {flag}" in capsys.readouterr().err


def test_generate_refuses_a_huge_size_and_a_nan_result():
    from dreamrelation_core.bases import load_base
    from dreamrelation_core.sampling import generate

    base = load_base("tiny-wan")
    with pytest.raises(ValueError, match="more than 4× the wan default video"):
        generate(base, "x", frames=81, height=4096, width=4096, steps=1, progress=False)
    with pytest.raises(ValueError, match="frames must be a whole number of at least 1, got 0"):
        generate(base, "x", frames=0, height=32, width=32, steps=1, progress=False)
    with torch.no_grad():
        next(base.transformer.parameters()).fill_(float("nan"))
    with pytest.raises(ValueError, match="the sampled video is NaN or infinite"):
        generate(base, "x", frames=9, height=32, width=32, steps=1, progress=False)


def test_ctrl_c_before_training_says_nothing_new_was_saved(tmp_path, exemplars, monkeypatch, capsys):
    import dreamrelation_core.trainer as trainer_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer_module, "prepare_training_set", interrupted)
    assert main(["train", str(cli_config(tmp_path, exemplars)), "--out", str(tmp_path / "out")]) == 130
    assert capsys.readouterr().err == "interrupted before a training step finished: no new checkpoint\n"


# ---- masks and configs -------------------------------------------------------------------------------------------

def _write_frames(folder: Path, frames) -> Path:
    import cv2

    folder.mkdir(parents=True)
    for k, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"{k:03d}.png"), frame[..., ::-1])
    return folder


def test_a_subject_entering_late_gets_its_mask(tmp_path):
    frames = np.zeros((6, 24, 24, 3), np.uint8)
    frames[:, 2:8, 2:8] = (255, 0, 0)
    frames[3:, 14:20, 14:20] = (0, 0, 255)            # the second subject enters at frame 3
    masks = read_colour_masks(_write_frames(tmp_path / "m", frames))
    assert masks[:3, 0].sum() == 0 and masks[3:, 0].sum() == 3 * 36     # blue (0, 0, 255) sorts first
    assert masks[:, 1].sum() == 6 * 36


def test_all_black_masks_are_refused_and_a_missing_subject_warned():
    with pytest.raises(ValueError, match="exemplar clip_00: its masks are all black"):
        check_subject_masks(np.zeros((3, 2, 8, 8), np.float32), "clip_00")
    one = np.zeros((3, 2, 8, 8), np.float32)
    one[:, 0, 2:4, 2:4] = 1
    with pytest.warns(UserWarning, match="exemplar clip_01: subject 2 has no mask in any frame"):
        check_subject_masks(one, "clip_01")


def test_masks_of_another_aspect_ratio_are_refused():
    frames = np.zeros((3, 32, 48, 3), np.uint8)
    with pytest.raises(ValueError, match="the masks are 32x32 but the video is 48x32"):
        prepare_clip(frames, np.zeros((3, 2, 32, 32), np.float32), 3, 32, 32)
    video, masks = prepare_clip(frames, np.zeros((3, 2, 16, 24), np.float32), 3, 32, 32)    # same ratio: fine
    assert masks.shape == (3, 2, 32, 32)


@pytest.mark.parametrize("values, message", [
    ({"train": {"learning_rat": 1e-4}}, r"train.learning_rat \(did you mean train.learning_rate\?\)"),
    ({"train": {"mixed_precision": "fp8"}}, "train.mixed_precision: expected one of auto, bf16, fp16, fp32, no"),
    ({"train": {"sigma_min": 0.8, "sigma_max": 0.2}}, "expected 0 ≤ sigma_min < sigma_max ≤ 1"),
    ({"device": "gpu"}, "config key device: expected auto, cpu, cuda, cuda:N or mps, got 'gpu'"),
    ({"train": {"max_grad_norm": -1}}, "train.max_grad_norm: must be greater than 0"),
    ({"sample": {"lora_sigma_min": 1.5}}, r"sample.lora_sigma_min: expected a σ in \[0, 1\] or null, got 1.5"),
])
def test_config_values_are_checked_where_built(values, message):
    with pytest.raises(ValueError, match=message):
        config_from_dict(values)


def test_exemplars_are_resampled_to_the_models_frame_rate(tmp_path):
    from dreamrelation_core.data import read_resampled
    from dreamrelation_core.videoio import write_video

    frames = np.zeros((30, 16, 16, 3), np.uint8)
    for k in range(30):
        frames[k, :, :] = 8 * k                       # brightness encodes the frame index
    path = write_video(tmp_path / "clip30.mp4", frames, fps=30)
    video, picked = read_resampled(path, 9, 16)
    assert picked == [round(k * 30 / 16) for k in range(9)] and picked[-1] == 15
    assert np.allclose(video[:, 8, 8, 0].astype(float), [8 * k for k in picked], atol=6)
    assert read_resampled(path, 9, 0)[1] == list(range(9))              # data.fps: 0 keeps every frame
    assert read_resampled(path, 9, 30.2)[1] == list(range(9))           # within 1%: as is
    video, picked = read_resampled(path, 20, 16)                         # too short at 16 fps: what there is
    assert picked == [round(k * 30 / 16) for k in range(16)] and len(video) == 16


def test_posterior_mean_trains_on_the_mean_as_comfyui_does(tmp_path, exemplars):
    runs = {}
    for posterior in ("sample", "mean"):
        trainer = make_trainer("wan", exemplars, tmp_path / posterior, posterior=posterior)
        inputs = trainer.draw()
        seen = []
        velocity = trainer.backend.velocity
        trainer.backend.velocity = lambda latents, *a: seen.append(latents) or velocity(latents, *a)
        trainer.loss(inputs)
        sigma, item = float(inputs.sigma), inputs.item
        runs[posterior] = (seen[0] - sigma * inputs.noise) / (1 - sigma)       # the z0 the step trained on
        assert item.latent_std.abs().max() > 0
    mean = item.latent_mean[None]
    assert torch.allclose(runs["mean"], mean, atol=1e-5)
    assert not torch.allclose(runs["sample"], mean, atol=1e-3)


def test_a_setting_added_since_a_checkpoint_differs_only_off_its_default():
    from dreamrelation_core.checkpoints import differing_settings

    old = {"train.mask_weight": 50.0}
    assert differing_settings(old, {**old, "train.group_weights": [1.0, 1.0, 1.0]}) == []
    assert differing_settings(old, {**old, "train.group_weights": [1.0, 0.0, 0.0]}) == [
        "train.group_weights (None → [1.0, 0.0, 0.0])"]
