"""Every example workflow loads with no missing nodes and converts to a prompt that a real server accepts."""
import json
from pathlib import Path

import pytest

from .workflow_api import is_widget, static_errors, to_api

WORKFLOWS = sorted((Path(__file__).resolve().parents[2] / "workflows").glob("*.json"))


def test_there_are_workflows_with_thumbnails():
    assert len(WORKFLOWS) >= 4
    for path in WORKFLOWS:
        assert path.with_suffix(".jpg").is_file(), path


def test_comfyui_lists_them_as_templates(server):
    templates = server.get("/workflow_templates")
    assert sorted(templates.get("ComfyUI-DreamRelation", [])) == sorted(p.stem for p in WORKFLOWS)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_validates_on_a_real_server(server, path):
    from dreamrelation_core.synthrel import render_clip
    from dreamrelation_core.videoio import write_video

    workflow = json.loads(path.read_text())
    info = server.get("/object_info")
    assert static_errors(workflow, info) == []
    prompt = to_api(workflow, info)
    # The model files and exemplar videos the workflow names, as stand-ins (validation checks names, not contents).
    folders = {"UNETLoader": ("diffusion_models", "unet_name"), "CLIPLoader": ("text_encoders", "clip_name"),
               "VAELoader": ("vae", "vae_name"), "LoraLoaderModelOnly": ("loras", "lora_name"),
               "DreamRelationLoadLoRA": ("loras", "lora_name")}
    for node in prompt.values():
        if node["class_type"] in folders:
            folder, key = folders[node["class_type"]]
            (server.models / folder / node["inputs"][key]).touch()
        if node["class_type"] == "LoadVideo":
            video, _, _ = render_clip("approaches", ("red", "circle"), ("blue", "square"), frames=9, size=(32, 32))
            write_video(server.workdir / "input" / node["inputs"]["file"], video, fps=16)
    info = server.get("/object_info")                      # file lists now include the stand-ins
    status, body = server.post("/prompt", {"prompt": to_api(workflow, info), "client_id": "validate"})
    assert status == 200 and body.get("node_errors") == {}, json.dumps(body)[:3000]
    server.post("/interrupt", {})
    server.post("/queue", {"clear": True})
    server.settle(body["prompt_id"])          # stand-in models fail to load, or the prompt is cleared: expected


def test_synthrel_demo_workflow_runs_end_to_end(server):
    """Workflow 4 needs no download: it runs as shipped on a fresh server (here with fewer steps), trains the
    paper's triplet and the recommended one (no hybrid masks, sampled with the LoRA at high noise only, the plain
    base below), saves the side-by-side animation and the exemplars, and reports the three evaluator verdicts."""
    path = next(p for p in WORKFLOWS if p.stem == "dreamrelation_synthrel_demo")
    info = server.get("/object_info")
    prompt = to_api(json.loads(path.read_text()), info)
    by_type = {}
    for node_id, node in prompt.items():
        by_type.setdefault(node["class_type"], []).append(node_id)
    from dreamrelation_core.synthrel.recipe import HIGH_NOISE_SIGMA, TRAIN_SIGMA_MIN, TRAIN_STEPS
    trains = {prompt[n]["inputs"]["hybrid_masks"]: n for n in by_type["DreamRelationTrain"]}
    assert len(trains) == len(by_type["DreamRelationTrain"]) == 2          # one with hybrid masks, one without
    for train in trains.values():          # the JSON repeats the benchmark's constants
        inputs = prompt[train]["inputs"]
        assert inputs["steps"] == TRAIN_STEPS and inputs["sigma_min"] == TRAIN_SIGMA_MIN and inputs["sigma_max"] == 1
    (base,) = by_type["DreamRelationLoadSynthRelBase"]
    samplers = {prompt[n]["inputs"]["model"][0]: prompt[n]["inputs"] for n in by_type["DreamRelationSample"]}
    assert set(samplers) == {base, *trains.values()}
    assert samplers[trains[False]]["low_noise_model"] == [base, 0]          # the plain base below the switch
    assert samplers[trains[False]]["switch_sigma"] == HIGH_NOISE_SIGMA
    assert "low_noise_model" not in samplers[trains[True]] and "low_noise_model" not in samplers[base]
    for hybrid, train in trains.items():
        prompt[train]["inputs"].update(steps=4, lora_name=f"synthrel_workflow_test_{hybrid}")
    for node_id in by_type["DreamRelationSample"]:
        prompt[node_id]["inputs"]["steps"] = 3
    history = server.wait(server.queue(prompt), timeout=600)
    assert history["status"]["status_str"] == "success", json.dumps(history["status"])[:3000]
    outputs = history["outputs"]
    for node_id in by_type["SaveAnimatedWEBP"]:
        (image,) = outputs[node_id]["images"]
        assert (server.workdir / "output" / image["subfolder"] / image["filename"]).stat().st_size > 0
    verdicts = [outputs[node_id]["text"][0] for node_id in by_type["DreamRelationSynthRelEvaluate"]]
    assert len(verdicts) == 3 and all(v.startswith(("PASS", "FAIL")) and "'pushes'" in v for v in verdicts)
    for hybrid in (True, False):
        assert (server.models / "loras" / f"synthrel_workflow_test_{hybrid}.safetensors").is_file()
    groups = {hybrid: [json.loads(line)["group"] for line in
                       (server.workdir / "output" / "dreamrelation" / f"synthrel_workflow_test_{hybrid}" / "log.jsonl")
                       .read_text().splitlines()] for hybrid in (True, False)}
    assert groups[False] == [None] * 4 and None not in groups[True]      # every role every step, or one group


# A workflow saves widget values by position (docs/comfyui.md), so a node's widgets may only ever be appended to: a
# widget inserted before others would shift every value of the workflows users saved before it. New widgets go at
# the end of a node's inputs, and new nodes are recorded here.
SAVED_WIDGET_ORDER = {
    "DreamRelationMaskVideo": ["mask_folder", "subject1_box", "subject2_box", "refine_boxes"],
    "DreamRelationAddExemplar": ["caption"],
    "DreamRelationLoadExemplarFolder": ["folder", "max_frames", "caption", "fps"],
    "DreamRelationTrain": ["lora_name", "steps", "learning_rate", "rank", "alpha", "width", "height", "length",
                           "mask_weight", "rcl_weight", "seed", "checkpoint_every", "resume", "gradient_checkpointing",
                           "preview_every", "preview_prompt", "preview_steps", "sigma_min", "sigma_max", "placement",
                           "hybrid_masks", "preview_switch_sigma"],
    "DreamRelationLoadLoRA": ["lora_name", "relation_strength", "ffn_strength", "subject_strength"],
    "DreamRelationSample": ["width", "height", "length", "steps", "cfg", "seed", "switch_sigma"],
    "DreamRelationSwitchStep": ["scheduler", "steps", "switch_sigma", "sampler_name"],
    "DreamRelationLoadSynthRelBase": [],
    "DreamRelationSynthRelExemplars": ["relation", "count", "seed"],
    "DreamRelationSynthRelEvaluate": ["prompt"],
}


def test_widgets_are_only_ever_appended(server):
    info = server.get("/object_info")
    assert {name for name in info if name.startswith("DreamRelation")} == set(SAVED_WIDGET_ORDER)
    for name, saved in SAVED_WIDGET_ORDER.items():
        spec = info[name]
        inputs = {**spec["input"].get("required", {}), **spec["input"].get("optional", {})}
        order = spec["input_order"].get("required", []) + spec["input_order"].get("optional", [])
        widgets = [n for n in order if is_widget(inputs[n])]
        assert widgets[:len(saved)] == saved, f"{name}: widgets {widgets}, saved workflows expect {saved} first"
