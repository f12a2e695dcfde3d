"""Tiny native ComfyUI models (random weights) whose attention sizes match our tiny diffusers configs."""
import torch

# Wan: dim = heads·128 is what ComfyUI's detection assumes; our LoRA comes from a diffusers Wan of the same size.
WAN_NATIVE = dict(image_model="wan2.1", model_type="t2v", dim=256, ffn_dim=64, num_heads=2, num_layers=2, in_dim=16,
                  out_dim=16, text_dim=32, freq_dim=256, patch_size=(1, 2, 2), window_size=(-1, -1), qk_norm=True,
                  cross_attn_norm=True, eps=1e-6)
WAN_DIFFUSERS = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=128, in_channels=16,
                     out_channels=16, text_dim=32, freq_dim=256, ffn_dim=64, num_layers=2, cross_attn_norm=True,
                     qk_norm="rms_norm_across_heads", rope_max_seq_len=64)
# Mochi: = archs.MOCHI.tiny_transformer (visual width 4·16 = 64, text width 32, 2 blocks). ComfyUI asserts the
# visual MLP width of the real model (1536·8), hence the odd ratio; the MLP carries no relation LoRA.
MOCHI_NATIVE = dict(image_model="mochi_preview", depth=2, patch_size=2, num_heads=4, hidden_size_x=64,
                    hidden_size_y=32, mlp_ratio_x=1536 * 8 / 64, mlp_ratio_y=4.0, learn_sigma=False, in_channels=12,
                    qk_norm=True, qkv_bias=False, out_bias=True, attn_drop=0.0, patch_embed_bias=True,
                    posenc_preserve_area=True, timestep_mlp_bias=True, attend_to_padding=False,
                    timestep_scale=1000.0, use_t5=True, t5_feat_dim=32, t5_token_length=16, rope_theta=10000.0)


# Wan 2.2 TI2V-5B: the Wan model at 48 latent channels (ComfyUI's WAN22, latent format Wan22).
WAN22_5B_NATIVE = dict(WAN_NATIVE, in_dim=48, out_dim=48)


def native_model(comfy, arch: str, seed: int = 0, **sizes):
    """A ModelPatcher around a freshly initialised native Wan 2.1 T2V, Wan 2.2 TI2V-5B or Mochi model on the CPU,
    fp32."""
    config_class, unet_config = {"wan": (comfy.supported_models.WAN21_T2V, WAN_NATIVE),
                                 "wan22-5b": (comfy.supported_models.WAN22_T2V, WAN22_5B_NATIVE),
                                 "mochi": (comfy.supported_models.GenmoMochi, MOCHI_NATIVE)}[arch]
    model_config = config_class(dict(unet_config, **sizes))
    model_config.set_inference_dtype(torch.float32, None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_config.get_model({})
        # ComfyUI's ops skip weight init ("disable_weight_init"); give every parameter a value.
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn_like(p) * 0.05)
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def stock_chain(high, low, positive, negative, latent, steps, cfg, seed, switch):
    """Two stock KSamplerAdvanced chained at `switch`, as ComfyUI's Wan 2.2 template chains its experts: `high` adds
    the noise and stops there with it left over, `low` finishes (Euler, simple). Returns the final latent."""
    import importlib

    advanced = importlib.import_module("nodes").KSamplerAdvanced()
    (first,) = advanced.sample(high, "enable", seed, steps, cfg, "euler", "simple", positive, negative,
                               {"samples": latent}, 0, switch, "enable")
    (second,) = advanced.sample(low, "disable", seed, steps, cfg, "euler", "simple", positive, negative, first,
                                switch, 10000, "disable")
    return second["samples"]
