"""Every example workflow loads with no missing nodes and converts to a prompt that a real server accepts."""
import json
from pathlib import Path

import pytest

from .workflow_api import static_errors, to_api

WORKFLOWS = sorted((Path(__file__).resolve().parents[2] / "workflows").glob("*.json"))


def test_there_are_workflows_with_thumbnails():
    assert len(WORKFLOWS) >= 3
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
    server.wait(body["prompt_id"], timeout=300)             # stand-in models fail to load; that is expected
