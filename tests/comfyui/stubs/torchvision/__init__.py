"""Test-only stand-in for torchvision (no CPU build exists on the CI machines; users have the real one).

ComfyUI imports torchvision at start-up, and transformers imports a few names from it whenever it sees a
torchvision module. Those names exist here; calling any of them raises. Never used outside tests/comfyui."""
__version__ = "0.0.0+stub"


def _unavailable(*args, **kwargs):
    raise NotImplementedError("torchvision stand-in used in tests: the real torchvision is not installed")


from . import io, models, transforms  # noqa: E402,F401  (after _unavailable, which they import)
