"""The uint8 dataset store and device-side batches: written once and reused, rewritten when the source
changes, never used half-written; batches equal the old preprocessed tensor; a run that cannot fit
refuses before it starts; augmentation is off by default and bypasses the prefix cache."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from biotune.data.rows import FileRows
from biotune.training.peak import resident
import pytest
import torch

from biotune import RunConfig, RuntimeConfig, run
from biotune.cli import main
from biotune.config import DataConfig, ModelConfig, TrainConfig
from biotune.data import store as store_module
from biotune.data.dataset import load_dataset, preprocess
from biotune.errors import BioTuneError
from biotune.training.images import DeviceImages, augment
from biotune.training.session import Session


def _folder(root: Path, per_class: int = 4, size: int = 20) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (size, size + 4, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def _writes(monkeypatch) -> list:
    calls = []
    original = store_module._write
    monkeypatch.setattr(store_module, "_write", lambda *a, **k: calls.append(a[0]) or original(*a, **k))
    return calls


def test_an_npz_is_stored_once_mapped_and_keeps_its_content_and_fingerprint(small_npz, tmp_path, monkeypatch):
    writes = _writes(monkeypatch)
    memory = load_dataset(str(small_npz))
    load_dataset(str(small_npz), store_dir=tmp_path / "s", image_size=224)
    again = load_dataset(str(small_npz), store_dir=tmp_path / "s", image_size=64)  # 8 px < both sizes: one store
    assert len(writes) == 1 and isinstance(again.x_train, FileRows)
    assert np.array_equal(np.asarray(again.x_train), memory.x_train) and np.array_equal(again.y_test, memory.y_test)
    assert again.fingerprint() == memory.fingerprint()  # the memo and cache keys do not move
    os.utime(small_npz, ns=(time.time_ns(), time.time_ns() + 10**9))  # touched: written again
    load_dataset(str(small_npz), store_dir=tmp_path / "s", image_size=64)
    assert len(writes) == 2
    smaller = load_dataset(str(small_npz), store_dir=tmp_path / "s", image_size=4)  # larger than training: resized once
    assert smaller.x_train.shape[1:3] == (4, 4) and len(writes) == 3


def test_an_image_folder_is_decoded_once_and_rewritten_when_files_change(tmp_path, monkeypatch):
    root = _folder(tmp_path / "photos")
    writes = _writes(monkeypatch)
    first = load_dataset(str(root), store_dir=tmp_path / "s", image_size=16)
    assert first.x_train.shape[1:] == (16, 16, 3) and len(first.y_train) + len(first.y_test) == 8
    assert np.array_equal(np.asarray(first.x_train), load_dataset(str(root), image_size=16).x_train)
    load_dataset(str(root), store_dir=tmp_path / "s", image_size=16)
    assert len(writes) == 1
    _folder(tmp_path / "photos", per_class=5)  # files added
    ds = load_dataset(str(root), store_dir=tmp_path / "s", image_size=16)
    assert len(ds.y_train) + len(ds.y_test) == 10 and len(writes) == 2
    (root / "dog" / "4.png").unlink()  # removed
    ds = load_dataset(str(root), store_dir=tmp_path / "s", image_size=16)
    assert len(ds.y_train) + len(ds.y_test) == 9 and len(writes) == 3


@pytest.mark.slow
def test_a_store_killed_while_written_is_never_used(tmp_path):
    root = _folder(tmp_path / "photos", per_class=30)
    script = (
        "import time, sys\n"
        "from pathlib import Path\n"
        "import biotune.data.store as s\n"
        "from biotune.data.folders import scan_folder\n"
        "real = s.read_ref\n"
        "s.read_ref = lambda p, n: (time.sleep(0.2), real(p, n))[1]\n"
        f"s.open_listing(scan_folder(Path({str(root)!r})), Path({str(tmp_path / 's')!r}), 16, workers=1)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 60
    while not list((tmp_path / "s").glob(".*.tmp")) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list((tmp_path / "s").glob(".*.tmp")), "the writer was not killed while writing"
    assert not [p for p in (tmp_path / "s").iterdir() if not p.name.startswith(".")]  # no store in place
    ds = load_dataset(str(root), store_dir=tmp_path / "s", image_size=16)  # written afresh, whole
    assert len(ds.y_train) + len(ds.y_test) == 60


def test_a_store_larger_than_the_free_disk_is_refused_before_writing(small_npz, tmp_path, monkeypatch):
    monkeypatch.setattr(store_module.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 100, 100))
    with pytest.raises(BioTuneError, match="disk"):
        load_dataset(str(small_npz), store_dir=tmp_path / "s", image_size=8)
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").iterdir())


def test_batches_from_the_store_equal_the_old_preprocessed_tensor(small_npz, tmp_path):
    runtime = RuntimeConfig(cache_dir=str(tmp_path / "c"), threads=1)
    session = Session.prepare(ModelConfig("test_efficientnet", "random"), DataConfig(str(small_npz), image_size=24),
                              TrainConfig(), n_folds=2, seed=0, runtime=runtime)
    for split in ("train", "val", "test"):
        images = getattr(session.splits, f"x_{split}")
        assert isinstance(images, DeviceImages) and images.shape[1:] == (3, 24, 24)
        old = preprocess(np.asarray(getattr(session.data, f"x_{split}")), image_size=24, mean=session.pretrained.mean,
                         std=session.pretrained.std)
        index = torch.randperm(len(images), generator=torch.Generator().manual_seed(1))[:50]
        assert torch.equal(images[index], old[index])  # bit-identical on the CPU (same function, same device)
        assert torch.equal(images[3:40], old[3:40])
    fold = session.splits.folds[1]
    assert torch.equal(session.splits.x_train.subset(fold)[torch.arange(7)],
                       preprocess(np.asarray(session.data.x_train)[fold[:7].numpy()], image_size=24,
                                  mean=session.pretrained.mean, std=session.pretrained.std))


def test_a_run_that_cannot_fit_refuses_before_anything_is_written(tmp_path, monkeypatch, capsys):
    import psutil

    class Tiny:
        available = 64 * 2**20

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Tiny())
    config = RunConfig().replace(model={"name": "test_efficientnet", "weights": "random"}, data={"image_size": 16},
                                 train={"epochs": 1}, search={"population": 2, "elites": 1, "generations": 0})
    with pytest.raises(BioTuneError, match="not enough memory.*RAM.*--image-size"):
        run(config, run_dir=tmp_path / "r", runtime=RuntimeConfig(threads=1))
    assert not (tmp_path / "r").exists()
    code = main(["search", "--model", "test_efficientnet", "--weights", "random", "--image-size", "16",
                 "--run-dir", str(tmp_path / "cli"), "--no-progress"])
    assert code == 2 and "not enough memory" in capsys.readouterr().err and not (tmp_path / "cli").exists()


def test_the_plan_states_disk_and_the_ram_peak_per_process(capsys):
    code = main(["search", "--model", "test_efficientnet", "--weights", "random", "--image-size", "64", "--dry-run",
                 "--preset", "quick"])
    out = capsys.readouterr().out
    assert code == 0 and "memory: dataset store" in out and "RAM per process" in out and "at the peak" in out


def test_augmentation_is_off_by_default_and_bypasses_the_prefix_cache(small_npz, tmp_path):
    assert TrainConfig().augment is False
    results = {}
    for aug in (False, True):
        session = Session.prepare(ModelConfig("test_efficientnet", "random"), DataConfig(str(small_npz), image_size=16),
                                  TrainConfig(epochs=2, patience=2, batch_size=32, augment=aug), n_folds=2, seed=0,
                                  runtime=RuntimeConfig(threads=1))
        head_only = (0.0,) * (len(session.blocks) - 1) + (1e-2,)
        t = session.splits
        results[aug] = session.finetuner.run(head_only, t.train, t.val, seed=0)
    assert results[False].prefix_depth > 0 and results[True].prefix_depth == 0
    assert results[False].train_losses != results[True].train_losses  # the batches were not the same images


def test_augment_crops_and_flips_each_image_on_its_device_reproducibly():
    batch = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    a = augment(batch, torch.Generator().manual_seed(0))
    b = augment(batch, torch.Generator().manual_seed(0))
    assert a.shape == batch.shape and torch.equal(a, b) and not torch.equal(a, batch)
    full = augment(batch, torch.Generator().manual_seed(0), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert all(torch.allclose(f, x, atol=1e-4) or torch.allclose(f, x.flip(-1), atol=1e-4)
               for f, x in zip(full, batch))  # the whole image, flipped or not


def test_reading_a_stored_split_leaves_its_pages_out_of_resident_memory(tmp_path):
    if not resident():
        pytest.skip("no /proc/self/status here")
    rows = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.uint8, shape=(1024, 256, 256, 3))
    rows[::37] = 7  # 192 MB written through a map that is then closed
    del rows
    images = FileRows(tmp_path / "x.npy")
    before = resident()
    for start in range(0, len(images), 64):  # an epoch, batch by batch
        batch = images[np.arange(start, start + 64)]
        assert batch.shape == (64, 256, 256, 3)
    assert (images[[37, 0, 1]][:, 0, 0, 0] == [7, 7, 0]).all()
    assert resident() - before < 64 * 2**20  # a map would have added the 192 MB it read


def test_a_store_another_process_wrote_first_is_kept_not_an_error(small_npz, tmp_path, monkeypatch):
    """Parallel jobs on one data directory: another process renames the same store into place just
    before this one does (seen with 16 jobs at once); both go on with it."""
    real = os.replace

    def racing(src, dst):
        src, dst = Path(src), Path(dst)
        if src.is_dir() and src.name.endswith(".tmp") and not dst.exists():
            shutil.copytree(src, dst)  # the other process won
        return real(src, dst)

    monkeypatch.setattr(store_module.os, "replace", racing)
    stored = load_dataset(str(small_npz), store_dir=tmp_path / "s", image_size=64)
    memory = load_dataset(str(small_npz))
    assert np.array_equal(np.asarray(stored.x_train), memory.x_train) and stored.fingerprint() == memory.fingerprint()
    assert not [p for p in (tmp_path / "s").rglob("*.tmp")]  # our copy removed
