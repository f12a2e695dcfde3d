"""Stand-in (see the package docstring)."""
from ... import _unavailable

resize = pil_to_tensor = to_image = _unavailable


def __getattr__(name):
    return _unavailable
