import pytest
import torch

from dreamrelation_core.archs import SYNTHREL
from dreamrelation_core.bases import load_base
from dreamrelation_core.synthrel.base import HELD_OUT, KNOWN, PixelCodec, model_card, pretrain, random_clip
from dreamrelation_core.synthrel.protocol import DEFAULT


def test_pixel_codec_is_exactly_invertible():
    codec = PixelCodec()
    video = torch.rand(2, 3, 5, 32, 32) * 2 - 1
    mean, std = codec.encode(video)
    assert mean.shape == (2, 12, 5, 16, 16) and torch.count_nonzero(std) == 0
    assert torch.equal(codec.decode(mean), video)
    assert codec.latent_shape(9, 32, 32) == (12, 9, 16, 16)


def test_synthrel_base_loads_and_runs():
    base = load_base("synthrel")
    assert base.arch is SYNTHREL and base.arch.latent_frames(9) == 9
    video, caption = random_clip(__import__("random").Random(0))
    assert video.shape == (3, 9, 40, 40) and caption.split()[0] == "a"
    assert (SYNTHREL.default_frames, SYNTHREL.default_size) == (DEFAULT.frames, DEFAULT.size)
    z, _ = base.codec.encode(video[None])
    text, mask = base.text_encoder.encode([caption])
    with torch.no_grad():
        v = SYNTHREL.velocity(base.transformer, z, torch.tensor([0.5]), text, mask)
    assert v.shape == z.shape
    assert set(KNOWN).isdisjoint(HELD_OUT) and len(KNOWN) + len(HELD_OUT) == 8


def test_pretraining_resumes_where_it_stopped(tmp_path):
    pretrain(tmp_path / "a", steps=4, batch=1, checkpoint_every=2, progress=False)
    # A run stopped early writes the EMA it has reached, to be judged before it goes on.
    from safetensors.torch import load_file
    partial = pretrain(tmp_path / "b", steps=4, batch=1, checkpoint_every=2, progress=False, max_steps=2)
    state = torch.load(tmp_path / "b" / "pretrain_state.pt", weights_only=True)
    assert partial.name == "synthrel_base_step2.safetensors" and state["step"] == 2
    assert all(torch.equal(load_file(str(partial))[k], v) for k, v in state["ema"].items())
    # A run killed after its checkpoint has logged steps that the resumed run does again: they must not double.
    with open(tmp_path / "b" / "log.jsonl", "a") as log:
        log.write('{"step": 3, "loss": 9.0}\n')
    pretrain(tmp_path / "b", steps=4, batch=1, checkpoint_every=2, progress=False)
    losses = [[__import__("json").loads(l)["loss"] for l in (tmp_path / d / "log.jsonl").read_text().splitlines()]
              for d in ("a", "b")]
    assert len(losses[0]) == 4 and losses[0] == losses[1]
    # The shipped weights are the EMA, not the last training weights.
    state = torch.load(tmp_path / "b" / "pretrain_state.pt", weights_only=True)
    shipped = load_file(str(tmp_path / "b" / "synthrel_base.safetensors"))
    assert all(torch.equal(shipped[k], v) for k, v in state["ema"].items())
    assert any(not torch.equal(shipped[k], v) for k, v in state["model"].items())
    # The model card describes the run it is given (its recorded transformer), not whatever the code holds now.
    import json
    settings = json.loads((tmp_path / "a" / "pretrain.json").read_text())
    assert settings["transformer"]["num_layers"] == SYNTHREL.tiny_transformer["num_layers"]
    settings["transformer"]["num_layers"] = 99
    (tmp_path / "a" / "pretrain.json").write_text(json.dumps(settings))
    report = {r: {"relation_accuracy": 0.5, "subjects_present": 1.0, "held_out": r in HELD_OUT} for r in KNOWN + HELD_OUT}
    card = model_card(tmp_path / "a", report)
    assert "(99 layers" in card and card.count("| 0.500 | 1.000 |") == 8


def test_v2_pretraining_draws_textured_clips_and_partial_captions(tmp_path):
    import json
    import random

    from dreamrelation_core.synthrel.protocol import V2
    from dreamrelation_core.synthrel.render import parse_caption

    rng = random.Random(0)
    clips = [random_clip(rng, KNOWN, V2) for _ in range(200)]
    assert all(video.shape == (3, 9, 40, 40) for video, _ in clips)
    specs = [s for _, text in clips for s in parse_caption(text)[1:]]
    named = [sum(a is not None for a in s) for s in specs]
    assert 0.4 < named.count(3) / len(named) < 0.6 and 0.08 < named.count(0) / len(named) < 0.22
    assert {s.texture for s in specs} >= {"plain", "striped", "dotted", "shaded"}
    assert all(parse_caption(text)[0] in KNOWN for _, text in clips)

    pretrain(tmp_path, steps=1, batch=1, progress=False, protocol="v2")
    assert json.loads((tmp_path / "pretrain.json").read_text())["protocol"] == "v2"
    report = {r: {"relation_accuracy": 0.0, "subjects_present": 0.0, "held_out": r in HELD_OUT} for r in KNOWN}
    card = model_card(tmp_path, report)
    assert "9-frame 40×40 SynthRel clips (protocol v2)" in card and "7 textures" in card and "--protocol v2" in card
    with pytest.raises(ValueError, match="unknown SynthRel protocol 'v3'"):
        pretrain(tmp_path / "x", steps=1, protocol="v3")


def test_pretraining_can_start_from_another_protocols_base(tmp_path):
    """`init`: v2 pretraining starts from the shipped v1 weights (lr 0 keeps them exactly), says so in
    pretrain.json and the model card, and refuses a missing file by name."""
    import json

    from safetensors.torch import load_file

    from dreamrelation_core.synthrel.protocol import V1

    pretrain(tmp_path, steps=1, batch=1, lr=0.0, progress=False, protocol="v2", init=V1.weights)
    start, written = load_file(str(V1.weights)), load_file(str(tmp_path / "synthrel_base.safetensors"))
    assert start.keys() == written.keys() and all(torch.equal(start[k], written[k]) for k in start)
    assert json.loads((tmp_path / "pretrain.json").read_text())["init"] == V1.weights.name
    card = model_card(tmp_path, {})
    assert f"Initialised from `{V1.weights.name}`" in card and "--init dreamrelation_core/synthrel/weights/" in card
    with pytest.raises(FileNotFoundError, match="init: no weights file at .*missing.safetensors"):
        pretrain(tmp_path / "x", steps=1, init=tmp_path / "missing.safetensors")


def test_pretraining_can_give_the_base_a_weak_prior_on_a_held_out_relation(tmp_path, monkeypatch):
    """`prior`: a held-out relation drawn as often as a known one (docs/benchmarks.md, "A base that renders the
    held-out relation weakly"), recorded in pretrain.json and the model card; a known relation is refused by name."""
    import json

    from dreamrelation_core.cli import main
    from dreamrelation_core.synthrel import base as base_module

    drawn, original = [], base_module.random_clip

    def random_clip(rng, relations, protocol):
        drawn.append(relations)
        return original(rng, relations, protocol)

    monkeypatch.setattr(base_module, "random_clip", random_clip)
    assert main(["pretrain-synthrel", "--out", str(tmp_path), "--steps", "1", "--batch", "2", "--protocol", "v2",
                 "--prior-relation", "pushes", "--ema-decay", "0.99"]) == 0
    assert drawn == [KNOWN + ("pushes",)] * 2
    settings = json.loads((tmp_path / "pretrain.json").read_text())
    assert settings["prior"] == ["pushes"] and settings["ema_decay"] == 0.99
    card = model_card(tmp_path, {})
    assert "Held out (never seen): orbits. Seen as often as a known relation, for a weak prior: pushes." in card
    assert "--prior-relation 'pushes' --ema-decay 0.99`" in card
    with pytest.raises(ValueError, match=r"prior: \['follows'\] are not held-out relations"):
        pretrain(tmp_path / "x", steps=1, prior=("follows",))
