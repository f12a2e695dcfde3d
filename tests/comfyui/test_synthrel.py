"""SynthRel in ComfyUI (workflow 4): the shipped base as a native MODEL/CLIP/VAE, exemplars, evaluator, training."""
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open


@pytest.fixture(scope="module")
def synthrel(pack):
    model, clip, vae = pack["nodes"].synthrel.LoadSynthRelBase.execute().result
    return model, clip, vae


def test_native_base_predicts_what_the_diffusers_base_does(pack, synthrel):
    """Same weights, same noisy latent and text: ComfyUI's Wan (through its flow model sampling) gives the
    canonical velocity of the core's SynthRel base."""
    from dreamrelation_core.archs import SYNTHREL
    from dreamrelation_core.synthrel.base import build_synthrel_base

    from dreamrelation_core.synthrel.protocol import DEFAULT

    model, clip, _ = synthrel
    base = build_synthrel_base(DEFAULT.weights)
    prompt = "a red striped circle pushes a shape"
    text, mask = base.text_encoder.encode([prompt])
    cond = clip.encode_from_tokens_scheduled(clip.tokenize(prompt))
    assert torch.equal(cond[0][0], text)
    x = torch.randn(1, 12, DEFAULT.frames, DEFAULT.size[0] // 2, DEFAULT.size[1] // 2,
                    generator=torch.Generator().manual_seed(0))
    for sigma in (0.9, 0.4):
        s = torch.tensor([sigma])
        with torch.no_grad():
            denoised = model.model.apply_model(x, s, c_crossattn=cond[0][0])
            expected = SYNTHREL.velocity(base.transformer, x, s, text, mask)
        assert torch.allclose((x - denoised) / sigma, expected, atol=1e-4), sigma
    assert model.model.model_sampling.shift == SYNTHREL.sample_shift


def test_base_loads_into_layers_built_empty(pack, comfy, synthrel, monkeypatch):
    """Current ComfyUI builds each Linear empty under dynamic VRAM (on by default on NVIDIA): weight and bias None
    until its state dict is loaded, `comfy_need_lazy_init_bias` saying whether a bias comes (comfy/ops.py,
    `disable_weight_init.Linear`; docs/comfyui.md). 0.3.64 has no such layers, so here its Linear is built that way,
    with upstream's loader for them: Load SynthRel Base then holds the same weights as in ordinary layers."""
    import comfy.ops

    class EmptyLinear(comfy.ops.disable_weight_init.Linear):
        def __init__(self, in_features, out_features, bias=True, device=None, dtype=None):
            torch.nn.Module.__init__(self)
            self.in_features, self.out_features = in_features, out_features
            self.weight = self.bias = None
            self.comfy_need_lazy_init_bias = bias

        def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                  error_msgs):
            for key, value in state_dict.items():
                if key[len(prefix):] in ("weight", "bias"):
                    setattr(self, key[len(prefix):], torch.nn.Parameter(value.clone(), requires_grad=False))
                else:
                    unexpected_keys.append(key)
            for name in ("weight", "bias") if self.comfy_need_lazy_init_bias else ("weight",):
                if getattr(self, name) is None:
                    missing_keys.append(prefix + name)

    monkeypatch.setattr(comfy.ops.disable_weight_init, "Linear", EmptyLinear)
    empty_built = pack["nodes"].synthrel.LoadSynthRelBase.execute().result[0]
    layers = [m for m in empty_built.model.diffusion_model.modules() if isinstance(m, EmptyLinear)]
    assert len(layers) > 20 and all(m.weight is not None for m in layers)
    ordinary = dict(synthrel[0].model.diffusion_model.state_dict())
    loaded = empty_built.model.diffusion_model.state_dict()
    assert sorted(loaded) == sorted(ordinary) and all(torch.equal(loaded[k], ordinary[k]) for k in ordinary)


def test_vae_is_the_exact_pixel_map(synthrel):
    _, _, vae = synthrel
    images = torch.randint(0, 256, (9, 32, 32, 3)).float() / 255
    latent = vae.encode(images)
    assert latent.shape == (1, 12, 9, 16, 16)
    assert torch.allclose(vae.decode(latent)[0], images, atol=1e-6)
    with pytest.raises(ValueError, match="divisible by 2"):
        vae.encode(torch.zeros(9, 31, 32, 3))


def test_exemplars_node_and_evaluator_on_ground_truth(pack):
    """The exemplars node renders the default protocol's exemplars (generic captions, exact masks) and a prompt of
    unseen subjects; the evaluate node passes a ground-truth render of that prompt, fails another relation and names
    an exemplar texture that leaks into a test subject."""
    from dreamrelation_core.synthrel.protocol import DEFAULT as p
    from dreamrelation_core.synthrel.render import Subject, parse_caption, render_clip

    nodes = pack["nodes"].synthrel
    items, frames, prompt = nodes.SynthRelExemplars.execute("orbits", 3, 5).result
    assert [i["name"] for i in items] == ["clip_00", "clip_01", "clip_02"]
    height, width = p.size
    assert frames.shape == (3 * p.frames, height, width, 3) and items[0]["masks"].shape == (p.frames, 2, height, width)
    assert [i["caption"] for i in items] == ["a shape orbits a shape"] * 3
    # clip 1: the second exemplar pair, seed 5 + 1; its masks mark exactly the subjects' pixels
    video, masks, _ = render_clip("orbits", *p.exemplar_pairs[1], p.frames, p.size, 6, p.look, (), ())
    assert torch.equal(items[1]["masks"], torch.from_numpy(masks).float())
    assert torch.allclose(items[1]["frames"], torch.from_numpy(video).float() / 255)
    relation, s1, s2 = parse_caption(prompt)
    assert relation == "orbits" and (s1, s2) == p.test_subjects(1)[0]

    def judge(relation, subject1, subject2) -> str:
        truth, _, _ = render_clip(relation, subject1, subject2, p.frames, p.size, 0, p.look)
        verdict = nodes.SynthRelEvaluate.execute(torch.from_numpy(truth).float() / 255, prompt)
        assert verdict.ui.as_dict()["text"] == (verdict.result[0],)
        return verdict.result[0]

    assert judge("orbits", s1, s2).startswith("PASS") and judge("orbits", s1, s2).endswith("leaked: none")
    assert judge("approaches", s1, s2).startswith("FAIL")
    exemplar_texture = p.exemplar_pairs[0][0].texture
    leaky = judge("orbits", Subject(s1.colour, exemplar_texture, s1.shape), s2)
    assert "not all rendered" in leaky and leaky.endswith(f"leaked: {exemplar_texture}")
    with pytest.raises(ValueError, match="not a SynthRel caption"):
        nodes.SynthRelEvaluate.execute(torch.from_numpy(video).float() / 255, "a bear orbits a raccoon")


def test_train_and_sample_on_the_native_synthrel_base(pack, comfy, synthrel):
    """The training node runs on the native SynthRel model (SynthRel latent geometry, not Wan's), the saved LoRA
    maps fully onto ComfyUI keys, and Relation Sample renders a clip of the protocol's size with it."""
    from dreamrelation_core.archs import SYNTHREL
    from dreamrelation_core.formats import comfyui_unmapped_keys
    from dreamrelation_core.synthrel.protocol import DEFAULT

    (height, width), frames = DEFAULT.size, DEFAULT.frames
    nodes = pack["nodes"]
    model, clip, vae = synthrel
    exemplars, _, prompt = nodes.synthrel.SynthRelExemplars.execute("pushes", 2, 0).result
    trained, lora_path, _ = nodes.TrainRelationTriplet.execute(
        model, clip, vae, exemplars, "synthrel_pushes", 3, 1e-3, 4, 4.0, width, height, frames, 50.0, 0.01, 0, 0,
        False, False).result
    with safe_open(lora_path, "pt") as f:
        meta = json.loads(f.metadata()["dreamrelation"])
        keys = list(f.keys())
    assert meta["arch"] == SYNTHREL.name and comfyui_unmapped_keys(keys, SYNTHREL) == []
    log = (pack["root"] / "output" / "dreamrelation" / "synthrel_pushes" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log] == [1, 2, 3]

    positive = clip.encode_from_tokens_scheduled(clip.tokenize(prompt))
    negative = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    images = nodes.RelationSample.execute(trained, positive, negative, vae, width, height, frames, 4, 4.0, 0).result[0]
    assert images.shape == (frames, height, width, 3) and 0 <= images.min() and images.max() <= 1
    before = nodes.RelationSample.execute(model, positive, negative, vae, width, height, frames, 4, 4.0, 0).result[0]
    assert not np.allclose(images.numpy(), before.numpy())      # the LoRA changes what is drawn

    # The LoRA on the high-noise steps only: exactly what two stock KSamplerAdvanced nodes give, chained at the
    # switch (the trained model down to σ 0.6, the model without the LoRA after it).
    from .native_models import native_model, stock_chain

    sample = nodes.RelationSample.execute
    gated = sample(trained, positive, negative, vae, width, height, frames, 4, 4.0, 0, 0.6, model).result[0]
    # Relation Switch Step gives that step (and the steps) for the stock chain
    switch, steps = nodes.RelationSwitchStep.execute(trained, "simple", 4, 0.6).result
    assert (switch, steps) == (2, 4)                          # σ 1, 0.75 | 0.5, 0.25
    # uni_pc steps 5 steps' schedule without its penultimate σ: 1, 0.8, 0.6 | 0.4
    assert nodes.RelationSwitchStep.execute(trained, "simple", 4, 0.6, "uni_pc").result == (3, 4)
    with pytest.raises(ValueError, match="switch_sigma 1.01 is above every step's σ of the simple schedule"):
        nodes.RelationSwitchStep.execute(trained, "simple", 4, 1.01)
    chained = stock_chain(trained, model, positive, negative,
                          nodes.sampling.empty_latent(model, SYNTHREL, frames, height, width), 4, 4.0, 0, switch)
    assert torch.allclose(gated, vae.decode(chained).reshape(gated.shape), atol=1e-6)
    assert not np.allclose(gated.numpy(), images.numpy()) and not np.allclose(gated.numpy(), before.numpy())
    assert torch.equal(sample(trained, positive, negative, vae, width, height, frames, 4, 4.0, 0, 0.0,
                              model).result[0], images)           # switch at 0: the LoRA on every step
    assert torch.allclose(sample(trained, positive, negative, vae, width, height, frames, 4, 4.0, 0, 1.01,
                                 model).result[0], before, atol=1e-6)   # above every σ: the model alone
    with pytest.raises(ValueError, match="low_noise_model is a wan model but model is synthrel"):
        sample(trained, positive, negative, vae, width, height, frames, 4, 4.0, 0, 0.6, native_model(comfy, "wan"))


PACK_WITHOUT_TRAINER_STACK = r'''
import importlib.util, sys

for name in ("peft", "accelerate"):      # as if not installed: imports fail, find_spec says absent
    sys.modules[name] = None
import comfy.cli_args
comfy.cli_args.args.cpu = True
import folder_paths
root, out = sys.argv[1], sys.argv[2]
folder_paths.set_output_directory(out)
folder_paths.add_model_folder_path("loras", out + "/loras", is_default=True)
spec = importlib.util.spec_from_file_location("dreamrelation_pack", root + "/__init__.py",
                                              submodule_search_locations=[root])
pack = importlib.util.module_from_spec(spec)
sys.modules["dreamrelation_pack"] = pack
spec.loader.exec_module(pack)
nodes = importlib.import_module("dreamrelation_pack.nodes")
model, clip, vae = nodes.synthrel.LoadSynthRelBase.execute().result
exemplars, _, prompt = nodes.synthrel.SynthRelExemplars.execute("pushes", 2, 0).result
height, width = 40, 40
trained, lora_path, _ = nodes.TrainRelationTriplet.execute(model, clip, vae, exemplars, "no_peft", 2, 1e-3, 4, 4.0,
    width, height, 9, 50.0, 0.01, 0, 0, False, False).result
positive = clip.encode_from_tokens_scheduled(clip.tokenize(prompt))
negative = clip.encode_from_tokens_scheduled(clip.tokenize(""))
images = nodes.RelationSample.execute(trained, positive, negative, vae, width, height, 9, 2, 4.0, 0).result[0]
assert not [m for m in sys.modules if m.startswith(("peft.", "accelerate."))]
print("ok", tuple(images.shape))
'''


def test_the_pack_trains_and_samples_without_peft_or_accelerate(tmp_path):
    """requirements.txt (what ComfyUI-Manager installs) leaves out the headless trainer's stack: the ComfyUI path
    loads, trains and samples with peft and accelerate unimportable."""
    import os
    import subprocess
    import sys

    from .conftest import COMFYUI_PATH, ROOT, stub_path

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (COMFYUI_PATH, stub_path()))),
           "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", PACK_WITHOUT_TRAINER_STACK, str(ROOT), str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0 and "ok (9, 40, 40, 3)" in run.stdout, run.stderr[-3000:]
