"""ComfyUI V3 nodes of the pack: thin wrappers over `dreamrelation_core` (schema + a call into the core)."""
from comfy_api.latest import ComfyExtension, io

from .exemplars import AddExemplar, LoadExemplarFolder
from .lora import LoadRelationLoRA
from .masking import MaskVideo
from .sampling import RelationSample, RelationSwitchStep
from .synthrel import NODES as SYNTHREL_NODES
from .training import TrainRelationTriplet

NODE_CLASSES: list[type[io.ComfyNode]] = [MaskVideo, AddExemplar, LoadExemplarFolder, TrainRelationTriplet,
                                          LoadRelationLoRA, RelationSample, RelationSwitchStep,
                                          *SYNTHREL_NODES]


class DreamRelationExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODE_CLASSES)
