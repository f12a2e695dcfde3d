import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def tiny_transformer(arch, seed=0):
    """A tiny random instance of the real diffusers class of `arch` (no download)."""
    import diffusers

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return getattr(diffusers, arch.transformer_class)(**arch.tiny_transformer).eval()


@pytest.fixture
def make_tiny():
    return tiny_transformer
