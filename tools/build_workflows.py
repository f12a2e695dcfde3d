"""Build the example workflows (ComfyUI UI format, + a .jpg thumbnail each) from compact specs.

Maintainer tool, not used at run time: it needs the `/object_info` of a ComfyUI that has this pack installed,
so that every node gets its real inputs, outputs and widget order:

    python tools/build_workflows.py --object-info object_info.json     # saved from GET /object_info
    python tools/build_workflows.py --server http://127.0.0.1:8188
"""
from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))          # dreamrelation_core, for the SynthRel demo's sizes
OUT = ROOT / "workflows"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}

WAN_MODELS = {"unet": "wan2.1_t2v_1.3B_fp16.safetensors", "clip": "umt5_xxl_fp8_e4m3fn_scaled.safetensors",
              "vae": "wan_2.1_vae.safetensors"}
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


def train_wan():
    caption = "A person is high-fiving with a person."
    nodes, links = loaders(WAN_MODELS, "wan"), []
    previous = None
    for k in (1, 2):
        n, l = exemplar_branch(k, 0, 2 + k, caption, previous)
        nodes, links, previous = nodes + n, links + l, f"add{k}"
    nodes += [
        ("preview_masks", "PreviewImage", {}, (3, 5)),
        ("train", "DreamRelationTrain", {"lora_name": "high_five_wan", "steps": 2400, "learning_rate": 2e-4,
                                         "rank": 16, "alpha": 16.0, "width": 832, "height": 480, "length": 49,
                                         "mask_weight": 50.0, "rcl_weight": 0.01, "seed": 0,
                                         "checkpoint_every": 200, "resume": True, "gradient_checkpointing": True,
                                         "preview_every": 200,
                                         "preview_prompt": "A bear is high-fiving with a raccoon.",
                                         "preview_steps": 30},
         (4, 1)),
        ("positive", "CLIPTextEncode", {"text": "A bear is high-fiving with a raccoon in a serene forest "
                                                "clearing."}, (1, 0)),
        ("negative", "CLIPTextEncode", {"text": ""}, (1, 1)),
        ("sample", "DreamRelationSample", {"width": 832, "height": 480, "length": 49, "steps": 30, "cfg": 5.0,
                                           "seed": 42}, (5, 1)),
        ("video", "CreateVideo", {"fps": 16.0}, (6, 1)),
        ("save", "SaveVideo", {"filename_prefix": "dreamrelation/high_five_wan", "format": "auto",
                               "codec": "auto"}, (7, 1)),
    ]
    links += [("mask1", 2, "preview_masks", "images"), ("unet", 0, "train", "model"), ("clip", 0, "train", "clip"),
              ("vae", 0, "train", "vae"), ("add2", 0, "train", "exemplars"), ("clip", 0, "positive", "clip"),
              ("clip", 0, "negative", "clip"), ("train", 0, "sample", "model"), ("positive", 0, "sample", "positive"),
              ("negative", 0, "sample", "negative"), ("vae", 0, "sample", "vae"), ("sample", 0, "video", "images"),
              ("video", 0, "save", "video")]
    return "Train a relation (high-five) from exemplar videos on Wan 2.1 1.3B", nodes, links


def generate_wan_mixed():
    nodes = loaders(WAN_MODELS, "wan") + [
        ("style", "LoraLoaderModelOnly", {"lora_name": "your_style_lora.safetensors", "strength_model": 0.8}, (1, 0)),
        ("relation", "DreamRelationLoadLoRA", {"lora_name": "high_five_wan.safetensors", "relation_strength": 1.0,
                                               "ffn_strength": 1.0, "subject_strength": 0.0}, (2, 0)),
        ("positive", "CLIPTextEncode", {"text": "A bear is high-fiving with a raccoon, watercolor style."}, (1, 1)),
        ("negative", "CLIPTextEncode", {"text": ""}, (1, 2)),
        ("latent", "EmptyHunyuanLatentVideo", {"width": 832, "height": 480, "length": 49, "batch_size": 1}, (2, 2)),
        ("sampler", "KSampler", {"seed": 42, "steps": 30, "cfg": 5.0, "sampler_name": "euler",
                                 "scheduler": "simple", "denoise": 1.0}, (3, 0)),
        ("decode", "VAEDecode", {}, (4, 0)),
        ("video", "CreateVideo", {"fps": 16.0}, (5, 0)),
        ("save", "SaveVideo", {"filename_prefix": "dreamrelation/high_five_mixed", "format": "auto",
                               "codec": "auto"}, (6, 0)),
    ]
    links = [("unet", 0, "style", "model"), ("style", 0, "relation", "model"), ("clip", 0, "positive", "clip"),
             ("clip", 0, "negative", "clip"), ("relation", 0, "sampler", "model"),
             ("positive", 0, "sampler", "positive"), ("negative", 0, "sampler", "negative"),
             ("latent", 0, "sampler", "latent_image"), ("sampler", 0, "decode", "samples"),
             ("vae", 0, "decode", "vae"), ("decode", 0, "video", "images"), ("video", 0, "save", "video")]
    return "Generate with a relation LoRA on Wan 2.1, mixed with another LoRA (plain KSampler)", nodes, links


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
    from dreamrelation_core.synthrel.quality import TRAIN_SIGMA_MIN, TRAIN_STEPS

    sample = {"width": SYNTHREL.default_size[1], "height": SYNTHREL.default_size[0], "length": SYNTHREL.default_frames,
              "steps": SYNTHREL.sample_steps, "cfg": SYNTHREL.sample_cfg, "seed": 0}
    nodes = [
        ("base", "DreamRelationLoadSynthRelBase", {}, (0, 0)),
        ("exemplars", "DreamRelationSynthRelExemplars", {"relation": "pushes", "count": 8, "seed": 0}, (0, 1)),
        ("positive", "CLIPTextEncode", {}, (1, 0)),
        ("negative", "CLIPTextEncode", {"text": ""}, (1, 1)),
        ("exemplars_big", "ImageScaleBy", {"upscale_method": "nearest-exact", "scale_by": 4.0}, (1, 2)),
        ("train", "DreamRelationTrain", {"lora_name": "synthrel_pushes", "steps": TRAIN_STEPS, "learning_rate": 1e-3,
                                         "rank": 8, "alpha": 8.0, "width": 32, "height": 32, "length": 9,
                                         "mask_weight": 50.0, "rcl_weight": 0.01, "seed": 0, "checkpoint_every": 100,
                                         "resume": True, "gradient_checkpointing": False, "preview_every": 0,
                                         "sigma_min": TRAIN_SIGMA_MIN},
         (2, 0)),
        ("base_sample", "DreamRelationSample", sample, (2, 1)),
        ("save_exemplars", "SaveAnimatedWEBP", {"filename_prefix": "dreamrelation/synthrel_exemplars", "fps": 8.0},
         (2, 2)),
        ("relation_sample", "DreamRelationSample", sample, (3, 0)),
        ("judge_base", "DreamRelationSynthRelEvaluate", {}, (3, 1)),
        ("side_by_side", "ImageStitch", {"direction": "right", "spacing_width": 2, "spacing_color": "white"},
         (4, 0)),
        ("judge_relation", "DreamRelationSynthRelEvaluate", {}, (4, 1)),
        ("big", "ImageScaleBy", {"upscale_method": "nearest-exact", "scale_by": 8.0}, (5, 0)),
        ("save", "SaveAnimatedWEBP", {"filename_prefix": "dreamrelation/synthrel_base_vs_dreamrelation", "fps": 8.0},
         (6, 0)),
    ]
    links = [("exemplars", 2, "positive", "text"), ("base", 1, "positive", "clip"), ("base", 1, "negative", "clip"),
             ("exemplars", 1, "exemplars_big", "image"), ("exemplars_big", 0, "save_exemplars", "images"),
             ("base", 0, "train", "model"), ("base", 1, "train", "clip"), ("base", 2, "train", "vae"),
             ("exemplars", 0, "train", "exemplars"),
             ("base", 0, "base_sample", "model"), ("positive", 0, "base_sample", "positive"),
             ("negative", 0, "base_sample", "negative"), ("base", 2, "base_sample", "vae"),
             ("train", 0, "relation_sample", "model"), ("positive", 0, "relation_sample", "positive"),
             ("negative", 0, "relation_sample", "negative"), ("base", 2, "relation_sample", "vae"),
             ("base_sample", 0, "judge_base", "images"), ("exemplars", 2, "judge_base", "prompt"),
             ("relation_sample", 0, "judge_relation", "images"), ("exemplars", 2, "judge_relation", "prompt"),
             ("base_sample", 0, "side_by_side", "image1"), ("relation_sample", 0, "side_by_side", "image2"),
             ("side_by_side", 0, "big", "image"), ("big", 0, "save", "images")]
    return ("SynthRel demo, no download: teach the tiny base a relation it has never seen (pushes) and render it "
            "with new subjects", nodes, links)


WORKFLOWS = {"dreamrelation_train_relation_wan21": train_wan,
             "dreamrelation_generate_wan21_mixed_lora": generate_wan_mixed,
             "dreamrelation_mochi_official_checkpoint": mochi_official,
             "dreamrelation_synthrel_demo": synthrel_demo}


def _is_widget(spec) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in WIDGET_TYPES


def build(title, nodes, links, info) -> dict:
    ids = {name: i + 1 for i, (name, *_rest) in enumerate(nodes)}
    ui_nodes, ui_links = [], []
    linked = {(dst, slot) for _, _, dst, slot in links}
    for order, (name, class_type, values, (col, row)) in enumerate(nodes):
        spec = info[class_type]
        all_inputs = {**spec["input"].get("required", {}), **spec["input"].get("optional", {})}
        order_names = spec["input_order"].get("required", []) + spec["input_order"].get("optional", [])
        inputs, widgets = [], []
        for input_name in order_names:
            input_spec = all_inputs[input_name]
            kind = "COMBO" if isinstance(input_spec[0], list) else input_spec[0]
            options = input_spec[1] if len(input_spec) > 1 else {}
            if _is_widget(input_spec):
                if (name, input_name) in linked:
                    inputs.append({"name": input_name, "type": kind, "link": None, "widget": {"name": input_name}})
                    continue
                default = options.get("default", input_spec[0][0] if isinstance(input_spec[0], list) and
                                      input_spec[0] else None)
                widgets.append(values.get(input_name, default))
                if options.get("control_after_generate"):
                    widgets.append("fixed")
            else:
                inputs.append({"name": input_name, "type": kind, "link": None})
        unknown = set(values) - set(order_names)
        if unknown:
            raise ValueError(f"{class_type} has no inputs {sorted(unknown)}")
        outputs = [{"name": out_name, "type": out_type, "links": [], "slot_index": slot}
                   for slot, (out_type, out_name) in enumerate(zip(spec["output"], spec["output_name"]))]
        ui_nodes.append({"id": ids[name], "type": class_type, "pos": [40 + 360 * col, 40 + 220 * row],
                         "size": [320, 180], "flags": {}, "order": order, "mode": 0, "inputs": inputs,
                         "outputs": outputs, "title": spec.get("display_name", class_type),
                         "properties": {"Node name for S&R": class_type}, "widgets_values": widgets})
    by_id = {n["id"]: n for n in ui_nodes}
    for link_id, (src, slot, dst, input_name) in enumerate(links, start=1):
        source, target = by_id[ids[src]], by_id[ids[dst]]
        target_input = next(i for i in target["inputs"] if i["name"] == input_name)
        target_input["link"] = link_id
        source["outputs"][slot]["links"].append(link_id)
        ui_links.append([link_id, ids[src], slot, ids[dst], target["inputs"].index(target_input),
                         source["outputs"][slot]["type"]])
    return {"last_node_id": len(ui_nodes), "last_link_id": len(ui_links), "nodes": ui_nodes, "links": ui_links,
            "groups": [], "config": {}, "extra": {"dreamrelation": {"title": title}}, "version": 0.4}


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
        workflow = build(title, nodes, links, info)
        (OUT / f"{name}.json").write_text(json.dumps(workflow, indent=1) + "\n")
        thumbnail(workflow, title, OUT / f"{name}.jpg")
        print(f"wrote {name}.json / .jpg ({len(workflow['nodes'])} nodes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
