"""Datasets by name: read from the cache directory, converted through torchvision from local files,
the ISIC layout, and one clear error when a dataset is absent offline."""

from __future__ import annotations

import csv
import shutil
import struct

import numpy as np
import pytest
from PIL import Image

from biotune.data.catalog import DATA_ENV, load_named
from biotune.data.dataset import load_dataset
from biotune.errors import BioTuneError


def test_npz_in_the_data_dir_is_used_as_is(tmp_path, usps_path, monkeypatch):
    shutil.copy(usps_path, tmp_path / "usps.npz")
    ds = load_dataset("usps", data_dir=str(tmp_path))
    with np.load(usps_path) as z:
        assert ds.name == "usps" and np.array_equal(ds.x_train, z["x_train"]) and len(ds.classes) == 10
    monkeypatch.setenv(DATA_ENV, str(tmp_path))  # the environment variable finds it too
    assert load_dataset("usps").x_test.shape == ds.x_test.shape


def _idx(path, array: np.ndarray) -> None:
    """MNIST's idx format: a big-endian header, then the uint8 data."""
    magic = 2051 if array.ndim == 3 else 2049
    with open(path, "wb") as fh:
        fh.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape) + array.tobytes())


def test_torchvision_official_files_are_converted_once(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    raw = tmp_path / "torchvision" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    x_train, y_train = rng.integers(0, 255, (40, 28, 28), dtype=np.uint8), np.tile(np.arange(10, dtype=np.uint8), 4)
    x_test, y_test = rng.integers(0, 255, (20, 28, 28), dtype=np.uint8), np.tile(np.arange(10, dtype=np.uint8), 2)
    _idx(raw / "train-images-idx3-ubyte", x_train)
    _idx(raw / "train-labels-idx1-ubyte", y_train)
    _idx(raw / "t10k-images-idx3-ubyte", x_test)
    _idx(raw / "t10k-labels-idx1-ubyte", y_test)
    ds = load_named("mnist", data_dir=tmp_path)
    assert np.array_equal(ds.x_train[..., 0], x_train) and np.array_equal(ds.y_test, y_test)
    assert len(ds.classes) == 10 and (tmp_path / "mnist.npz").is_file()
    shutil.rmtree(tmp_path / "torchvision")  # later runs read the converted copy
    assert np.array_equal(load_named("mnist", data_dir=tmp_path).x_test[..., 0], x_test)


def test_absent_dataset_offline_says_where_to_put_it(tmp_path, monkeypatch):
    import biotune.data.catalog as catalog

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(catalog, "_from_torchvision", offline)
    with pytest.raises(BioTuneError, match=rf"'svhn' is not in {tmp_path}.*network is unreachable.*Put svhn\.npz"):
        load_dataset("svhn", data_dir=str(tmp_path))
    with pytest.raises(BioTuneError, match=r"'isic' is not in .*images and ground-truth CSV"):
        load_dataset("isic", data_dir=str(tmp_path))


def test_isic_challenge_layout(tmp_path):
    root = tmp_path / "isic"
    classes = ["MEL", "NV", "BCC"]
    rng = np.random.default_rng(0)
    for split, n in (("Training", 9), ("Validation", 3), ("Test", 6)):
        images = root / f"ISIC2018_Task3_{split}_Input"
        images.mkdir(parents=True)
        truth = root / f"ISIC2018_Task3_{split}_GroundTruth"
        truth.mkdir()
        with open(truth / f"ISIC2018_Task3_{split}_GroundTruth.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["image", *classes])
            for i in range(n):
                name = f"ISIC_{split}_{i:04d}"
                Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(images / f"{name}.jpg")
                writer.writerow([name, *[1.0 if c == i % 3 else 0.0 for c in range(3)]])
    (root / "LICENSE.txt").write_text("not an image")
    ds = load_dataset("isic", data_dir=str(tmp_path), image_size=24)
    assert ds.classes == tuple(classes)
    assert ds.x_train.shape == (9, 24, 24, 3) and ds.x_val.shape[0] == 3 and ds.x_test.shape[0] == 6
    assert list(ds.y_train) == [0, 1, 2] * 3


def test_isic_missing_image_names_the_csv_line(tmp_path):
    root = tmp_path / "isic"
    root.mkdir()
    for split in ("Training", "Test"):
        (root / f"ISIC_{split}_GroundTruth.csv").write_text("image,MEL,NV\nISIC_0001,1,0\n")
    with pytest.raises(BioTuneError, match=r"_GroundTruth\.csv, line 2: image 'ISIC_0001' not found"):
        load_dataset("isic", data_dir=str(tmp_path))
