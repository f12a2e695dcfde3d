"""Test-only stand-in for torchvision (no CPU build exists on the CI machines). ComfyUI imports it at start-up;
nothing our tests exercise calls into it. Never used outside tests/comfyui."""
from . import models, transforms  # noqa: F401
