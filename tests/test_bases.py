"""Tests for dreamrelation_core.bases: tiny bases, the codec, text encoders, single-file and diffusers-folder loading."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dreamrelation_core.archs import MOCHI, WAN
from dreamrelation_core.bases import build_tiny, load_base
from dreamrelation_core.components import Base, HashTextEncoder, TextEncoder

REPO = Path(__file__).resolve().parents[1]


def _state_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _digest(base: Base) -> str:
    h = hashlib.sha256()
    for module in (base.transformer, base.codec.vae):
        for k, v in sorted(module.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------------------
# Tiny bases
# ---------------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=["wan", "mochi", "wan22-5b"])
def tiny(request) -> Base:
    return load_base(f"tiny-{request.param}")


def test_tiny_is_deterministic(tiny):
    again = build_tiny(tiny.arch.name)
    assert _state_equal(tiny.transformer, again.transformer)
    assert _state_equal(tiny.codec.vae, again.codec.vae)
    other = build_tiny(tiny.arch.name, seed=1)
    assert not _state_equal(tiny.transformer, other.transformer)


def test_tiny_is_identical_across_processes():
    code = ("import hashlib, torch\n"
            "from dreamrelation_core.bases import build_tiny\n"
            "for name in ('wan', 'mochi'):\n"
            "    b = build_tiny(name); h = hashlib.sha256()\n"
            "    for m in (b.transformer, b.codec.vae):\n"
            "        for k, v in sorted(m.state_dict().items()):\n"
            "            h.update(k.encode()); h.update(v.detach().contiguous().numpy().tobytes())\n"
            "    print(h.hexdigest())\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [_digest(build_tiny("wan")), _digest(build_tiny("mochi"))]


def test_tiny_frozen_and_eval(tiny):
    for module in (tiny.transformer, tiny.codec.vae):
        assert not module.training
        assert not any(p.requires_grad for p in module.parameters())


def test_tiny_transformer_forward_with_text(tiny):
    arch = tiny.arch
    text, mask = tiny.text_encoder.encode(["a dog chases a cat", "two people shake hands"])
    assert text.shape == (2, tiny.text_encoder.max_length, tiny.text_encoder.dim)
    latents = torch.randn(2, arch.latent_channels, 3, 4, 4)
    out = arch.velocity(tiny.transformer, latents, torch.tensor([0.2, 0.9]), text, mask)
    assert out.shape == latents.shape and torch.isfinite(out).all()
    null, null_mask = tiny.null_text(2)
    out = arch.velocity(tiny.transformer, latents, torch.tensor([0.2, 0.9]), null, null_mask)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("frames,size", [(1, 32), (13, 32), (25, 64)])
def test_tiny_codec_shapes(tiny, frames, size):
    r = tiny.arch.temporal_ratio
    if (frames - 1) % r:
        frames = 1 + r * ((frames - 1) // r)
    video = torch.rand(1, 3, frames, size, size) * 2 - 1
    mean, std = tiny.codec.encode(video)
    s = tiny.arch.spatial_ratio
    expected = (1, tiny.arch.latent_channels, (frames - 1) // r + 1, size // s, size // s)
    assert mean.shape == expected and std.shape == expected
    assert mean.dtype == torch.float32 and (std > 0).all()
    video_out = tiny.codec.decode(mean)
    assert video_out.shape == video.shape
    assert video_out.abs().max() <= 1.0


def test_codec_normalisation_matches_vae_stats(tiny):
    codec = tiny.codec
    video = torch.rand(1, 3, 1 + codec.temporal_ratio, 32, 32) * 2 - 1
    mean, std = codec.encode(video)
    with torch.no_grad():
        dist = codec.vae.encode(video).latent_dist
    cfg = codec.vae.config
    m = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1, 1)
    s = torch.tensor(cfg.latents_std).view(1, -1, 1, 1, 1)
    scale = getattr(cfg, "scaling_factor", None) or 1.0
    assert torch.allclose(mean, (dist.mean - m) * scale / s, atol=1e-6)
    assert torch.allclose(std, dist.std * scale / s, atol=1e-6)


def test_codec_rejects_bad_frame_count(tiny):
    with pytest.raises(ValueError, match="frame count"):
        tiny.codec.encode(torch.zeros(1, 3, 1 + tiny.arch.temporal_ratio + 1, 32, 32))


def test_null_text_semantics(tiny):
    emb, mask = tiny.null_text(3)
    ref, _ = tiny.text_encoder.encode(["x"] * 3)
    assert emb.shape == ref.shape and mask.shape == ref.shape[:2] and mask.dtype == torch.bool
    if tiny.arch.uncond_text == "zeros":
        assert not emb.any() and not mask.any()
    else:
        e, m = tiny.text_encoder.encode(["", "", ""])
        assert torch.equal(emb, e) and torch.equal(mask, m)


def _dtypes(module: torch.nn.Module) -> dict:
    return {k: v.dtype for k, v in module.state_dict().items()}


def _assert_bf16_with_fp32_modules(module: torch.nn.Module) -> None:
    """bf16 weights, except the class's `_keep_in_fp32_modules`, which diffusers' from_pretrained keeps in float32
    (every loading path does the same)."""
    keep = type(module)._keep_in_fp32_modules or []
    for key, dtype in _dtypes(module).items():
        assert dtype == (torch.float32 if any(m in key.split(".") for m in keep) else torch.bfloat16), key


@pytest.mark.parametrize("name", ["wan", "mochi"])
def test_tiny_dtype(name):
    base = load_base(f"tiny-{name}", dtype=torch.bfloat16)
    _assert_bf16_with_fp32_modules(base.transformer)
    assert {p.dtype for p in base.codec.vae.parameters()} == {torch.bfloat16}
    text, mask = base.text_encoder.encode(["a dog chases a cat"])
    assert text.dtype == torch.float32
    latents = torch.randn(1, base.arch.latent_channels, 2, 4, 4, dtype=torch.bfloat16)
    out = base.arch.velocity(base.transformer, latents, torch.tensor([0.5]), text.bfloat16(), mask)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    mean, _ = base.codec.encode(torch.zeros(1, 3, 1 + base.arch.temporal_ratio, 32, 32))
    assert mean.dtype == torch.float32 and base.codec.decode(mean).dtype == torch.float32


# ---------------------------------------------------------------------------------------------------------------------
# HashTextEncoder
# ---------------------------------------------------------------------------------------------------------------------

def test_hash_text_encoder():
    enc = HashTextEncoder(dim=32, max_length=16)
    e1, m1 = enc.encode(["A dog chases a cat.", "a cat chases a dog", ""])
    e2, _ = HashTextEncoder(dim=32, max_length=16).encode(["a dog CHASES a cat"])
    assert e1.shape == (3, 16, 32) and m1.shape == (3, 16) and m1.dtype == torch.bool
    assert isinstance(enc, TextEncoder)
    assert torch.equal(e1[0], e2[0])                       # deterministic, case- and punctuation-insensitive
    assert not torch.equal(e1[0], e1[1])                   # word order matters
    assert m1.sum(1).tolist() == [5, 5, 0]
    assert not e1[0, 5:].any() and not e1[2].any()         # zero padding
    long = enc.encode([" ".join(["w"] * 40)])[1]
    assert long.all()


def test_hash_text_encoder_neighbour_context_binds_attributes():
    enc = HashTextEncoder(dim=16, max_length=12, position_scale=1.0, context=0.5)
    (a, b), mask = enc.encode(["a red circle approaches a blue square", "a blue circle approaches a red square"])
    words = enc.words("a red circle approaches a blue square")
    h = enc._word_vector
    for i, word in enumerate(words):                        # the documented formula, word by word
        expected = h(word) + enc._position[i] + 0.5 * ((h("<" + words[i - 1]) if i else 0) +
                                                        (h(">" + words[i + 1]) if i + 1 < len(words) else 0))
        assert torch.allclose(a[i], expected, atol=1e-6), word
    # "circle" knows which colour precedes it: the two prompts differ there, not only at the colour words
    assert not torch.allclose(a[2], b[2]) and torch.allclose(a[3], b[3])
    plain = HashTextEncoder(dim=16, max_length=12, position_scale=1.0)
    assert torch.equal(plain.encode(["a red circle"])[0][0, 2], h("circle") + plain._position[2])


# ---------------------------------------------------------------------------------------------------------------------
# Diffusers folders (tiny): transformer, VAE, tiny (U)T5 and a word-level tokenizer built offline
# ---------------------------------------------------------------------------------------------------------------------

WORDS = "a an the dog cat man woman chases shakes hands with two people ball kicks runs".split()
TEXT = {"wan": ("UMT5EncoderModel", "UMT5Config", "WanPipeline"),
        "mochi": ("T5EncoderModel", "T5Config", "MochiPipeline"),
        "wan22-5b": ("UMT5EncoderModel", "UMT5Config", "WanPipeline")}


def _save_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(folder)


def _write_pipeline(folder: Path, name: str) -> Path:
    import transformers

    base = build_tiny(name)
    model_cls, config_cls, pipe_cls = TEXT[name]
    base.transformer.save_pretrained(folder / "transformer")
    base.codec.vae.save_pretrained(folder / "vae")
    torch.manual_seed(0)
    te = getattr(transformers, model_cls)(getattr(transformers, config_cls)(
        vocab_size=len(WORDS) + 3, d_model=base.text_encoder.dim, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
    te.save_pretrained(folder / "text_encoder")
    _save_tokenizer(folder / "tokenizer")
    index = {"_class_name": pipe_cls, "transformer": ["diffusers", type(base.transformer).__name__],
             "vae": ["diffusers", type(base.codec.vae).__name__], "text_encoder": ["transformers", model_cls],
             "tokenizer": ["transformers", "PreTrainedTokenizerFast"]}
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("pipelines")
    return {name: _write_pipeline(root / name, name) for name in ("wan", "mochi", "wan22-5b")}


def _reference_pipeline(base: Base):
    """The diffusers pipeline around the same components, to compare text encoding with."""
    import diffusers
    pipe_cls = getattr(diffusers, TEXT[base.arch.name][2])
    enc = base.text_encoder
    extra = {"force_zeros_for_empty_prompt": True} if base.arch is MOCHI else {}   # genmo's behaviour
    return pipe_cls(**extra, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(), vae=base.codec.vae,
                    text_encoder=enc.model, tokenizer=enc.tokenizer, transformer=base.transformer)


def test_folder_wan_text_matches_pipeline(folders):
    base = load_base(str(folders["wan"]))
    assert base.arch is WAN and base.name == str(folders["wan"])
    assert not any(p.requires_grad for p in base.text_encoder.model.parameters())
    prompts = ["a dog chases a cat", "two  people shake   hands with a man", ""]
    emb, mask = base.text_encoder.encode(prompts)
    assert emb.shape == (3, WAN.text_max_length, 32) and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == [6, 8, 1]                # words + </s>
    assert not emb[~mask].any() and emb[mask].abs().sum(-1).gt(0).all()
    ref = _reference_pipeline(base)._get_t5_prompt_embeds(prompts, max_sequence_length=WAN.text_max_length)
    assert torch.allclose(emb, ref.float(), atol=1e-6)
    null, null_mask = base.null_text(2)
    assert torch.equal(null, base.text_encoder.encode(["", ""])[0])


def test_folder_mochi_text_matches_pipeline(folders):
    base = load_base(str(folders["mochi"]))
    assert base.arch is MOCHI
    L = base.transformer.config.max_sequence_length          # 16 for the tiny model
    prompts = ["a dog chases a cat", "the man kicks a ball"]
    emb, mask = base.text_encoder.encode(prompts)
    assert emb.shape == (2, L, 32) and base.text_encoder.max_length == L
    pipe = _reference_pipeline(base)
    ref, ref_mask = pipe._get_t5_prompt_embeds(prompts, max_sequence_length=L)
    assert torch.equal(mask, ref_mask) and torch.allclose(emb, ref.float(), atol=1e-6)
    assert mask.sum(1).tolist() == [6, 6]
    # Empty prompts: zero token ids and an all-False mask, as the original Mochi code does.
    emb_e, mask_e = base.text_encoder.encode(["a dog", ""])
    assert mask_e[0].sum() == 3 and not mask_e[1].any()
    ref_e, ref_mask_e = pipe._get_t5_prompt_embeds([""], max_sequence_length=L)
    assert not ref_mask_e.any() and torch.allclose(emb_e[1:], ref_e.float(), atol=1e-6)
    null, null_mask = base.null_text(2)
    assert null.shape == (2, L, 32) and not null.any() and not null_mask.any()


@pytest.mark.parametrize("name", ["wan", "mochi"])
def test_folder_codec_and_forward(folders, name):
    base = load_base(str(folders[name]), arch=name)
    tiny = build_tiny(name)
    assert _state_equal(base.transformer, tiny.transformer) and _state_equal(base.codec.vae, tiny.codec.vae)
    r = base.arch.temporal_ratio
    mean, std = base.codec.encode(torch.rand(1, 3, 1 + 2 * r, 32, 32) * 2 - 1)
    assert mean.shape == (1, base.arch.latent_channels, 3, 4, 4)
    text, mask = base.text_encoder.encode(["a dog chases a cat"])
    out = base.arch.velocity(base.transformer, mean, torch.tensor([0.5]), text, mask)
    assert out.shape == mean.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["wan", "mochi"])
def test_folder_dtype(folders, name):
    base = load_base(str(folders[name]), dtype=torch.bfloat16)
    assert _dtypes(base.transformer) == _dtypes(load_base(f"tiny-{name}", dtype=torch.bfloat16).transformer)
    for module in (base.codec.vae, base.text_encoder.model):
        assert torch.bfloat16 in {p.dtype for p in module.parameters()}
    assert base.text_encoder.encode(["a dog"])[0].dtype == torch.float32


def test_folder_arch_mismatch(folders):
    with pytest.raises(ValueError, match="arch='mochi'"):
        load_base(str(folders["wan"]), arch="mochi")


# ---------------------------------------------------------------------------------------------------------------------
# Single-file transformers in the original key layouts
# ---------------------------------------------------------------------------------------------------------------------

# diffusers -> original Wan names (inverse of diffusers' convert_wan_transformer_to_diffusers), applied in order.
_WAN_TO_ORIGINAL = [
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    ("attn1.", "self_attn."), ("attn2.", "cross_attn."),
    (".to_out.0.", ".o."), (".to_q.", ".q."), (".to_k.", ".k."), (".to_v.", ".v."),
    ("ffn.net.0.proj", "ffn.0"), ("ffn.net.2", "ffn.2"),
    ("proj_out", "head.head"),
    ("norm2", "norm__swap"), ("norm3", "norm2"), ("norm__swap", "norm3"),   # diffusers swapped norm2 and norm3
]


def _wan_original(state: dict) -> dict:
    out = {}
    for key, value in state.items():
        new = "head.modulation" if key == "scale_shift_table" else key.replace("scale_shift_table", "modulation")
        for a, b in _WAN_TO_ORIGINAL:
            new = new.replace(a, b)
        out[new] = value.clone()
    return out


def _mochi_original(state: dict, num_layers: int) -> dict:
    """diffusers -> genmo Mochi names (inverse of diffusers' convert_mochi_transformer_checkpoint_to_diffusers)."""
    from diffusers.loaders.single_file_utils import swap_proj_gate, swap_scale_shift   # both are self-inverse

    s, out = dict(state), {}
    top = {"patch_embed.proj": "x_embedder.proj", "time_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
           "time_embed.timestep_embedder.linear_2": "t_embedder.mlp.2", "time_embed.pooler.to_kv": "t5_y_embedder.to_kv",
           "time_embed.pooler.to_q": "t5_y_embedder.to_q", "time_embed.pooler.to_out": "t5_y_embedder.to_out",
           "time_embed.caption_proj": "t5_yproj", "proj_out": "final_layer.linear"}
    for d, o in top.items():
        for p in ("weight", "bias"):
            out[f"{o}.{p}"] = s.pop(f"{d}.{p}")
    for p in ("weight", "bias"):
        out[f"final_layer.mod.{p}"] = swap_scale_shift(s.pop(f"norm_out.linear.{p}"), dim=0)
    out["pos_frequencies"] = s.pop("pos_frequencies")
    for i in range(num_layers):
        d, o = f"transformer_blocks.{i}.", f"blocks.{i}."
        ctx = "norm1_context.linear_1" if i == num_layers - 1 else "norm1_context.linear"
        names = {"norm1.linear": "mod_x", ctx: "mod_y", "attn1.norm_q": "attn.q_norm_x",
                 "attn1.norm_k": "attn.k_norm_x", "attn1.to_out.0": "attn.proj_x",
                 "attn1.norm_added_q": "attn.q_norm_y", "attn1.norm_added_k": "attn.k_norm_y",
                 "attn1.to_add_out": "attn.proj_y", "ff.net.2": "mlp_x.w2", "ff_context.net.2": "mlp_y.w2"}
        for dn, on in names.items():
            for p in ("weight", "bias"):
                if f"{d}{dn}.{p}" in s:
                    out[f"{o}{on}.{p}"] = s.pop(f"{d}{dn}.{p}")
        out[o + "attn.qkv_x.weight"] = torch.cat([s.pop(f"{d}attn1.to_{x}.weight") for x in "qkv"])
        out[o + "attn.qkv_y.weight"] = torch.cat([s.pop(f"{d}attn1.add_{x}_proj.weight") for x in "qkv"])
        out[o + "mlp_x.w1.weight"] = swap_proj_gate(s.pop(d + "ff.net.0.proj.weight"))
        if d + "ff_context.net.0.proj.weight" in s:
            out[o + "mlp_y.w1.weight"] = swap_proj_gate(s.pop(d + "ff_context.net.0.proj.weight"))
    assert not s, f"test inverse mapping missed {sorted(s)}"
    return {k: v.clone().contiguous() for k, v in out.items()}


def _random_model(cls_name: str, config: dict, seed: int):
    import diffusers
    torch.manual_seed(seed)
    model = getattr(diffusers, cls_name)(**config).eval()
    with torch.no_grad():   # some weights start at zero / one; make every tensor distinctive
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


WAN_FILE_CONFIG = dict(WAN.tiny_transformer, num_layers=3, ffn_dim=48, freq_dim=24)
MOCHI_FILE_CONFIG = dict(MOCHI.tiny_transformer, num_layers=3)


def test_wan_inverse_mapping_matches_diffusers_converter():
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
    model = _random_model("WanTransformer3DModel", WAN_FILE_CONFIG, 0)
    state = model.state_dict()
    converted = convert_wan_transformer_to_diffusers(_wan_original(state))
    assert converted.keys() == state.keys() and all(torch.equal(converted[k], state[k]) for k in state)


def test_mochi_inverse_mapping_matches_diffusers_converter():
    # diffusers' converter hard-codes Mochi's 48 blocks; a tiny-width 48-block model checks the test's inverse map.
    from diffusers.loaders.single_file_utils import convert_mochi_transformer_checkpoint_to_diffusers
    model = _random_model("MochiTransformer3DModel", dict(MOCHI.tiny_transformer, num_layers=48), 0)
    state = model.state_dict()
    converted = convert_mochi_transformer_checkpoint_to_diffusers(_mochi_original(state, 48))
    assert converted.keys() == state.keys() and all(torch.equal(converted[k], state[k]) for k in state)


def test_wan_original_state_dict_inverts_diffusers_converter():
    from dreamrelation_core.conversion import wan_original_state_dict

    state = _random_model("WanTransformer3DModel", WAN_FILE_CONFIG, 0).state_dict()
    original = _wan_original(state)
    ours = wan_original_state_dict(state, original.keys())
    assert ours.keys() == original.keys() and all(torch.equal(ours[k], original[k]) for k in original)
    with pytest.raises(ValueError, match="do not match the native model"):
        wan_original_state_dict(state, [k for k in original if "blocks.2." not in k])


def _assert_loaded_equal(base: Base, model: torch.nn.Module, text_len: int):
    assert _state_equal(base.transformer, model)
    assert not base.transformer.training and not any(p.requires_grad for p in base.transformer.parameters())
    arch = base.arch
    latents = torch.randn(1, arch.latent_channels, 2, 4, 4)
    text = torch.randn(1, text_len, 32)
    mask = torch.ones(1, text_len, dtype=torch.bool)
    with torch.no_grad():
        ours = arch.velocity(base.transformer, latents, torch.tensor([0.4]), text, mask)
        ref = arch.velocity(model, latents, torch.tensor([0.4]), text, mask)
    assert torch.allclose(ours, ref, atol=1e-5)


def test_single_file_wan(folders, tmp_path):
    model = _random_model("WanTransformer3DModel", WAN_FILE_CONFIG, 1)
    path = tmp_path / "wan_tiny.safetensors"
    save_file({f"model.diffusion_model.{k}": v for k, v in _wan_original(model.state_dict()).items()}, str(path))
    # Per-head size cannot be read off the tensors: the caller says it.
    base = load_base(str(path), components=str(folders["wan"]),
                     config_overrides={"attention_head_dim": 16, "rope_max_seq_len": 64})
    assert base.arch is WAN and base.name == str(path)
    cfg = base.transformer.config
    assert (cfg.num_layers, cfg.num_attention_heads, cfg.ffn_dim, cfg.freq_dim, cfg.text_dim) == (3, 2, 48, 24, 32)
    _assert_loaded_equal(base, model, 16)
    emb, mask = base.text_encoder.encode(["a dog"])
    assert emb.shape == (1, WAN.text_max_length, 32)


def test_single_file_wan_sidecar_and_dtype(folders, tmp_path):
    model = _random_model("WanTransformer3DModel", WAN_FILE_CONFIG, 2)
    path = tmp_path / "wan_plain.safetensors"
    save_file(_wan_original(model.state_dict()), str(path))          # no prefix this time
    (tmp_path / "wan_plain.json").write_text(json.dumps({"num_attention_heads": 2, "rope_max_seq_len": 64}))
    base = load_base(str(path), components=str(folders["wan"]), dtype=torch.bfloat16)
    assert base.transformer.config.num_attention_heads == 2
    # Same per-weight dtypes as a diffusers-folder load; values are the originals rounded to bf16 (the float32
    # modules come back from bf16, as from_single_file casts everything first).
    _assert_bf16_with_fp32_modules(base.transformer)
    state = model.state_dict()
    assert all(torch.equal(v, state[k].to(torch.bfloat16).to(v.dtype)) for k, v in base.transformer.state_dict().items())


def test_single_file_mochi(folders, tmp_path):
    model = _random_model("MochiTransformer3DModel", MOCHI_FILE_CONFIG, 3)
    path = tmp_path / "mochi_tiny.safetensors"
    original = _mochi_original(model.state_dict(), MOCHI_FILE_CONFIG["num_layers"])
    save_file({f"model.diffusion_model.{k}": v for k, v in original.items()}, str(path))
    # Heads and head size come from pos_frequencies; the text length is only config, given in a sidecar.
    (tmp_path / "mochi_tiny.safetensors.json").write_text(json.dumps({"max_sequence_length": 16}))
    base = load_base(str(path), components=str(folders["mochi"]))
    assert base.arch is MOCHI
    cfg = base.transformer.config
    assert (cfg.num_layers, cfg.num_attention_heads, cfg.attention_head_dim, cfg.max_sequence_length) == (3, 4, 16, 16)
    _assert_loaded_equal(base, model, 16)
    assert base.text_encoder.max_length == 16


# ---------------------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------------------

def test_error_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_base(str(tmp_path / "nope.safetensors"))


def test_error_unknown_tiny():
    with pytest.raises(ValueError, match="unknown tiny base"):
        load_base("tiny-flux")


def test_error_single_file_without_components(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file(_wan_original(build_tiny("wan").transformer.state_dict()), str(path))
    with pytest.raises(ValueError, match="needs components"):
        load_base(str(path))


def test_error_garbage_keys(folders, tmp_path):
    path = tmp_path / "garbage.safetensors"
    save_file({"foo.weight": torch.zeros(2, 2), "bar.bias": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match=r"garbage\.safetensors: unrecognised checkpoint keys.*self_attn\.q\.weight"):
        load_base(str(path), components=str(folders["wan"]))


def test_error_diffusers_keys_in_single_file(folders, tmp_path):
    path = tmp_path / "diffusers_keys.safetensors"
    save_file(build_tiny("wan").transformer.state_dict(), str(path))
    with pytest.raises(ValueError, match="diffusers-format keys"):
        load_base(str(path), components=str(folders["wan"]))


def test_error_truncated_file(folders, tmp_path):
    model = _random_model("WanTransformer3DModel", WAN_FILE_CONFIG, 4)
    original = _wan_original(model.state_dict())
    del original["blocks.1.ffn.2.weight"]
    path = tmp_path / "partial.safetensors"
    save_file(original, str(path))
    with pytest.raises(ValueError, match=r"partial\.safetensors.*missing \['blocks\.1\.ffn\.net\.2\.weight'\]"):
        load_base(str(path), components=str(folders["wan"]), config_overrides={"attention_head_dim": 16})


def test_error_not_safetensors(folders, tmp_path):
    path = tmp_path / "model.ckpt"
    path.write_bytes(b"\x80\x04not a pickle we would ever open")
    with pytest.raises(ValueError, match="only .safetensors"):
        load_base(str(path), components=str(folders["wan"]))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not safetensors at all")
    with pytest.raises(ValueError, match="not a readable .safetensors"):
        load_base(str(bad), components=str(folders["wan"]))


def test_error_bad_components(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file(_wan_original(build_tiny("wan").transformer.state_dict()), str(path))
    with pytest.raises(ValueError, match="vae/, text_encoder/ and tokenizer/"):
        load_base(str(path), components=str(tmp_path), config_overrides={"attention_head_dim": 16})


def test_error_folder_without_config(tmp_path):
    with pytest.raises(ValueError, match="neither a diffusers pipeline folder"):
        load_base(str(tmp_path))


def test_wan22_expert_selects_the_transformer_subfolder(folders, tmp_path):
    import shutil

    folder = tmp_path / "wan22"
    shutil.copytree(folders["wan"], folder)
    low = build_tiny("wan", seed=7).transformer
    low.save_pretrained(folder / "transformer_2")
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "boundary_ratio": 0.875}))
    high_base = load_base(str(folder), expert="high_noise")
    low_base = load_base(str(folder), expert="low_noise")
    assert high_base.sigma_range == (0.875, 1.0) and low_base.sigma_range == (0.0, 0.875)   # where each denoises
    assert load_base(str(folders["wan"])).sigma_range is None
    assert _state_equal(low_base.transformer, low)
    assert _state_equal(high_base.transformer, load_base(str(folders["wan"])).transformer)
    with pytest.raises(ValueError, match="transformer_2"):
        load_base(str(folders["wan"]), expert="low_noise")
    with pytest.raises(ValueError, match="unknown expert"):
        load_base(str(folder), expert="middle")
    with pytest.raises(ValueError, match="no experts"):
        load_base("tiny-wan", expert="low_noise")


def test_single_file_scaled_fp8_loads_dequantised(folders, tmp_path):
    """ComfyUI's "scaled fp8" files (fp8 weights, a float32 scale each, a marker key) load as weight · scale."""
    model = _random_model("WanTransformer3DModel", WAN_FILE_CONFIG, 4)
    original = _wan_original(model.state_dict())
    stored, expected = {"model.diffusion_model.scaled_fp8": torch.zeros(2, dtype=torch.float8_e4m3fn)}, {}
    for k, v in original.items():
        if k.endswith(".weight") and v.ndim == 2 and ".norm" not in k:
            scale = v.abs().max().float() / 448.0
            fp8 = (v / scale).to(torch.float8_e4m3fn)
            stored[f"model.diffusion_model.{k}"] = fp8
            stored[f"model.diffusion_model.{k[:-6]}scale_weight"] = scale.reshape(())
            stored[f"model.diffusion_model.{k[:-6]}scale_input"] = torch.ones(())
            expected[k] = fp8.float() * scale
        else:
            stored[f"model.diffusion_model.{k}"] = v
            expected[k] = v
    path = tmp_path / "wan_scaled_fp8.safetensors"
    save_file(stored, str(path))
    base = load_base(str(path), components=str(folders["wan"]),
                     config_overrides={"attention_head_dim": 16, "rope_max_seq_len": 64})
    from dreamrelation_core.conversion import wan_to_diffusers
    want = wan_to_diffusers(dict(expected), {})
    got = base.transformer.state_dict()
    assert all(torch.equal(got[k], v.to(got[k].dtype)) for k, v in want.items())
    q = "blocks.0.attn1.to_q.weight"
    assert not torch.equal(got[q], model.state_dict()[q]) and torch.allclose(got[q], model.state_dict()[q],
                                                                              rtol=0.07, atol=1e-3)


def test_wan22_5b_is_told_from_wan21_by_its_latent_channels(folders, tmp_path):
    """Wan 2.2 TI2V-5B shares Wan 2.1's transformer class: folders and single files are told apart by the 48 latent
    channels, and its Wan 2.2 VAE is 4×16×16."""
    from dreamrelation_core.archs import WAN22_5B

    base = load_base(str(folders["wan22-5b"]))
    assert base.arch is WAN22_5B and base.codec.latent_channels == 48 and base.codec.spatial_ratio == 16
    assert load_base(str(folders["wan"])).arch is WAN
    mean, _ = base.codec.encode(torch.rand(1, 3, 9, 64, 64) * 2 - 1)
    assert mean.shape == (1, 48, 3, 4, 4)
    model = _random_model("WanTransformer3DModel", {**WAN_FILE_CONFIG, "in_channels": 48, "out_channels": 48}, 5)
    path = tmp_path / "wan22_5b.safetensors"
    save_file(_wan_original(model.state_dict()), str(path))
    single = load_base(str(path), components=str(folders["wan22-5b"]),
                       config_overrides={"attention_head_dim": 16, "rope_max_seq_len": 64})
    assert single.arch is WAN22_5B and single.transformer.config.in_channels == 48
    with pytest.raises(ValueError, match="architecture 'wan22-5b'"):
        load_base(str(folders["wan22-5b"]), arch="wan")
    with pytest.raises(ValueError, match="needs"):               # a 2.1 VAE under a 5B transformer is refused
        load_base(str(path), components=str(folders["wan"]), config_overrides={"attention_head_dim": 16})


def test_wan22_pair_samples_each_step_with_the_expert_of_its_noise_level(folders, tmp_path):
    """Both experts load together (`companion`): σ from the boundary up runs the high-noise expert, below it the
    low-noise one, as diffusers' pipeline; a lone expert samples alone."""
    import shutil

    from dreamrelation_core.sampling import expert_for, generate

    folder = tmp_path / "wan22"
    shutil.copytree(folders["wan"], folder)
    build_tiny("wan", seed=7).transformer.save_pretrained(folder / "transformer_2")
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "boundary_ratio": 0.875}))
    pair = load_base(str(folder), companion=True)
    low_first = load_base(str(folder), expert="low_noise", companion=True)
    assert _state_equal(pair.companion, low_first.transformer) and _state_equal(low_first.companion, pair.transformer)
    pick = expert_for(pair.transformer, pair.sigma_range, pair.companion)
    assert pick(1.0) is pair.transformer and pick(0.875) is pair.transformer and pick(0.5) is pair.companion
    pick = expert_for(low_first.transformer, low_first.sigma_range, low_first.companion)
    assert pick(0.9) is low_first.companion and pick(0.2) is low_first.transformer
    calls = []
    for name, model in (("high", pair.transformer), ("low", pair.companion)):
        model.register_forward_hook(lambda *_, name=name: calls.append(name))
    both = generate(pair, "a dog", frames=5, height=32, width=32, steps=4, cfg=1.0, progress=False)
    from dreamrelation_core.flow import sampling_schedule

    sigmas = [float(s) for s in sampling_schedule(WAN, 4)][:-1]
    assert calls == ["high" if s >= 0.875 else "low" for s in sigmas] and set(calls) == {"high", "low"}
    alone = generate(load_base(str(folder)), "a dog", frames=5, height=32, width=32, steps=4, cfg=1.0, progress=False)
    assert not torch.allclose(both, alone)
