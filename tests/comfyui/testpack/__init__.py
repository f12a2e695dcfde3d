"""Test-only ComfyUI pack: tiny CLIP and VAE stand-ins for server tests (ComfyUI's loaders need full-size weights).
Loaded only by tests/comfyui/server.py, never shipped to users."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
TESTS = Path(__file__).resolve().parents[1]
if str(TESTS.parent) not in sys.path:
    sys.path.insert(0, str(TESTS.parent))

from comfy_api.latest import ComfyExtension, io  # noqa: E402

from comfyui.fakes import FakeClip, FakeVae  # noqa: E402


class TinyClip(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="DRTestTinyClip", category="testing",
                         inputs=[io.Int.Input("dim", default=4096, min=1, max=8192)],
                         outputs=[io.Clip.Output()])

    @classmethod
    def execute(cls, dim):
        return io.NodeOutput(FakeClip(dim=dim))


class TinyVae(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="DRTestTinyVae", category="testing", inputs=[], outputs=[io.Vae.Output()])

    @classmethod
    def execute(cls):
        return io.NodeOutput(FakeVae())


class TestExtension(ComfyExtension):
    async def get_node_list(self):
        return [TinyClip, TinyVae]


async def comfy_entrypoint():
    return TestExtension()
