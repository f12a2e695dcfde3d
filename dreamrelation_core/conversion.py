"""Checkpoint key layouts of the model families: original (genmo, Wan-Video, ComfyUI) <-> diffusers, and the
diffusers config read off an original-layout file's tensor shapes. Referred to by each family's `Loading` entry
(archs.py); bases.py runs them.
"""
from __future__ import annotations

import math
import re

import torch


def num_blocks(shapes: dict) -> int:
    indices = {int(m.group(1)) for k in shapes if (m := re.match(r"blocks\.(\d+)\.", k))}
    return max(indices) + 1


SCALED_FP8_MARKER = "scaled_fp8"        # ComfyUI's marker tensor of a "scaled fp8" checkpoint


def is_scale_key(key: str) -> bool:
    """A ComfyUI "scaled fp8" bookkeeping key: the marker, a weight's scale or an activation scale."""
    return key.rsplit(".", 1)[-1] in (SCALED_FP8_MARKER, "scale_weight", "scale_input")


def dequantize_scaled_fp8(checkpoint: dict) -> dict:
    """A ComfyUI "scaled fp8" checkpoint (fp8 weights `<m>.weight` with a float32 scale `<m>.scale_weight`, as
    comfy/ops.py applies them: weight · scale) as float32 weights; the marker and the activation scales
    (`.scale_input`, only used by fp8 matmuls) are dropped. Other checkpoints come back unchanged."""
    out = {}
    for key, tensor in checkpoint.items():
        if is_scale_key(key):
            continue
        scale = checkpoint.get(key[: -len("weight")] + "scale_weight") if key.endswith(".weight") else None
        out[key] = tensor.to(torch.float32) * scale.to(torch.float32) if scale is not None else tensor
    return out


def wan_prompt_clean(text: str) -> str:
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean   # ftfy (optional) + html unescape + whitespace
    return prompt_clean(text)


def wan_single_file_config(shapes: dict, head_dim: int) -> dict:
    """Diffusers config fields of a Wan transformer, read off original-key tensor shapes."""
    patch = shapes["patch_embedding.weight"]          # [dim, in_channels, pt, ph, pw]
    dim, patch_size = patch[0], list(patch[2:])
    if dim % head_dim:
        raise ValueError(f"hidden size {dim} is not a multiple of attention_head_dim {head_dim}; pass "
                         "config_overrides={'attention_head_dim': ...} or a sidecar .json config")
    return dict(
        patch_size=patch_size, in_channels=patch[1], num_attention_heads=dim // head_dim, attention_head_dim=head_dim,
        out_channels=shapes["head.head.weight"][0] // math.prod(patch_size),
        text_dim=shapes["text_embedding.0.weight"][1], freq_dim=shapes["time_embedding.0.weight"][1],
        ffn_dim=shapes["blocks.0.ffn.0.weight"][0], num_layers=num_blocks(shapes),
        cross_attn_norm="blocks.0.norm3.weight" in shapes,
        **({} if "blocks.0.self_attn.norm_q.weight" in shapes else {"qk_norm": None}),
    )


def mochi_single_file_config(shapes: dict, head_dim: int) -> dict:
    """Diffusers config fields of a Mochi transformer, read off genmo-key tensor shapes (heads and head size come
    from `pos_frequencies` [3, heads, head_dim / 2], so `head_dim` is not needed)."""
    patch = shapes["x_embedder.proj.weight"]          # [dim, in_channels, p, p]
    freqs = shapes["pos_frequencies"]
    return dict(
        patch_size=patch[-1], in_channels=patch[1], num_attention_heads=freqs[1], attention_head_dim=2 * freqs[2],
        out_channels=shapes["final_layer.linear.weight"][0] // (patch[-1] ** 2),
        pooled_projection_dim=shapes["t5_yproj.weight"][0], text_embed_dim=shapes["t5_yproj.weight"][1],
        time_embed_dim=shapes["t_embedder.mlp.0.weight"][1], num_layers=num_blocks(shapes),
    )


def wan_to_diffusers(checkpoint: dict, config: dict) -> dict:
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
    return convert_wan_transformer_to_diffusers(checkpoint)


def wan_original_state_dict(diffusers_state_dict: dict, original_keys) -> dict:
    """A diffusers `WanTransformer3DModel` state dict under the original Wan names (those of ComfyUI's `WanModel`,
    given as `original_keys`). The names come from diffusers' own original -> diffusers converter, run on the
    original keys; ValueError when the two key sets do not correspond one to one."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    original_keys = list(original_keys)
    probe = convert_wan_transformer_to_diffusers({k: torch.tensor(float(i)) for i, k in enumerate(original_keys)})
    to_original = {key: original_keys[int(index)] for key, index in probe.items()}
    missing = sorted(set(to_original) - set(diffusers_state_dict))
    extra = sorted(set(diffusers_state_dict) - set(to_original))
    if missing or extra:
        raise ValueError(f"the diffusers Wan weights do not match the native model: missing {missing[:5]}, "
                         f"unexpected {extra[:5]}")
    return {to_original[key]: tensor for key, tensor in diffusers_state_dict.items()}


def mochi_to_diffusers(checkpoint: dict, config: dict) -> dict:
    """genmo Mochi keys -> diffusers keys. Same mapping as diffusers' `convert_mochi_transformer_checkpoint_to_diffusers`,
    which hard-codes 48 blocks; here the block count comes from the config so smaller files load too."""
    from diffusers.loaders.single_file_utils import swap_proj_gate, swap_scale_shift

    ck, out = checkpoint, {}
    top = {"patch_embed.proj": "x_embedder.proj", "time_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
           "time_embed.timestep_embedder.linear_2": "t_embedder.mlp.2", "time_embed.pooler.to_kv": "t5_y_embedder.to_kv",
           "time_embed.pooler.to_q": "t5_y_embedder.to_q", "time_embed.pooler.to_out": "t5_y_embedder.to_out",
           "time_embed.caption_proj": "t5_yproj", "proj_out": "final_layer.linear"}
    for new, old in top.items():
        for p in ("weight", "bias"):
            out[f"{new}.{p}"] = ck.pop(f"{old}.{p}")
    for p in ("weight", "bias"):
        out[f"norm_out.linear.{p}"] = swap_scale_shift(ck.pop(f"final_layer.mod.{p}"), dim=0)
    out["pos_frequencies"] = ck.pop("pos_frequencies")

    n = int(config["num_layers"])
    for i in range(n):
        new, old, last = f"transformer_blocks.{i}.", f"blocks.{i}.", i == n - 1
        # The last block is context_pre_only: its text-stream modulation is a single linear and it has no text
        # output projection or text MLP.
        ctx_norm = "norm1_context.linear_1" if last else "norm1_context.linear"
        renames = {"norm1.linear.weight": "mod_x.weight", "norm1.linear.bias": "mod_x.bias",
                   f"{ctx_norm}.weight": "mod_y.weight", f"{ctx_norm}.bias": "mod_y.bias",
                   "attn1.norm_q.weight": "attn.q_norm_x.weight", "attn1.norm_k.weight": "attn.k_norm_x.weight",
                   "attn1.to_out.0.weight": "attn.proj_x.weight", "attn1.to_out.0.bias": "attn.proj_x.bias",
                   "attn1.norm_added_q.weight": "attn.q_norm_y.weight",
                   "attn1.norm_added_k.weight": "attn.k_norm_y.weight", "ff.net.2.weight": "mlp_x.w2.weight"}
        if not last:
            renames.update({"attn1.to_add_out.weight": "attn.proj_y.weight", "attn1.to_add_out.bias": "attn.proj_y.bias",
                            "ff_context.net.2.weight": "mlp_y.w2.weight"})
        for k_new, k_old in renames.items():
            out[new + k_new] = ck.pop(old + k_old)
        for stream, names in (("x", ("to_q", "to_k", "to_v")), ("y", ("add_q_proj", "add_k_proj", "add_v_proj"))):
            for name, w in zip(names, ck.pop(f"{old}attn.qkv_{stream}.weight").chunk(3, dim=0)):
                out[f"{new}attn1.{name}.weight"] = w
        out[new + "ff.net.0.proj.weight"] = swap_proj_gate(ck.pop(old + "mlp_x.w1.weight"))
        if not last:
            out[new + "ff_context.net.0.proj.weight"] = swap_proj_gate(ck.pop(old + "mlp_y.w1.weight"))
    out.update(ck)   # anything left is reported as unexpected by the strict key check
    return out
