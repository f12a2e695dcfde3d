"""Guarded writes: every file we write goes to a temp file in its folder first and is renamed into place, so a
crash or a full disk never leaves a half-written file or a mismatched pair (docs/reliability.md)."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def atomic_write_many(files) -> list[Path]:
    """Write several files, (path, bytes) each, as one: all go to temp files in their folders first, then are
    renamed, so a crash or a full disk leaves every previous file intact. Files are 0644 (less the umask), as
    model files should be. A failed write raises OSError naming the file ("No space left on device": ENOSPC)."""
    done = []
    try:
        for path, data in files:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            done.append((tmp, path))
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as exc:
                raise OSError(exc.errno, exc.strerror, str(path)) from None
            os.chmod(tmp, 0o666 & ~_umask())
        for tmp, path in done:
            os.replace(tmp, path)
    finally:
        for tmp, _ in done:
            if os.path.exists(tmp):
                os.remove(tmp)
    return [path for _, path in done]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path, text: str) -> Path:
    return atomic_write_many([(path, text.encode())])[0]


def atomic_write_json(path, value) -> Path:
    return atomic_write_text(path, json.dumps(value, indent=2) + "\n")
