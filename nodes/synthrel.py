"""SynthRel in ComfyUI (workflow 4, no download): the tiny SynthRel base as a native MODEL with its CLIP and VAE,
exemplars of any SynthRel relation, and the evaluator's verdict on a generated clip.

The MODEL is ComfyUI's own `WanModel` (sampled, patched and trained like any Wan 2.1) holding the shipped weights;
only its latent format (12 channels: 2×2 space-to-depth pixels), flow shift and x-prediction are SynthRel's. The
CLIP and VAE are small stand-ins with the methods ComfyUI's nodes call, since no stock loader knows a hashed-word
encoder or a pixel map.
"""
from __future__ import annotations

import torch

import comfy.latent_formats
import comfy.model_management
import comfy.model_patcher
import comfy.model_sampling
import comfy.supported_models
from comfy_api.latest import io, ui

from ..dreamrelation_core.archs import SYNTHREL
from .common import CATEGORY, Exemplars, image_to_uint8, uint8_to_image

PATCH = SYNTHREL.spatial_ratio


def _rgb_factors() -> list[list[float]]:
    """Latent preview: channel (c, p, q) of the space-to-depth map is colour c at one of the p·q pixel positions."""
    return [[1.0 / PATCH ** 2 if c == channel // PATCH ** 2 else 0.0 for c in range(3)]
            for channel in range(SYNTHREL.latent_channels)]


class SynthRelLatentFormat(comfy.latent_formats.LatentFormat):
    latent_channels = SYNTHREL.latent_channels
    latent_dimensions = 3
    spacial_downscale_ratio = PATCH
    latent_rgb_factors = _rgb_factors()
    latent_rgb_factors_bias = [0.0, 0.0, 0.0]


class SynthRelSampling(comfy.model_sampling.ModelSamplingDiscreteFlow, comfy.model_sampling.CONST):
    """Wan's flow sampling, except that the SynthRel base outputs the clean latent (x-prediction)."""

    def calculate_denoised(self, sigma, model_output, model_input):
        return model_output


class SynthRelModelConfig(comfy.supported_models.WAN21_T2V):
    """Wan 2.1 text-to-video at SynthRel's size, latent format and flow shift (its x-prediction: `native_model`)."""
    sampling_settings = {"shift": SYNTHREL.sample_shift}
    latent_format = SynthRelLatentFormat
    dreamrelation_arch = SYNTHREL.name          # read by comfy_backend.native_architecture


def unet_config() -> dict:
    t = SYNTHREL.tiny_transformer
    return dict(image_model="wan2.1", model_type="t2v", dim=t["num_attention_heads"] * t["attention_head_dim"],
                ffn_dim=t["ffn_dim"], num_heads=t["num_attention_heads"], num_layers=t["num_layers"],
                in_dim=t["in_channels"], out_dim=t["out_channels"], text_dim=t["text_dim"], freq_dim=t["freq_dim"],
                patch_size=tuple(t["patch_size"]), window_size=(-1, -1), qk_norm=True,
                cross_attn_norm=t["cross_attn_norm"], eps=1e-6)


def state_keys(module: torch.nn.Module) -> set[str]:
    """The keys `module.load_state_dict` expects, counting the layers that current ComfyUI's dynamic-VRAM ops build
    empty (weight and bias None until their state dict is loaded, `comfy_need_lazy_init_bias` saying whether a bias
    comes; docs/comfyui.md): those are absent from `state_dict()` until then."""
    keys = set(module.state_dict())
    for name, layer in module.named_modules():
        if hasattr(layer, "comfy_need_lazy_init_bias") and getattr(layer, "weight", None) is None:
            keys.add(f"{name}.weight")
            if layer.comfy_need_lazy_init_bias:
                keys.add(f"{name}.bias")
    return keys


def native_model(base):
    """ModelPatcher around a native Wan model holding the weights of the core's SynthRel `base`."""
    from ..dreamrelation_core.conversion import wan_original_state_dict

    config = SynthRelModelConfig(unet_config())
    config.set_inference_dtype(torch.float32, None)       # 12 MB of weights: no reason to quantise
    model = config.get_model({})
    model.model_sampling = SynthRelSampling(config)
    diffusion_model = model.diffusion_model
    diffusion_model.load_state_dict(wan_original_state_dict(base.transformer.state_dict(),
                                                            state_keys(diffusion_model)))
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


class SynthRelClip:
    """The SynthRel base's hashed-word text encoder behind ComfyUI's CLIP interface (CLIPTextEncode works)."""

    def __init__(self, encoder):
        self.encoder = encoder

    def tokenize(self, text, **kwargs):
        return text

    def encode_from_tokens_scheduled(self, tokens, **kwargs):
        emb, _ = self.encoder.encode([tokens])
        return [[emb, {}]]

    def encode_from_tokens(self, tokens, return_pooled=False, **kwargs):
        emb, _ = self.encoder.encode([tokens])
        return (emb, None) if return_pooled else emb


class SynthRelVae:
    """The fixed pixel map behind ComfyUI's VAE interface: IMAGE [F, H, W, 3] in [0, 1] <-> LATENT [1, 12, F, h, w]."""

    def __init__(self, codec):
        self.codec = codec

    def encode(self, pixels):
        height, width = pixels.shape[-3:-1]
        if height % PATCH or width % PATCH:
            raise ValueError(f"pixels: SynthRel frames need sides divisible by {PATCH}, got {width}x{height}")
        video = pixels[..., :3].reshape(-1, height, width, 3).permute(3, 0, 1, 2)[None].float() * 2 - 1
        return self.codec.encode(video)[0]

    def decode(self, latents):
        video = self.codec.decode(latents.float())                         # [B, 3, F, H, W] in [-1, 1]
        return ((video.permute(0, 2, 3, 4, 1) + 1) / 2).clamp(0, 1)     # [B, F, H, W, 3]

    def spacial_compression_decode(self):
        return PATCH

    def spacial_compression_encode(self):
        return PATCH

    def temporal_compression_decode(self):
        return SYNTHREL.temporal_ratio


class LoadSynthRelBase(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DreamRelationLoadSynthRelBase",
            display_name="Load SynthRel Base",
            category=f"{CATEGORY}/SynthRel",
            description="The shipped tiny SynthRel base (no download): a native Wan model that renders 9-frame 40×40 "
                        "clips of two coloured, textured shapes, with its text encoder and pixel 'VAE'.",
            inputs=[],
            outputs=[io.Model.Output(tooltip="The SynthRel base as a native Wan model (train and sample on it)."),
                     io.Clip.Output(tooltip="Its hashed-word text encoder (use with CLIPTextEncode)."),
                     io.Vae.Output(tooltip="Its exact pixel map (2×2 space-to-depth) in place of a VAE.")],
        )

    @classmethod
    def execute(cls):
        from ..dreamrelation_core.synthrel.base import build_synthrel_base
        from ..dreamrelation_core.synthrel.protocol import DEFAULT

        base = build_synthrel_base(DEFAULT.weights)
        return io.NodeOutput(native_model(base), SynthRelClip(base.text_encoder), SynthRelVae(base.codec))


class SynthRelExemplars(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        from ..dreamrelation_core.synthrel.base import HELD_OUT
        from ..dreamrelation_core.synthrel.render import RELATIONS

        return io.Schema(
            node_id="DreamRelationSynthRelExemplars",
            display_name="SynthRel Exemplars",
            category=f"{CATEGORY}/SynthRel",
            description="Renders exemplar clips of one SynthRel relation with exact subject masks, their subjects "
                        "drawn from two textured appearance pairs only and captioned 'a shape … a shape', and a "
                        "prompt that names subjects whose colours, textures and shapes they never show.",
            inputs=[
                io.Combo.Input("relation", options=list(RELATIONS), default=HELD_OUT[0],
                               tooltip=f"Relation to teach; the base has never seen {' and '.join(HELD_OUT)}."),
                io.Int.Input("count", default=8, min=1, max=64, tooltip="Number of exemplar clips."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, tooltip="Seed of the clips' random programs."),
            ],
            outputs=[Exemplars.Output(display_name="exemplars",
                                      tooltip="The exemplar clips with exact subject masks, for Train."),
                     io.Image.Output(display_name="images", tooltip="Every exemplar's frames, one clip after another."),
                     io.String.Output(display_name="prompt", tooltip="The relation with unseen subjects.")],
        )

    @classmethod
    def execute(cls, relation, count, seed):
        from ..dreamrelation_core.synthrel.protocol import DEFAULT as p
        from ..dreamrelation_core.synthrel.render import caption, exemplar_clips
        from .exemplars import exemplar

        clips = exemplar_clips(relation, count, p.exemplar_pairs, p.frames, p.size, seed, p.look, p.exemplar_naming)
        items = [exemplar(uint8_to_image(video), torch.from_numpy(masks).float(), text, name)
                 for name, video, masks, text in clips]
        frames = torch.cat([item["frames"] for item in items])
        return io.NodeOutput(items, frames, caption(relation, *p.test_subjects(1)[0]))


class SynthRelEvaluate(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DreamRelationSynthRelEvaluate",
            display_name="SynthRel Evaluate",
            category=f"{CATEGORY}/SynthRel",
            description="Judges a generated SynthRel clip with the benchmark's evaluator: which relation its prompt's "
                        "subjects act out, whether they are visible with the attributes it names, and which exemplar "
                        "colours or textures leaked into it.",
            is_output_node=True,
            inputs=[io.Image.Input("images", tooltip="Frames of one generated clip."),
                    io.String.Input("prompt", force_input=True, tooltip="The SynthRel caption it was generated from.")],
            outputs=[io.String.Output(display_name="verdict",
                                      tooltip="PASS or FAIL, the relation the evaluator sees, attributes, leakage.")],
        )

    @classmethod
    def execute(cls, images, prompt):
        from ..dreamrelation_core.synthrel.evaluate import evaluate_video
        from ..dreamrelation_core.synthrel.protocol import DEFAULT
        from ..dreamrelation_core.synthrel.render import parse_caption

        relation, subject1, subject2 = parse_caption(prompt)
        verdict = evaluate_video(image_to_uint8(images), subject1, subject2, DEFAULT.exemplar_subjects)
        seen = verdict["relation"] or "no relation"
        text = (f"{'PASS' if verdict['relation'] == relation else 'FAIL'}: prompt '{relation}', evaluator sees "
                f"'{seen}'; subjects {'present' if verdict['subjects_present'] else 'missing'}; named attributes "
                f"{'rendered' if verdict['attributes_match'] else 'not all rendered'}; exemplar looks leaked: "
                f"{', '.join(sorted(verdict['leaked'])) or 'none'}")
        return io.NodeOutput(text, ui=ui.PreviewText(text))


NODES = [LoadSynthRelBase, SynthRelExemplars, SynthRelEvaluate]
