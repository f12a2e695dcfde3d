"""Load Relation LoRA: apply a relation LoRA to a native MODEL with separate relation / FFN (/ subject) strengths."""
from __future__ import annotations

from pathlib import Path

import comfy.sd
import folder_paths
from comfy_api.latest import io

from ..dreamrelation_core.formats import load_lora_with_subjects, to_native
from .comfy_backend import native_architecture
from .common import CATEGORY


def apply_relation_lora(model, path, strengths: dict):
    """A clone of `model` with each role of the file at `path` patched at its strength, through ComfyUI's own
    LoRA loader on ComfyUI-native keys (one load per role, so strengths stack like chained LoRA loaders)."""
    if Path(path).name.endswith(".subjects.safetensors"):
        raise ValueError(f"lora_name: {Path(path).name} holds only the subject LoRAs, which inference leaves off; "
                         f"choose the relation LoRA {Path(path).name.replace('.subjects.safetensors', '.safetensors')} "
                         "(subject_strength reads this file beside it)")
    lora = load_lora_with_subjects(path, subjects=any(strengths.get(r) for r in ("subject1", "subject2")))
    if not {"relation", "ffn"} & set(lora.weights):
        raise ValueError(f"lora_name: {Path(path).name} holds no relation or FFN LoRAs (it has "
                         f"{', '.join(sorted(lora.weights)) or 'none'}): choose a relation LoRA")
    arch = native_architecture(model)
    if lora.arch != arch.name:
        raise ValueError(f"{Path(path).name} is a {lora.arch} relation LoRA but the MODEL is {arch.name}")
    for role, strength in strengths.items():
        if strength and role in lora.weights:
            tensors, _, _ = to_native(lora.subset([role]), [role])
            model, _ = comfy.sd.load_lora_for_models(model, None, tensors, strength, 0)
    return model


class LoadRelationLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DreamRelationLoadLoRA",
            display_name="Load Relation LoRA",
            category=CATEGORY,
            description="Applies a DreamRelation relation LoRA (ours or an official .pt checkpoint) to a native Wan "
                        "or Mochi model, with separate strengths for the relation (Q/K) and FFN roles.",
            inputs=[
                io.Model.Input("model", tooltip="Native Wan or Mochi model; stacks with other LoRA loaders."),
                io.Combo.Input("lora_name", options=folder_paths.get_filename_list("loras"),
                               tooltip="A relation LoRA in models/loras (.safetensors, or an official .pt)."),
                io.Float.Input("relation_strength", default=1.0, min=-10.0, max=10.0, step=0.01,
                               tooltip="Strength of the relation LoRAs (attention Q/K): how strongly the relation "
                                       "is imposed."),
                io.Float.Input("ffn_strength", default=1.0, min=-10.0, max=10.0, step=0.01,
                               tooltip="Strength of the FFN LoRAs (attention output projections)."),
                io.Float.Input("subject_strength", default=0.0, min=-10.0, max=10.0, step=0.01, optional=True,
                               tooltip="Experiments only: also apply the subject LoRAs (they carry the exemplars' "
                                       "appearance; DreamRelation leaves them off)."),
            ],
            outputs=[io.Model.Output(display_name="model",
                                     tooltip="The input model with the relation and FFN LoRAs patched in.")],
        )

    @classmethod
    def execute(cls, model, lora_name, relation_strength, ffn_strength, subject_strength=0.0):
        path = folder_paths.get_full_path_or_raise("loras", lora_name)
        strengths = {"relation": relation_strength, "ffn": ffn_strength, "subject1": subject_strength,
                     "subject2": subject_strength}
        return io.NodeOutput(apply_relation_lora(model, path, strengths))
