"""Stand-in (see the package docstring). transformers' image utilities import InterpolationMode when they see a
torchvision module, so the enum is provided; nothing calls it."""
import enum


class InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"
