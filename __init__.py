"""ComfyUI-DreamRelation: ComfyUI entry point (V3 API). Everything heavy is imported lazily, so the pack loads
even when an optional dependency is missing; the method itself lives in `dreamrelation_core/`."""

# The frontend extension (seeds fixed by default on our nodes); ComfyUI serves it at /extensions/<pack>/.
WEB_DIRECTORY = "./js"


async def comfy_entrypoint():
    from .nodes import DreamRelationExtension

    return DreamRelationExtension()
