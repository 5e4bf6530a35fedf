"""Shared fixtures: the real datasets of ../shared/data (skip without them, or fail in CI)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

SHARED = Path(os.environ.get("BIOTUNE_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))


def pytest_configure(config):
    """Dataset stores (and named datasets) of the whole session go to one temporary folder, not ~/.cache."""
    import tempfile

    if "BIOTUNE_DATA" not in os.environ:
        os.environ["BIOTUNE_DATA"] = tempfile.mkdtemp(prefix="biotune-test-data-")


def require_shared(relative: str) -> Path:
    """Path of a shared file; skips when absent, fails instead with BIOTUNE_REQUIRE_SHARED=1."""
    path = SHARED / relative
    if not path.exists():
        message = f"shared file {path} is absent"
        if os.environ.get("BIOTUNE_REQUIRE_SHARED") == "1":
            pytest.fail(message + " (BIOTUNE_REQUIRE_SHARED=1)")
        pytest.skip(message)
    return path


@pytest.fixture
def usps_path() -> Path:
    return require_shared("data/usps.npz")


@pytest.fixture
def small_npz(tmp_path) -> Path:
    """A small valid .npz dataset (3 classes, 8×8 grayscale) made from digits."""
    from sklearn.datasets import load_digits

    d = load_digits()
    keep = d.target < 3
    x = np.round(d.images[keep] * 255 / 16).astype(np.uint8)
    y = d.target[keep].astype(np.int64)
    path = tmp_path / "small.npz"
    np.savez_compressed(path, x_train=x[:400], y_train=y[:400], x_test=x[400:], y_test=y[400:],
                        classes=np.array(["zero", "one", "two"]))
    return path


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path, monkeypatch):
    """Default run directories (runs/...) land in the test's temporary folder."""
    monkeypatch.chdir(tmp_path)
