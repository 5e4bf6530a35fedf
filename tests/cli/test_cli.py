import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from biotune.cli import main

TINY = ["--model", "test_efficientnet", "--weights", "random", "--image-size", "16", "--epochs", "1",
        "--patience", "1", "--population", "4", "--elites", "1", "--generations", "1", "--seeds", "1",
        "--final-runs", "1", "--top-k", "2", "--batch-size", "64", "--no-progress"]


@pytest.mark.slow
def test_end_to_end_search_on_real_data_then_finetune(usps_path, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = main(["search", "--dataset", str(usps_path), "--run-dir", str(run_dir), *TINY,
                 "--population", "3", "--epochs", "2", "--seeds", "2", "--final-runs", "2"])
    out = capsys.readouterr().out
    assert code == 0
    for name in ("config.json", "study.db", "best.json", "history.csv", "heatmap.png", "convergence.png"):
        assert (run_dir / name).is_file(), name
    best = json.loads((run_dir / "best.json").read_text())
    for key in ("genes", "threshold", "blocks", "fitness", "test_accuracy_mean", "test_accuracy_se", "trainable_percent"):
        assert key in best
    assert {"name", "trainable", "lr_multiplier", "num_params"} <= set(best["blocks"][0])
    assert len(best["genes"]) == len(best["blocks"]) == 7
    assert 0.0 < best["test_accuracy_mean"] <= 1.0 and best["test_accuracy_se"] >= 0
    assert 0 < best["trainable_percent"] <= 100
    rows = (run_dir / "history.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 3 + (3 + 2)  # header, init, elite+2 exploits+2 offspring
    config = json.loads((run_dir / "config.json").read_text())
    assert config["search"]["population"] == 3 and config["resolved"]["n_folds"] == 2
    assert "test accuracy" in out and "blocks.0" in out

    # the saved configuration applies to another dataset
    code = main(["finetune", "--config", str(run_dir / "best.json"), "--dataset", "digits", "--runs", "1",
                 "--epochs", "1", "--no-progress", "--output", str(tmp_path / "ft.json")])
    assert code == 0
    ft = json.loads((tmp_path / "ft.json").read_text())
    assert ft["dataset"] == "digits" and 0 <= ft["test_accuracy_mean"] <= 1

    # rerunning the same command resumes: nothing is trained again, same result
    code = main(["search", "--dataset", str(usps_path), "--run-dir", str(run_dir), *TINY,
                 "--population", "3", "--epochs", "2", "--seeds", "2", "--final-runs", "2"])
    assert code == 0
    assert json.loads((run_dir / "best.json").read_text()) == best
    assert ",trained," not in (run_dir / "history.csv").read_text()


def test_blocks_command_json_and_table(capsys):
    assert main(["blocks", "--model", "resnet50", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [b["name"] for b in doc["blocks"]] == ["conv1+bn1", "layer1", "layer2", "layer3", "layer4", "fc"]
    assert math.isclose(sum(b["share"] for b in doc["blocks"]), 1.0)
    assert main(["blocks", "--model", "resnet50", "--granularity", "block"]) == 0
    out = capsys.readouterr().out
    assert "18 blocks" in out and "layer4.2" in out


def _npz(path, y_train):
    x = np.zeros((len(y_train), 8, 8), np.uint8)
    np.savez(path, x_train=x, y_train=np.asarray(y_train), x_test=x[:4], y_test=np.zeros(4, int),
             classes=np.array(["a", "b", "c"]))
    return str(path)


def _bad_inputs(tmp: Path):
    (tmp / "corrupt.npz").write_bytes(b"PK\x03\x04 garbage")
    torch.save(timm.create_model("resnet18").state_dict(), tmp / "r18.pth")
    return [
        (["--model", "resnet5O"], "unknown model"),
        (["--dataset", "imagenet_foo"], "unknown dataset"),
        (["--dataset", str(tmp / "missing.npz")], "does not exist"),
        (["--dataset", str(tmp / "corrupt.npz")], "corrupt.npz"),
        (["--dataset", _npz(tmp / "labels.npz", [0, 1, 2, 5] * 5)], "labels must be in 0..2"),
        (["--dataset", _npz(tmp / "small.npz", [0] * 20 + [1] * 20 + [2] * 3), "--fraction", "0.25"], "fewer than"),
        (["--model", "resnet50", "--weights", str(tmp / "r18.pth")], "do not fit model"),
        (["--weights", str(tmp / "nope.pth")], "does not exist"),
        (["--elites", "4", "--population", "4"], r"elites.*\[1, population=4\)"),
        (["--fraction", "0"], "fraction"),
        (["--fraction", "1.5"], "fraction"),
        (["--epochs", "0"], "epochs"),
        (["--epochs", "-3"], "epochs"),
        (["--image-size", "0"], "image_size"),
        (["--batch-size", "-1"], "batch_size"),
        (["--lr", "nan"], "lr"),
    ]


def test_bad_inputs_give_one_clear_error_exit_2_and_no_run_dir(tmp_path, capsys):
    for extra, match in _bad_inputs(tmp_path):
        run_dir = tmp_path / "never"
        args = ["search", *TINY, "--run-dir", str(run_dir), *extra]
        code = main(args)
        err = capsys.readouterr().err
        assert code == 2, (extra, err)
        assert "Traceback" not in err
        assert re.search(match, err), (extra, err)
        assert not run_dir.exists(), extra


def test_bad_option_choice_is_an_argparse_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["search", *TINY, "--run-dir", str(tmp_path / "never"), "--granularity", "layer"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "invalid choice" in err and "Traceback" not in err
    assert not (tmp_path / "never").exists()


def test_existing_run_dir_with_other_settings_is_not_overwritten(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"model": {"name": "x"}, "data": {}, "train": {}, "search": {}}))
    before = (run_dir / "config.json").read_text()
    assert main(["search", *TINY, "--run-dir", str(run_dir)]) == 2
    assert "other settings" in capsys.readouterr().err
    assert (run_dir / "config.json").read_text() == before and sorted(p.name for p in run_dir.iterdir()) == ["config.json"]


def test_finetune_config_from_another_model_is_refused(tmp_path, capsys):
    doc = {"genes": [0.6] * 6, "threshold": 0.5, "model": {"name": "resnet50", "weights": "random", "granularity": "stage"},
           "blocks": [{"name": n} for n in ["conv1+bn1", "layer1", "layer2", "layer3", "layer4", "fc"]]}
    doc["model"]["name"] = "test_efficientnet"
    (tmp_path / "other.json").write_text(json.dumps(doc))
    assert main(["finetune", "--config", str(tmp_path / "other.json"), "--no-progress"]) == 2
    assert "has 6 blocks but model 'test_efficientnet'" in capsys.readouterr().err
    (tmp_path / "frozen.json").write_text(json.dumps({**doc, "threshold": 0.9}))
    assert main(["finetune", "--config", str(tmp_path / "frozen.json"), "--no-progress"]) == 2
    assert "freezes every block" in capsys.readouterr().err
