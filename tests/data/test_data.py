import numpy as np
import pytest
import torch
from PIL import Image

from biotune.config import SearchConfig
from biotune.data.dataset import load_dataset, preprocess, split_dataset
from biotune.errors import BioTuneError


def test_digits_default_dataset():
    ds = load_dataset("digits")
    assert ds.num_classes == 10 and ds.x_train.dtype == np.uint8 and ds.x_train.shape[1:] == (8, 8, 1)
    assert len(ds.x_train) + len(ds.x_test) == 1797
    assert ds.x_val is None
    assert load_dataset("digits").fingerprint() == ds.fingerprint()  # fixed test split


def test_shared_npz_with_official_val_split(usps_path):
    ds = load_dataset(str(usps_path))
    assert ds.num_classes == 10 and len(ds.x_train) == 7291 and len(ds.x_test) == 2007


def test_flowers_official_val_split_is_used():
    from conftest import require_shared

    ds = load_dataset(str(require_shared("data/flowers102.npz")))
    split = split_dataset(ds, val_fraction=0.2, n_folds=2, seed=0)
    assert len(split.x_val) == 440 and len(split.x_train) == 728  # nothing carved from train


def test_folds_are_stratified_disjoint_and_cover(small_npz):
    ds = load_dataset(str(small_npz))
    split = split_dataset(ds, val_fraction=0.2, n_folds=SearchConfig(fraction=0.25).n_folds, seed=1)
    assert split.n_folds == 4
    all_idx = np.concatenate(split.folds)
    assert sorted(all_idx.tolist()) == list(range(len(split.y_train)))
    overall = np.bincount(split.y_train) / len(split.y_train)
    for fold in split.folds:
        share = np.bincount(split.y_train[fold], minlength=3) / len(fold)
        np.testing.assert_allclose(share, overall, atol=0.03)
    sizes = [len(f) for f in split.folds]
    assert max(sizes) - min(sizes) <= 3  # at most one per class
    val_share = np.bincount(split.y_val) / len(split.y_val)
    np.testing.assert_allclose(val_share, overall, atol=0.03)
    assert split.fold_for_generation(5) == 1


@pytest.mark.parametrize("fraction,folds", [(0.5, 2), (1.0, 1), (0.3, 4), (0.1, 10), (0.25, 4)])
def test_number_of_folds(fraction, folds):
    assert SearchConfig(fraction=fraction).n_folds == folds


def test_splits_depend_on_seed_only(small_npz):
    ds = load_dataset(str(small_npz))
    a = split_dataset(ds, val_fraction=0.2, n_folds=2, seed=3)
    b = split_dataset(ds, val_fraction=0.2, n_folds=2, seed=3)
    c = split_dataset(ds, val_fraction=0.2, n_folds=2, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a.folds, b.folds))
    assert not np.array_equal(a.y_val, c.y_val) or not np.array_equal(a.folds[0], c.folds[0])


def test_class_too_small_for_folds(tmp_path):
    x = np.zeros((30, 4, 4, 1), np.uint8)
    y = np.array([0] * 20 + [1] * 8 + [2] * 2)
    np.savez(tmp_path / "tiny.npz", x_train=x, y_train=y, x_test=x[:3], y_test=y[:3], classes=np.array(["a", "b", "c"]))
    ds = load_dataset(str(tmp_path / "tiny.npz"))
    with pytest.raises(BioTuneError, match="'c'.*fewer than"):
        split_dataset(ds, val_fraction=0.2, n_folds=4, seed=0)


def test_preprocess_resizes_normalises_and_repeats_gray():
    imgs = np.full((2, 8, 8, 1), 255, np.uint8)
    out = preprocess(imgs, image_size=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert out.shape == (2, 3, 16, 16) and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, torch.ones_like(out))


def test_image_folder_with_mixed_modes_nested_and_non_images(tmp_path, caplog):
    root = tmp_path / "folder"
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / c / "nested").mkdir(parents=True)
        for i in range(6):
            arr = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
            img = Image.fromarray(arr)
            modes = [img, img.convert("L"), img.convert("RGBA"), img.convert("P"),
                     Image.fromarray(arr[..., 0].astype(np.uint16) * 257)]
            target = root / c / ("nested" if i % 2 else "") / f"{i}.png"
            modes[i % len(modes)].save(target)
        (root / c / "README.txt").write_text("not an image")
    ds = load_dataset(str(root), image_size=16)
    assert ds.classes == ("cat", "dog")
    assert ds.x_train.shape[1:] == (16, 16, 3) and len(ds.x_train) + len(ds.x_test) == 12
    assert "not an image" in caplog.text


def test_corrupt_image_names_the_file(tmp_path):
    for c in ("a", "b"):
        (tmp_path / "f" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "f" / c / f"{i}.png")
    (tmp_path / "f" / "b" / "bad.jpg").write_bytes(b"")
    with pytest.raises(BioTuneError, match="bad.jpg: cannot read image"):
        load_dataset(str(tmp_path / "f"), image_size=8)


def _npz(path, **over):
    x = np.zeros((6, 4, 4, 3), np.uint8)
    y = np.array([0, 1, 0, 1, 0, 1])
    arrays = dict(x_train=x, y_train=y, x_test=x, y_test=y, classes=np.array(["a", "b"]))
    arrays.update(over)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize(
    "over,match",
    [
        (dict(x_train=np.zeros((6, 4, 4, 3), np.float32)), "must be uint8"),
        (dict(x_train=np.full((6, 4, 4, 3), np.nan, np.float32)), "NaN"),
        (dict(y_train=np.array([0, 1, 0])), "6 images but 3 labels"),
        (dict(y_train=np.array([0, 1, 2, 0, 1, 2])), r"labels must be in 0..1"),
        (dict(y_test=None), "missing array"),
        (dict(classes=np.array(["only"]), y_train=np.zeros(6, int), y_test=np.zeros(6, int)), "at least 2 classes"),
    ],
)
def test_bad_npz(tmp_path, over, match):
    with pytest.raises(BioTuneError, match=match):
        load_dataset(_npz(tmp_path / "d.npz", **over))


def test_pickled_npz_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    np.savez(tmp_path / "evil.npz", x_train=np.array([Evil()], dtype=object), y_train=np.array([0]),
             x_test=np.zeros((1, 2, 2)), y_test=np.array([0]), classes=np.array(["a", "b"]))
    with pytest.raises(BioTuneError, match="refused"):
        load_dataset(str(tmp_path / "evil.npz"))
    assert not marker.exists()


def test_unknown_and_missing_datasets(tmp_path):
    with pytest.raises(BioTuneError, match="unknown dataset 'imagenet-foo'"):
        load_dataset("imagenet-foo")
    with pytest.raises(BioTuneError, match="does not exist"):
        load_dataset(str(tmp_path / "missing.npz"))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(BioTuneError, match="junk.npz"):
        load_dataset(str(tmp_path / "junk.npz"))


def _session(dataset: str, image_size):
    from biotune.config import DataConfig, ModelConfig, RuntimeConfig, TrainConfig
    from biotune.training.session import Session

    return Session.prepare(ModelConfig(name="test_efficientnet", weights="random"),
                           DataConfig(dataset=dataset, image_size=image_size), TrainConfig(epochs=1),
                           n_folds=2, seed=0, runtime=RuntimeConfig(threads=1))


def test_session_takes_its_threads_from_the_runtime(small_npz):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        _session(str(small_npz), 8)  # RuntimeConfig(threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_native_image_size_keeps_each_dataset_at_its_stored_size(small_npz, tmp_path):
    session = _session(str(small_npz), "native")
    assert session.image_size == 8 and session.splits.x_train.shape[-2:] == (8, 8)
    assert _session(str(small_npz), 12).splits.x_train.shape[-2:] == (12, 12)
    x = np.zeros((40, 10, 12, 1), np.uint8)
    y = np.arange(40) % 2
    np.savez(tmp_path / "wide.npz", x_train=x, y_train=y, x_test=x[:4], y_test=y[:4], classes=np.array(["a", "b"]))
    with pytest.raises(BioTuneError, match="native.*10x12"):
        _session(str(tmp_path / "wide.npz"), "native")
    with pytest.raises(TypeError, match="image_size"):
        _session(str(small_npz), "big")
