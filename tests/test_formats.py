import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

from dreamrelation_core.archs import MOCHI, WAN
from dreamrelation_core.cli import main
from dreamrelation_core.formats import RelationLora, comfyui_unmapped_keys, load_lora, save_lora
from dreamrelation_core.triplet import (TripletConfig, apply_lora, inject_triplet, lora_from_model, lora_parameters,
                                        merge_inference_set)


def trained_lora(make_tiny, arch, config=None, seed=3):
    model = make_tiny(arch)
    config = config or TripletConfig(rank=4, alpha=6)
    inject_triplet(model, arch, config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora_parameters(model).values():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    alphas = {r: config.alpha_of(r) for r in ("relation", "subject1", "subject2", "ffn")}
    return model, lora_from_model(model, arch, alphas, info={"caption": "a b c", "steps": 7})


def assert_same(a: RelationLora, b: RelationLora, roles):
    assert a.arch == b.arch
    for role in roles:
        assert a.alphas[role] == b.alphas[role]
        assert a.weights[role].keys() == b.weights[role].keys()
        for module, (wa, wb) in a.weights[role].items():
            assert torch.equal(wa, b.weights[role][module][0]) and torch.equal(wb, b.weights[role][module][1])


@pytest.mark.parametrize("arch", [WAN, MOCHI], ids=["wan", "mochi"])
@pytest.mark.parametrize("layout", ["comfyui", "diffusers"])
def test_export_reimport_round_trips_exactly(make_tiny, tmp_path, arch, layout):
    _, lora = trained_lora(make_tiny, arch)
    back = load_lora(save_lora(tmp_path / "r.safetensors", lora, layout))
    assert set(back.weights) == {"relation", "ffn"}
    assert_same(lora, back, ("relation", "ffn"))
    assert back.info["caption"] == "a b c" and back.info["steps"] == 7
    subjects = load_lora(save_lora(tmp_path / "r.subjects.safetensors", lora, "subjects"))
    assert_same(lora, subjects, ("subject1", "subject2"))


def test_native_wan_keys_and_alpha(make_tiny, tmp_path):
    _, lora = trained_lora(make_tiny, WAN)
    with safe_open(str(save_lora(tmp_path / "w.safetensors", lora)), "pt") as f:
        keys = set(f.keys())
        assert f.get_tensor("diffusion_model.blocks.0.self_attn.q.alpha").item() == 6.0
        assert torch.equal(f.get_tensor("diffusion_model.blocks.1.cross_attn.o.lora_B.weight"),
                           lora.weights["ffn"]["blocks.1.attn2.to_out.0"][1])
    assert not comfyui_unmapped_keys(keys, WAN)
    assert not any(".v." in k for k in keys)             # subjects never in the stock-loadable file
    assert comfyui_unmapped_keys(["transformer.blocks.0.attn1.to_q.lora_A.weight",
                                  "diffusion_model.blocks.0.self_attn.qq.lora_A.weight"], WAN) == \
        ["transformer.blocks.0.attn1.to_q.lora_A.weight", "diffusion_model.blocks.0.self_attn.qq.lora_A.weight"]


def test_fused_mochi_qk_delta_equals_separate_deltas(make_tiny, tmp_path):
    _, lora = trained_lora(make_tiny, MOCHI)
    path = save_lora(tmp_path / "m.safetensors", lora)
    with safe_open(str(path), "pt") as f:
        keys = set(f.keys())
        for block in range(2):
            for stream, (q, k) in {"x": ("to_q", "to_k"), "y": ("add_q_proj", "add_k_proj")}.items():
                stem = f"diffusion_model.blocks.{block}.attn.qkv_{stream}"
                a, b = f.get_tensor(f"{stem}.lora_A.weight"), f.get_tensor(f"{stem}.lora_B.weight")
                assert a.shape[0] == 8 and b.shape == (3 * 64, 8)
                alpha = f.get_tensor(f"{stem}.alpha").item()
                fused = (alpha / a.shape[0]) * b @ a             # what ComfyUI adds to qkv
                prefix = f"transformer_blocks.{block}.attn1."
                assert torch.allclose(fused[:64], lora.delta("relation", prefix + q), atol=1e-6)
                assert torch.allclose(fused[64:128], lora.delta("relation", prefix + k), atol=1e-6)
                assert torch.count_nonzero(fused[128:]) == 0
    assert "diffusion_model.blocks.0.attn.proj_y.lora_A.weight" in keys
    assert "diffusion_model.blocks.1.attn.proj_y.lora_A.weight" not in keys     # last block has no proj_y
    assert not comfyui_unmapped_keys(keys, MOCHI)


def test_mochi_swiglu_rows_are_swapped_for_native_mlp(make_tiny, tmp_path):
    _, lora = trained_lora(make_tiny, MOCHI, TripletConfig(rank=2, alpha=2, extra_targets={"ffn": ["ff.net.0.proj"]}))
    path = save_lora(tmp_path / "m.safetensors", lora)
    b = lora.weights["ffn"]["transformer_blocks.0.ff.net.0.proj"][1]
    with safe_open(str(path), "pt") as f:
        native = f.get_tensor("diffusion_model.blocks.0.mlp_x.w1.lora_B.weight")
    half = b.shape[0] // 2
    assert torch.equal(native[:half], b[half:]) and torch.equal(native[half:], b[:half])
    assert_same(lora, load_lora(path), ("relation", "ffn"))


def official_state_dict(blocks=2, dim_x=64, dim_y=32, rank=4, seed=0):
    """An official DreamRelation LoRA state dict (the official key names, `formats.official_to_lora`) for a model of the given sizes."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for i in range(blocks):
        for stream, d_in in (("x", dim_x), ("y", dim_y)):
            for proj, names in (("q", ["relation"]), ("k", ["relation"]), ("v", ["subject1", "subject2"])):
                for name in names:
                    sd[f"blocks.{i}.attn.to_{proj}_{stream}.lora_A.{name}"] = torch.randn(rank, d_in, generator=g)
                    sd[f"blocks.{i}.attn.to_{proj}_{stream}.lora_B.{name}"] = torch.randn(dim_x, rank, generator=g)
        sd[f"blocks.{i}.attn.proj_x.lora_A"] = torch.randn(rank, dim_x, generator=g)
        sd[f"blocks.{i}.attn.proj_x.lora_B"] = torch.randn(dim_x, rank, generator=g)
        if i < blocks - 1:                                    # update_y=False in the last block: no proj_y
            sd[f"blocks.{i}.attn.proj_y.lora_A"] = torch.randn(rank, dim_x, generator=g)
            sd[f"blocks.{i}.attn.proj_y.lora_B"] = torch.randn(dim_y, rank, generator=g)
    return {k: v.to(torch.bfloat16) for k, v in sd.items()}   # the reference trains LoRA params in bf16


def test_official_checkpoint_converts_and_reproduces_reference_deltas(make_tiny, tmp_path):
    sd = official_state_dict()
    kwargs = {"qkv_proj_lora_rank": 4, "qkv_proj_lora_alpha": 8, "out_proj_lora_rank": 4, "out_proj_lora_alpha": 4,
              "q_lora_names": ["relation"], "k_lora_names": ["relation"], "v_lora_names": ["subject1", "subject2"],
              "test_lora_names": ["relation"]}
    official = tmp_path / "model_2000.lora.pt"
    torch.save({"state_dict": sd, "kwargs": kwargs}, official)
    out = tmp_path / "shaking_hands.safetensors"
    assert main(["convert", str(official), str(out), "--arch", "mochi", "--subjects"]) == 0
    assert (tmp_path / "shaking_hands.subjects.safetensors").is_file()

    model = make_tiny(MOCHI)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    apply_lora(model, load_lora(out))
    merge_inference_set(model)
    weights = dict(model.named_parameters())
    # The reference's eval() merge: W += B·A·(alpha/r) for test_lora_names (relation) and the plain out-proj LoRA.
    reference = {"to_q_x": ("attn1.to_q", "relation", 2.0), "to_k_x": ("attn1.to_k", "relation", 2.0),
                 "to_q_y": ("attn1.add_q_proj", "relation", 2.0), "to_k_y": ("attn1.add_k_proj", "relation", 2.0),
                 "proj_x": ("attn1.to_out.0", None, 1.0), "proj_y": ("attn1.to_add_out", None, 1.0)}
    checked = 0
    for i in range(2):
        for official_name, (module, name, scale) in reference.items():
            key = f"blocks.{i}.attn.{official_name}.lora_A" + (f".{name}" if name else "")
            if key not in sd:
                continue
            delta = scale * sd[key.replace("lora_A", "lora_B")].float() @ sd[key].float()
            param = f"transformer_blocks.{i}.{module}.weight"           # merged: no peft wrapper is left
            assert torch.allclose(weights[param], before[f"transformer_blocks.{i}.{module}.weight"] + delta,
                                  atol=1e-5), param
            checked += 1
        v = f"transformer_blocks.{i}.attn1.to_v.weight"          # subjects are not applied at inference
        assert torch.equal(weights[v], before[v])
    assert checked == 11


def test_official_keys_with_compile_prefix_and_bad_keys(tmp_path):
    sd = {k.replace("blocks.0.", "blocks.0._orig_mod."): v for k, v in official_state_dict(blocks=1).items()}
    path = tmp_path / "c.pt"
    torch.save({"state_dict": sd, "kwargs": {}}, path)
    assert "relation" in load_lora(path).weights
    torch.save({"state_dict": {"blocks.0.mlp_x.w1.weight": torch.zeros(2, 2)}, "kwargs": {}}, path)
    with pytest.raises(ValueError, match="not DreamRelation LoRA keys"):
        load_lora(path)


class Payload:
    def __reduce__(self):
        return (exec, ("open(__import__('os').environ['DR_MARKER'], 'w').write('pwned')",))


def test_pickle_with_code_payload_is_refused_without_running_it(tmp_path, monkeypatch):
    marker = tmp_path / "marker"
    monkeypatch.setenv("DR_MARKER", str(marker))
    evil = tmp_path / "model_1.lora.pt"
    torch.save({"state_dict": {}, "kwargs": Payload()}, evil)
    with pytest.raises(ValueError, match="refusing"):
        load_lora(evil)
    result = subprocess.run([sys.executable, "-m", "dreamrelation_core", "convert", str(evil), str(tmp_path / "o.st")],
                            capture_output=True, text=True, timeout=300, env={**__import__("os").environ})
    assert result.returncode == 2 and "refusing" in result.stderr
    assert not marker.exists()


def test_diffusers_export_loads_in_diffusers_with_the_same_effect(make_tiny, tmp_path):
    model, lora = trained_lora(make_tiny, WAN, TripletConfig(rank=4, alpha=6, ranks={"ffn": 2}, alphas={"ffn": 5}))
    path = save_lora(tmp_path / "d.safetensors", lora, "diffusers")
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(1, 16, 3, 8, 8, generator=g), torch.tensor([0.4]), torch.randn(1, 7, 32, generator=g),
         torch.ones(1, 7, dtype=torch.bool))
    with torch.no_grad():
        merge_inference_set(model)
        ours = WAN.velocity(model, *x)
        fresh = make_tiny(WAN)
        # use_safetensors=True is what the pipelines' load_lora_weights passes; it makes diffusers read the
        # rank/alpha patterns from the file's lora_adapter_metadata.
        fresh.load_lora_adapter(str(path), prefix="transformer", adapter_name="relation_lora", use_safetensors=True)
        theirs = WAN.velocity(fresh, *x)
        plain = WAN.velocity(make_tiny(WAN), *x)
    assert torch.allclose(theirs, ours, atol=1e-5)
    assert not torch.allclose(plain, ours, atol=1e-3)


def test_inspect_and_errors(make_tiny, tmp_path, capsys):
    _, lora = trained_lora(make_tiny, MOCHI)
    path = save_lora(tmp_path / "m.safetensors", lora)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "architecture: mochi" in out and "role relation  rank   4  alpha 6" in out
    assert "yes, all 21 keys map" in out      # 4 fused qkv + 3 proj stems × (A, B, alpha)
    diffusers = save_lora(tmp_path / "d.safetensors", lora, "diffusers")
    assert main(["inspect", str(diffusers)]) == 0 and "NO" not in capsys.readouterr().out
    assert main(["convert", str(diffusers), str(tmp_path / "back.safetensors"), "--arch", "wan"]) == 2
    assert "not wan" in capsys.readouterr().err
    garbage = tmp_path / "g.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_lora(garbage)
    with pytest.raises(ValueError, match="does not have"):
        apply_lora(make_tiny(WAN), lora)
