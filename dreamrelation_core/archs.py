"""The family table: everything that differs between Mochi and Wan, one entry per family, looked up by name.

The trainer, sampler, triplet and loaders never branch on the architecture name; they read these fields. Checkpoint
key conversions live in conversion.py, referred to from each family's `Loading`.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from . import conversion
from .flow import X0_SIGMA_FLOOR, velocity_from_x0

ROLES = ("relation", "subject1", "subject2", "ffn")
INFERENCE_ROLES = ("relation", "ffn")


@dataclass(frozen=True)
class Loading:
    """How a family's base is loaded (bases.py): its components and its single-file checkpoints."""

    tiny_vae_class: str
    tiny_vae: dict
    text_dim_key: str               # transformer config field holding the text embedding size
    text_model_class: str           # transformers encoder class when text_encoder/config.json does not say
    zero_padding: bool
    zero_empty_prompts: bool
    clean: Callable[[str], str] | None
    marker: str                     # original-layout key (after any prefix) that identifies a single-file checkpoint
    dim_key: str                    # original-layout tensor whose first dimension is the hidden size
    unsupported: dict               # original-layout key fragment -> why such a checkpoint is refused
    templates: dict                 # inner dim -> config template folder under configs/ (None: the default)
    infer_config: Callable[[dict, int], dict]
    convert: Callable[[dict, dict], dict]


@dataclass(frozen=True)
class Architecture:
    """One video-DiT family.

    Flow convention (both families): z_σ = (1 − σ)·z0 + σ·ε, σ ∈ [0, 1], σ = 1 is pure noise.
    `timestep_of_sigma` is what the transformer's `timestep` argument receives, and `output_sign` maps its
    output onto our canonical velocity dz/dσ = ε − z0 (Wan predicts ε − z0 directly, sign +1; Mochi was trained
    on u = z0 − ε with timestep 1000·(1 − σ), sign −1; docs/method.md, "Flow matching conventions"). `prediction`
    "x0" marks a model that outputs the clean latent instead (the SynthRel base); `velocity` converts it
    (flow.velocity_from_x0).
    """

    name: str
    transformer_class: str          # diffusers class name
    placements: dict                # placement name -> (role -> module names relative to a transformer block)
    temporal_ratio: int             # causal VAE: pixel frames = 1 + temporal_ratio·(latent frames − 1)
    spatial_ratio: int              # VAE spatial downsampling
    latent_channels: int
    text_max_length: int
    timestep_reversed: bool         # Mochi: timestep = 1000·(1 − σ)
    output_sign: float
    uncond_text: str                # "zeros": all-zero embedding and mask (Mochi); "empty": encode ""
    sample_schedule: str            # "linear_quadratic" (Mochi) or "shifted" (Wan)
    sample_shift: float             # flow shift for "shifted" schedules
    sample_steps: int
    sample_cfg: float
    fps: int
    default_frames: int
    default_size: tuple             # (height, width)
    text_mask_kwarg: str | None     # forward kwarg taking the text attention mask, if the model uses one
    # ComfyUI-native names (docs/comfyui.md): diffusers block list name, and block-relative diffusers module ->
    # (native module, layout): layout None = same matrix, an int k = row slice k of a fused q/k/v linear,
    # "swap_halves" = output rows in swapped halves. Native keys are `diffusion_model.blocks.N.<native module>`.
    diffusers_blocks: str = "blocks"
    native_modules: dict = field(default_factory=dict)
    tiny_transformer: dict = field(default_factory=dict)
    prediction: str = "velocity"    # what the transformer outputs: "velocity" or "x0" (clean latent)
    default_placement: str = "reference"
    loading: Loading | None = None  # None: not loaded from files (SynthRel builds its own)
    comfy_model_class: str | None = None   # ComfyUI's `comfy.model_base` class of its native models

    def role_modules(self, placement: str | None = None) -> dict:
        """role -> block-relative module names of `placement` (default: `default_placement`)."""
        name = self.default_placement if placement is None else placement
        try:
            return self.placements[name]
        except KeyError:
            raise ValueError(f"{self.name}: unknown placement {name!r}; expected one of "
                             f"{sorted(self.placements)}") from None

    def timestep_of_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        """σ in [0, 1] -> the value the transformer expects in its `timestep` argument ([B])."""
        return (1.0 - sigma) * 1000.0 if self.timestep_reversed else sigma * 1000.0

    def latent_frames(self, pixel_frames: int) -> int:
        """Latent frame count of a causal VAE; raises ValueError when `pixel_frames` is not 1 + r·k."""
        r = self.temporal_ratio
        if pixel_frames < 1 or (pixel_frames - 1) % r:
            raise ValueError(f"{self.name}: frame count must be {r}k+1 (got {pixel_frames})")
        return (pixel_frames - 1) // r + 1

    def transformer_kwargs(self, latents, sigma, text, text_mask) -> dict:
        # The timestep stays fp32 whatever the latents' dtype: in bf16, 1000·σ is off by up to 2 (σ by 0.002), and
        # the models' own timestep embeddings compute their sinusoids from it before casting.
        kwargs = dict(hidden_states=latents, timestep=self.timestep_of_sigma(sigma.to(torch.float32)),
                      encoder_hidden_states=text, return_dict=False)
        if self.text_mask_kwarg:
            kwargs[self.text_mask_kwarg] = text_mask
        return kwargs

    def velocity(self, transformer, latents, sigma, text, text_mask) -> torch.Tensor:
        """Canonical velocity ε − z0 predicted by `transformer` at noisy `latents` [B, C, f, h, w], σ [B]."""
        out = transformer(**self.transformer_kwargs(latents, sigma, text, text_mask))[0] * self.output_sign
        return self.velocity_from_denoised(latents, out, sigma) if self.prediction == "x0" else out

    def velocity_from_denoised(self, latents, denoised, sigma) -> torch.Tensor:
        """Canonical velocity (z − x̂0)/σ from a denoised estimate x̂0 (what ComfyUI's models return), with the same
        σ floor as training for x-predicting models (flow.velocity_from_x0)."""
        return velocity_from_x0(latents, denoised, sigma, floor=X0_SIGMA_FLOOR if self.prediction == "x0" else 0.0)


def _placement(relation, subjects, ffn) -> dict:
    """role -> modules, both subject LoRAs on the same modules (two independent adapters there)."""
    return {"relation": tuple(relation), "subject1": tuple(subjects), "subject2": tuple(subjects), "ffn": tuple(ffn)}


_WAN_QK = ("attn1.to_q", "attn1.to_k", "attn2.to_q", "attn2.to_k")
_WAN_V = ("attn1.to_v", "attn2.to_v")
_WAN_O = ("attn1.to_out.0", "attn2.to_out.0")
_WAN_MLP = ("ffn.net.0.proj", "ffn.net.2")

WAN = Architecture(
    name="wan",
    transformer_class="WanTransformer3DModel",
    # Where the roles go (docs/method.md, "Placements"). `reference`: self- and cross-attention both carry the
    # triplet as the reference code does on Mochi: Q/K decide *where* tokens attend (relation), V carries
    # appearance (subjects), the out-projections are the "FFN" LoRAs. The others test where Wan keeps motion:
    # SMRABooth (CVPR 2026) found it in V, O and the MLP's second layer on Wan2.1, appearance in Q, K and the
    # MLP's first layer (`motion_vo`).
    placements={
        "reference": _placement(_WAN_QK, _WAN_V, _WAN_O),
        "reference_mlp": _placement(_WAN_QK, _WAN_V, _WAN_O + _WAN_MLP),
        "relation_mlp": _placement(_WAN_QK + _WAN_MLP, _WAN_V, _WAN_O),
        "motion_vo": _placement(_WAN_V + _WAN_MLP[1:], _WAN_QK + _WAN_MLP[:1], _WAN_O),
    },
    temporal_ratio=4,
    spatial_ratio=8,
    latent_channels=16,
    text_max_length=512,
    timestep_reversed=False,
    output_sign=1.0,
    uncond_text="empty",
    sample_schedule="shifted",
    sample_shift=3.0,
    sample_steps=50,
    sample_cfg=5.0,
    fps=16,
    default_frames=81,
    default_size=(480, 832),
    text_mask_kwarg=None,
    diffusers_blocks="blocks",
    native_modules={
        "attn1.to_q": ("self_attn.q", None), "attn1.to_k": ("self_attn.k", None),
        "attn1.to_v": ("self_attn.v", None), "attn1.to_out.0": ("self_attn.o", None),
        "attn2.to_q": ("cross_attn.q", None), "attn2.to_k": ("cross_attn.k", None),
        "attn2.to_v": ("cross_attn.v", None), "attn2.to_out.0": ("cross_attn.o", None),
        "attn2.add_k_proj": ("cross_attn.k_img", None), "attn2.add_v_proj": ("cross_attn.v_img", None),
        "ffn.net.0.proj": ("ffn.0", None), "ffn.net.2": ("ffn.2", None),
    },
    tiny_transformer=dict(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=16, out_channels=16,
        text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=64,
    ),
    loading=Loading(
        # Wan 2.1 VAE at base_dim 8: temporal 4x (two temporal downsamples), spatial 8x (three stages).
        tiny_vae_class="AutoencoderKLWan",
        tiny_vae=dict(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                      temperal_downsample=[False, True, True]),
        text_dim_key="text_dim", text_model_class="UMT5EncoderModel",
        zero_padding=True, zero_empty_prompts=False, clean=conversion.wan_prompt_clean,
        marker="blocks.0.self_attn.q.weight", dim_key="patch_embedding.weight",
        unsupported={"img_emb.": "image-to-video (img_emb) checkpoints are not supported; use a text-to-video one",
                     "vace_blocks.": "VACE checkpoints are not supported; use a plain text-to-video one",
                     "motion_encoder.": "Wan-Animate checkpoints are not supported; use a text-to-video one"},
        templates={1536: "wan2.1-t2v-1.3b", None: "wan2.1-t2v-14b"},
        infer_config=conversion.wan_single_file_config, convert=conversion.wan_to_diffusers,
    ),
    comfy_model_class="WAN21",
)

MOCHI = Architecture(
    name="mochi",
    transformer_class="MochiTransformer3DModel",
    # Joint attention: visual stream (to_q/k/v, to_out.0) and text stream (add_*_proj, to_add_out) each get the
    # same role groups (docs/method.md, "Relation LoRA triplet"). The last block has no text output projection
    # (to_add_out is None).
    placements={
        "reference": _placement(("attn1.to_q", "attn1.to_k", "attn1.add_q_proj", "attn1.add_k_proj"),
                                ("attn1.to_v", "attn1.add_v_proj"), ("attn1.to_out.0", "attn1.to_add_out")),
        "reference_mlp": _placement(("attn1.to_q", "attn1.to_k", "attn1.add_q_proj", "attn1.add_k_proj"),
                                    ("attn1.to_v", "attn1.add_v_proj"),
                                    ("attn1.to_out.0", "attn1.to_add_out", "ff.net.0.proj", "ff.net.2",
                                     "ff_context.net.0.proj", "ff_context.net.2")),
    },
    temporal_ratio=6,
    spatial_ratio=8,
    latent_channels=12,
    text_max_length=256,
    timestep_reversed=True,
    output_sign=-1.0,
    uncond_text="zeros",
    sample_schedule="linear_quadratic",
    sample_shift=1.0,
    sample_steps=64,
    sample_cfg=6.0,
    fps=30,
    default_frames=61,
    default_size=(480, 848),
    text_mask_kwarg="encoder_attention_mask",
    # ComfyUI (like genmo) keeps q/k/v fused: rows [0:D] q, [D:2D] k, [2D:3D] v of qkv_x (visual) / qkv_y (text).
    diffusers_blocks="transformer_blocks",
    native_modules={
        "attn1.to_q": ("attn.qkv_x", 0), "attn1.to_k": ("attn.qkv_x", 1), "attn1.to_v": ("attn.qkv_x", 2),
        "attn1.add_q_proj": ("attn.qkv_y", 0), "attn1.add_k_proj": ("attn.qkv_y", 1),
        "attn1.add_v_proj": ("attn.qkv_y", 2),
        "attn1.to_out.0": ("attn.proj_x", None), "attn1.to_add_out": ("attn.proj_y", None),
        # genmo's SwiGLU w1 stores [gate; value] where diffusers stores [value; gate] (diffusers swap_proj_gate).
        "ff.net.0.proj": ("mlp_x.w1", "swap_halves"), "ff.net.2": ("mlp_x.w2", None),
        "ff_context.net.0.proj": ("mlp_y.w1", "swap_halves"), "ff_context.net.2": ("mlp_y.w2", None),
    },
    tiny_transformer=dict(
        patch_size=2, num_attention_heads=4, attention_head_dim=16, num_layers=2, pooled_projection_dim=32,
        in_channels=12, text_embed_dim=32, time_embed_dim=32, activation_fn="swiglu", max_sequence_length=16,
    ),
    loading=Loading(
        # Mochi VAE at 32 channels (its group norms use 32 groups): temporal 1·2·3 = 6x, spatial 8x.
        tiny_vae_class="AutoencoderKLMochi",
        tiny_vae=dict(encoder_block_out_channels=(32, 32, 32, 32), decoder_block_out_channels=(32, 32, 32, 32),
                      latent_channels=12, layers_per_block=(1, 1, 1, 1, 1),
                      add_attention_block=(False, True, True, True, True)),
        text_dim_key="text_embed_dim", text_model_class="T5EncoderModel",
        zero_padding=False, zero_empty_prompts=True, clean=None,
        marker="blocks.0.attn.qkv_x.weight", dim_key="x_embedder.proj.weight",
        unsupported={},
        templates={None: "mochi-1-preview"},
        infer_config=conversion.mochi_single_file_config, convert=conversion.mochi_to_diffusers,
    ),
    comfy_model_class="GenmoMochi",
)

# Wan 2.2 TI2V-5B (text-to-video here): the Wan transformer at width 3072 on the Wan 2.2 VAE, 48 latent channels at
# 4×16×16 (its 2×2 patchify inside the VAE). The same modules and native names as Wan 2.1: the triplet, its
# placements and its LoRA files carry over; ComfyUI loads it as `WAN22`. The low-VRAM Wan target.
WAN22_5B = replace(
    WAN,
    name="wan22-5b",
    spatial_ratio=16,
    latent_channels=48,
    sample_shift=5.0,
    fps=24,
    default_frames=121,
    default_size=(704, 1280),
    tiny_transformer=dict(WAN.tiny_transformer, in_channels=48, out_channels=48),
    loading=replace(
        WAN.loading,
        tiny_vae=dict(base_dim=8, decoder_base_dim=8, z_dim=48, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                      temperal_downsample=[False, True, True], is_residual=True, in_channels=12, out_channels=12,
                      patch_size=2, scale_factor_spatial=16, latents_mean=[0.0] * 48, latents_std=[1.0] * 48),
        templates={None: "wan2.2-ti2v-5b"},
    ),
    comfy_model_class="WAN22",
)

# The SynthRel toy base: a real Wan transformer at tiny size on a fixed invertible pixel<->latent map (2×2
# space-to-depth, no temporal compression) of 9-frame 32×32 clips, with a hashed-word text encoder
# (synthrel/base.py). The model predicts the clean latent (x-prediction, as JiT): a velocity-predicting base has to
# output pixel noise, which needed small tokens (1×2×2 latent patches, 576 a clip) and still left speckle and
# fragments; predicting flat-coloured shapes works with 1×4×4 patches (8×8 pixels, 144 tokens a clip), ~4× less
# compute a step, which buys a deeper, wider model and more steps on a CPU (docs/method.md).
SYNTHREL = replace(
    WAN,
    name="synthrel",
    loading=None,                   # built by synthrel/base.py; in ComfyUI its model is tagged (nodes/synthrel.py)
    comfy_model_class=None,
    prediction="x0",
    temporal_ratio=1,
    spatial_ratio=2,
    latent_channels=12,
    text_max_length=12,
    sample_shift=1.0,
    sample_steps=20,
    sample_cfg=4.0,
    fps=8,
    default_frames=9,
    default_size=(40, 40),          # the clip of the default SynthRel protocol (synthrel/protocol.py)
    tiny_transformer=dict(
        patch_size=(1, 4, 4), num_attention_heads=6, attention_head_dim=32, in_channels=12, out_channels=12,
        text_dim=64, freq_dim=64, ffn_dim=384, num_layers=6, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=64,
    ),
)

# Real model families (loadable from diffusers folders and checkpoint files), and every architecture by name.
# Wan 2.2 5B first: ComfyUI's WAN22 is a subclass of WAN21, and single files and folders are told apart by their
# latent channels (`family_of`).
MODEL_FAMILIES = {a.name: a for a in (WAN22_5B, WAN, MOCHI)}
ARCHITECTURES = {**MODEL_FAMILIES, SYNTHREL.name: SYNTHREL}


def family_of(transformer_class: str, in_channels: int | None = None) -> Architecture | None:
    """The model family of a diffusers transformer class, told apart by its latent channels where one class serves
    several (Wan 2.1 / 2.2 A14B: 16, Wan 2.2 TI2V-5B: 48; unknown channels: the last listed, Wan 2.1); None when
    the class is unknown."""
    found = [a for a in MODEL_FAMILIES.values() if a.transformer_class == transformer_class]
    return next((a for a in found if a.latent_channels == in_channels), found[-1] if found else None)


def get_architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; expected one of {sorted(ARCHITECTURES)}") from None
