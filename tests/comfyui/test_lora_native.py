"""Our relation LoRA files in a real ComfyUI: stock key mapping, exactly the inference set, exact deltas."""
import logging

import pytest
import torch

from dreamrelation_core.archs import MOCHI, WAN
from dreamrelation_core.formats import save_lora
from dreamrelation_core.triplet import lora_from_model
from dreamrelation_core.triplet import TripletConfig, inject_triplet, lora_parameters

from .native_models import WAN_DIFFUSERS, native_model


def relation_lora(arch, config):
    import diffusers

    sizes = WAN_DIFFUSERS if arch is WAN else arch.tiny_transformer
    torch.manual_seed(0)
    model = getattr(diffusers, arch.transformer_class)(**sizes)
    inject_triplet(model, arch, config)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in lora_parameters(model).values():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return lora_from_model(model, arch, {r: config.alpha_of(r) for r in ("relation", "subject1", "subject2", "ffn")})


def load_with_comfy(comfy, patcher, path, strength, caplog):
    """Stock path of LoraLoaderModelOnly; returns (patched model, 'lora key not loaded' warnings)."""
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        lora_sd = comfy.utils.load_torch_file(str(path), safe_load=True)
        patched, _ = comfy.sd.load_lora_for_models(patcher, None, lora_sd, strength, 0)
    return patched, [r.getMessage() for r in caplog.records if "not loaded" in r.getMessage().lower()]


def patched_weights(patched):
    before = {k: v.detach().clone() for k, v in patched.model.state_dict().items()}
    patched.patch_model()
    after = {k: v.detach().clone() for k, v in patched.model.state_dict().items()}
    patched.unpatch_model()
    return before, after


@pytest.mark.parametrize("alpha", [4.0, 10.0])
def test_wan_file_loads_in_stock_comfyui_with_exact_deltas(comfy, tmp_path, caplog, alpha):
    lora = relation_lora(WAN, TripletConfig(rank=4, alpha=alpha))
    path = save_lora(tmp_path / "wan_rel.safetensors", lora)
    patched, unloaded = load_with_comfy(comfy, native_model(comfy, "wan"), path, 0.7, caplog)
    assert unloaded == []
    before, after = patched_weights(patched)
    native = {"attn1.to_q": "self_attn.q", "attn1.to_k": "self_attn.k", "attn2.to_q": "cross_attn.q",
              "attn2.to_k": "cross_attn.k", "attn1.to_out.0": "self_attn.o", "attn2.to_out.0": "cross_attn.o"}
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    expected = {f"diffusion_model.blocks.{i}.{n}.weight" for i in range(2) for n in native.values()}
    assert changed == expected                               # exactly the inference set: no V, no MLP, no norms
    for role in ("relation", "ffn"):
        for module in lora.weights[role]:
            block, rel = module.split(".", 2)[1], module.split(".", 2)[2]
            key = f"diffusion_model.blocks.{block}.{native[rel]}.weight"
            assert torch.allclose(after[key] - before[key], 0.7 * lora.delta(role, module), atol=1e-5), key


def test_mochi_fused_file_loads_in_stock_comfyui_with_exact_deltas(comfy, tmp_path, caplog):
    lora = relation_lora(MOCHI, TripletConfig(rank=4, alpha=6))
    path = save_lora(tmp_path / "mochi_rel.safetensors", lora)
    patched, unloaded = load_with_comfy(comfy, native_model(comfy, "mochi"), path, 1.0, caplog)
    assert unloaded == []
    before, after = patched_weights(patched)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"diffusion_model.blocks.0.attn.qkv_x.weight", "diffusion_model.blocks.0.attn.qkv_y.weight",
                       "diffusion_model.blocks.1.attn.qkv_x.weight", "diffusion_model.blocks.1.attn.qkv_y.weight",
                       "diffusion_model.blocks.0.attn.proj_x.weight", "diffusion_model.blocks.0.attn.proj_y.weight",
                       "diffusion_model.blocks.1.attn.proj_x.weight"}
    for i in range(2):
        prefix = f"transformer_blocks.{i}.attn1."
        for stream, (q, k) in {"x": ("to_q", "to_k"), "y": ("add_q_proj", "add_k_proj")}.items():
            key = f"diffusion_model.blocks.{i}.attn.qkv_{stream}.weight"
            delta = after[key] - before[key]
            assert torch.allclose(delta[:64], lora.delta("relation", prefix + q), atol=1e-5)
            assert torch.allclose(delta[64:128], lora.delta("relation", prefix + k), atol=1e-5)
            assert torch.count_nonzero(delta[128:]) == 0      # value rows untouched: subjects are not applied
        key = f"diffusion_model.blocks.{i}.attn.proj_x.weight"
        assert torch.allclose(after[key] - before[key], lora.delta("ffn", prefix + "to_out.0"), atol=1e-5)


def test_relation_and_ffn_strengths_stack_as_separate_loads(comfy, tmp_path, caplog):
    """Per-role strengths in ComfyUI = one load per role subset (docs/comfyui.md): check our split files stack."""
    lora = relation_lora(WAN, TripletConfig(rank=4, alpha=4))
    rel = save_lora(tmp_path / "rel.safetensors", lora, roles=["relation"])
    ffn = save_lora(tmp_path / "ffn.safetensors", lora, roles=["ffn"])
    patcher = native_model(comfy, "wan")
    first, unloaded1 = load_with_comfy(comfy, patcher, rel, 0.5, caplog)
    both, unloaded2 = load_with_comfy(comfy, first, ffn, 2.0, caplog)
    assert unloaded1 == unloaded2 == []
    before, after = patched_weights(both)
    q, o = "diffusion_model.blocks.1.self_attn.q.weight", "diffusion_model.blocks.1.self_attn.o.weight"
    assert torch.allclose(after[q] - before[q], 0.5 * lora.delta("relation", "blocks.1.attn1.to_q"), atol=1e-5)
    assert torch.allclose(after[o] - before[o], 2.0 * lora.delta("ffn", "blocks.1.attn1.to_out.0"), atol=1e-5)


def test_official_checkpoint_converted_loads_in_stock_comfyui(comfy, tmp_path, caplog):
    from dreamrelation_core.cli import main
    from test_formats import official_state_dict   # tests/ is on sys.path (pytest rootdir insertion)

    sd = official_state_dict(blocks=2, dim_x=64, dim_y=32, rank=4)
    official = tmp_path / "model_1800.lora.pt"
    torch.save({"state_dict": sd, "kwargs": {"qkv_proj_lora_rank": 4, "qkv_proj_lora_alpha": 16,
                                             "out_proj_lora_rank": 4, "out_proj_lora_alpha": 4}}, official)
    out = tmp_path / "high_five.safetensors"
    assert main(["convert", str(official), str(out)]) == 0
    patched, unloaded = load_with_comfy(comfy, native_model(comfy, "mochi"), out, 1.0, caplog)
    assert unloaded == []
    before, after = patched_weights(patched)
    key = "diffusion_model.blocks.1.attn.qkv_y.weight"
    ref_k = 4.0 * sd["blocks.1.attn.to_k_y.lora_B.relation"].float() @ sd["blocks.1.attn.to_k_y.lora_A.relation"].float()
    assert torch.allclose((after[key] - before[key])[64:128], ref_k, atol=1e-4)
    assert torch.count_nonzero((after[key] - before[key])[128:]) == 0
