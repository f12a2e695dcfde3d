"""Stand-in (see the package docstring)."""
from .. import _unavailable

pil_to_tensor = to_tensor = resize = _unavailable
