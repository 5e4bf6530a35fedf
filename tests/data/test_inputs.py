"""Data as users have it: label tables (HAM10000, Kaggle, ISIC, CheXpert shapes), split folders under any
name, archives, Hugging Face datasets, group-safe splits; and hostile tables refused in one message.

Fixtures are built here, small: tiny PNG/JPEG files whose pixels encode their identity, so a test can
check which image landed in which split.
"""

from __future__ import annotations

import json
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from biotune.cli import main
from biotune.data.dataset import ReadOptions, load_dataset, split_dataset
from biotune.errors import BioTuneError

SIZE = 8


def _image(path: Path, ident: int) -> None:
    """An 8×8 image whose top-left pixel holds ``ident`` (three bytes), the rest a shade of it; lossless
    (PNG bytes, whatever the file's extension: PIL reads by content), so the identity survives."""
    arr = np.full((SIZE, SIZE, 3), ident % 251, np.uint8)
    arr[0, 0] = [ident // 65536, (ident // 256) % 256, ident % 256]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="PNG")


def _idents(x) -> list[int]:
    """The identities of the images of a split (the top-left pixel of each)."""
    x = np.asarray(x)
    return [int(p[0]) * 65536 + int(p[1]) * 256 + int(p[2]) for p in x[:, 0, 0]]


def _load(spec, store=None, **options) -> object:
    return load_dataset(str(spec), image_size=SIZE, store_dir=store, options=ReadOptions(**options))


@pytest.fixture(params=["memory", "store"])
def store(request, tmp_path):
    return None if request.param == "memory" else tmp_path / "store"


def _ham(root: Path, n: int = 60) -> Path:
    """HAM10000's shape: ids without extension, JPEGs in two folders, dx labels, lesion_id groups."""
    lines = ["lesion_id,image_id,dx,dx_type,age"]
    for i in range(n):
        folder = "HAM10000_images_part_1" if i % 2 else "HAM10000_images_part_2"
        _image(root / folder / f"ISIC_{i:07d}.jpg", i)
        lines.append(f"HAM_{i // 2:07d},ISIC_{i:07d},{('nv', 'mel', 'bkl')[(i // 2) % 3]},histo,50")
    (root / "HAM10000_metadata.csv").write_text("\n".join(lines) + "\n")
    return root / "HAM10000_metadata.csv"


def test_ham10000_table_ids_without_extension_over_two_folders_with_groups(tmp_path, store):
    table = _ham(tmp_path / "ham")
    ds = _load(table, store, label_column="dx", group_column="lesion_id")
    assert ds.classes == ("bkl", "mel", "nv")  # strings sort
    assert len(ds.y_train) + len(ds.y_test) == 60 and ds.y_val is None
    # labels follow the table: image i has class ('nv','mel','bkl')[(i//2)%3]
    for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        for ident, label in zip(_idents(x), y):
            assert ds.classes[label] == ("nv", "mel", "bkl")[(ident // 2) % 3]
    # groups: the two images of a lesion never fall on two sides, also of the carved validation and the folds
    lesion = lambda idents: {i // 2 for i in idents}  # noqa: E731
    assert not lesion(_idents(ds.x_train)) & lesion(_idents(ds.x_test))
    split = split_dataset(ds, val_fraction=0.25, n_folds=2, seed=1)
    assert not lesion(_idents(split.x_train)) & lesion(_idents(split.x_val))
    fold_lesions = [lesion(np.asarray(_idents(split.x_train))[f]) for f in split.folds]
    assert not fold_lesions[0] & fold_lesions[1]


def test_kaggle_table_integer_labels_numeric_order_and_json_names(tmp_path, store):
    root = tmp_path / "cassava"
    rows = ["image_id,label"]
    for i in range(40):
        _image(root / "train_images" / f"{1000 + i}.jpg", i)
        rows.append(f"train_images/{1000 + i}.jpg,{(2, 10, 1)[i % 3]}")
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    (root / "names.json").write_text(json.dumps({"1": "cbb", "2": "cbsd", "10": "healthy"}))
    ds = _load(root / "train.csv", store, class_names=str(root / "names.json"))
    assert ds.classes == ("cbb", "cbsd", "healthy")  # 1 < 2 < 10: numeric, not string, order
    for ident, label in zip(_idents(ds.x_train), ds.y_train):
        assert ds.classes[label] == {2: "cbsd", 10: "healthy", 1: "cbb"}[(2, 10, 1)[ident % 3]]


def test_isic_one_hot_columns(tmp_path, store):
    root = tmp_path / "isic"
    classes = ["MEL", "NV", "BCC"]
    rows = ["image," + ",".join(classes)]
    for i in range(30):
        _image(root / "images" / f"ISIC_{i}.jpg", i)
        onehot = ["1.0" if j == i % 3 else "0.0" for j in range(3)]
        rows.append(f"ISIC_{i}," + ",".join(onehot))
    (root / "gt.csv").write_text("\n".join(rows) + "\n")
    ds = _load(root / "gt.csv", store, label_column="MEL,NV,BCC")
    assert ds.classes == ("MEL", "NV", "BCC")  # the columns' order
    for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        assert [i % 3 for i in _idents(x)] == list(y)


def test_chexpert_paths_relative_to_the_parent_folder_with_split_column(tmp_path, store):
    parent = tmp_path / "data"
    rows = ["Path,Sex,label,split"]
    for i in range(36):
        rel = f"CheXpert-v1.0-small/{'valid' if i >= 30 else 'train'}/patient{i:05d}/study1/view1_frontal.jpg"
        _image(parent / rel, i)
        rows.append(f"{rel},F,{('yes', 'no')[i % 2]},{'Valid' if i >= 30 else 'TRAIN'}")
    table = parent / "CheXpert-v1.0-small" / "train.csv"
    table.write_text("\n".join(rows) + "\n")
    with pytest.raises(BioTuneError, match="missing file"):  # relative to the table's folder: wrong root
        _load(table, store)
    ds = _load(table, store, image_root=str(parent))
    assert sorted(_idents(ds.x_val)) == list(range(30, 36))
    assert sorted(_idents(ds.x_train) + _idents(ds.x_test)) == list(range(30))
    assert ds.report["origin"]["val"] == "column split = val"


def _class_tree(root: Path, start: int, per_class: int = 4, classes=("cat", "dog")) -> list[int]:
    idents = []
    for c, name in enumerate(classes):
        for i in range(per_class):
            ident = start + 100 * c + i
            _image(root / name / f"{ident}.png", ident)
            idents.append(ident)
    return idents


def test_roboflow_export_with_valid_folder_is_the_validation_split(tmp_path, store):
    root = tmp_path / "export"
    train = _class_tree(root / "train", 0, per_class=6)
    valid = _class_tree(root / "valid", 1000)
    test = _class_tree(root / "test", 2000)
    ds = _load(root, store)
    assert ds.classes == ("cat", "dog")  # split names never become classes
    assert sorted(_idents(ds.x_train)) == train and sorted(_idents(ds.x_val)) == valid
    assert sorted(_idents(ds.x_test)) == test
    assert ds.report["origin"] == {"train": "folder train/", "val": "folder valid/", "test": "folder test/"}


def test_training_and_testing_folders_are_splits_not_two_classes(tmp_path, store):
    root = tmp_path / "tt"
    train = _class_tree(root / "Training", 0, per_class=6, classes=("glioma", "meningioma", "none"))
    test = _class_tree(root / "Testing", 5000, classes=("glioma", "meningioma", "none"))
    ds = _load(root, store)
    assert ds.classes == ("glioma", "meningioma", "none")
    assert sorted(_idents(ds.x_train)) == train and sorted(_idents(ds.x_test)) == test


def test_split_folders_beside_class_folders_are_refused_naming_both(tmp_path):
    root = tmp_path / "mixed"
    _class_tree(root / "train", 0)
    _class_tree(root / "cat", 500, classes=("x",))
    with pytest.raises(BioTuneError, match=r"split folders \(train\) beside other folders \(cat\)"):
        _load(root)


def test_zip_and_tar_of_a_folder_read_as_the_folder(tmp_path, store):
    root = tmp_path / "photos"
    train = _class_tree(root / "train", 0, per_class=6)
    _class_tree(root / "val", 1000)
    _class_tree(root / "test", 2000)
    with zipfile.ZipFile(tmp_path / "photos.zip", "w") as z:
        for p in sorted(root.rglob("*.png")):
            z.write(p, p.relative_to(tmp_path))
    with tarfile.open(tmp_path / "photos.tar.gz", "w:gz") as t:
        t.add(root, arcname="photos")
    plain = _load(root)
    for archive in ("photos.zip", "photos.tar.gz"):
        ds = _load(tmp_path / archive, store)
        assert ds.name == "photos" and ds.classes == plain.classes
        assert sorted(_idents(ds.x_train)) == train
        assert ds.fingerprint() == plain.fingerprint()
    if store is not None:
        assert not list(store.glob(".unpacked-*")), "the unpacked copy is removed"


def _frame(root: Path, n: int = 30):
    import pandas as pd

    for i in range(n):
        _image(root / "img" / f"{i}.png", i)
    return pd.DataFrame({"file_name": [f"img/{i}.png" for i in range(n)], "label": [("a", "b")[i % 2] for i in range(n)],
                         "split": ["test" if i >= 24 else "train" for i in range(n)]})


def test_parquet_and_jsonl_tables(tmp_path, store):
    pytest.importorskip("pyarrow")
    root = tmp_path / "t"
    frame = _frame(root)
    frame.to_parquet(root / "labels.parquet")
    frame.to_json(root / "labels.jsonl", orient="records", lines=True)
    for name in ("labels.parquet", "labels.jsonl"):
        ds = _load(root / name, store)
        assert ds.classes == ("a", "b")
        assert sorted(_idents(ds.x_test)) == list(range(24, 30))
        assert [("a", "b")[i % 2] for i in _idents(ds.x_train)] == [ds.classes[y] for y in ds.y_train]


def test_hf_imagefolder_metadata_in_each_split_folder(tmp_path, store):
    root = tmp_path / "hfimg"
    for split, start in (("train", 0), ("test", 100)):
        rows = ["file_name,label"]
        for i in range(start, start + (20 if split == "train" else 6)):
            _image(root / split / f"{i}.png", i)
            rows.append(f"{i}.png,{('x', 'y')[i % 2]}")
        (root / split / "metadata.csv").write_text("\n".join(rows) + "\n")
    ds = _load(root, store)
    assert ds.classes == ("x", "y") and sorted(_idents(ds.x_test)) == list(range(100, 106))


def test_saved_hugging_face_dataset_with_its_own_splits(tmp_path, store):
    datasets = pytest.importorskip("datasets")
    images = {s: [Image.fromarray(np.full((SIZE, SIZE, 3), 0, np.uint8)) for _ in range(n)]
              for s, n in (("train", 12), ("validation", 4), ("test", 4))}
    for s, start in (("train", 0), ("validation", 100), ("test", 200)):
        for i, img in enumerate(images[s]):
            img.putpixel((0, 0), (0, 0, start + i))
    features = datasets.Features({"img": datasets.Image(), "fine": datasets.ClassLabel(names=["ant", "bee"])})
    dd = datasets.DatasetDict({s: datasets.Dataset.from_dict({"img": imgs, "fine": [i % 2 for i in range(len(imgs))]},
                                                             features=features) for s, imgs in images.items()})
    dd.save_to_disk(str(tmp_path / "saved"))
    ds = _load(tmp_path / "saved", store)
    assert ds.classes == ("ant", "bee")
    assert _idents(ds.x_train) == list(range(12)) and _idents(ds.x_val) == list(range(100, 104))
    assert list(ds.y_test) == [0, 1, 0, 1]
    # a second ClassLabel: which is the label is for the user to say
    features2 = datasets.Features({"img": datasets.Image(), "fine": datasets.ClassLabel(names=["ant", "bee"]),
                                   "coarse": datasets.ClassLabel(names=["insect"])})
    two = datasets.Dataset.from_dict({"img": images["train"], "fine": [i % 2 for i in range(12)], "coarse": [0] * 12},
                                     features=features2)
    two.save_to_disk(str(tmp_path / "two"))
    with pytest.raises(BioTuneError, match=r"2 label \(ClassLabel\) columns \(fine, coarse\); choose one with --label-column"):
        _load(tmp_path / "two")
    assert _load(tmp_path / "two", label_column="fine").classes == ("ant", "bee")


def test_hub_address_without_network_says_so(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    import huggingface_hub

    # Offline as this machine is, without waiting for the network's timeouts (the flags are read at import).
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(BioTuneError, match="cannot load it from the Hugging Face Hub.*save_to_disk"):
        _load("hf:someone/no-such-dataset")


def test_identical_images_across_splits_warn_once_with_the_count(tmp_path, caplog):
    root = tmp_path / "dup"
    _class_tree(root / "train", 0, per_class=6)
    _class_tree(root / "test", 0)  # the same images again
    ds = _load(root)
    assert ds.report["identical"]["count"] == 8
    warnings = [r for r in caplog.records if "byte-identical" in r.message]
    assert len(warnings) == 1 and "8 image(s)" in warnings[0].getMessage()


def test_a_changed_table_or_label_column_never_reuses_another_store(tmp_path):
    root = tmp_path / "t"
    frame = _frame(root)
    frame["other"] = ["p" if i % 3 else "q" for i in range(len(frame))]
    frame.to_csv(root / "labels.csv", index=False)
    store = tmp_path / "store"
    a = _load(root / "labels.csv", store)
    b = _load(root / "labels.csv", store, label_column="other")
    assert a.classes == ("a", "b") and b.classes == ("p", "q")
    assert len(list(store.iterdir())) == 2
    _image(root / "img" / "3.png", 999)  # a replaced image rewrites the store
    c = _load(root / "labels.csv", store)
    assert 999 in _idents(c.x_train) + _idents(c.x_test) and c.fingerprint() != a.fingerprint()


# --- hostile tables: exit 2, one message, nothing written, no store -------------------------------------------

TINY = ["--model", "test_efficientnet", "--weights", "random", "--image-size", "16", "--epochs", "1",
        "--patience", "1", "--population", "4", "--elites", "1", "--generations", "0", "--seeds", "1",
        "--final-runs", "1", "--top-k", "1", "--batch-size", "64", "--no-progress"]


def _hostile(tmp: Path):
    root = tmp / "h"
    for i in range(100):
        _image(root / f"{i}.jpg", i)
    good = [f"{i}.jpg,{('a', 'b')[i % 2]}" for i in range(100)]

    def table(name: str, lines: list[str], header: str = "image,label", text: str | None = None) -> Path:
        path = root / name
        path.write_text(text if text is not None else "\n".join([header, *lines]) + "\n", encoding="utf-8")
        return path

    (root / "corrupt.jpg").write_bytes((root / "5.jpg").read_bytes()[:40] + b"\x00garbage")
    png = root / "trunc.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(png)
    png.write_bytes(png.read_bytes()[:300])
    return [
        ("missing column", table("nolabel.csv", [f"{i}.jpg" for i in range(10)], header="image"), [],
         r"no label column \(looked for label\); the columns are: image; name it with --label-column"),
        ("7 missing files", table("missing.csv", good + [f"gone{i}.jpg,a" for i in range(7)]), [],
         r"7 × missing file: line 102: \S*gone0\.jpg; .*gone4\.jpg \(and 2 more\)"),
        ("corrupt jpeg + truncated png", table("corrupt.csv", good + ["corrupt.jpg,a", "trunc.png,b"]), [],
         r"2 × file PIL cannot decode: line 102: \S*corrupt\.jpg: cannot read image \(.*\); "
         r"line 103: \S*trunc\.png: cannot read image \(OSError: image file is truncated\)"),
        ("listed twice, two labels", table("twice.csv", good + ["7.jpg,a"]), [],
         r"image listed twice with two labels: line 9 \(b\) and line 102 \(a\): 7\.jpg"),
        ("unknown split value", table("split.csv", [f"{i}.jpg,{('a', 'b')[i % 2]},{'holdout' if i == 3 else 'train'}"
                                                    for i in range(40)], header="image,label,split"), [],
         r"unknown value in split column 'split': line 5: 'holdout'"),
        ("empty label", table("empty.csv", good[:20] + ["50.jpg,"]), [], r"empty label: line 22"),
        ("0-byte table", table("zero.csv", [], text=""), [], r"the table is empty \(0 bytes\)"),
        ("unknown group column", table("group.csv", good[:20]), ["--group-column", "patient"],
         r"no column 'patient' \(--group-column\)"),
    ]


def test_hostile_tables_exit_2_with_one_message_and_write_nothing(tmp_path, capsys, monkeypatch):
    store_root = tmp_path / "data"
    monkeypatch.setenv("BIOTUNE_DATA", str(store_root))
    failures = []
    for name, table, extra, pattern in _hostile(tmp_path):
        run_dir = tmp_path / "never"
        code = main(["search", *TINY, "--dataset", str(table), "--run-dir", str(run_dir), *extra])
        err = capsys.readouterr().err
        import re

        ok = (code == 2 and "Traceback" not in err and err.count("biotune: error:") == 1 and re.search(pattern, err)
              and not run_dir.exists() and not any(p.name.endswith("px") or "px-" in p.name
                                                   for p in store_root.rglob("*") if p.is_dir()))
        if not ok:
            failures.append((name, code, err[-600:]))
    assert not failures, failures


def test_semicolon_table_with_bom_is_read(tmp_path):
    root = tmp_path / "bom"
    for i in range(20):
        _image(root / f"{i}.png", i)
    text = "\ufeffimage;label\n" + "".join(f"{i}.png;{('a', 'b')[i % 2]}\n" for i in range(20))
    (root / "t.csv").write_text(text, encoding="utf-8")
    ds = _load(root / "t.csv")
    assert ds.classes == ("a", "b") and len(ds.y_train) + len(ds.y_test) == 20


def test_skip_unreadable_drops_the_files_with_one_warning(tmp_path, caplog):
    root = tmp_path / "s"
    _class_tree(root, 0, per_class=10)
    (root / "cat" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(BioTuneError, match="broken.png: cannot read image"):
        _load(root)
    ds = _load(root, skip_unreadable=True)
    assert len(ds.y_train) + len(ds.y_test) == 20 and ds.report["skipped"]["count"] == 1
    assert sum("1 unreadable file(s) skipped" in r.getMessage() for r in caplog.records) == 1


def test_dry_run_says_how_the_table_was_read(tmp_path, capsys):
    table = _ham(tmp_path / "ham")
    code = main(["search", *TINY, "--dataset", str(table), "--label-column", "dx", "--group-column", "lesion_id",
                 "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0
    assert "read as table" in out and "60 rows; image column 'image_id', label column 'dx'" in out
    assert "3 classes (train images): bkl" in out and "groups: 30 in column 'lesion_id'" in out
    assert "test: " in out and "carved from train: 20 %, stratified, lesion_id groups kept apart" in out


def _two_class_table(path: Path, image_column: str, n: int = 24) -> Path:
    """``n`` images beside a table ``image_column,label`` of them, classes a and b alternating."""
    rows = [f"{image_column},label"]
    for i in range(n):
        _image(path.parent / f"{i}.png", i)
        rows.append(f"{i}.png,{('a', 'b')[i % 2]}")
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.mark.slow
def test_predict_on_a_table_with_and_without_labels(tmp_path, capsys):
    root = tmp_path / "p"
    _two_class_table(root / "train.csv", "id")
    assert main(["search", *TINY, "--dataset", str(root / "train.csv"), "--image-column", "id",
                 "--run-dir", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    (root / "new.csv").write_text("id\n" + "".join(f"{i}.png\n" for i in range(5)))
    assert main(["predict", "--model", str(tmp_path / "run"), str(root / "new.csv"), "--image-column", "id",
                 "--out", str(tmp_path / "new.csv"), "--no-progress"]) == 0
    written = (tmp_path / "new.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in written[1:]] == [f"{i}.png" for i in range(5)]  # the rows' ids
    assert "accuracy" not in capsys.readouterr().out
    assert main(["predict", "--model", str(tmp_path / "run"), str(root / "train.csv"), "--image-column", "id",
                 "--out", str(tmp_path / "all.csv"), "--no-progress"]) == 0
    assert "accuracy (top-1) on the 24 labelled images" in capsys.readouterr().out


@pytest.mark.slow
def test_compare_reads_a_table(tmp_path, capsys):
    root = tmp_path / "c"
    _two_class_table(root / "t.csv", "file_name")
    out = tmp_path / "cmp"
    code = main(["compare", "--datasets", str(root / "t.csv"), "--methods", "ft", "--runs", "1", "--out", str(out),
                 "--model", "test_efficientnet", "--weights", "random", "--image-size", "16", "--epochs", "1",
                 "--no-progress"])
    assert code == 0, capsys.readouterr().err
    record = json.loads((out / "runs.jsonl").read_text().splitlines()[0])
    assert record["method"] == "ft" and 0.0 <= record["test_accuracy"] <= 1.0
    shutil.rmtree(out)


def test_run_directories_written_before_the_reading_options_still_resume():
    from biotune.config import RunConfig
    from biotune.pipeline import _comparable

    new = RunConfig().to_dict()
    old = json.loads(json.dumps(new))
    for key in ("image_column", "label_column", "split_column", "group_column", "image_root", "class_names",
                "skip_unreadable"):
        del old["data"][key]
    assert _comparable(old) == _comparable(new)
    changed = RunConfig().replace(data={"label_column": "dx"}).to_dict()
    assert _comparable(changed) != _comparable(old)


def test_metadata_without_labels_leaves_the_class_folders_in_charge(tmp_path, caplog):
    root = tmp_path / "captions"
    idents = _class_tree(root, 0, per_class=6)
    (root / "metadata.csv").write_text("file_name,text\n" + "".join(f"cat/{i}.png,a cat\n" for i in idents[:6]))
    ds = _load(root)
    assert ds.classes == ("cat", "dog") and sorted(_idents(ds.x_train) + _idents(ds.x_test)) == idents
    assert any("no label column" in r.getMessage() for r in caplog.records)
