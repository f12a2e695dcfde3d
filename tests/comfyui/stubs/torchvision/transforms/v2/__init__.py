"""Stand-in (see the package docstring)."""
from . import functional  # noqa: F401
