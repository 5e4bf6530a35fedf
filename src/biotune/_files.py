"""File helpers shared by every layer: atomic writes (a temporary file, then a rename), JSON files,
names made safe for paths."""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["atomic_write_bytes", "write_json", "save_figure", "slug"]


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: never half-written."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would make outputs unreadable to others
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def save_figure(fig, path: str | Path) -> None:
    """A matplotlib figure as a PNG at ``path``, written atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=150, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def slug(text: str) -> str:
    """``text`` made safe for a file name: runs of other characters become ``_``."""
    return re.sub(r"[^A-Za-z0-9_.]+", "_", text).strip("_") or "run"
