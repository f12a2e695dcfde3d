import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _library_only_path() -> None:
    """Make `dreamrelation_core` importable without the repository root on sys.path: the root also holds the pack's
    `nodes/` package, which would shadow ComfyUI's own top-level `nodes` module. The pack itself is imported as
    ComfyUI does, as a package under another name (tests/comfyui/conftest.py)."""
    import tempfile

    shim = Path(tempfile.mkdtemp(prefix="dreamrelation-path-"))
    (shim / "dreamrelation_core").symlink_to(ROOT / "dreamrelation_core", target_is_directory=True)
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT]
    sys.path.insert(0, str(shim))


_library_only_path()


def tiny_transformer(arch, seed=0):
    """A tiny random instance of the real diffusers class of `arch` (no download)."""
    import diffusers

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return getattr(diffusers, arch.transformer_class)(**arch.tiny_transformer).eval()


@pytest.fixture
def make_tiny():
    return tiny_transformer
