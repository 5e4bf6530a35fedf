"""Hostile input through the command line: one clear message naming the input, exit 2, nothing written.

Every case of the reliability issue's table, plus inputs that look odd but are valid and must
load. Files that would run code when unpickled must be refused without running anything.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image

from biotune.cli import main

TINY = ["--model", "test_efficientnet", "--weights", "random", "--image-size", "16", "--epochs", "1",
        "--patience", "1", "--population", "4", "--elites", "1", "--generations", "0", "--seeds", "1",
        "--final-runs", "1", "--top-k", "1", "--batch-size", "64", "--no-progress"]


class _Evil:
    """Unpickling this creates the file ``marker``: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _folder(root: Path, *, classes=("a", "b"), per_class: int = 6) -> Path:
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(np.full((12, 12, 3), 40 * i, np.uint8)).save(root / c / f"{i}.png")
    return root


def _npz(path: Path, **over) -> Path:
    rng = np.random.default_rng(0)
    y = np.tile(np.arange(3), 20)
    arrays = dict(x_train=rng.integers(0, 255, (60, 8, 8), dtype=np.uint8), y_train=y,
                  x_test=rng.integers(0, 255, (9, 8, 8), dtype=np.uint8), y_test=np.tile(np.arange(3), 3),
                  classes=np.array(["a", "b", "c"]))
    arrays.update(over)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def _cases(tmp: Path, marker: Path):
    """(name, extra CLI arguments, command, pattern the message must match)."""
    corrupt = _folder(tmp / "corrupt")
    (corrupt / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    zero = _folder(tmp / "zero")
    (zero / "a" / "empty.png").write_bytes(b"")
    empty_class = _folder(tmp / "emptyclass")
    (empty_class / "c").mkdir()
    x60 = np.zeros((60, 8, 8), np.uint8)
    torch.save(timm.create_model("resnet18").state_dict(), tmp / "r18.pth")
    whole = (tmp / "r18.pth").read_bytes()
    (tmp / "truncated.pth").write_bytes(whole[: len(whole) // 2])
    with open(tmp / "evil.pth", "wb") as fh:
        pickle.dump({"conv_stem.weight": _Evil(marker)}, fh)
    np.savez(tmp / "evil.npz", x_train=np.array([_Evil(marker)], dtype=object), y_train=np.array([0]),
             x_test=np.zeros((1, 2, 2), np.uint8), y_test=np.array([0]), classes=np.array(["a", "b"]))
    (tmp / "a_file").write_text("not a directory")
    best = {"genes": [0.6] * 6, "threshold": 0.5, "model": {"name": "resnet50", "weights": "random", "granularity": "stage"},
            "blocks": [{"name": n} for n in ["conv1+bn1", "layer1", "layer2", "layer3", "layer4", "fc"]]}
    best_other = {**best, "model": {**best["model"], "name": "test_efficientnet"}}
    (tmp / "best_blocks.json").write_text(json.dumps(best_other))
    resnet_names = ["conv1+bn1", "layer1", "layer2", "layer3", "layer4", "layer5", "fc"]  # 7, as test_efficientnet
    (tmp / "best_resnet.json").write_text(json.dumps({**best_other, "genes": [0.6] * 7,
                                                      "blocks": [{"name": n} for n in resnet_names]}))
    s = "search"
    return [
        ("ImageFolder with a corrupt image", ["--dataset", str(corrupt)], s, r"broken\.jpg: cannot read image"),
        ("ImageFolder with a 0-byte image", ["--dataset", str(zero)], s, r"empty\.png: cannot read image"),
        ("ImageFolder with an empty class folder", ["--dataset", str(empty_class)], s, r"emptyclass/c: empty class folder"),
        (".npz images not uint8", ["--dataset", str(_npz(tmp / "f32.npz", x_train=x60.astype(np.float32)))], s,
         r"f32\.npz.*must be uint8"),
        (".npz with NaN values", ["--dataset", str(_npz(tmp / "nan.npz", x_train=np.full((60, 8, 8), np.nan)))], s,
         r"nan\.npz.*NaN"),
        (".npz with mismatched x/y lengths", ["--dataset", str(_npz(tmp / "len.npz", y_train=np.zeros(7, int)))], s,
         r"len\.npz.*60 images but 7 labels"),
        (".npz labels not 0..K-1", ["--dataset", str(_npz(tmp / "lab.npz", y_train=np.tile([0, 1, 2, 7], 15)))], s,
         r"lab\.npz.*labels must be in 0\.\.2"),
        (".npz missing keys", ["--dataset", str(_npz(tmp / "keys.npz", classes=None))], s, r"keys\.npz: missing array.*classes"),
        ("corrupt .npz", ["--dataset", str(tmp / "a_file")], s, r"a_file"),
        ("single-class dataset", ["--dataset", str(_npz(tmp / "one.npz", classes=np.array(["only"]),
                                                        y_train=np.zeros(60, int), y_test=np.zeros(9, int)))], s,
         r"one\.npz.*at least 2 classes"),
        ("class with fewer samples than folds", ["--dataset", str(_npz(tmp / "few.npz", y_train=np.r_[np.zeros(29, int), np.ones(29, int), [2, 2]])),
                                                 "--fraction", "0.25"], s, r"few.*'c'.*fewer than"),
        ("weights of another architecture", ["--model", "resnet50", "--weights", str(tmp / "r18.pth")], s,
         r"r18\.pth.*do not fit model"),
        ("truncated weights file", ["--model", "resnet18", "--weights", str(tmp / "truncated.pth")], s,
         r"truncated\.pth.*cannot be read"),
        ("malicious .pth (pickled code)", ["--weights", str(tmp / "evil.pth")], s, r"evil\.pth.*(refused|cannot be read)"),
        ("malicious .npz (pickled code)", ["--dataset", str(tmp / "evil.npz")], s, r"evil\.npz.*refused"),
        ("--config from a different model", ["--config", str(tmp / "best_resnet.json")], "finetune",
         r"--config .*best_resnet\.json does not fit this model: block 0 is 'conv1\+bn1' there, 'conv_stem\+bn1' here"),
        ("--config with another block count", ["--config", str(tmp / "best_blocks.json")], "finetune",
         r"best_blocks\.json.*has 6 blocks but model 'test_efficientnet'"),
        ("unwritable --run-dir", ["--run-dir", str(tmp / "a_file" / "run")], s, r"--run-dir .*a_file/run.*cannot be written"),
        ("unreachable storage URL", ["--storage", "postgresql://alice:s3cr3t-pw@127.0.0.1:9/biotune"], s,
         r"--storage postgresql://alice:\*\*\*@127\.0\.0\.1:9/biotune"),
        ("storage in a missing directory", ["--storage", f"sqlite:///{tmp}/no/such/dir/study.db"], s, r"--storage sqlite:///.*study\.db"),
        ("--image-size 0", ["--image-size", "0"], s, r"image_size"),
        ("--batch-size -1", ["--batch-size", "-1"], s, r"batch_size"),
        ("--lr nan", ["--lr", "nan"], s, r"`lr`"),
        ("--epochs 0", ["--epochs", "0"], s, r"epochs"),
        ("--fraction 1.5", ["--fraction", "1.5"], s, r"fraction"),
        ("--elites >= --population", ["--elites", "4", "--population", "4"], s, r"elites.*\[1, population=4\)"),
        ("--cache-memory lots", ["--cache-memory", "lots"], s, r"cache_memory.*lots"),
        ("--workers 0", ["--executor", "processes", "--workers", "0"], s, r"workers"),
        ("unknown model", ["--model", "resnet5O"], s, r"unknown model"),
        ("unknown dataset", ["--dataset", "imagenet_foo"], s, r"unknown dataset"),
        ("missing dataset file", ["--dataset", str(tmp / "missing.npz")], s, r"missing\.npz.*does not exist"),
    ]


def test_hostile_inputs_give_one_clear_error_exit_2_and_write_nothing(tmp_path, capsys):
    marker = tmp_path / "code-ran"
    cases = _cases(tmp_path, marker)
    clean, failures = [], []
    for name, extra, command, pattern in cases:
        run_dir = tmp_path / "never"
        args = [command, *(TINY if command == "search" else ["--no-progress"])]
        if command == "search" and "--run-dir" not in extra:
            args += ["--run-dir", str(run_dir)]
        code = main([*args, *extra])
        err = capsys.readouterr().err
        ok = (code == 2 and "Traceback" not in err and err.count("biotune: error:") == 1
              and re.search(pattern, err) and "s3cr3t-pw" not in err and not run_dir.exists())
        assert not marker.exists(), f"{name}: unpickling ran code"
        if ok:
            clean.append(name)
        else:
            failures.append((name, code, err[-500:]))
    assert not failures, failures
    assert len(clean) == len(cases) >= 31
    print(f"{len(clean)} hostile inputs, {len(clean)} clean errors")


def test_odd_but_valid_image_folder_loads_through_the_cli(tmp_path, capsys, caplog):
    """Grayscale, RGBA, palette and 16-bit images mixed, a README in a class folder, nested subfolders."""
    root = tmp_path / "odd"
    rng = np.random.default_rng(1)
    for c in ("cat", "dog", "fox"):
        (root / c / "sub" / "deeper").mkdir(parents=True)
        for i in range(10):
            arr = rng.integers(0, 255, (14, 18, 3), dtype=np.uint8)
            img = Image.fromarray(arr)
            variants = [img, img.convert("L"), img.convert("RGBA"), img.convert("P"),
                        Image.fromarray(arr[..., 0].astype(np.uint16) * 257)]
            where = [root / c, root / c / "sub", root / c / "sub" / "deeper"][i % 3]
            variants[i % len(variants)].save(where / f"{i}.png")
        (root / c / "README.md").write_text("# notes, not an image")
    code = main(["search", *TINY, "--dataset", str(root), "--run-dir", str(tmp_path / "run")])
    assert code == 0, capsys.readouterr().err
    best = json.loads((tmp_path / "run" / "best.json").read_text())
    assert best["num_classes"] == 3 and 0.0 <= best["test_accuracy_mean"] <= 1.0
    assert "README.md" in caplog.text
