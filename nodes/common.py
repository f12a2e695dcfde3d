"""Small conversions between ComfyUI types and the core's, shared by the node files."""
from __future__ import annotations

import numpy as np
import torch

from comfy_api.latest import io

CATEGORY = "DreamRelation"
MAX_RESOLUTION = 16384
# A list of exemplars: dicts {"frames": IMAGE [F, H, W, 3], "masks": [F, 2, H, W] float 0/1, "caption": str, "name"}.
Exemplars = io.Custom("DR_EXEMPLARS")


def prompt_server():
    """ComfyUI's running PromptServer, or None (no server: tests, scripts), for messages to the frontend."""
    try:
        from server import PromptServer
    except ImportError:
        return None
    return getattr(PromptServer, "instance", None)


def image_to_uint8(images: torch.Tensor) -> np.ndarray:
    """ComfyUI IMAGE [F, H, W, C] float in [0, 1] -> uint8 RGB [F, H, W, 3]."""
    return (images[..., :3].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def uint8_to_image(frames: np.ndarray) -> torch.Tensor:
    """uint8 RGB [F, H, W, 3] -> ComfyUI IMAGE float [F, H, W, 3]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).float() / 255.0
