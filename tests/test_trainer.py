import json

import pytest
import torch
from safetensors import safe_open

from dreamrelation_core.bases import build_tiny
from dreamrelation_core.config import DataConfig, RCLConfig, RunConfig, TrainConfig
from dreamrelation_core.data import prepare_training_set
from dreamrelation_core.synthrel import write_exemplars
from dreamrelation_core.trainer import RelationTrainer, StepInputs, warmup_cosine
from dreamrelation_core.triplet import TripletConfig

PAIRS = [(("red", "circle"), ("blue", "square")), (("green", "triangle"), ("yellow", "diamond"))]
CLIP = {"wan": dict(frames=9, height=32, width=32), "mochi": dict(frames=13, height=32, width=32)}


@pytest.fixture(scope="module")
def exemplars(tmp_path_factory):
    root = tmp_path_factory.mktemp("exemplars")
    return {arch: write_exemplars(root / arch, "approaches", 3, PAIRS, frames=c["frames"], size=(32, 32))
            for arch, c in CLIP.items()}


def make_config(arch, videos, out, **train):
    train = dict(dict(steps=6, learning_rate=1e-3, warmup_steps=2, checkpoint_every=3, gradient_checkpointing=True,
                      seed=5), **train)
    return RunConfig(base=f"tiny-{arch}", name="rel", output_dir=str(out), device="cpu",
                     data=DataConfig(videos=str(videos), **CLIP[arch]),
                     lora=TripletConfig(rank=4, alpha=4), train=TrainConfig(**train),
                     rcl=RCLConfig(n_pos=2, n_neg=4))


def make_trainer(arch, videos, out, **train):
    return RelationTrainer.from_config(make_config(arch, videos, out, **train), progress=False)


def losses(out):
    return [json.loads(l)["loss"] for l in (out / "log.jsonl").read_text().splitlines()]


def test_training_set_shapes_and_cache(exemplars, tmp_path):
    base = build_tiny("wan")
    items = prepare_training_set(base, make_config("wan", exemplars["wan"], tmp_path).data, tmp_path / "cache",
                                 progress=False)
    assert len(items) == 3 and items[0].caption == "a red circle approaches a blue square"
    assert items[0].latent_mean.shape == (16, 3, 4, 4) and items[0].masks.shape == (3, 2, 4, 4)
    assert items[0].masks.amax() == 1 and (items[0].latent_std > 0).all()
    base.codec.encode = None                                       # a second run must not encode again
    again = prepare_training_set(base, make_config("wan", exemplars["wan"], tmp_path).data, tmp_path / "cache",
                                 progress=False)
    assert torch.equal(again[2].latent_mean, items[2].latent_mean) and torch.equal(again[1].text, items[1].text)


def test_without_hybrid_masks_the_exemplars_need_no_masks(exemplars, tmp_path):
    """Masks only weight the hybrid-mask loss: without it (recommended on Wan-shaped models, docs/method.md) an
    unmasked exemplar folder trains, to the same latents; with it the missing masks are refused by name."""
    import shutil

    unmasked = tmp_path / "unmasked"
    shutil.copytree(exemplars["wan"], unmasked, ignore=shutil.ignore_patterns("masks"))
    base = build_tiny("wan")
    with pytest.raises(ValueError, match=r"without subject masks: \['clip_00', 'clip_01', 'clip_02'\].*hybrid_masks: false"):
        prepare_training_set(base, make_config("wan", unmasked, tmp_path).data, tmp_path / "cache", progress=False)
    items = prepare_training_set(base, make_config("wan", unmasked, tmp_path).data, tmp_path / "cache",
                                 progress=False, hybrid_masks=False)
    masked = prepare_training_set(base, make_config("wan", exemplars["wan"], tmp_path).data, tmp_path / "cache",
                                  progress=False)
    assert all(item.masks is None for item in items)
    assert all(torch.equal(a.latent_mean, b.latent_mean) for a, b in zip(items, masked))
    out = tmp_path / "run"
    trainer = make_trainer("wan", unmasked, out, steps=2, hybrid_masks=False)
    trainer.train()
    assert [json.loads(line)["group"] for line in (out / "log.jsonl").read_text().splitlines()] == [None, None]
    with pytest.raises(ValueError, match=r"without subject masks: \['clip_00', 'clip_01', 'clip_02'\]"):
        RelationTrainer(make_config("wan", unmasked, tmp_path / "again"), trainer.backend, items)


@pytest.mark.parametrize("arch", ["wan", "mochi"])
def test_training_steps_reduce_loss_on_a_fixed_batch(exemplars, tmp_path, arch):
    trainer = make_trainer(arch, exemplars[arch], tmp_path, learning_rate=5e-3, warmup_steps=0, steps=1000)
    trainer.config.rcl.enabled = False
    fixed = trainer.draw()
    fixed = StepInputs(fixed.item, "relation", False, torch.tensor([0.5]), fixed.noise, fixed.posterior_noise)
    history = []
    for _ in range(25):
        total, _ = trainer.loss(fixed)
        history.append(total.item())
        total.backward()
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
    assert history[-1] < 0.8 * history[0], history


def test_resume_continues_the_same_loss_trajectory(exemplars, tmp_path):
    full = make_trainer("wan", exemplars["wan"], tmp_path / "full")
    full.train()
    part = make_trainer("wan", exemplars["wan"], tmp_path / "part")
    part.train(max_steps=3)
    assert len(losses(tmp_path / "part")) == 3
    resumed = make_trainer("wan", exemplars["wan"], tmp_path / "part")
    assert resumed.resume(tmp_path / "part") == 3
    lora = resumed.train()
    assert losses(tmp_path / "part") == pytest.approx(losses(tmp_path / "full"), rel=1e-6, abs=1e-7)
    assert len(losses(tmp_path / "full")) == 6
    with safe_open(str(lora), "pt") as a, safe_open(str(tmp_path / "full" / "rel.safetensors"), "pt") as b:
        assert set(a.keys()) == set(b.keys())
        assert all(torch.allclose(a.get_tensor(k), b.get_tensor(k), atol=1e-6) for k in a.keys())


def test_lora_file_holds_exactly_the_inference_set_in_native_keys(exemplars, tmp_path):
    trainer = make_trainer("wan", exemplars["wan"], tmp_path, steps=2)
    path = trainer.train()
    with safe_open(str(path), "pt") as f:
        keys, meta = set(f.keys()), json.loads(f.metadata()["dreamrelation"])
    assert meta["arch"] == "wan" and set(meta["roles"]) == {"relation", "ffn"} and meta["steps"] == 2
    assert meta["caption"] == ["a green triangle approaches a yellow diamond", "a red circle approaches a blue square"]
    native = {"attn1.to_q": "self_attn.q", "attn1.to_k": "self_attn.k", "attn2.to_q": "cross_attn.q",
              "attn2.to_k": "cross_attn.k", "attn1.to_out.0": "self_attn.o", "attn2.to_out.0": "cross_attn.o"}
    expected = {f"diffusion_model.blocks.{i}.{n}.lora_{ab}.weight" for i in range(2) for n in native.values()
                for ab in "AB"}
    assert keys == expected                              # alpha == rank: no .alpha entries; no value LoRAs
    with safe_open(str(tmp_path / "rel.subjects.safetensors"), "pt") as f:
        subject_meta = json.loads(f.metadata()["dreamrelation"])
        assert set(subject_meta["roles"]) == {"subject1", "subject2"}
        assert all(".to_v.lora_" in k for k in f.keys())


def test_group_draws_and_caption_dropout_follow_the_config(exemplars, tmp_path):
    trainer = make_trainer("wan", exemplars["wan"], tmp_path, caption_dropout=1.0)
    draws = [trainer.draw() for _ in range(300)]
    counts = {g: sum(d.group == g for d in draws) for g in ("relation", "subject1", "subject2")}
    assert all(70 < c < 130 for c in counts.values()), counts        # 1/3 each
    assert all(d.drop_caption for d in draws)
    off = make_trainer("wan", exemplars["wan"], tmp_path / "off", hybrid_masks=False)
    assert off.draw().group is None


def test_inactive_adapters_still_get_the_reference_adamw_update(exemplars, tmp_path):
    trainer = make_trainer("wan", exemplars["wan"], tmp_path, steps=3)
    a = [n for n in trainer.params if ".lora_A.subject2." in n][0]
    before = trainer.params[a].detach().clone()
    trainer.draw = lambda: StepInputs(trainer.items[0], "subject1", False, torch.tensor([0.3]),
                                      torch.randn(1, 16, 3, 4, 4), torch.randn(1, 16, 3, 4, 4))
    trainer.train_step()
    # zero gradient + decoupled weight decay: A ← A·(1 − lr·wd), exactly as a zero-multiplied LoRA in the reference
    lr = trainer.config.train.learning_rate * warmup_cosine(2, 6)(0)
    assert torch.allclose(trainer.params[a], before * (1 - lr * 0.01), atol=1e-7)


@pytest.mark.parametrize("group", ["relation", "subject1", None])
def test_without_subject_loras_only_the_inference_set_learns(exemplars, tmp_path, group):
    """The "w/o Subject LoRAs" ablation: whatever group is drawn (or none, without hybrid masks), the subject LoRAs
    never run, so their B stays exactly zero, while relation (when its group is drawn) and ffn learn."""
    trainer = make_trainer("wan", exemplars["wan"], tmp_path, subject_loras=False, hybrid_masks=group is not None)
    trainer.draw = lambda: StepInputs(trainer.items[0], group, False, torch.tensor([0.6]),
                                      torch.randn(1, 16, 3, 4, 4), torch.randn(1, 16, 3, 4, 4))
    for _ in range(3):
        trainer.train_step()
    b = {role: [p for n, p in trainer.params.items() if f".lora_B.{role}." in n]
         for role in ("relation", "subject1", "subject2", "ffn")}
    assert all(torch.count_nonzero(p) == 0 for role in ("subject1", "subject2") for p in b[role])
    assert any(torch.count_nonzero(p) for p in b["ffn"])
    assert any(torch.count_nonzero(p) for p in b["relation"]) == (group != "subject1")


def test_warmup_cosine_schedule():
    f = warmup_cosine(200, 3000)
    assert f(0) == pytest.approx(1 / 200) and f(199) == pytest.approx(1.0)
    assert f(200) == pytest.approx(1.0) and f(1600) == pytest.approx(0.5) and f(3000) == pytest.approx(0.0)


@pytest.mark.parametrize("steps, warmup, expected", [(1500, None, 200), (100, None, 20), (100, 7, 7)])
def test_one_warm_up_rule(exemplars, tmp_path, steps, warmup, expected):
    trainer = make_trainer("wan", exemplars["wan"], tmp_path, steps=steps, warmup_steps=warmup)
    lr = trainer.config.train.learning_rate
    assert trainer.scheduler.get_last_lr()[0] == pytest.approx(lr / expected)     # step 0 of a linear warm-up


def test_gradient_accumulation_over_k_equals_a_batch_of_k(exemplars, tmp_path):
    """The same exemplars, σ and noise a step, whether they go through one forward pass or through k accumulated
    ones: the same losses, RCL banks and LoRA weights (to float tolerance). Caption dropout on, so that batches mix
    conditional and unconditional samples."""
    runs = {}
    for name, train in (("batch", dict(batch_size=3)), ("accumulated", dict(gradient_accumulation=3))):
        trainer = make_trainer("wan", exemplars["wan"], tmp_path / name, steps=4, caption_dropout=0.5, **train)
        records = [trainer.train_step() for _ in range(4)]
        runs[name] = trainer, records
    (batch, b_records), (accumulated, a_records) = runs["batch"], runs["accumulated"]
    assert [r["item"] for r in b_records] == [r["item"] for r in a_records] and len(b_records[0]["item"]) == 3
    assert [r["group"] for r in b_records] == [r["group"] for r in a_records]
    for b, a in zip(b_records, a_records):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5) and b["rcl"] == pytest.approx(a["rcl"], rel=1e-4)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)         # the mean, not the sum, of passes
    assert sum(r["rcl"] != 0 for r in b_records) >= 2                         # the banks took part
    # Adam divides by √v, so float-rounding differences in near-zero gradients grow to ~1e-6 (lr 1e-3).
    assert all(torch.allclose(p, accumulated.params[n], atol=2e-5) for n, p in batch.params.items())
    assert len(batch.bank.positives) == len(accumulated.bank.positives) == 10
    assert all(torch.allclose(x, y, atol=1e-6) for x, y in zip(batch.bank.positives, accumulated.bank.positives))


def test_batches_need_one_latent_shape_and_a_backend_that_takes_them(exemplars, tmp_path):
    trainer = make_trainer("wan", exemplars["wan"], tmp_path, batch_size=2)
    item = trainer.items[1]
    trainer.items[1] = type(item)(**{**item.__dict__, "latent_mean": item.latent_mean[:, :2],
                                     "latent_std": item.latent_std[:, :2], "masks": item.masks[:2]})
    with pytest.raises(ValueError, match="different shapes"):
        for _ in range(20):
            trainer.train_step()
    backend = trainer.backend
    backend.max_batch = 1
    with pytest.raises(ValueError, match="train.batch_size 2: this backend trains 1"):
        RelationTrainer(trainer.config, backend, trainer.items, tmp_path / "again", progress=False)
    with pytest.raises(ValueError, match="train.gradient_accumulation: must be greater than 0"):
        make_config("wan", exemplars["wan"], tmp_path, gradient_accumulation=0)


def test_activation_offload_trains_exactly_as_without(exemplars, tmp_path):
    runs = {}
    for offload in (False, True):
        trainer = make_trainer("wan", exemplars["wan"], tmp_path / str(offload), steps=3, offload_activations=offload)
        runs[offload] = trainer, [trainer.train_step()["loss"] for _ in range(3)]
    (plain, plain_losses), (offloaded, offloaded_losses) = runs[False], runs[True]
    assert offloaded_losses == pytest.approx(plain_losses, rel=1e-6)
    assert all(torch.allclose(p, offloaded.params[n], atol=1e-6) for n, p in plain.params.items())


def test_fp8_storage_keeps_the_base_in_float8_and_trains_the_loras_in_fp32(exemplars, tmp_path):
    plain = make_trainer("wan", exemplars["wan"], tmp_path / "plain", steps=3)
    fp8 = make_trainer("wan", exemplars["wan"], tmp_path / "fp8", steps=3, fp8_storage=True)
    modules = dict(fp8.backend.transformer.named_modules())
    assert modules["blocks.0.attn1.to_q"].get_base_layer().weight.dtype == torch.float8_e4m3fn
    assert modules["blocks.0.ffn.net.2"].weight.dtype == torch.float8_e4m3fn
    assert all(p.dtype == torch.float32 for p in fp8.params.values())
    assert all(torch.equal(p, plain.params[n]) for n, p in fp8.params.items())     # the same init, not quantised
    before = {n: p.detach().clone() for n, p in fp8.params.items()}
    first = (plain.train_step()["loss"], fp8.train_step()["loss"])
    assert first[1] == pytest.approx(first[0], rel=0.05)          # e4m3 keeps ~2 significant digits of each weight
    fp8.train_step()
    assert any(not torch.equal(p, before[n]) for n, p in fp8.params.items())
    assert modules["blocks.0.attn1.to_q"].get_base_layer().weight.dtype == torch.float8_e4m3fn   # still stored so


def test_a_wan22_expert_trains_on_its_own_noise_range_unless_told_otherwise(exemplars, tmp_path):
    """The high-noise expert of Wan 2.2 A14B (where motion is decided) draws σ from its boundary up by default."""
    base = build_tiny("wan")
    base.sigma_range = (0.875, 1.0)
    config = make_config("wan", exemplars["wan"], tmp_path / "expert")
    expert = RelationTrainer.from_config(config, base=base, progress=False)
    assert expert.sigma_range == (0.875, 1.0)
    assert all(0.875 <= float(expert.draw().sigma) <= 1.0 for _ in range(50))
    told = make_config("wan", exemplars["wan"], tmp_path / "told", sigma_min=0.5)
    assert RelationTrainer.from_config(told, base=build_tiny("wan"), progress=False).sigma_range == (0.5, 1.0)
    low = build_tiny("wan")
    low.sigma_range = (0.0, 0.875)
    with pytest.raises(ValueError, match="sigma range must satisfy"):
        RelationTrainer.from_config(make_config("wan", exemplars["wan"], tmp_path / "bad", sigma_min=0.9), base=low,
                                    progress=False)


def test_compiled_blocks_train_as_eager(exemplars, tmp_path):
    import diffusers

    from dreamrelation_core.trainer import COMPILE_MIN_DIFFUSERS

    if tuple(int(x) for x in diffusers.__version__.split(".")[:2]) < COMPILE_MIN_DIFFUSERS:   # CI's floor run
        with pytest.raises(ValueError, match="train.compile needs diffusers >= 0.40"):
            make_trainer("wan", exemplars["wan"], tmp_path / "old", compile=True)
        return
    eager = make_trainer("wan", exemplars["wan"], tmp_path / "eager", steps=3)
    compiled = make_trainer("wan", exemplars["wan"], tmp_path / "compiled", steps=3, compile=True)
    assert all(hasattr(block, "_compiled_call_impl") and block._compiled_call_impl is not None
               for block in compiled.backend.transformer.blocks)
    grads = {}
    for name, trainer in (("eager", eager), ("compiled", compiled)):     # the first step's gradients, before AdamW
        step = trainer.optimizer.step
        trainer.optimizer.step = lambda *a, t=trainer, n=name, s=step, **k: (
            grads.setdefault(n, {k2: p.grad.clone() for k2, p in t.params.items()}), s(*a, **k))[1]
    for _ in range(3):
        assert compiled.train_step()["loss"] == pytest.approx(eager.train_step()["loss"], rel=1e-4)
    # Compiled kernels round differently; AdamW turns that into lr-sized moves of near-zero-gradient weights, so the
    # gradients are compared, not the weights.
    scale = max(g.abs().max() for g in grads["eager"].values())
    assert all(torch.allclose(g, grads["compiled"][n], atol=1e-4 * scale) for n, g in grads["eager"].items())


def test_wan22_5b_trains_and_saves_a_lora_stock_comfyui_maps(tmp_path):
    """Wan 2.2 TI2V-5B: 48-channel latents at 4×16×16; the same modules as Wan 2.1, so the same native LoRA keys."""
    from dreamrelation_core.formats import comfyui_unmapped_keys, load_lora, read_safetensors

    videos = write_exemplars(tmp_path / "exemplars", "approaches", 2, PAIRS, frames=9, size=(64, 64))
    config = RunConfig(base="tiny-wan22-5b", name="rel", output_dir=str(tmp_path / "out"), device="cpu",
                       data=DataConfig(videos=str(videos), frames=9, height=64, width=64),
                       lora=TripletConfig(rank=4, alpha=4), train=TrainConfig(steps=2, warmup_steps=0),
                       rcl=RCLConfig(n_pos=2, n_neg=4))
    trainer = RelationTrainer.from_config(config, progress=False)
    assert trainer.items[0].latent_mean.shape == (48, 3, 4, 4) and trainer.arch.name == "wan22-5b"
    path = trainer.train()
    tensors, _ = read_safetensors(path)
    assert load_lora(path).arch == "wan22-5b" and not comfyui_unmapped_keys(tensors, trainer.arch)
    assert any(k.startswith("diffusion_model.blocks.0.self_attn.q.lora_A") for k in tensors)


@pytest.mark.parametrize("checkpointing", [True, False])
def test_block_swap_trains_exactly_as_without(exemplars, tmp_path, checkpointing):
    """Swapped blocks hold no weights of their own (so every forward pass, the backward pass's recomputation
    included, runs on the copies) and train exactly as the plain model."""
    plain = make_trainer("wan", exemplars["wan"], tmp_path / "plain", steps=3, gradient_checkpointing=checkpointing)
    swapped = make_trainer("wan", exemplars["wan"], tmp_path / "swap", steps=3, block_swap=2,
                           gradient_checkpointing=checkpointing)
    q = dict(swapped.backend.transformer.named_modules())["blocks.1.attn1.to_q"]
    assert q.get_base_layer().weight.numel() == 0 and q.lora_A["relation"].weight.numel() > 0
    for _ in range(3):
        assert swapped.train_step()["loss"] == pytest.approx(plain.train_step()["loss"], rel=1e-6)
    assert all(torch.allclose(p, swapped.params[n], atol=1e-6) for n, p in plain.params.items())
    with pytest.raises(ValueError, match="block_swap 3: the transformer has 2 blocks"):
        make_trainer("wan", exemplars["wan"], tmp_path / "bad", block_swap=3)


def test_block_swap_streams_fp8_weights(exemplars, tmp_path):
    """With fp8 storage the swapped blocks' CPU copies stay in float8 (half the bytes to copy) and train as fp8 alone."""
    fp8 = make_trainer("wan", exemplars["wan"], tmp_path / "fp8", steps=2, fp8_storage=True)
    both = make_trainer("wan", exemplars["wan"], tmp_path / "both", steps=2, fp8_storage=True, block_swap=1)
    assert both.backend.block_swap.host[0]["attn1.to_q.base_layer.weight"].dtype == torch.float8_e4m3fn
    for _ in range(2):
        assert both.train_step()["loss"] == pytest.approx(fp8.train_step()["loss"], rel=1e-6)


def test_previews_take_the_high_noise_switch_from_the_config(exemplars, tmp_path):
    """sample.lora_sigma_min reaches the preview: it renders what generate() renders with the inference set at high
    noise only, not what the LoRA on every step renders."""
    import numpy as np

    from dreamrelation_core.sampling import generate, to_uint8_frames
    from dreamrelation_core.triplet import INFERENCE_ROLES, activate
    from dreamrelation_core.videoio import read_video, write_video

    trainer = make_trainer("wan", exemplars["wan"], tmp_path, steps=2)
    with torch.no_grad():          # a LoRA far from zero, so that where it runs shows in 8-bit frames
        for k, param in enumerate(trainer.params.values()):
            param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(k)) * 0.3)
    sample, data = trainer.config.sample, trainer.config.data
    sample.prompts, sample.steps, sample.cfg = ["a red circle approaches a blue square"], 4, 3.0
    sample.lora_sigma_min = 0.6
    (gated,) = trainer.preview("gated")
    sample.lora_sigma_min = None
    (every,) = trainer.preview("every")
    activate(trainer.backend.transformer, INFERENCE_ROLES)
    expected = to_uint8_frames(generate(trainer.backend.base, sample.prompts[0], data.frames, data.height, data.width,
                                        4, 3.0, sample.seed, progress=False, lora_sigma_min=0.6))
    expected = write_video(tmp_path / "expected.mp4", expected, trainer.backend.arch.fps)
    frames = {name: read_video(path)[0] for name, path in (("gated", gated), ("every", every), ("expected", expected))}
    assert np.array_equal(frames["gated"], frames["expected"]) and not np.array_equal(frames["gated"], frames["every"])
