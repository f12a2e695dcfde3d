"""ComfyUI-DreamRelation: ComfyUI entry point (V3 API). Everything heavy is imported lazily, so the pack loads
even when an optional dependency is missing; the method itself lives in `dreamrelation_core/`."""


async def comfy_entrypoint():
    from .nodes import DreamRelationExtension

    return DreamRelationExtension()
