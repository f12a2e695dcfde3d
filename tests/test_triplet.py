import pytest
import torch

from dreamrelation_core.archs import INFERENCE_ROLES, MOCHI, ROLES, WAN
from dreamrelation_core.triplet import (GROUP_ROLES, TripletConfig, activate, inject_triplet, lora_parameters,
                                        merge_inference_set, resolve_targets, role_parameters, run_inference_set)


def inputs(arch, model, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = model.config
    latents = torch.randn(1, c.in_channels, 3, 8, 8, generator=g)
    text_dim = c.text_dim if arch is WAN else c.text_embed_dim
    text_len = 7 if arch is WAN else c.max_sequence_length
    text = torch.randn(1, text_len, text_dim, generator=g)
    mask = torch.ones(1, text_len, dtype=torch.bool)
    return latents, torch.tensor([0.4]), text, mask


def randomize_lora(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora_parameters(model).values():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def test_role_targets_wan(make_tiny):
    targets = resolve_targets(make_tiny(WAN), WAN)
    assert sorted(targets["relation"]) == sorted(f"blocks.{i}.{a}.{p}" for i in range(2)
                                                 for a in ("attn1", "attn2") for p in ("to_q", "to_k"))
    assert sorted(targets["subject1"]) == sorted(f"blocks.{i}.{a}.to_v" for i in range(2) for a in ("attn1", "attn2"))
    assert targets["subject2"] == targets["subject1"]
    assert sorted(targets["ffn"]) == sorted(f"blocks.{i}.{a}.to_out.0" for i in range(2) for a in ("attn1", "attn2"))


def test_role_targets_mochi_last_block_has_no_text_output(make_tiny):
    targets = resolve_targets(make_tiny(MOCHI), MOCHI)
    blocks = [f"transformer_blocks.{i}.attn1" for i in range(2)]
    assert sorted(targets["relation"]) == sorted(f"{b}.{m}" for b in blocks
                                                 for m in ("to_q", "to_k", "add_q_proj", "add_k_proj"))
    assert sorted(targets["subject1"]) == sorted(f"{b}.{m}" for b in blocks for m in ("to_v", "add_v_proj"))
    assert sorted(targets["ffn"]) == sorted([f"{blocks[0]}.to_out.0", f"{blocks[0]}.to_add_out", f"{blocks[1]}.to_out.0"])


def test_extra_targets_and_bad_roles(make_tiny):
    model = make_tiny(WAN)
    targets = resolve_targets(model, WAN, TripletConfig(extra_targets={"ffn": ["ffn.net.0.proj", "ffn.net.2"]}))
    assert "blocks.1.ffn.net.0.proj" in targets["ffn"] and "blocks.0.ffn.net.2" in targets["ffn"]
    with pytest.raises(ValueError, match="unknown roles"):
        resolve_targets(model, WAN, TripletConfig(extra_targets={"style": ["ffn.net.2"]}))


def test_reference_placement_is_the_default_and_the_documented_modules(make_tiny):
    model = make_tiny(WAN)
    assert WAN.default_placement == MOCHI.default_placement == "reference"
    assert resolve_targets(model, WAN, TripletConfig(placement="reference")) == resolve_targets(model, WAN)
    assert WAN.role_modules() == {"relation": ("attn1.to_q", "attn1.to_k", "attn2.to_q", "attn2.to_k"),
                                  "subject1": ("attn1.to_v", "attn2.to_v"), "subject2": ("attn1.to_v", "attn2.to_v"),
                                  "ffn": ("attn1.to_out.0", "attn2.to_out.0")}


def test_wan_placements_move_the_roles(make_tiny):
    model = make_tiny(WAN)
    assert len(WAN.placements) >= 4

    def rel(placement):
        targets = resolve_targets(model, WAN, TripletConfig(placement=placement))
        return {role: sorted({n.split(".", 2)[2] for n in names}) for role, names in targets.items()}

    qk, v, o = ["attn1.to_k", "attn1.to_q", "attn2.to_k", "attn2.to_q"], ["attn1.to_v", "attn2.to_v"], \
        ["attn1.to_out.0", "attn2.to_out.0"]
    assert rel("reference_mlp") == {"relation": qk, "subject1": v, "subject2": v,
                                    "ffn": sorted(o + ["ffn.net.0.proj", "ffn.net.2"])}
    assert rel("relation_mlp")["relation"] == sorted(qk + ["ffn.net.0.proj", "ffn.net.2"])
    motion = rel("motion_vo")
    assert motion["relation"] == sorted(v + ["ffn.net.2"]) and motion["ffn"] == o
    assert motion["subject1"] == motion["subject2"] == sorted(qk + ["ffn.net.0.proj"])
    with pytest.raises(ValueError, match="unknown placement 'qkv'.*motion_vo"):
        resolve_targets(model, WAN, TripletConfig(placement="qkv"))


@pytest.mark.parametrize("placement", sorted(WAN.placements))
def test_every_placement_trains_and_merges_as_its_roles_say(make_tiny, placement):
    """Group gating and the inference merge follow the placement: the merged model equals the run with relation +
    ffn active, and a subject-only step moves only the subject and ffn LoRAs."""
    model = make_tiny(WAN)
    x = inputs(WAN, model)
    inject_triplet(model, WAN, TripletConfig(rank=2, alpha=2, placement=placement))
    randomize_lora(model)
    activate(model, GROUP_ROLES["subject1"])
    WAN.velocity(model, *x).pow(2).mean().backward()
    moved = {n.split(".lora_")[1].split(".")[1] for n, p in lora_parameters(model).items() if p.grad is not None}
    assert moved == {"subject1", "ffn"}
    activate(model, ("relation", "ffn"))
    with torch.no_grad():
        expected = WAN.velocity(model, *x)
        merge_inference_set(model)
        assert torch.allclose(WAN.velocity(model, *x), expected, atol=1e-5)


def test_injection_shapes_and_identity_at_init(make_tiny):
    model = make_tiny(WAN)
    x = inputs(WAN, model)
    before = WAN.velocity(model, *x)
    inject_triplet(model, WAN, TripletConfig(rank=4, alpha=8, ranks={"ffn": 2}))
    params = role_parameters(model, "relation")
    assert params["blocks.0.attn1.to_q.lora_A.relation.weight"].shape == (4, 32)
    assert params["blocks.0.attn1.to_q.lora_B.relation.weight"].shape == (32, 4)
    assert role_parameters(model, "ffn")["blocks.0.attn2.to_out.0.lora_A.ffn.weight"].shape == (2, 32)
    assert all(p.dtype == torch.float32 for p in lora_parameters(model).values())
    assert torch.allclose(WAN.velocity(model, *x), before, atol=1e-6)      # B = 0 at init


@pytest.mark.parametrize("arch", [WAN, MOCHI], ids=["wan", "mochi"])
@pytest.mark.parametrize("group", ["relation", "subject1", "subject2"])
def test_only_drawn_group_gets_gradients(make_tiny, arch, group):
    model = make_tiny(arch)
    inject_triplet(model, arch, TripletConfig(rank=4, alpha=4))
    randomize_lora(model)
    activate(model, GROUP_ROLES[group])
    arch.velocity(model, *inputs(arch, model)).pow(2).mean().backward()
    # Mochi's last block discards the text stream's attention output, so the text-query LoRA there (kept, as in
    # the reference) has an exactly zero gradient; every other active parameter must learn.
    dead = "transformer_blocks.1.attn1.add_q_proj."
    for role in ("relation", "subject1", "subject2", "ffn"):
        grads = {n: p.grad for n, p in role_parameters(model, role).items()}
        if role in GROUP_ROLES[group]:
            assert all(g is not None for g in grads.values()), role
            assert all(g.abs().sum() > 0 for n, g in grads.items() if not n.startswith(dead)), role
        else:
            assert all(g is None for g in grads.values()), role


def test_inactive_adapters_are_not_computed(make_tiny):
    model = make_tiny(WAN)
    inject_triplet(model, WAN, TripletConfig(rank=4, alpha=4))
    calls = {}
    for name, module in model.named_modules():
        if ".lora_A." in name:
            role = name.rsplit(".", 1)[1]
            module.register_forward_hook(lambda *_, role=role: calls.__setitem__(role, calls.get(role, 0) + 1))
    activate(model, GROUP_ROLES["subject1"])
    WAN.velocity(model, *inputs(WAN, model))
    assert set(calls) == {"subject1", "ffn"}


@pytest.mark.parametrize("arch", [WAN, MOCHI], ids=["wan", "mochi"])
def test_merged_inference_equals_unmerged_relation_and_ffn(make_tiny, arch):
    model = make_tiny(arch)
    inject_triplet(model, arch, TripletConfig(rank=4, alpha=8))
    randomize_lora(model)
    x = inputs(arch, model)
    with torch.no_grad():
        activate(model, ("relation", "ffn"))
        unmerged = arch.velocity(model, *x)
        activate(model, ("relation", "subject1", "subject2", "ffn"))
        with_subjects = arch.velocity(model, *x)
        merge_inference_set(model)
        merged = arch.velocity(model, *x)
    assert torch.allclose(merged, unmerged, atol=1e-5)
    assert not torch.allclose(with_subjects, unmerged, atol=1e-3)       # subjects really are dropped


def test_subject_strength_merges_the_subject_loras_too(make_tiny):
    """`sample --subject-strength` (an experiment): strength 1 merges the subject LoRAs as well, giving what all four
    roles give unmerged; strength 0 gives the inference set. They used to be the same."""
    for strength, active in ((1.0, ROLES), (0.0, INFERENCE_ROLES)):
        model = make_tiny(WAN)
        inject_triplet(model, WAN, TripletConfig(rank=4, alpha=8))
        randomize_lora(model)
        x = inputs(WAN, model)
        with torch.no_grad():
            activate(model, active)
            unmerged = WAN.velocity(model, *x)
            merge_inference_set(model, {"subject1": strength, "subject2": strength})
            merged = WAN.velocity(model, *x)
        assert torch.allclose(merged, unmerged, atol=1e-5), strength


def test_strengths_scale_the_merged_delta(make_tiny):
    model = make_tiny(WAN)
    inject_triplet(model, WAN, TripletConfig(rank=4, alpha=4))
    randomize_lora(model)
    layer = dict(model.named_modules())["blocks.0.attn1.to_q"]
    w0 = layer.get_base_layer().weight.detach().clone()
    delta = layer.lora_B["relation"].weight @ layer.lora_A["relation"].weight
    merge_inference_set(model, {"relation": 0.5, "ffn": 1.0})
    merged = dict(model.named_modules())["blocks.0.attn1.to_q"].weight
    assert torch.allclose(merged, w0 + 0.5 * delta, atol=1e-6)


def test_unmerged_inference_set_at_strengths_equals_the_merge(make_tiny):
    """run_inference_set leaves what merge_inference_set merges as switchable adapters, scaled alike."""
    model = make_tiny(WAN)
    inject_triplet(model, WAN, TripletConfig(rank=4, alpha=8))
    randomize_lora(model)
    x = inputs(WAN, model)
    strengths = {"relation": 0.5, "ffn": 1.5, "subject1": 0.0, "subject2": 0.0}
    with torch.no_grad():
        run_inference_set(model, strengths)
        unmerged = WAN.velocity(model, *x)
        run_inference_set(model, {"relation": 1.0, "ffn": 1.0})
        at_one = WAN.velocity(model, *x)
        merge_inference_set(model, strengths)
        merged = WAN.velocity(model, *x)
    assert torch.allclose(unmerged, merged, atol=1e-5)
    assert not torch.allclose(at_one, merged, atol=1e-3)          # the strengths really scale


def test_merging_again_replaces_the_merge_and_unmerge_restores_the_base(make_tiny):
    from dreamrelation_core.triplet import apply_lora, lora_from_model, unmerge_lora

    model = make_tiny(WAN)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    inject_triplet(model, WAN, TripletConfig(rank=4, alpha=8))
    randomize_lora(model, seed=1)
    first = lora_from_model(model, WAN, {r: 8.0 for r in ROLES}, ROLES, {})
    randomize_lora(model, seed=2)
    second = lora_from_model(model, WAN, {r: 8.0 for r in ROLES}, ROLES, {})
    x = inputs(WAN, model)
    with torch.no_grad():
        activate(model, ("relation", "ffn"))
        expected = WAN.velocity(model, *x)                 # the second LoRA, unmerged
        apply_lora(model, first)
        merge_inference_set(model)
        merge_inference_set(model, {"relation": 0.5})
        merge_inference_set(model)                         # merged three times: once
        apply_lora(model, second)                          # another LoRA over a merged one: replaces it
        merge_inference_set(model)
        assert torch.allclose(WAN.velocity(model, *x), expected, atol=1e-5)
        unmerge_lora(model)
        model.unload_lora()                                # diffusers: take the adapters out again
    assert model.state_dict().keys() == base.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in base.items())


def test_merge_leaves_a_plain_model_and_undoes_exactly(make_tiny):
    """After the merge no peft wrapper or adapter is left (the subject LoRAs are gone); undoing it gives back every
    weight and LoRA parameter bit for bit, and the roles gate as before."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    from dreamrelation_core.triplet import unmerge_lora

    model = make_tiny(WAN)
    inject_triplet(model, WAN, TripletConfig(rank=4, alpha=8))
    randomize_lora(model, seed=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = inputs(WAN, model)
    with torch.no_grad():
        activate(model, ("relation", "ffn"))
        expected = WAN.velocity(model, *x)
        merge_inference_set(model, {"relation": 0.7})
        assert not any(isinstance(m, BaseTunerLayer) for m in model.modules())
        assert not any("lora_" in k for k in model.state_dict()) and not getattr(model, "peft_config", None)
        activate(model, ("relation", "ffn"))
        scaled = WAN.velocity(model, *x)
        unmerge_lora(model)
        assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
        assert model.state_dict().keys() == before.keys()
        activate(model, ("relation", "ffn"))
        assert torch.equal(WAN.velocity(model, *x), expected)
        assert not torch.allclose(scaled, expected, atol=1e-4)          # the strength was merged
    merge_inference_set(model, undoable=False)
    unmerge_lora(model)                                                 # nothing kept: stays merged
    assert not any(isinstance(m, BaseTunerLayer) for m in model.modules())
