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

    model, clip, _ = synthrel
    base = build_synthrel_base()
    prompt = "a red circle pushes a blue square"
    text, mask = base.text_encoder.encode([prompt])
    cond = clip.encode_from_tokens_scheduled(clip.tokenize(prompt))
    assert torch.equal(cond[0][0], text)
    x = torch.randn(1, 12, 9, 16, 16, generator=torch.Generator().manual_seed(0))
    for sigma in (0.9, 0.4):
        s = torch.tensor([sigma])
        with torch.no_grad():
            denoised = model.model.apply_model(x, s, c_crossattn=cond[0][0])
            expected = SYNTHREL.velocity(base.transformer, x, s, text, mask)
        assert torch.allclose((x - denoised) / sigma, expected, atol=1e-4), sigma
    assert model.model.model_sampling.shift == SYNTHREL.sample_shift


def test_vae_is_the_exact_pixel_map(synthrel):
    _, _, vae = synthrel
    images = torch.randint(0, 256, (9, 32, 32, 3)).float() / 255
    latent = vae.encode(images)
    assert latent.shape == (1, 12, 9, 16, 16)
    assert torch.allclose(vae.decode(latent)[0], images, atol=1e-6)
    with pytest.raises(ValueError, match="divisible by 2"):
        vae.encode(torch.zeros(9, 31, 32, 3))


def test_exemplars_node_and_evaluator_on_ground_truth(pack):
    from dreamrelation_core.synthrel.quality import EXEMPLAR_COLOURS
    from dreamrelation_core.synthrel.render import parse_caption, render_clip

    nodes = pack["nodes"].synthrel
    items, frames, prompt = nodes.SynthRelExemplars.execute("orbits", 3, 5).result
    assert [i["name"] for i in items] == ["clip_00", "clip_01", "clip_02"]
    assert frames.shape == (27, 32, 32, 3) and items[0]["masks"].shape == (9, 2, 32, 32)
    assert all(i["caption"].startswith("a ") and " orbits " in i["caption"] for i in items)
    # masks mark exactly the subject's pixels: its colour inside the mask
    pairs = [(c, s) for c, _, s in parse_caption(items[1]["caption"])[1:]]
    video, masks, _ = render_clip("orbits", *pairs, 9, (32, 32), seed=6)
    assert torch.equal(items[1]["masks"], torch.from_numpy(masks).float())
    relation, s1, s2 = parse_caption(prompt)
    assert relation == "orbits" and not {s1[0], s2[0]} & set(EXEMPLAR_COLOURS)

    s1, s2 = (s1.colour, s1.shape), (s2.colour, s2.shape)
    truth, _, _ = render_clip("orbits", s1, s2, 9, (32, 32), seed=0)
    verdict = nodes.SynthRelEvaluate.execute(torch.from_numpy(truth).float() / 255, prompt)
    assert verdict.result[0].startswith("PASS") and verdict.ui.as_dict()["text"] == (verdict.result[0],)
    other, _, _ = render_clip("approaches", s1, s2, 9, (32, 32), seed=0)
    assert nodes.SynthRelEvaluate.execute(torch.from_numpy(other).float() / 255, prompt).result[0].startswith("FAIL")
    with pytest.raises(ValueError, match="not a SynthRel caption"):
        nodes.SynthRelEvaluate.execute(torch.from_numpy(truth).float() / 255, "a bear orbits a raccoon")


def test_train_and_sample_on_the_native_synthrel_base(pack, comfy, synthrel):
    """The training node runs on the native SynthRel model (SynthRel latent geometry, not Wan's), the saved LoRA
    maps fully onto ComfyUI keys, and Relation Sample renders a 9-frame 32×32 clip with it."""
    from dreamrelation_core.archs import SYNTHREL
    from dreamrelation_core.formats import comfyui_unmapped_keys

    nodes = pack["nodes"]
    model, clip, vae = synthrel
    exemplars, _, prompt = nodes.synthrel.SynthRelExemplars.execute("pushes", 2, 0).result
    trained, lora_path = nodes.TrainRelationTriplet.execute(
        model, clip, vae, exemplars, "synthrel_pushes", 3, 1e-3, 4, 4.0, 32, 32, 9, 50.0, 0.01, 0, 0, False,
        False).result
    with safe_open(lora_path, "pt") as f:
        meta = json.loads(f.metadata()["dreamrelation"])
        keys = list(f.keys())
    assert meta["arch"] == SYNTHREL.name and comfyui_unmapped_keys(keys, SYNTHREL) == []
    log = (pack["root"] / "output" / "dreamrelation" / "synthrel_pushes" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log] == [1, 2, 3]

    positive = clip.encode_from_tokens_scheduled(clip.tokenize(prompt))
    negative = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    images = nodes.RelationSample.execute(trained, positive, negative, vae, 32, 32, 9, 4, 4.0, 0).result[0]
    assert images.shape == (9, 32, 32, 3) and 0 <= images.min() and images.max() <= 1
    before = nodes.RelationSample.execute(model, positive, negative, vae, 32, 32, 9, 4, 4.0, 0).result[0]
    assert not np.allclose(images.numpy(), before.numpy())      # the LoRA changes what is drawn
