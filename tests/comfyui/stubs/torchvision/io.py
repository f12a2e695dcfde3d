"""Stand-in (see the package docstring)."""
import enum

from . import _unavailable


class ImageReadMode(enum.Enum):
    UNCHANGED = 0
    GRAY = 1
    RGB = 3


decode_image = read_video = _unavailable
