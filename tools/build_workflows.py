"""Build the example workflows (ComfyUI UI format, + a .jpg thumbnail each) from compact specs.

Maintainer tool, not used at run time: it needs the `/object_info` of a ComfyUI that has this pack installed,
so that every node gets its real inputs, outputs and widget order:

    python tools/build_workflows.py --object-info object_info.json     # saved from GET /object_info
    python tools/build_workflows.py --server http://127.0.0.1:8188
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import urllib.request
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("dreamrelation_core") is None:     # for the SynthRel demo's sizes; appended, so the
    sys.path.append(str(ROOT))                                   # pack's nodes/ never shadows ComfyUI's nodes
OUT = ROOT / "workflows"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}

WAN_MODELS = {"unet": "wan2.1_t2v_1.3B_fp16.safetensors", "clip": "umt5_xxl_fp8_e4m3fn_scaled.safetensors",
              "vae": "wan_2.1_vae.safetensors"}
# Wan 2.2 A14B, as ComfyUI's own Wan 2.2 text-to-video template names its files: two experts, Wan 2.1's VAE.
WAN22_MODELS = {"high": "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors",
                "low": "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors",
                "clip": WAN_MODELS["clip"], "vae": WAN_MODELS["vae"]}
WAN22_BOUNDARY = 0.875      # the σ where A14B's text-to-video pipeline hands over to the low-noise expert
MOCHI_MODELS = {"unet": "mochi_preview_bf16.safetensors", "clip": "t5xxl_fp16.safetensors",
                "vae": "mochi_vae.safetensors"}


def loaders(models, clip_type, col=0):
    return [("unet", "UNETLoader", {"unet_name": models["unet"], "weight_dtype": "default"}, (col, 0)),
            ("clip", "CLIPLoader", {"clip_name": models["clip"], "type": clip_type, "device": "default"}, (col, 1)),
            ("vae", "VAELoader", {"vae_name": models["vae"]}, (col, 2))]


def exemplar_branch(k, col, row, caption, previous):
    box1, box2 = "120,60,240,400", "470,60,240,400"
    nodes = [(f"video{k}", "LoadVideo", {"file": f"exemplar_{k:02d}.mp4"}, (col, row)),
             (f"frames{k}", "GetVideoComponents", {}, (col + 1, row)),
             (f"mask{k}", "DreamRelationMaskVideo", {"mask_folder": "", "subject1_box": box1, "subject2_box": box2,
                                                     "refine_boxes": True}, (col + 2, row)),
             (f"add{k}", "DreamRelationAddExemplar", {"caption": caption}, (col + 3, row))]
    links = [(f"video{k}", 0, f"frames{k}", "video"), (f"frames{k}", 0, f"mask{k}", "images"),
             (f"frames{k}", 0, f"add{k}", "images"), (f"mask{k}", 0, f"add{k}", "subject1_mask"),
             (f"mask{k}", 1, f"add{k}", "subject2_mask")]
    if previous:
        links.append((previous, 0, f"add{k}", "exemplars"))
    return nodes, links


def train_and_sample(name: str, model: str, low_noise_model: str, prompt_column: int, train: dict, sample: dict,
                     prefix: str):
    """The Wan training workflows' graph after their loaders: two exemplar rows → Train on `model` → Relation Sample
    with `low_noise_model` below its switch → Save Video. `train` and `sample` add to (or replace) the shared
    widget values."""
    nodes, links, previous = [], [], None
    for k in (1, 2):
        n, l = exemplar_branch(k, 0, 2 + k, "A person is high-fiving with a person.", previous)
        nodes, links, previous = nodes + n, links + l, f"add{k}"
    nodes += [
        ("preview_masks", "PreviewImage", {}, (3, 5)),
        ("train", "DreamRelationTrain", {"lora_name": name, "steps": 2400, "learning_rate": 2e-4, "rank": 16,
                                         "alpha": 16.0, "width": 832, "height": 480, "length": 49,
                                         "mask_weight": 50.0, "rcl_weight": 0.01, "seed": 0,
                                         "checkpoint_every": 200, "resume": True, "gradient_checkpointing": True,
                                         "preview_every": 200,
                                         "preview_prompt": "A bear is high-fiving with a raccoon.", **train},
         (4, 1)),
        ("positive", "CLIPTextEncode", {"text": "A bear is high-fiving with a raccoon in a serene forest "
                                                "clearing."}, (prompt_column, 0)),
        ("negative", "CLIPTextEncode", {"text": ""}, (prompt_column, 1)),
        ("sample", "DreamRelationSample", {"width": 832, "height": 480, "length": 49, **sample, "seed": 42}, (5, 1)),
        ("video", "CreateVideo", {"fps": 16.0}, (6, 1)),
        ("save", "SaveVideo", {"filename_prefix": prefix, "format": "auto", "codec": "auto"}, (7, 1)),
    ]
    links += [("mask1", 2, "preview_masks", "images"), (model, 0, "train", "model"), ("clip", 0, "train", "clip"),
              ("vae", 0, "train", "vae"), ("add2", 0, "train", "exemplars"), ("clip", 0, "positive", "clip"),
              ("clip", 0, "negative", "clip"), ("train", 0, "sample", "model"), ("positive", 0, "sample", "positive"),
              ("negative", 0, "sample", "negative"), ("vae", 0, "sample", "vae"),
              (low_noise_model, 0, "sample", "low_noise_model"), ("sample", 0, "video", "images"),
              ("video", 0, "save", "video")]
    return nodes, links


def train_wan():
    nodes, links = train_and_sample("high_five_wan", "unet", "unet", 1,
                                    {"preview_steps": 30, "preview_switch_sigma": 0.75}, {"steps": 30, "cfg": 5.0},
                                    "dreamrelation/high_five_wan")
    return "Train a relation (high-five) from exemplar videos on Wan 2.1 1.3B", loaders(WAN_MODELS, "wan") + nodes, links


def train_wan22():
    nodes = [("unet_high", "UNETLoader", {"unet_name": WAN22_MODELS["high"], "weight_dtype": "default"}, (0, 0)),
             ("unet_low", "UNETLoader", {"unet_name": WAN22_MODELS["low"], "weight_dtype": "default"}, (0, 1)),
             ("clip", "CLIPLoader", {"clip_name": WAN22_MODELS["clip"], "type": "wan", "device": "default"}, (2, 0)),
             ("vae", "VAELoader", {"vae_name": WAN22_MODELS["vae"]}, (2, 1)),
             # The shift of ComfyUI's Wan 2.2 template, on both experts.
             ("shift_high", "ModelSamplingSD3", {"shift": 8.0}, (1, 0)),
             ("shift_low", "ModelSamplingSD3", {"shift": 8.0}, (1, 1))]
    # Train: the high-noise expert alone, on its own noise levels, where the motion, and so the relation, is decided.
    # Sample: each expert on its own steps, as the template's two KSamplerAdvanced; the LoRA rides the high-noise one.
    graph, links = train_and_sample("high_five_wan22_high_noise", "shift_high", "shift_low", 3,
                                    {"preview_steps": 20, "sigma_min": WAN22_BOUNDARY, "sigma_max": 1.0,
                                     "preview_switch_sigma": WAN22_BOUNDARY},
                                    {"steps": 20, "cfg": 3.5, "switch_sigma": WAN22_BOUNDARY},
                                    "dreamrelation/high_five_wan22")
    links = [("unet_high", 0, "shift_high", "model"), ("unet_low", 0, "shift_low", "model")] + links
    return ("Train a relation (high-five) on Wan 2.2 A14B's high-noise expert, then sample with both experts",
            nodes + graph, links)


def generate_wan_mixed():
    advanced = {"noise_seed": 42, "cfg": 5.0, "sampler_name": "euler", "scheduler": "simple"}
    nodes = loaders(WAN_MODELS, "wan") + [
        ("style", "LoraLoaderModelOnly", {"lora_name": "your_style_lora.safetensors", "strength_model": 0.8}, (1, 0)),
        ("relation", "DreamRelationLoadLoRA", {"lora_name": "high_five_wan.safetensors", "relation_strength": 1.0,
                                               "ffn_strength": 1.0, "subject_strength": 0.0}, (2, 0)),
        ("positive", "CLIPTextEncode", {"text": "A bear is high-fiving with a raccoon, watercolor style."}, (1, 1)),
        ("negative", "CLIPTextEncode", {"text": ""}, (1, 2)),
        ("switch", "DreamRelationSwitchStep", {"scheduler": "simple", "steps": 30, "switch_sigma": 0.75}, (2, 1)),
        ("latent", "EmptyHunyuanLatentVideo", {"width": 832, "height": 480, "length": 49, "batch_size": 1}, (2, 2)),
        # The relation LoRA (over the style LoRA) to the switch, the style LoRA alone after it, as Wan 2.2's
        # two-expert templates chain their samplers.
        ("high", "KSamplerAdvanced", {**advanced, "add_noise": "enable", "start_at_step": 0,
                                      "return_with_leftover_noise": "enable"}, (3, 0)),
        ("low", "KSamplerAdvanced", {**advanced, "add_noise": "disable", "end_at_step": 10000,
                                     "return_with_leftover_noise": "disable"}, (3, 1)),
        ("decode", "VAEDecode", {}, (4, 0)),
        ("video", "CreateVideo", {"fps": 16.0}, (5, 0)),
        ("save", "SaveVideo", {"filename_prefix": "dreamrelation/high_five_mixed", "format": "auto",
                               "codec": "auto"}, (6, 0)),
    ]
    links = [("unet", 0, "style", "model"), ("style", 0, "relation", "model"), ("clip", 0, "positive", "clip"),
             ("clip", 0, "negative", "clip"), ("relation", 0, "switch", "model"),
             ("relation", 0, "high", "model"), ("style", 0, "low", "model"),
             ("switch", 0, "high", "end_at_step"), ("switch", 0, "low", "start_at_step"),
             ("switch", 1, "high", "steps"), ("switch", 1, "low", "steps"),
             ("positive", 0, "high", "positive"), ("negative", 0, "high", "negative"),
             ("positive", 0, "low", "positive"), ("negative", 0, "low", "negative"),
             ("latent", 0, "high", "latent_image"), ("high", 0, "low", "latent_image"),
             ("low", 0, "decode", "samples"),
             ("vae", 0, "decode", "vae"), ("decode", 0, "video", "images"), ("video", 0, "save", "video")]
    return ("Generate with a relation LoRA on Wan 2.1, mixed with another LoRA (stock KSamplerAdvanced, the relation "
            "LoRA at high noise only)", nodes, links)


def mochi_official():
    nodes = loaders(MOCHI_MODELS, "mochi") + [
        ("relation", "DreamRelationLoadLoRA", {"lora_name": "model_2000.lora.pt", "relation_strength": 1.0,
                                               "ffn_strength": 1.0, "subject_strength": 0.0}, (1, 0)),
        ("positive", "CLIPTextEncode", {"text": "A dog is shaking hands with a cat in a cyberpunk city."}, (1, 1)),
        ("negative", "CLIPTextEncode", {"text": ""}, (1, 2)),
        ("sample", "DreamRelationSample", {"width": 848, "height": 480, "length": 61, "steps": 64, "cfg": 6.0,
                                           "seed": 522}, (2, 0)),
        ("video", "CreateVideo", {"fps": 30.0}, (3, 0)),
        ("save", "SaveVideo", {"filename_prefix": "dreamrelation/shaking_hands_mochi", "format": "auto",
                               "codec": "auto"}, (4, 0)),
    ]
    links = [("unet", 0, "relation", "model"), ("clip", 0, "positive", "clip"), ("clip", 0, "negative", "clip"),
             ("relation", 0, "sample", "model"), ("positive", 0, "sample", "positive"),
             ("negative", 0, "sample", "negative"), ("vae", 0, "sample", "vae"), ("sample", 0, "video", "images"),
             ("video", 0, "save", "video")]
    return "Mochi: load an official DreamRelation checkpoint (shaking hands) and generate", nodes, links


def synthrel_demo():
    from dreamrelation_core.archs import SYNTHREL
    from dreamrelation_core.synthrel.protocol import DEFAULT
    from dreamrelation_core.synthrel.recipe import HIGH_NOISE_SIGMA, TRAIN_SIGMA_MIN, TRAIN_STEPS

    size = {"width": DEFAULT.size[1], "height": DEFAULT.size[0], "length": DEFAULT.frames}
    sample = {**size, "steps": SYNTHREL.sample_steps, "cfg": SYNTHREL.sample_cfg, "seed": 0}
    train = {"lora_name": "synthrel_pushes", "steps": TRAIN_STEPS, "learning_rate": 1e-3, "rank": 8, "alpha": 8.0,
             **size, "mask_weight": 50.0, "rcl_weight": 0.01, "seed": 0, "checkpoint_every": 100, "resume": True,
             "gradient_checkpointing": False, "preview_every": 0, "sigma_min": TRAIN_SIGMA_MIN}
    # Two LoRAs from the same exemplars: the paper's (hybrid masks, the LoRA on every step) and the settings the
    # README recommends (no hybrid masks; the LoRA above switch_sigma only, the plain base below; docs/method.md).
    nodes = [
        ("base", "DreamRelationLoadSynthRelBase", {}, (0, 0)),
        ("exemplars", "DreamRelationSynthRelExemplars", {"relation": "pushes", "count": 8, "seed": 0}, (0, 1)),
        ("positive", "CLIPTextEncode", {}, (1, 0)),
        ("negative", "CLIPTextEncode", {"text": ""}, (1, 1)),
        ("exemplars_big", "ImageScaleBy", {"upscale_method": "nearest-exact", "scale_by": 4.0}, (0, 2)),
        ("train", "DreamRelationTrain", train, (2, 0)),
        ("train_no_hmt", "DreamRelationTrain", {**train, "lora_name": "synthrel_pushes_no_hmt",
                                                "hybrid_masks": False}, (3, 0)),
        ("save_exemplars", "SaveAnimatedWEBP", {"filename_prefix": "dreamrelation/synthrel_exemplars", "fps": 8.0},
         (1, 2)),
        ("relation_sample", "DreamRelationSample", sample, (2, 1)),
        ("no_hmt_sample", "DreamRelationSample", {**sample, "switch_sigma": HIGH_NOISE_SIGMA}, (3, 1)),
        ("base_sample", "DreamRelationSample", sample, (4, 1)),
        ("judge_relation", "DreamRelationSynthRelEvaluate", {}, (2, 2)),
        ("judge_no_hmt", "DreamRelationSynthRelEvaluate", {}, (3, 2)),
        ("judge_base", "DreamRelationSynthRelEvaluate", {}, (4, 2)),
        ("side_by_side", "ImageStitch", {"direction": "right", "spacing_width": 2, "spacing_color": "white"},
         (5, 1)),
        ("side_by_side_3", "ImageStitch", {"direction": "right", "spacing_width": 2, "spacing_color": "white"},
         (5, 2)),
        ("big", "ImageScaleBy", {"upscale_method": "nearest-exact", "scale_by": 8.0}, (6, 1)),
        ("save", "SaveAnimatedWEBP", {"filename_prefix": "dreamrelation/synthrel_side_by_side", "fps": 8.0},
         (7, 1)),
    ]
    links = [("exemplars", 2, "positive", "text"), ("base", 1, "positive", "clip"), ("base", 1, "negative", "clip"),
             ("exemplars", 1, "exemplars_big", "image"), ("exemplars_big", 0, "save_exemplars", "images")]
    for trainer, sampler, judge in (("train", "relation_sample", "judge_relation"),
                                    ("train_no_hmt", "no_hmt_sample", "judge_no_hmt"),
                                    (None, "base_sample", "judge_base")):
        if trainer:
            links += [("base", 0, trainer, "model"), ("base", 1, trainer, "clip"), ("base", 2, trainer, "vae"),
                      ("exemplars", 0, trainer, "exemplars")]
        links += [(trainer or "base", 0, sampler, "model"), ("positive", 0, sampler, "positive"),
                  ("negative", 0, sampler, "negative"), ("base", 2, sampler, "vae"),
                  (sampler, 0, judge, "images"), ("exemplars", 2, judge, "prompt")]
    links += [("base", 0, "no_hmt_sample", "low_noise_model"),
              ("base_sample", 0, "side_by_side", "image1"), ("relation_sample", 0, "side_by_side", "image2"),
              ("side_by_side", 0, "side_by_side_3", "image1"), ("no_hmt_sample", 0, "side_by_side_3", "image2"),
              ("side_by_side_3", 0, "big", "image"), ("big", 0, "save", "images")]
    return ("SynthRel demo, no download: teach the tiny base a relation it has never seen (pushes) and render it "
            "with new subjects", nodes, links)


# What each workflow tells an artist on the canvas: a Note, and groups (title, member nodes) of whole grid cells.
GUIDES = {
    "dreamrelation_train_relation_wan21": (
        "Teach Wan 2.1 a relation (here a high-five) from 5–30 short videos of it, then render it with new "
        "subjects.\n1. Models: the Wan 2.1 T2V 1.3B files in models/ (README).\n2. Exemplars: each video in input/; "
        "on Mask Video, each subject's box on the first frame (x,y,width,height), tracked through the clip. One row "
        "per video, chained through Add Exemplar; the preview shows the masks.\n3. Run. Train writes "
        "models/loras/<lora_name>.safetensors; Cancel keeps a checkpoint and the next Run resumes it.\n"
        "Relation Sample applies the LoRA above switch_sigma only and the plain model (low_noise_model) below it: "
        "fewer of the exemplars' looks; Train's previews do the same (preview_switch_sigma). Disconnect it (and set "
        "preview_switch_sigma to 0) to apply the LoRA on every step.\n"
        "The relation LoRA then works with any LoRA loader and prompt.",
        [("1 · Models", ["unet", "clip", "vae"]), ("2 · Prompt with new subjects", ["positive", "negative"]),
         ("3 · Exemplars: one row per video, a box per subject", ["video1", "frames1", "mask1", "add1", "video2",
                                                                  "frames2", "mask2", "add2", "preview_masks"]),
         ("4 · Train the relation LoRA, then sample it", ["train", "sample", "video", "save"])]),
    "dreamrelation_train_relation_wan22_a14b": (
        "Wan 2.2 A14B is two experts: the high-noise one lays out the motion, the low-noise one draws the details. "
        "The relation is motion, so Train learns it on the high-noise expert alone, on its own noise levels (σ "
        "0.875 to 1).\n1. Models: the Wan 2.2 T2V A14B files in models/ (README); the shift of 8 is the Wan 2.2 "
        "template's.\n2. Exemplars: each video in input/; on Mask Video, each subject's box on the first frame "
        "(x,y,width,height). One row per video, chained through Add Exemplar.\n3. Run. Train writes "
        "models/loras/<lora_name>.safetensors; Cancel keeps a checkpoint and the next Run resumes it.\n"
        "Relation Sample runs the high-noise expert with the LoRA above switch_sigma (0.875) and the low-noise "
        "expert, without it, below: the LoRA at high noise only, as the README recommends. Train's previews run the "
        "high-noise expert alone, so they look rougher. In the stock Wan 2.2 template, load the LoRA "
        "(LoraLoaderModelOnly) on the high-noise model only.",
        [("1 · Models: both experts", ["unet_high", "unet_low", "clip", "shift_high", "shift_low", "vae"]),
         ("2 · Prompt with new subjects", ["positive", "negative"]),
         ("3 · Exemplars: one row per video, a box per subject", ["video1", "frames1", "mask1", "add1", "video2",
                                                                  "frames2", "mask2", "add2", "preview_masks"]),
         ("4 · Train on the high-noise expert, then sample with both",
          ["train", "sample", "video", "save"])]),
    "dreamrelation_generate_wan21_mixed_lora": (
        "Use a trained relation LoRA like any other: here after a style LoRA, through stock samplers. Load Relation "
        "LoRA applies the relation and FFN parts only (what DreamRelation applies at inference); a stock "
        "LoraLoaderModelOnly on the same file does exactly the same.\nThe relation LoRA runs on the high-noise steps "
        "only: the first KSamplerAdvanced ends at Relation Switch Step's switch_step (σ 0.75), and the second "
        "finishes with the style LoRA alone, which keeps out most of the exemplars' looks (README). Any sampler "
        "works: choose it on Relation Switch Step too. For the relation LoRA on every step, wire the second sampler's model to Load Relation LoRA.",
        [("1 · Models", ["unet", "clip", "vae"]), ("2 · Your LoRA, then the relation LoRA", ["style", "relation"]),
         ("3 · Prompt, size and switch step", ["positive", "negative", "switch", "latent"]),
         ("4 · The relation LoRA at high noise, then without it", ["high", "low"]),
         ("5 · Decode and save", ["decode", "video", "save"])]),
    "dreamrelation_mochi_official_checkpoint": (
        "Mochi 1 with an official DreamRelation checkpoint (model_N.lora.pt in models/loras), converted on the "
        "fly: put the Mochi files in models/ and any prompt with new subjects.",
        [("1 · Models", ["unet", "clip", "vae"]), ("2 · Official checkpoint", ["relation"]),
         ("3 · Prompt", ["positive", "negative"]), ("4 · Sample and save", ["sample", "video", "save"])]),
    "dreamrelation_synthrel_demo": (
        "No download. The tiny SynthRel base has never seen 'pushes'. SynthRel Exemplars renders 8 clips of it: "
        "two textured subject pairs, captioned 'a shape pushes a shape'. From them (minutes each on a CPU) the "
        "first Train learns the relation LoRA triplet as the paper does (hybrid masks, the LoRA on every sampling "
        "step), the second as the README recommends: hybrid_masks off, and Relation Sample applies the LoRA above "
        "switch_sigma only, the plain base below. The base and both LoRAs then render the prompt, whose subjects the "
        "exemplars never showed, and SynthRel Evaluate judges each: PASS if the push is seen, and which exemplar "
        "looks leaked. The same protocol as `python -m dreamrelation_core demo` (README: what it shows).",
        [("1 · Base and exemplars", ["base", "exemplars"]), ("2 · Prompt with new subjects", ["positive", "negative"]),
         ("3 · Train two ways, then sample with and without the LoRA",
          ["train", "train_no_hmt", "relation_sample", "no_hmt_sample", "base_sample"]),
         ("4 · Verdicts", ["judge_relation", "judge_no_hmt", "judge_base"]),
         ("5 · Side by side: base | DreamRelation | recommended", ["side_by_side", "side_by_side_3", "big", "save"]),
         ("Exemplars as Train sees them", ["exemplars_big", "save_exemplars"])]),
}

WORKFLOWS = {"dreamrelation_train_relation_wan21": train_wan,
             "dreamrelation_train_relation_wan22_a14b": train_wan22,
             "dreamrelation_generate_wan21_mixed_lora": generate_wan_mixed,
             "dreamrelation_mochi_official_checkpoint": mochi_official,
             "dreamrelation_synthrel_demo": synthrel_demo}


def has_control_widget(name: str, spec) -> bool:
    """The frontend adds a "control after generate" combo right after an INT widget that asks for one and after
    every INT named seed or noise_seed (docs/comfyui.md); a workflow stores its value next to the seed's."""
    options = spec[1] if len(spec) > 1 else {}
    return spec[0] == "INT" and (bool(options.get("control_after_generate")) or name in ("seed", "noise_seed"))


def widget_default(spec):
    """The value a fresh widget of this input spec holds: its default, a combo's first option."""
    options = spec[1] if len(spec) > 1 else {}
    return options.get("default", spec[0][0] if isinstance(spec[0], list) and spec[0] else None)


def _is_widget(spec) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in WIDGET_TYPES


def build(title, nodes, links, info, note: str | None = None, groups=()) -> dict:
    """The UI workflow of a spec: nodes `(name, class_type, widget values, (column, row))`, links `(source,
    output slot, target, input name)`, an optional Note and groups `(title, [node names])`."""
    ids = {name: i + 1 for i, (name, *_rest) in enumerate(nodes)}
    ui_nodes, ui_links = [], []
    linked = {(dst, slot) for _, _, dst, slot in links}
    for order, (name, class_type, values, (col, row)) in enumerate(nodes):
        spec = info[class_type]
        all_inputs = {**spec["input"].get("required", {}), **spec["input"].get("optional", {})}
        order_names = spec["input_order"].get("required", []) + spec["input_order"].get("optional", [])
        inputs, widgets, multiline = [], [], 0
        for input_name in order_names:
            input_spec = all_inputs[input_name]
            kind = "COMBO" if isinstance(input_spec[0], list) else input_spec[0]
            options = input_spec[1] if len(input_spec) > 1 else {}
            if _is_widget(input_spec):
                if (name, input_name) in linked:     # a linked widget keeps its slot in widgets_values, which the
                    inputs.append({"name": input_name, "type": kind, "link": None, "widget": {"name": input_name}})
                widgets.append(values.get(input_name, widget_default(input_spec)))    # frontend reads by position
                multiline += kind == "STRING" and bool(options.get("multiline"))
                if has_control_widget(input_name, input_spec):
                    widgets.append("fixed")          # reproducible: a resumed run must see the same seed
            else:
                inputs.append({"name": input_name, "type": kind, "link": None})
        unknown = set(values) - set(order_names)
        if unknown:
            raise ValueError(f"{class_type} has no inputs {sorted(unknown)}")
        outputs = [{"name": out_name, "type": out_type, "links": [], "slot_index": slot}
                   for slot, (out_type, out_name) in enumerate(zip(spec["output"], spec["output_name"]))]
        ui_nodes.append({"id": ids[name], "type": class_type, "pos": [0, 0],
                         "size": [NODE_WIDTH, node_height(class_type, inputs, outputs, widgets, multiline)],
                         "flags": {}, "order": order, "mode": 0, "inputs": inputs,
                         "outputs": outputs, "title": spec.get("display_name", class_type),
                         "properties": {"Node name for S&R": class_type}, "widgets_values": widgets})
    cells = [(col, row) for *_rest, (col, row) in nodes]
    if note:
        # The note: frontend-only (graph-to-prompt skips it), above everything in the first column.
        ui_nodes.append({"id": len(ui_nodes) + 1, "type": "Note", "pos": [0, 0], "size": [NODE_WIDTH, NOTE_HEIGHT],
                         "flags": {}, "order": len(ui_nodes), "mode": 0, "inputs": [], "outputs": [],
                         "title": "Note", "properties": {}, "widgets_values": [note]})
        cells.append((0, -1))
    _grid(ui_nodes, cells)
    by_id = {n["id"]: n for n in ui_nodes}
    for link_id, (src, slot, dst, input_name) in enumerate(links, start=1):
        source, target = by_id[ids[src]], by_id[ids[dst]]
        target_input = next(i for i in target["inputs"] if i["name"] == input_name)
        target_input["link"] = link_id
        source["outputs"][slot]["links"].append(link_id)
        ui_links.append([link_id, ids[src], slot, ids[dst], target["inputs"].index(target_input),
                         source["outputs"][slot]["type"]])
    ui_groups = []
    for group_title, members in groups:
        boxes = [by_id[ids[m]] for m in members]
        x0 = min(n["pos"][0] for n in boxes) - GROUP_PAD
        y0 = min(n["pos"][1] for n in boxes) - TITLE_HEIGHT - GROUP_TITLE - GROUP_PAD
        x1 = max(n["pos"][0] + n["size"][0] for n in boxes) + GROUP_PAD
        y1 = max(n["pos"][1] + n["size"][1] for n in boxes) + GROUP_PAD
        ui_groups.append({"title": group_title, "bounding": [x0, y0, x1 - x0, y1 - y0], "color": "#3f789e",
                          "font_size": 24, "flags": {}})
    return {"last_node_id": len(ui_nodes), "last_link_id": len(ui_links), "nodes": ui_nodes, "links": ui_links,
            "groups": ui_groups, "config": {}, "extra": {"dreamrelation": {"title": title}}, "version": 0.4}


# Layout, in canvas pixels: LiteGraph draws a 30-px title above `pos`, 20 px per slot row and about 24 per widget.
NODE_WIDTH, COLUMN_GAP, ROW_GAP, TITLE_HEIGHT = 400, 60, 80, 30
GROUP_PAD, GROUP_TITLE, NOTE_HEIGHT = 12, 34, 170
MULTILINE_HEIGHT = 110           # a multiline text box (the frontend's DOM widget)
PREVIEW_HEIGHT = 300             # nodes that show images or video under their widgets
PREVIEW_NODES = {"PreviewImage", "SaveAnimatedWEBP", "SaveVideo", "SaveImage", "DreamRelationSynthRelEvaluate",
                 "DreamRelationMaskVideo", "DreamRelationTrain"}


def node_height(class_type, inputs, outputs, widgets, multiline: int) -> int:
    """A node height that holds its slots, widgets (`multiline` of them text boxes) and any preview, so that no node
    hides another or its own text."""
    height = 20 * max(len(inputs), len(outputs)) + 24 * len(widgets) + MULTILINE_HEIGHT * multiline + 20
    return height + (PREVIEW_HEIGHT if class_type in PREVIEW_NODES else 0)


def _grid(ui_nodes, cells) -> None:
    """Place each node in its (column, row) cell: equal columns, each row as tall as its tallest node, so that
    groups of whole cells hold exactly their nodes."""
    columns, rows = sorted({c for c, _ in cells}), sorted({r for _, r in cells})
    x = {col: 40 + k * (NODE_WIDTH + COLUMN_GAP) for k, col in enumerate(columns)}
    y, top = {}, 40 + TITLE_HEIGHT + GROUP_TITLE + GROUP_PAD
    for row in rows:
        y[row] = top
        top += max(n["size"][1] for n, c in zip(ui_nodes, cells) if c[1] == row) + TITLE_HEIGHT + ROW_GAP
    for node, (col, row) in zip(ui_nodes, cells):
        node["pos"] = [x[col], y[row]]


def thumbnail(workflow: dict, title: str, path: Path) -> None:
    """A 512×288 diagram of the graph: node boxes (ours highlighted) and their links."""
    nodes = workflow["nodes"]
    xs = [n["pos"][0] for n in nodes] + [n["pos"][0] + n["size"][0] for n in nodes]
    ys = [n["pos"][1] for n in nodes] + [n["pos"][1] + n["size"][1] for n in nodes]
    scale = min(480 / (max(xs) - min(xs)), 230 / (max(ys) - min(ys)))

    def at(x, y):
        return 16 + (x - min(xs)) * scale, 46 + (y - min(ys)) * scale

    image = Image.new("RGB", (512, 288), (30, 32, 38))
    draw = ImageDraw.Draw(image)
    draw.text((16, 14), title[:80], fill=(235, 235, 235))
    centers = {n["id"]: at(n["pos"][0] + n["size"][0] / 2, n["pos"][1] + n["size"][1] / 2) for n in nodes}
    for _, src, _, dst, _, _ in workflow["links"]:
        draw.line([centers[src], centers[dst]], fill=(120, 160, 200), width=1)
    for n in nodes:
        x0, y0 = at(*n["pos"])
        x1, y1 = at(n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
        ours = n["type"].startswith("DreamRelation")
        draw.rectangle([x0, y0, x1, y1], fill=(102, 70, 150) if ours else (60, 64, 74), outline=(200, 200, 210))
        draw.text((x0 + 3, y0 + 3), n["title"][:18], fill=(255, 255, 255))
    image.save(path, quality=90)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--object-info", help="JSON saved from GET /object_info")
    source.add_argument("--server", help="URL of a running ComfyUI with this pack")
    args = parser.parse_args(argv)
    if args.object_info:
        info = json.loads(Path(args.object_info).read_text())
    else:
        with urllib.request.urlopen(args.server.rstrip("/") + "/object_info") as response:
            info = json.loads(response.read())
    OUT.mkdir(exist_ok=True)
    for name, spec in WORKFLOWS.items():
        title, nodes, links = spec()
        note, groups = GUIDES[name]
        workflow = build(title, nodes, links, info, note, groups)
        (OUT / f"{name}.json").write_text(json.dumps(workflow, indent=1) + "\n")
        thumbnail(workflow, title, OUT / f"{name}.jpg")
        print(f"wrote {name}.json / .jpg ({len(workflow['nodes'])} nodes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
