"""Start a real ComfyUI server (CPU) with this pack and the test pack, and talk to it over HTTP."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from .conftest import COMFYUI_PATH, stub_path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


class ComfyServer:
    def __init__(self, workdir: Path, front_end_root: str | None = None):
        """`front_end_root`: serve that frontend build (a `static/` folder) instead of the one ComfyUI pins."""
        self.workdir, self.front_end_root = workdir, front_end_root
        models = workdir / "models"
        for sub in ("diffusion_models", "loras", "vae", "text_encoders"):
            (models / sub).mkdir(parents=True, exist_ok=True)
        packs = workdir / "custom_nodes"
        packs.mkdir(exist_ok=True)
        for name, target in (("ComfyUI-DreamRelation", ROOT), ("dreamrelation_testpack", HERE / "testpack")):
            if not (packs / name).exists():
                (packs / name).symlink_to(target, target_is_directory=True)
        config = workdir / "extra_model_paths.yaml"
        config.write_text(f"tests:\n    base_path: {models}\n    is_default: true\n    custom_nodes: {packs}\n"
                          "    diffusion_models: diffusion_models\n    loras: loras\n    vae: vae\n"
                          "    text_encoders: text_encoders\n")
        self.models, self.config = models, config
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = None

    def start(self, timeout: float = 240.0) -> "ComfyServer":
        env = dict(os.environ)
        paths = [p for p in (stub_path(), env.get("PYTHONPATH")) if p]
        env["PYTHONPATH"] = os.pathsep.join(paths)
        for sub in ("output", "input", "temp", "user"):
            (self.workdir / sub).mkdir(exist_ok=True)
        self.log = open(self.workdir / "server.log", "w")
        self.process = subprocess.Popen(
            [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
             "--extra-model-paths-config", str(self.config), "--disable-auto-launch",
             "--output-directory", str(self.workdir / "output"), "--input-directory", str(self.workdir / "input"),
             "--temp-directory", str(self.workdir / "temp"), "--user-directory", str(self.workdir / "user"),
             "--database-url", "sqlite:///:memory:",
             *(["--front-end-root", self.front_end_root] if self.front_end_root else [])],
            cwd=COMFYUI_PATH, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited:\n{self.server_log()}")
            try:
                self.get("/system_stats")
                return self
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        raise TimeoutError(f"ComfyUI did not start in {timeout}s:\n{self.server_log()}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        if self.process:
            self.log.close()

    def server_log(self) -> str:
        path = self.workdir / "server.log"
        return path.read_text()[-6000:] if path.exists() else ""

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=60) as r:
            return json.loads(r.read())

    def post(self, path: str, payload) -> tuple[int, dict]:
        req = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                body = r.read()
                return r.status, (json.loads(body) if body else {})
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def queue(self, prompt: dict) -> str:
        status, body = self.post("/prompt", {"prompt": prompt, "client_id": "dreamrelation-tests"})
        if status != 200:
            raise AssertionError(f"prompt rejected ({status}): {json.dumps(body)[:3000]}")
        return body["prompt_id"]

    def settle(self, prompt_id: str, timeout: float = 300.0) -> None:
        """Wait until a prompt is neither running nor queued: finished, or cleared from the queue before it
        started (then it never reaches the history)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            queue = self.get("/queue")
            if all(entry[1] != prompt_id for entry in queue["queue_running"] + queue["queue_pending"]):
                return
            time.sleep(0.5)
        raise TimeoutError(f"prompt {prompt_id} still queued or running:\n{self.server_log()}")

    def wait(self, prompt_id: str, timeout: float = 600.0) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id]["status"].get("completed") is not None \
                    and history[prompt_id]["status"].get("status_str") in ("success", "error"):
                return history[prompt_id]
            time.sleep(0.5)
        raise TimeoutError(f"prompt {prompt_id} did not finish:\n{self.server_log()}")
