"""ComfyUI V3 nodes of the pack: thin wrappers over `dreamrelation_core` (schema + a call into the core)."""
from comfy_api.latest import ComfyExtension, io

NODE_CLASSES: list[type[io.ComfyNode]] = []


class DreamRelationExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODE_CLASSES)
