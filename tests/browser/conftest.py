"""Browser tests: the real ComfyUI server with this pack, and the real frontend in headless Chromium.

They need a ComfyUI checkout (COMFYUI_PATH), Debian's `chromium` and Playwright from PyPI (never a downloaded
browser). Each test runs against the frontend that ComfyUI pins and against the newest one, a
`comfyui-frontend-package` build whose `static/` folder DREAMRELATION_NEWEST_FRONTEND names (`.ci/run` installs
it); what is missing is named in the skip reason.
"""
import importlib.util
import os
import shutil
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
COMFYUI_PATH = os.environ.get("COMFYUI_PATH")
NEWEST_FRONTEND = os.environ.get("DREAMRELATION_NEWEST_FRONTEND")


def _missing() -> str | None:
    if not COMFYUI_PATH or not (Path(COMFYUI_PATH) / "comfy").is_dir():
        return "COMFYUI_PATH names no ComfyUI checkout"
    if shutil.which("chromium") is None:
        return "no `chromium` on PATH (Debian: apt-get install chromium)"
    if importlib.util.find_spec("playwright") is None:
        return "Playwright is not installed (pip install playwright; never `playwright install`)"
    return None


def pytest_collection_modifyitems(config, items):
    reason = _missing()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=f"browser suite: {reason}")
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(skip)


@pytest.fixture(scope="module", params=["pinned", "newest", "newest-vue-nodes"])
def ui(request, tmp_path_factory):
    """A server with the pack and a browser page on its frontend: the one ComfyUI pins, the newest with the classic
    canvas, and the newest with its Vue node renderer ("Nodes 2.0")."""
    if request.param.startswith("newest") and not NEWEST_FRONTEND:
        pytest.skip("DREAMRELATION_NEWEST_FRONTEND is not set: point it at comfyui-frontend-package's static/")
    from comfyui.server import ComfyServer

    from .ui import FrontendPage

    server = ComfyServer(tmp_path_factory.mktemp(f"browser_{request.param}"),
                         front_end_root=NEWEST_FRONTEND if request.param.startswith("newest") else None)
    server.start()
    page = FrontendPage(server)
    try:
        page.open(vue_nodes=request.param.endswith("vue-nodes"))
        yield page
    finally:
        page.close()
        server.stop()
