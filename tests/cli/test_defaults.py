"""Defaults that follow the data (image size), the time estimate and --dry-run."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from biotune.cli import main
from biotune.config import PRESETS, DataConfig, ModelConfig, RunConfig, RuntimeConfig, TrainConfig, resolve_image_size
from biotune.pipeline import plan
from biotune.training.estimate import Estimate, Speed, estimate_runs

TINY_MODEL = ModelConfig(name="test_efficientnet", weights="random")


def _npz(path, side):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    x = rng.integers(0, 256, (60, side, side, 1), dtype=np.uint8)
    np.savez(path, x_train=x, y_train=y, x_test=x[:15], y_test=y[:15], classes=np.array(["a", "b", "c"]))
    return path


def _folder(root):
    rng = np.random.default_rng(1)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_resolution_rule():
    assert resolve_image_size(None, "digits", 224) == (32, "the offline demo (digits)")
    assert resolve_image_size(None, "x.npz", 224)[0] == 224
    assert resolve_image_size(48, "x.npz", 224) == (48, "--image-size")
    assert resolve_image_size("native", "x.npz", 224, 28)[0] == 28
    assert all("image_size" not in p.get("data", {}) for p in PRESETS.values())  # presets leave it to the data


@pytest.mark.slow
@pytest.mark.parametrize("source", ["npz28", "npz96", "folder"])
def test_real_datasets_default_to_the_models_input_size(source, tmp_path, caplog):
    dataset = {"npz28": lambda: _npz(tmp_path / "a.npz", 28), "npz96": lambda: _npz(tmp_path / "b.npz", 96),
               "folder": lambda: _folder(tmp_path / "imgs")}[source]()
    config = RunConfig(model=TINY_MODEL, data=DataConfig(dataset=str(dataset)), train=TrainConfig(epochs=1),
                       ).replace(**PRESETS["quick"])
    with caplog.at_level(logging.WARNING):
        p = plan(config, runtime=RuntimeConfig())
    size = int(p.resolved["image_size"].split()[0])
    assert size == 160 and "pretrained input size" in p.resolved["image_size"]  # test_efficientnet: 160 px
    assert "below 64 px" not in caplog.text
    assert list(tmp_path.rglob("*.db")) == [] and not (tmp_path / "runs").exists()  # a plan writes nothing


def test_small_images_on_a_real_dataset_warn_and_the_demo_does_not(tmp_path, caplog):
    config = RunConfig(model=TINY_MODEL, data=DataConfig(dataset=str(_npz(tmp_path / "a.npz", 28)), image_size=32),
                       train=TrainConfig(epochs=1)).replace(**PRESETS["quick"])
    with caplog.at_level(logging.WARNING):
        plan(config, runtime=RuntimeConfig())
    assert "runs at 32 px, below 64 px" in caplog.text and "72% at 224 px" in caplog.text
    caplog.clear()
    demo = RunConfig(model=TINY_MODEL).replace(**PRESETS["quick"])
    with caplog.at_level(logging.WARNING):
        p = plan(demo, runtime=RuntimeConfig())
    assert p.resolved["image_size"].startswith("32 ") and "below 64 px" not in caplog.text


def test_the_estimate_scales_with_the_plan_and_advises_on_long_cpu_jobs():
    speed = Speed(train=1e-3, eval=2e-4, device="cpu")
    one = estimate_runs(speed, runs=1, train_images=1000, val_images=200, test_images=100, epochs=10, patience=2)
    assert one.high == pytest.approx(10 * (1000e-3 + 200 * 2e-4) + 100 * 2e-4)
    assert one.low == pytest.approx(3 * (1000e-3 + 200 * 2e-4) + 100 * 2e-4)  # earliest stop: patience + 1 epochs
    two = estimate_runs(speed, runs=2, train_images=1000, val_images=200, test_images=100, epochs=10, patience=2,
                        workers=2)
    assert two.high == pytest.approx(one.high)  # two runs at once
    assert not any("more than an hour" in line for line in one.lines())
    long = Estimate(30, 30, 5, 30, 3, 3000.0, 7200.0, speed)
    assert "more than an hour on the CPU" in long.lines()[-1] and "--image-size" in long.lines()[-1]
    gpu = Estimate(30, 30, 5, 30, 3, 3000.0, 7200.0, Speed(1e-4, 1e-5, "cuda"))
    assert not any("more than an hour" in line for line in gpu.lines())


def test_search_dry_run_prints_settings_with_sources_and_an_estimate_and_writes_nothing(tmp_path, capsys):
    before = set(tmp_path.iterdir())
    assert main(["search", "--dry-run", "--model", "test_efficientnet", "--weights", "random", "--epochs", "3",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "train.epochs         3                            (option)" in out
    assert "train.patience       2                            (preset quick)" in out
    assert "train.lr             0.001                        (default)" in out
    assert "32 (the offline demo (digits))" in out
    assert "estimated wall time:" in out and "26 search evaluations" in out
    assert set(tmp_path.iterdir()) == before


def test_compare_dry_run_estimates_the_grid_and_writes_nothing(tmp_path, capsys):
    out_dir = tmp_path / "cmp"
    assert main(["compare", "--dry-run", "--datasets", "digits", "--methods", "ft,biotune", "--runs", "2",
                 "--out", str(out_dir), "--model", "test_efficientnet", "--weights", "random",
                 "--image-size", "16"]) == 0
    out = capsys.readouterr().out
    assert "digits: 4 cells to run" in out and "whole grid: 4 cells to run, estimated" in out
    assert not out_dir.exists()
