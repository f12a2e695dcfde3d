"""A real ComfyUI server on the CPU with the pack: node registration, training, loading, sampling, Cancel."""
import json
import time

import pytest
from safetensors.torch import save_file

from .native_models import native_model


@pytest.fixture(scope="module")
def tiny_wan_file(comfy, server):
    """A tiny native Wan 2.1 T2V checkpoint in ComfyUI/original keys (text width 4096: ComfyUI assumes it)."""
    patcher = native_model(comfy, "wan", text_dim=4096)
    sd = {k.removeprefix("diffusion_model."): v.contiguous() for k, v in patcher.model.state_dict().items()
          if k.startswith("diffusion_model.")}
    save_file(sd, str(server.models / "diffusion_models" / "tiny_wan_t2v.safetensors"))
    return "tiny_wan_t2v.safetensors"


@pytest.fixture(scope="module")
def exemplar_folder(server):
    from dreamrelation_core.synthrel import write_exemplars

    folder = server.workdir / "input" / "exemplars"
    write_exemplars(folder, "approaches", 2, [(("red", "circle"), ("blue", "square"))], frames=9, size=(32, 32))
    return str(folder)


NODE_IDS = {"DreamRelationMaskVideo", "DreamRelationAddExemplar", "DreamRelationLoadExemplarFolder",
            "DreamRelationTrain", "DreamRelationLoadLoRA", "DreamRelationSample", "DreamRelationLoadSynthRelBase",
            "DreamRelationSynthRelExemplars", "DreamRelationSynthRelEvaluate"}


def test_pack_loads_and_every_node_is_registered(server):
    info = server.get("/object_info")
    assert NODE_IDS <= set(info)
    for node_id in NODE_IDS:
        assert info[node_id]["category"].split("/")[0] == "DreamRelation"
        assert info[node_id]["python_module"].startswith("custom_nodes.ComfyUI-DreamRelation")
    failed = [line for line in server.server_log().splitlines()
              if ("IMPORT FAILED" in line or "Cannot import" in line) and "DreamRelation" in line]
    assert failed == [], failed


def train_prompt(model_file, folder, name, steps, checkpoint_every=0, resume=True):
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": model_file, "weight_dtype": "default"}},
        "2": {"class_type": "DRTestTinyClip", "inputs": {"dim": 4096}},
        "3": {"class_type": "DRTestTinyVae", "inputs": {}},
        "4": {"class_type": "DreamRelationLoadExemplarFolder",
              "inputs": {"folder": folder, "caption": "", "max_frames": 9}},
        "5": {"class_type": "DreamRelationTrain",
              "inputs": {"model": ["1", 0], "clip": ["2", 0], "vae": ["3", 0], "exemplars": ["4", 0],
                         "lora_name": name, "steps": steps, "learning_rate": 0.005, "rank": 4, "alpha": 4.0,
                         "width": 32, "height": 32, "length": 9, "mask_weight": 50.0, "rcl_weight": 0.01,
                         "seed": 0, "checkpoint_every": checkpoint_every, "resume": resume,
                         "gradient_checkpointing": True}},
    }


def test_train_reload_with_stock_and_our_loader_then_sample(server, tiny_wan_file, exemplar_folder):
    history = server.wait(server.queue(train_prompt(tiny_wan_file, exemplar_folder, "server_relation", 3)))
    assert history["status"]["status_str"] == "success", json.dumps(history["status"])[:3000]
    assert (server.models / "loras" / "server_relation.safetensors").is_file()
    assert server.get("/object_info/LoraLoaderModelOnly")["LoraLoaderModelOnly"]["input"]["required"]["lora_name"][0] \
        .count("server_relation.safetensors") == 1
    sample = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": tiny_wan_file, "weight_dtype": "default"}},
        "2": {"class_type": "DRTestTinyClip", "inputs": {"dim": 4096}},
        "3": {"class_type": "DRTestTinyVae", "inputs": {}},
        "6": {"class_type": "LoraLoaderModelOnly",
              "inputs": {"model": ["1", 0], "lora_name": "server_relation.safetensors", "strength_model": 0.5}},
        "7": {"class_type": "DreamRelationLoadLoRA",
              "inputs": {"model": ["6", 0], "lora_name": "server_relation.safetensors", "relation_strength": 0.5,
                         "ffn_strength": 0.5, "subject_strength": 0.0}},
        "8": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 0], "text": "a bear approaches a fox"}},
        "9": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 0], "text": ""}},
        "10": {"class_type": "DreamRelationSample",
               "inputs": {"model": ["7", 0], "positive": ["8", 0], "negative": ["9", 0], "vae": ["3", 0],
                          "width": 32, "height": 32, "length": 9, "steps": 2, "cfg": 3.0, "seed": 1}},
        "11": {"class_type": "PreviewImage", "inputs": {"images": ["10", 0]}},
    }
    history = server.wait(server.queue(sample))
    assert history["status"]["status_str"] == "success", json.dumps(history["status"])[:3000]
    assert len(history["outputs"]["11"]["images"]) == 9                      # one preview per frame
    assert "lora key not loaded" not in server.server_log()


def test_cancel_saves_a_checkpoint_that_resumes(server, tiny_wan_file, exemplar_folder):
    run = server.workdir / "output" / "dreamrelation" / "cancel_me"
    prompt_id = server.queue(train_prompt(tiny_wan_file, exemplar_folder, "cancel_me", 5000))
    log = run / "log.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 3):
        time.sleep(0.2)
    assert server.post("/interrupt", {})[0] == 200
    history = server.wait(prompt_id)
    assert history["status"]["status_str"] == "error"                      # interrupted, not finished
    checkpoints = sorted((run / "checkpoints").glob("step_*"))
    assert checkpoints, server.server_log()
    stopped = int(checkpoints[-1].name.split("_")[1])
    history = server.wait(server.queue(train_prompt(tiny_wan_file, exemplar_folder, "cancel_me", stopped + 2)))
    assert history["status"]["status_str"] == "success", json.dumps(history["status"])[:3000]
    steps = [json.loads(l)["step"] for l in log.read_text().splitlines()]
    assert steps == list(range(1, stopped + 3))
