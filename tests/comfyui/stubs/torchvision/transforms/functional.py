"""Stand-in (see the package docstring). spandrel, which ComfyUI's upscale-model nodes import, imports
InterpolationMode, rotate and normalize at import time: without them those nodes fail to load, and the frontend then
showed the lora_name / vae_name widgets of stock loaders as UNKNOWN."""
import enum

from .. import _unavailable


class InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


pil_to_tensor = to_tensor = resize = rotate = normalize = _unavailable
