"""The pack's nodes, executed in-process on a real ComfyUI library with a tiny native Wan model."""
import json
import shutil
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from .fakes import FakeClip, FakeVae
from .native_models import WAN_DIFFUSERS, native_model, stock_chain


def toy_exemplars(nodes, count=2, frames=9, size=32, masked=True):
    from dreamrelation_core.synthrel import render_clip

    items = None
    pairs = [(("red", "circle"), ("blue", "square")), (("green", "square"), ("yellow", "circle"))]
    for k in range(count):
        video, masks, caption = render_clip("approaches", *pairs[k % 2], frames=frames, size=(size, size), seed=k)
        images = torch.from_numpy(video).float() / 255
        masks = dict(subject1_mask=torch.from_numpy(masks[:, 0]), subject2_mask=torch.from_numpy(masks[:, 1]))
        items = nodes.AddExemplar.execute(images, caption, **(masks if masked else {}), exemplars=items).result[0]
    return items


def test_extension_lists_every_node(pack):
    import asyncio

    ext = asyncio.run(pack["nodes"].DreamRelationExtension().get_node_list())
    ids = {n.define_schema().node_id for n in ext}
    assert ids == {"DreamRelationMaskVideo", "DreamRelationAddExemplar", "DreamRelationLoadExemplarFolder",
                   "DreamRelationTrain", "DreamRelationLoadLoRA", "DreamRelationSample", "DreamRelationSwitchStep",
                   "DreamRelationLoadSynthRelBase", "DreamRelationSynthRelExemplars", "DreamRelationSynthRelEvaluate"}
    for node in ext:
        schema = node.define_schema()
        for inp in schema.inputs:
            assert inp.tooltip, f"{node.__name__}.{inp.id} has no tooltip"
        for out in schema.outputs:
            assert out.tooltip, f"{node.__name__} output {out.display_name or out.io_type} has no tooltip"


def test_comfy_backend_velocity_matches_the_diffusers_convention(pack, comfy):
    """ComfyUI's x0 prediction turned into ε − z0 equals the diffusers model's canonical velocity (same weights)."""
    import diffusers
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    from dreamrelation_core.archs import WAN
    from dreamrelation_core.triplet import TripletConfig

    patcher = native_model(comfy, "wan")
    native_sd = {k.removeprefix("diffusion_model."): v.clone() for k, v in patcher.model.state_dict().items()
                 if k.startswith("diffusion_model.")}
    reference = diffusers.WanTransformer3DModel(**WAN_DIFFUSERS)
    reference.load_state_dict(convert_wan_transformer_to_diffusers(native_sd))
    backend = pack["backend"].ComfyBackend(patcher, TripletConfig(rank=4, alpha=4))
    g = torch.Generator().manual_seed(0)
    text = torch.randn(1, 7, 32, generator=g)
    latents = torch.randn(2, 16, 3, 4, 4, generator=g)
    got = {}
    exemplar = types.SimpleNamespace(name="clip_00")           # a TrainingItem, as far as the backend looks
    backend.conditioning_of = {"clip_00": 0}

    def inside(processed):
        with torch.no_grad():
            for sigma in (0.9, 0.3):
                s = torch.tensor([sigma])
                got[sigma] = (processed[:1].clone(), backend.velocity(processed[:1], s, [exemplar]))

    with torch.inference_mode(False):
        backend.run(inside, latents, [[text, {}]], [[torch.zeros_like(text), {}]])
    for sigma, (x, v) in got.items():
        with torch.no_grad():
            expected = WAN.velocity(reference, x, torch.tensor([sigma]), text, torch.ones(1, 7, dtype=torch.bool))
        assert torch.allclose(v, expected, atol=2e-4), (sigma, (v - expected).abs().max())


def test_train_node_saves_a_lora_that_stock_and_our_loader_apply(pack, comfy, caplog):
    nodes = pack["nodes"]
    exemplars = toy_exemplars(nodes)
    model = native_model(comfy, "wan")
    out = nodes.TrainRelationTriplet.execute(model, FakeClip(), FakeVae(), exemplars, "toy_relation", 4, 5e-3, 4,
                                             4.0, 32, 32, 9, 50.0, 0.01, 0, 2, False, True)
    trained_model, lora_path, loss_map = out.result
    lora_path = Path(lora_path)
    assert lora_path == pack["root"] / "loras" / "toy_relation.safetensors"
    assert (pack["root"] / "loras" / "toy_relation.subjects.safetensors").is_file()
    run = pack["root"] / "output" / "dreamrelation" / "toy_relation"
    log = [json.loads(l) for l in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4] and all(np.isfinite(r["loss"]) for r in log)
    assert loss_map == {"loss": [r["loss"] for r in log]}           # LOSS_MAP, as ComfyUI's loss graph reads it
    assert (run / "checkpoints" / "step_000004" / "state.pt").is_file()
    with safe_open(str(lora_path), "pt") as f:
        meta = json.loads(f.metadata()["dreamrelation"])
        keys = set(f.keys())
    assert meta["arch"] == "wan" and meta["steps"] == 4 and set(meta["roles"]) == {"relation", "ffn"}
    assert all(k.startswith("diffusion_model.blocks.") for k in keys)

    # stock LoraLoaderModelOnly path and our loader (relation + ffn at 1.0) patch the same weights identically
    stock, _ = comfy.sd.load_lora_for_models(model, None, comfy.utils.load_torch_file(str(lora_path)), 1.0, 0)
    ours = nodes.LoadRelationLoRA.execute(model, "toy_relation.safetensors", 1.0, 1.0).result[0]
    weights = {}
    for name, patched in (("stock", stock), ("ours", ours), ("node", trained_model)):
        patched.patch_model()
        weights[name] = {k: v.clone() for k, v in patched.model.state_dict().items()}
        patched.unpatch_model()
    base = {k: v.clone() for k, v in model.model.state_dict().items()}
    changed = {k for k in base if not torch.equal(base[k], weights["stock"][k])}
    assert changed and all(".self_attn." in k or ".cross_attn." in k for k in changed)
    for k in base:
        assert torch.allclose(weights["ours"][k], weights["stock"][k], atol=1e-6), k
        assert torch.allclose(weights["node"][k], weights["stock"][k], atol=1e-6), k
    with pytest.raises(ValueError, match=r"toy_relation\.subjects\.safetensors holds only the subject LoRAs.*"
                                         r"choose the relation LoRA toy_relation\.safetensors"):
        nodes.LoadRelationLoRA.execute(model, "toy_relation.subjects.safetensors", 1.0, 1.0)
    half = nodes.LoadRelationLoRA.execute(model, "toy_relation.safetensors", 0.5, 0.0).result[0]
    half.patch_model()
    q = "diffusion_model.blocks.0.self_attn.q.weight"
    o = "diffusion_model.blocks.0.self_attn.o.weight"
    assert torch.allclose(half.model.state_dict()[q] - base[q], 0.5 * (weights["stock"][q] - base[q]), atol=1e-6)
    assert torch.equal(half.model.state_dict()[o], base[o])                 # ffn strength 0: untouched
    half.unpatch_model()


def test_train_node_trains_on_the_sigma_range_it_is_given(pack, comfy):
    """sigma_min/sigma_max (a Wan 2.2 expert's range, the SynthRel demo's 0.4 floor) bound every drawn σ."""
    nodes = pack["nodes"]
    exemplars = toy_exemplars(nodes)
    model = native_model(comfy, "wan")
    args = (model, FakeClip(), FakeVae(), exemplars, "sigma_range", 8, 5e-3, 4, 4.0, 32, 32, 9, 50.0, 0.01, 0, 0,
            False, False, 0, "", 30)
    nodes.TrainRelationTriplet.execute(*args, 0.6, 0.9)
    run = pack["root"] / "output" / "dreamrelation" / "sigma_range"
    sigmas = [json.loads(l)["sigma"] for l in (run / "log.jsonl").read_text().splitlines()]
    assert len(sigmas) == 8 and all(0.6 <= s <= 0.9 for s in sigmas)
    with pytest.raises(ValueError, match="sigma range must satisfy 0 <= sigma_min < sigma_max"):
        nodes.TrainRelationTriplet.execute(*args, 0.9, 0.6)


def test_train_node_places_the_roles_where_it_is_told(pack, comfy):
    """placement motion_vo: the saved inference set (relation + ffn) sits on V, the MLP's second layer and O, none
    of it on Q/K; a placement the model's family lacks is refused by name."""
    nodes = pack["nodes"]
    exemplars = toy_exemplars(nodes)
    model = native_model(comfy, "wan")
    args = (model, FakeClip(), FakeVae(), exemplars, "placed", 2, 5e-3, 4, 4.0, 32, 32, 9, 50.0, 0.01, 0, 0,
            False, False, 0, "", 30, 0.0, 1.0)
    _, lora_path, _ = nodes.TrainRelationTriplet.execute(*args, "motion_vo").result
    with safe_open(lora_path, "pt") as f:
        modules = {k.split(".", 3)[3].rsplit(".lora_", 1)[0] for k in f.keys() if ".lora_" in k}
    assert modules == {"self_attn.v", "cross_attn.v", "ffn.2", "self_attn.o", "cross_attn.o"}
    assert "motion_vo" in nodes.training.PLACEMENTS and "reference" in nodes.training.PLACEMENTS
    with pytest.raises(ValueError, match="mochi: unknown placement 'motion_vo'"):
        nodes.TrainRelationTriplet.execute(native_model(comfy, "mochi"), *args[1:], "motion_vo")


def test_train_node_trains_without_hybrid_masks_when_told(pack, comfy):
    """hybrid_masks off (recommended on Wan-shaped models, docs/method.md): every step trains every role with no
    group drawn; on (the default, the paper's) each step draws one group; a resume across the two is refused."""
    nodes = pack["nodes"]
    exemplars = toy_exemplars(nodes)
    model = native_model(comfy, "wan")
    args = (model, FakeClip(), FakeVae(), exemplars, "joint", 6, 5e-3, 4, 4.0, 32, 32, 9, 50.0, 0.01, 0, 3,
            True, False, 0, "", 30, 0.0, 1.0, "default")
    nodes.TrainRelationTriplet.execute(*args, False)
    run = pack["root"] / "output" / "dreamrelation" / "joint"
    groups = [json.loads(line)["group"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert groups == [None] * 6
    assert json.loads((run / "run.json").read_text())["train"]["hybrid_masks"] is False
    with pytest.raises(ValueError, match=r"trained with other settings: train\.hybrid_masks"):
        nodes.TrainRelationTriplet.execute(*args[:5], 8, *args[6:], True)
    nodes.TrainRelationTriplet.execute(*args[:4], "masked", *args[5:])
    masked = pack["root"] / "output" / "dreamrelation" / "masked" / "log.jsonl"
    drawn = [json.loads(line)["group"] for line in masked.read_text().splitlines()]
    assert len(drawn) == 6 and set(drawn) <= {"relation", "subject1", "subject2"}


def test_exemplars_without_masks_train_without_hybrid_masks_only(pack, comfy, tmp_path):
    """Masks only weight the hybrid-mask loss, the costly step for an artist: Add Exemplar takes both masks or
    neither, a mask-less folder loads, and Train refuses unmasked exemplars, by name, only with hybrid masks on."""
    nodes = pack["nodes"]
    unmasked = toy_exemplars(nodes, masked=False)
    assert [ex["masks"] for ex in unmasked] == [None, None]
    images = unmasked[0]["frames"]
    with pytest.raises(ValueError, match="connect both subject masks, or neither"):
        nodes.AddExemplar.execute(images, "a shape approaches a shape", subject1_mask=torch.zeros(9, 32, 32))
    model = native_model(comfy, "wan")
    args = (model, FakeClip(), FakeVae(), unmasked, "unmasked", 2, 5e-3, 4, 4.0, 32, 32, 9, 50.0, 0.01, 0, 0, False)
    with pytest.raises(ValueError, match=r"exemplars \['exemplar_00', 'exemplar_01'\] have no subject masks.*"
                                         r"hybrid_masks off"):
        nodes.TrainRelationTriplet.execute(*args)
    trained, path, _ = nodes.TrainRelationTriplet.execute(*args, hybrid_masks=False).result
    assert Path(path).is_file()
    run = pack["root"] / "output" / "dreamrelation" / "unmasked"
    assert [json.loads(line)["group"] for line in (run / "log.jsonl").read_text().splitlines()] == [None, None]

    from dreamrelation_core.synthrel import write_exemplars

    folder = write_exemplars(tmp_path / "clips", "approaches", 2, [(("red", "circle"), ("blue", "square"))],
                             frames=9, size=(32, 32))
    shutil.rmtree(folder / "masks")
    items = nodes.LoadExemplarFolder.execute(str(folder), "", 81).result[0]
    assert len(items) == 2 and all(ex["masks"] is None and ex["frames"].shape == (9, 32, 32, 3) for ex in items)


def test_cancel_leaves_a_checkpoint_that_resumes(pack, comfy):
    nodes = pack["nodes"]
    exemplars = toy_exemplars(nodes)
    model = native_model(comfy, "wan")
    calls = {"n": 0}
    original = comfy.model_management.throw_exception_if_processing_interrupted

    def interrupt_at_third_step():
        calls["n"] += 1
        if calls["n"] == 3:
            raise comfy.model_management.InterruptProcessingException()
        return original()

    args = (model, FakeClip(), FakeVae(), exemplars, "cancelled", 6, 5e-3, 4, 4.0, 32, 32, 9, 50.0, 0.01, 0, 0, True)
    comfy.model_management.throw_exception_if_processing_interrupted = interrupt_at_third_step
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            nodes.TrainRelationTriplet.execute(*args)
    finally:
        comfy.model_management.throw_exception_if_processing_interrupted = original
    run = pack["root"] / "output" / "dreamrelation" / "cancelled"
    assert (run / "checkpoints" / "step_000003" / "state.pt").is_file()
    nodes.TrainRelationTriplet.execute(*args)                                   # resume=True continues at step 3
    steps = [json.loads(l)["step"] for l in (run / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_resume_is_keyed_by_the_runs_settings_and_exemplars(pack, comfy, caplog):
    """A finished run with the same settings and exemplars is reused, and says so; other settings, another rank or
    other exemplars are refused by name instead of serving the old LoRA; resume off trains anew."""
    import logging

    nodes = pack["nodes"]
    exemplars = toy_exemplars(nodes)
    model = native_model(comfy, "wan")

    def train(exemplars=exemplars, learning_rate=5e-3, rank=4, resume=True):
        return nodes.TrainRelationTriplet.execute(model, FakeClip(), FakeVae(), exemplars, "keyed", 2, learning_rate,
                                                  rank, 4.0, 32, 32, 9, 50.0, 0.01, 0, 1, resume).result

    first = train()
    log = pack["root"] / "output" / "dreamrelation" / "keyed" / "log.jsonl"
    trained_log = log.read_text()
    with caplog.at_level(logging.INFO):
        again = train()
    assert "keyed: reused the finished run (2 steps" in caplog.text and log.read_text() == trained_log
    assert again[2] == first[2]
    with pytest.raises(ValueError, match=r"lora_name 'keyed'.*other settings: train\.learning_rate \(0\.005 → 0\.001\)"
                                         r".*turn resume off"):
        train(learning_rate=1e-3)
    with pytest.raises(ValueError, match=r"lora\.rank \(4 → 8\)"):
        train(rank=8)
    changed = [dict(exemplars[0], caption="a different caption")] + exemplars[1:]
    with pytest.raises(ValueError, match="other settings: the exemplars"):
        train(exemplars=changed)
    fresh = train(learning_rate=1e-3, resume=False)                      # starts over, then resumes under new settings
    assert fresh[2] != first[2] and train(learning_rate=1e-3)[2] == fresh[2]


def test_mask_video_node_sources_and_validation(pack, tmp_path):
    nodes = pack["nodes"]
    from dreamrelation_core.synthrel import render_clip, write_exemplars

    video, masks, _ = render_clip("approaches", ("red", "circle"), ("blue", "square"), frames=17, size=(96, 128))
    images = torch.from_numpy(video).float() / 255
    m1, m2, preview = nodes.MaskVideo.execute(images, torch.from_numpy(masks[:, 0]), torch.from_numpy(masks[:, 1])).result
    assert torch.equal(m1, torch.from_numpy(masks[:, 0])) and preview.shape == images.shape
    write_exemplars(tmp_path, "approaches", 1, [(("red", "circle"), ("blue", "square"))], frames=17, size=(96, 128))
    f1, f2, _ = nodes.MaskVideo.execute(images, mask_folder=str(tmp_path / "masks" / "clip_00")).result
    assert torch.equal(f1, m1) and torch.equal(f2, m2)
    ys, xs = np.nonzero(masks[0, 0])
    box = f"{xs.min()},{ys.min()},{xs.max() - xs.min() + 1},{ys.max() - ys.min() + 1}"
    ys2, xs2 = np.nonzero(masks[0, 1])
    box2 = f"{xs2.min()},{ys2.min()},{xs2.max() - xs2.min() + 1},{ys2.max() - ys2.min() + 1}"
    t1, t2, _ = nodes.MaskVideo.execute(images, subject1_box=box, subject2_box=box2, refine_boxes=False).result
    assert t1.shape == m1.shape and t1[0].sum() > 0
    overlap = (t1 * m1).sum() / m1.sum()                                     # the tracked box covers the subject
    assert overlap > 0.8
    with pytest.raises(ValueError, match="subject2"):
        nodes.MaskVideo.execute(images, torch.from_numpy(masks[:, 0]))
    with pytest.raises(ValueError, match="one frame per video frame"):
        nodes.MaskVideo.execute(images, torch.from_numpy(masks[:4, 0]), torch.from_numpy(masks[:, 1]))
    with pytest.raises(ValueError, match="subject1_box"):
        nodes.MaskVideo.execute(images, subject1_box="1,2,3", subject2_box=box2)


def test_exemplar_folder_node(pack, tmp_path, monkeypatch):
    from dreamrelation_core.synthrel import write_exemplars

    write_exemplars(tmp_path, "approaches", 3, [(("red", "circle"), ("blue", "square"))], frames=9, size=(32, 32))
    items = pack["nodes"].LoadExemplarFolder.execute(str(tmp_path), "", 81).result[0]
    assert [i["name"] for i in items] == ["clip_00", "clip_01", "clip_02"]
    assert items[0]["frames"].shape == (9, 32, 32, 3) and items[0]["masks"].shape == (9, 2, 32, 32)
    assert items[0]["caption"] == "a red circle approaches a blue square"
    halved = pack["nodes"].LoadExemplarFolder.execute(str(tmp_path), "", 81, 8.0).result[0]   # 16 fps read at 8
    assert halved[0]["frames"].shape == (5, 32, 32, 3) and halved[0]["masks"].shape == (5, 2, 32, 32)
    assert torch.equal(halved[0]["frames"], items[0]["frames"][::2])
    assert torch.equal(halved[0]["masks"], items[0]["masks"][::2])
    # a relative folder is read from ComfyUI's input folder, as every stock loader does, not from the cwd
    import folder_paths
    monkeypatch.setattr(folder_paths, "input_directory", str(tmp_path.parent))
    relative = pack["nodes"].LoadExemplarFolder.execute(tmp_path.name, "", 81).result[0]
    assert [i["name"] for i in relative] == ["clip_00", "clip_01", "clip_02"]
    with pytest.raises(ValueError, match=r"folder: .*no_such_folder is not a folder"):
        pack["nodes"].LoadExemplarFolder.execute("no_such_folder", "", 81)
    with pytest.raises(ValueError, match="folder: give the folder"):
        pack["nodes"].LoadExemplarFolder.execute("  ", "", 81)


def test_training_works_on_a_model_loaded_under_inference_mode(pack, comfy):
    """ComfyUI runs every prompt under torch.inference_mode(): the loaded model's tensors are inference tensors."""
    nodes = pack["nodes"]
    with torch.inference_mode():
        model = native_model(comfy, "wan")
        exemplars = toy_exemplars(nodes)
        assert next(model.model.parameters()).is_inference()
        out = nodes.TrainRelationTriplet.execute(model, FakeClip(), FakeVae(), exemplars, "inference_mode", 2, 5e-3,
                                                 4, 4.0, 32, 32, 9, 50.0, 0.01, 0, 0, False, False)
    assert Path(out.result[1]).is_file()


def test_train_node_leaves_clip_hooks_out_of_its_conditioning(pack, comfy, monkeypatch):
    """A CLIP with hooks (Set CLIP Hooks) puts a hook group in each conditioning. Current ComfyUI's guider then samples
    a non-dynamic copy of the MODEL, one without the triplet (docs/comfyui.md), so the Train node leaves them out."""
    import comfy.hooks

    nodes = pack["nodes"]

    class HookedClip(FakeClip):
        def encode_from_tokens_scheduled(self, tokens):
            return [[c[0], {**c[1], "hooks": comfy.hooks.HookGroup()}]
                    for c in super().encode_from_tokens_scheduled(tokens)]

    seen, set_conds = [], comfy.samplers.CFGGuider.set_conds
    monkeypatch.setattr(comfy.samplers.CFGGuider, "set_conds",
                        lambda self, positive, negative: (seen.append(positive + negative),
                                                          set_conds(self, positive, negative))[1])
    nodes.TrainRelationTriplet.execute(native_model(comfy, "wan"), HookedClip(), FakeVae(), toy_exemplars(nodes),
                                       "hooked_clip", 1, 5e-3, 4, 4.0, 32, 32, 9, 50.0, 0.01, 0, 0, False, False)
    assert seen and all("hooks" not in cond[1] for conds in seen for cond in conds)


def test_train_node_renders_previews_with_the_relation_lora(pack, comfy):
    from dreamrelation_core.videoio import read_video

    nodes = pack["nodes"]
    model = native_model(comfy, "wan")
    nodes.TrainRelationTriplet.execute(model, FakeClip(), FakeVae(), toy_exemplars(nodes), "previewed", 4, 5e-3, 4,
                                       4.0, 32, 32, 9, 50.0, 0.01, 0, 0, False, False, 2,
                                       "a yellow triangle approaches a purple diamond", 3)
    samples = pack["root"] / "output" / "dreamrelation" / "previewed" / "samples"
    assert sorted(p.name for p in samples.iterdir()) == ["step_000002_0.mp4", "step_000004_0.mp4"]
    frames, _ = read_video(samples / "step_000004_0.mp4")
    assert frames.shape == (9, 32, 32, 3)


def test_train_node_previews_with_the_lora_at_high_noise_only(pack, comfy, monkeypatch):
    """preview_switch_sigma: the preview's steps at σ ≥ it run the relation and FFN LoRAs, the later steps the model
    alone (as Relation Sample with low_noise_model); 0 keeps the LoRA on every step."""
    from dreamrelation_core.archs import INFERENCE_ROLES

    nodes = pack["nodes"]
    backend = nodes.comfy_backend.ComfyBackend
    velocity, calls = backend._velocity, []

    def recorded(self, latents, sigma, index):
        if not torch.is_grad_enabled():                 # the preview's calls, not the training steps'
            calls.append((round(float(sigma.flatten()[0]), 4), frozenset(self.triplet.active)))
        return velocity(self, latents, sigma, index)

    monkeypatch.setattr(backend, "_velocity", recorded)
    previews = {}
    for switch in (0.0, 0.6):
        calls.clear()
        name = f"switch_{switch}".replace(".", "_")
        nodes.TrainRelationTriplet.execute(native_model(comfy, "wan"), FakeClip(), FakeVae(), toy_exemplars(nodes),
                                           name, 4, 5e-2, 4, 4.0, 32, 32, 9, 50.0, 0.01, 0, 0, False, False, 4,
                                           "a yellow triangle approaches a purple diamond", 4,
                                           preview_switch_sigma=switch)
        samples = pack["root"] / "output" / "dreamrelation" / name / "samples"
        previews[switch] = list(calls), (samples / "step_000004_0.mp4").read_bytes()
    inference, sigmas = frozenset(INFERENCE_ROLES), (1.0, 0.9, 0.75, 0.5)      # Wan's schedule for 4 steps
    # two calls a step (the prompt, then the unconditional text for CFG)
    assert previews[0.6][0] == [(s, inference if s >= 0.6 else frozenset()) for s in sigmas for _ in range(2)]
    assert previews[0.0][0] == [(s, inference) for s in sigmas for _ in range(2)]
    assert previews[0.6][1] != previews[0.0][1]


def test_train_node_on_native_mochi_with_fused_qkv(pack, comfy):
    """Mochi through the whole node: joint attention, text mask, fused q/k/v weight wrappers, fused export."""
    nodes = pack["nodes"]
    exemplars = toy_exemplars(nodes, frames=13)
    model = native_model(comfy, "mochi")
    clip = FakeClip(dim=32, length=16, with_mask=True)
    out = nodes.TrainRelationTriplet.execute(model, clip, FakeVae("mochi"), exemplars, "mochi_relation", 3, 5e-3, 4,
                                             4.0, 32, 32, 13, 50.0, 0.01, 0, 0, False, True)
    with safe_open(out.result[1], "pt") as f:
        keys = set(f.keys())
        meta = json.loads(f.metadata()["dreamrelation"])
    assert meta["arch"] == "mochi" and "diffusion_model.blocks.0.attn.qkv_x.lora_A.weight" in keys
    log = [json.loads(l) for l in (pack["root"] / "output" / "dreamrelation" / "mochi_relation" / "log.jsonl")
           .read_text().splitlines()]
    assert len(log) == 3 and all(np.isfinite(r["loss"]) for r in log)
    stock, _ = comfy.sd.load_lora_for_models(model, None, comfy.utils.load_torch_file(out.result[1]), 1.0, 0)
    stock.patch_model()
    stock.unpatch_model()


def test_comfyuis_own_nodes_module_is_not_shadowed_by_the_pack(pack):
    import sys

    import nodes

    from .conftest import COMFYUI_PATH, ROOT

    assert Path(nodes.__file__).resolve() == (Path(COMFYUI_PATH) / "nodes.py").resolve()
    assert str(ROOT) not in sys.path and pack["nodes"].__name__ == "dreamrelation_pack.nodes"


def test_train_node_on_native_wan22_5b(pack, comfy):
    """ComfyUI's Wan 2.2 TI2V-5B model (WAN22, flagged image-to-video, 48 latent channels at 16×) trains as
    text-to-video; its LoRA has Wan's native keys and stock ComfyUI applies it."""
    nodes = pack["nodes"]
    model = native_model(comfy, "wan22-5b")
    assert model.model.image_to_video and pack["backend"].native_architecture(model).name == "wan22-5b"
    exemplars = toy_exemplars(nodes, size=64)
    out = nodes.TrainRelationTriplet.execute(model, FakeClip(), FakeVae("wan22-5b"), exemplars, "wan22_relation", 2,
                                             5e-3, 4, 4.0, 64, 64, 9, 50.0, 0.01, 0, 0, False, True)
    with safe_open(out.result[1], "pt") as f:
        keys = set(f.keys())
        meta = json.loads(f.metadata()["dreamrelation"])
    assert meta["arch"] == "wan22-5b" and "diffusion_model.blocks.0.self_attn.q.lora_A.weight" in keys
    stock, _ = comfy.sd.load_lora_for_models(model, None, comfy.utils.load_torch_file(out.result[1]), 1.0, 0)
    stock.patch_model()
    stock.unpatch_model()


def test_wan22_a14b_trains_on_the_high_noise_expert_and_samples_as_the_stock_template(pack, comfy):
    """Workflow dreamrelation_train_relation_wan22_a14b: Train on the high-noise expert (shifted by 8 as in
    ComfyUI's Wan 2.2 template) at σ 0.875–1 only; Relation Sample, with that expert as model and the low-noise
    expert as low_noise_model at switch_sigma 0.875, then equals the template's two stock KSamplerAdvanced chained
    at Relation Switch Step's step: the relation LoRA on the high-noise expert's steps only."""
    import importlib

    from dreamrelation_core.archs import WAN

    nodes = pack["nodes"]
    shift = importlib.import_module("comfy_extras.nodes_model_advanced").ModelSamplingSD3()
    high, low = (shift.patch(native_model(comfy, "wan", seed=seed), 8.0)[0] for seed in (0, 1))    # two experts
    trained = nodes.TrainRelationTriplet.execute(high, FakeClip(), FakeVae(), toy_exemplars(nodes), "wan22_a14b", 3,
                                                 5e-2, 4, 4.0, 32, 32, 9, 50.0, 0.01, 0, 0, False, False, 0, "", 30,
                                                 0.875, 1.0).result[0]
    run = pack["root"] / "output" / "dreamrelation" / "wan22_a14b"
    assert all(json.loads(l)["sigma"] >= 0.875 for l in (run / "log.jsonl").read_text().splitlines())

    switch, steps = nodes.RelationSwitchStep.execute(trained, "simple", 20, 0.875).result
    sigmas = comfy.samplers.calculate_sigmas(high.get_model_object("model_sampling"), "simple", 20)
    assert (switch, steps) == (11, 20) and sigmas[10] >= 0.875 > sigmas[11]     # σ 0.889 | 0.867, shift 8
    clip, vae = FakeClip(), FakeVae()
    positive = clip.encode_from_tokens_scheduled("a bear high-fives a raccoon")
    negative = clip.encode_from_tokens_scheduled("")
    images = nodes.RelationSample.execute(trained, positive, negative, vae, 32, 32, 9, 20, 3.5, 42, 0.875,
                                          low).result[0]
    chained = stock_chain(trained, low, positive, negative, nodes.sampling.empty_latent(high, WAN, 9, 32, 32), 20,
                          3.5, 42, switch)
    assert torch.allclose(images, vae.decode(chained).reshape(images.shape), atol=1e-6)
    for other in (high, trained):        # each expert and the LoRA change the result: none of them is idle
        expert_alone = nodes.RelationSample.execute(other, positive, negative, vae, 32, 32, 9, 20, 3.5, 42).result[0]
        assert not torch.allclose(images, expert_alone, atol=1e-4)
    untrained = nodes.RelationSample.execute(high, positive, negative, vae, 32, 32, 9, 20, 3.5, 42, 0.875,
                                             low).result[0]
    assert not torch.allclose(images, untrained, atol=1e-4)


def test_bypass_mode_trains_as_the_weight_wrappers_and_is_chosen_for_dynamic_vram(pack, comfy, monkeypatch):
    """Bypass mode (forward hooks the patcher injects) gives the weight wrappers' velocity and LoRA gradients on a
    native Mochi (fused q/k/v) and Wan model, leaves no hook behind after the run, and is what a dynamically loaded
    MODEL (current ComfyUI's dynamic VRAM) gets; asking for weight wrappers there names the flag."""
    from dreamrelation_pack.dreamrelation_core.triplet import TripletConfig

    backend = pack["backend"]
    for arch, channels, tokens in (("wan", 16, 7), ("mochi", 12, 16)):
        outputs = {}
        for bypass in (False, True):
            trainer = backend.ComfyBackend(native_model(comfy, arch), TripletConfig(rank=2, alpha=2), seed=3,
                                           bypass=bypass)
            with torch.no_grad():                  # B is zero at init: give the LoRAs an effect to compare
                for k, p in enumerate(trainer.parameters().values()):
                    p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(k)) * 0.1)
            trainer.conditioning_of = {"clip": 0}
            g = torch.Generator().manual_seed(0)
            text, latents = torch.randn(1, tokens, 32, generator=g), torch.randn(1, channels, 3, 4, 4, generator=g)
            item = types.SimpleNamespace(name="clip")

            def inside(processed, trainer=trainer, bypass=bypass):
                trainer.activate(("relation", "subject1", "subject2", "ffn"))
                v = trainer.velocity(processed, torch.tensor([0.7]), [item])
                v.square().mean().backward()
                outputs[bypass] = (v.detach(), {n: p.grad.clone() for n, p in trainer.parameters().items()
                                                if p.grad is not None})

            cond = [[text, {"attention_mask": torch.ones(1, tokens, dtype=torch.long)} if arch == "mochi" else {}]]
            uncond = [[torch.zeros_like(text), dict(cond[0][1])]]
            with torch.inference_mode(False):
                trainer.run(inside, latents, cond, uncond)
            linears = [m for m in trainer.patcher.model.modules() if isinstance(m, torch.nn.Linear)]
            assert not any(m._forward_hooks for m in linears), "a bypass hook outlived the run"
        (v_w, g_w), (v_b, g_b) = outputs[False], outputs[True]
        assert torch.allclose(v_b, v_w, atol=1e-5), (arch, (v_b - v_w).abs().max())
        assert g_w.keys() == g_b.keys() and len(g_w) > 0
        for name in g_w:
            assert (g_b[name] - g_w[name]).norm() <= 1e-4 * g_w[name].norm() + 1e-7, (arch, name)
    model = native_model(comfy, "wan")
    monkeypatch.setattr(model, "is_dynamic", lambda: True, raising=False)
    assert backend.ComfyBackend(model, TripletConfig(rank=2, alpha=2)).bypass
    with pytest.raises(ValueError, match="--disable-dynamic-vram"):
        backend.ComfyBackend(model, TripletConfig(rank=2, alpha=2), bypass=False)


def test_backend_refuses_wan21_subclasses_and_flags_training(pack, comfy, monkeypatch):
    """Current ComfyUI: a model class derived from WAN21 (VACE, camera, …) is not taken for plain Wan;
    `in_training` is set while the trainer runs."""
    from dreamrelation_pack.dreamrelation_core.triplet import TripletConfig

    backend = pack["backend"]
    derived = native_model(comfy, "wan")
    derived.model.__class__ = type("WAN21_Camera", (comfy.model_base.WAN21,), {})
    with pytest.raises(ValueError, match="MODEL is a WAN21_Camera"):
        backend.native_architecture(derived)
    monkeypatch.setattr(comfy.model_management, "in_training", False, raising=False)
    seen = []
    trainer = backend.ComfyBackend(native_model(comfy, "wan"), TripletConfig(rank=2, alpha=2))
    text = torch.randn(1, 7, 32)
    trainer.run(lambda processed: seen.append(comfy.model_management.in_training), torch.randn(1, 16, 3, 4, 4),
                [[text, {}]], [[torch.zeros_like(text), {}]])
    assert seen == [True] and comfy.model_management.in_training is False
