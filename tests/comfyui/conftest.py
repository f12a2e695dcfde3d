"""ComfyUI integration tests: they need a ComfyUI checkout named by COMFYUI_PATH (never shipped with this repo).

Without it every test here is skipped with that reason. On machines without a CPU build of torchvision, the
test-only stand-in in `stubs/` is put on the path (ComfyUI imports torchvision at start-up; users have the real one).
"""
import importlib
import importlib.util
import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
COMFYUI_PATH = os.environ.get("COMFYUI_PATH")


def _torchvision_importable() -> bool:
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        import torchvision  # noqa: F401
        return True
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if COMFYUI_PATH and (Path(COMFYUI_PATH) / "comfy").is_dir():
        return
    reason = ("COMFYUI_PATH is not set" if not COMFYUI_PATH else f"COMFYUI_PATH={COMFYUI_PATH} has no comfy/ package")
    skip = pytest.mark.skip(reason=f"{reason}: point it at a ComfyUI checkout to run the ComfyUI integration tests")
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(skip)


NEEDS_STUB = not _torchvision_importable()     # decided before the stand-in itself is on sys.path


def stub_path() -> str | None:
    """The folder to put on PYTHONPATH / sys.path so that `import torchvision` works, or None if not needed."""
    return str(HERE / "stubs") if NEEDS_STUB else None


@pytest.fixture(scope="session")
def comfy():
    """Import ComfyUI's library in-process (CPU), as a custom node would see it."""
    stubs = stub_path()
    if stubs:
        # transformers looks for torchvision whenever it lazily imports a model module: import what the tests
        # use of it (via peft and diffusers) before the stand-in is on the path.
        import diffusers  # noqa: F401
        import peft  # noqa: F401
        from diffusers.loaders import single_file_utils  # noqa: F401
    for path in filter(None, (COMFYUI_PATH, stubs)):
        if path not in sys.path:
            sys.path.insert(0, path)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True         # must precede comfy.model_management, which otherwise expects CUDA
    import comfy.lora
    import comfy.model_management
    import comfy.model_patcher
    import comfy.sd
    import comfy.supported_models
    import comfy.utils

    return comfy


@pytest.fixture(scope="session")
def server(comfy, tmp_path_factory):
    """A real ComfyUI server (CPU) with this pack and the test pack, shared by the server tests."""
    from .server import ComfyServer

    srv = ComfyServer(tmp_path_factory.mktemp("comfyui_server"))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def pack(comfy, tmp_path_factory):
    """The repository imported as a ComfyUI custom-node package (relative imports, as ComfyUI loads it)."""
    import folder_paths

    root = tmp_path_factory.mktemp("comfy_dirs")
    folder_paths.set_output_directory(str(root / "output"))
    folder_paths.add_model_folder_path("loras", str(root / "loras"), is_default=True)
    (root / "loras").mkdir()
    spec = importlib.util.spec_from_file_location("dreamrelation_pack", ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["dreamrelation_pack"] = module
    spec.loader.exec_module(module)
    return {"nodes": importlib.import_module("dreamrelation_pack.nodes"), "root": root,
            "backend": importlib.import_module("dreamrelation_pack.nodes.comfy_backend")}
