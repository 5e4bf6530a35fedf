"""The fine-tuned model: saved in timm's layout, loaded by timm alone, predictions, exports,
and clean refusals of bad input."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file

import biotune
from biotune.cli import main
from biotune.data.dataset import load_dataset

pytestmark = pytest.mark.slow  # kills, resumes, clusters and whole searches

TINY = ["--dataset", "digits", "--model", "test_efficientnet", "--weights", "random", "--image-size", "16",
        "--epochs", "2", "--patience", "2", "--population", "3", "--elites", "1", "--generations", "1",
        "--seeds", "1", "--final-runs", "2", "--top-k", "2", "--batch-size", "64", "--no-progress"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("delivery") / "run"
    assert main(["search", *TINY, "--run-dir", str(path)]) == 0
    return path


@pytest.fixture(scope="module")
def digits_test(tmp_path_factory) -> Path:
    ds = load_dataset("digits")
    path = tmp_path_factory.mktemp("digits") / "digits_test.npz"
    np.savez(path, x_test=ds.x_test, y_test=ds.y_test, classes=np.array(ds.classes))
    return path


def _kept_run(run_dir: Path) -> dict:
    best = json.loads((run_dir / "best.json").read_text())
    chosen = next(c for c in best["candidates"] if c["chosen"])
    genes = chosen["genes"] + [chosen["threshold"]]
    runs = [r for r in json.loads((run_dir / "final_runs.json").read_text()) if r["genes"] == genes]
    return max(runs, key=lambda r: r["val_accuracy"])


def test_search_saves_the_best_final_run_in_timm_layout(run_dir):
    model_dir = run_dir / "model"
    assert {p.name for p in model_dir.iterdir()} == {"model.safetensors", "config.json", "README.md"}
    assert not (run_dir / "final_weights").exists()  # the candidates' weights are cleaned up
    config = json.loads((model_dir / "config.json").read_text())
    assert config["architecture"] == "test_efficientnet" and config["num_classes"] == 10
    assert config["label_names"] == [str(i) for i in range(10)]
    cfg = config["pretrained_cfg"]
    assert cfg["input_size"] == [3, 16, 16] and cfg["interpolation"] == "bilinear" and len(cfg["mean"]) == 3
    kept = _kept_run(run_dir)
    assert config["biotune"]["seed"] == kept["seed"]
    assert config["biotune"]["metrics"]["test_accuracy"] == kept["test_accuracy"]
    card = (model_dir / "README.md").read_text()
    assert "digits" in card and "| block |" in card and "local-dir:" in card
    # plain timm, no BioTune: strict load of exactly the saved tensors
    model = timm.create_model(f"local-dir:{model_dir}", pretrained=True)
    saved = load_file(str(model_dir / "model.safetensors"))
    state = model.state_dict()
    assert set(saved) == set(state)
    assert all(torch.equal(saved[k], state[k]) for k in saved)


def test_a_timm_without_data_config_still_gets_the_preprocessing(run_dir, tmp_path, monkeypatch):
    """Older timm's save_for_hf takes no data_config (the GPU machine's did): the folder must still say
    how its images were prepared."""
    from biotune.models.artifact import ModelCard, save_model_dir

    real = timm.models.save_for_hf

    def older(model, save_directory, model_config=None, safe_serialization=False):
        return real(model, save_directory, model_config=model_config, safe_serialization=safe_serialization)

    monkeypatch.setattr(timm.models, "save_for_hf", older)
    card = ModelCard("test_efficientnet", tuple(str(i) for i in range(10)), 16, 16, (0.5,) * 3, (0.25,) * 3)
    folder = save_model_dir(tmp_path / "m", run_dir / "model" / "model.safetensors", card)
    cfg = json.loads((folder / "config.json").read_text())["pretrained_cfg"]
    assert cfg["input_size"] == [3, 16, 16] and cfg["interpolation"] == "bilinear" and cfg["crop_pct"] == 1.0


def test_predictions_reproduce_the_kept_runs_test_accuracy(run_dir, digits_test, tmp_path, capsys):
    kept = _kept_run(run_dir)
    model, preprocess, classes = biotune.load_model(run_dir)
    assert not model.training and classes == tuple(str(i) for i in range(10))
    assert preprocess(np.zeros((8, 8), np.uint8)).shape == (1, 3, 16, 16)
    p = biotune.predict(run_dir, [digits_test], top_k=3)
    assert p.accuracy == kept["test_accuracy"]
    assert p.indices.shape == (360, 3) and (np.diff(p.probabilities, axis=1) <= 0).all()
    out = tmp_path / "pred.csv"
    assert main(["predict", "--model", str(run_dir), str(digits_test), "--top-k", "2", "--out", str(out),
                 "--no-progress"]) == 0
    assert f"{100 * kept['test_accuracy']:.2f}%" in capsys.readouterr().out
    lines = out.read_text().splitlines()
    assert lines[0] == "path,label,probability,label_2,probability_2" and len(lines) == 361


def test_predict_on_an_imagefolder_scores_it_and_skips_non_images(run_dir, tmp_path, capsys, caplog):
    ds = load_dataset("digits")
    root = tmp_path / "folder"
    for label in (3, 7):
        (root / str(label)).mkdir(parents=True)
        for i in np.flatnonzero(ds.y_test == label)[:4]:
            Image.fromarray(ds.x_test[i, ..., 0]).resize((24, 24)).save(root / str(label) / f"{i}.png")
    (root / "3" / "notes.txt").write_text("not an image")
    out = tmp_path / "p.csv"
    assert main(["predict", "--model", str(run_dir / "model"), str(root), "--out", str(out), "--no-progress"]) == 0
    assert "accuracy (top-1) on the 8 labelled images" in capsys.readouterr().out
    assert len(out.read_text().splitlines()) == 9
    assert "notes.txt" in caplog.text


def test_finetune_saves_its_model_too(run_dir, tmp_path):
    target = tmp_path / "ft" / "model"
    assert main(["finetune", "--config", str(run_dir / "best.json"), "--dataset", "digits", "--runs", "1",
                 "--epochs", "1", "--image-size", "16", "--weights", "random", "--no-progress",
                 "--model-dir", str(target)]) == 0
    assert (target / "model.safetensors").is_file()
    assert timm.create_model(f"local-dir:{target}", pretrained=True).num_classes == 10
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_a_finished_run_rerun_keeps_its_model_and_trains_nothing(run_dir, capsys):
    model_file = run_dir / "model" / "model.safetensors"
    before = (model_file.stat().st_mtime_ns, (run_dir / "final_runs.json").read_text())
    assert main(["search", *TINY, "--run-dir", str(run_dir)]) == 0
    assert (model_file.stat().st_mtime_ns, (run_dir / "final_runs.json").read_text()) == before


def _need_onnxruntime():
    if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnxscript") is None:
        if os.environ.get("CI") or os.environ.get("BIOTUNE_REQUIRE_SHARED") == "1":
            pytest.fail("onnxruntime/onnxscript are required in CI (pip install -e '.[dev]')")
        pytest.skip("onnxruntime or onnxscript is not installed (pip install 'biotune[export]')")


def test_onnx_export_matches_torch(run_dir, tmp_path, capsys):
    _need_onnxruntime()
    import onnxruntime

    out = tmp_path / "m.onnx"
    assert main(["export", "--model", str(run_dir), "--format", "onnx", "--out", str(out)]) == 0
    assert "same top-1" in capsys.readouterr().out
    loaded = biotune.load_model(run_dir)
    ds = load_dataset("digits")
    x = loaded.preprocess(ds.x_test[:16]).contiguous()
    with torch.inference_mode():
        ref = loaded.model(x).softmax(-1).numpy()
    got = torch.from_numpy(onnxruntime.InferenceSession(str(out)).run(None, {"input": x.numpy()})[0]).softmax(-1).numpy()
    assert (ref.argmax(-1) == got.argmax(-1)).all() and np.abs(ref - got).max() < 1e-3


def test_torchscript_export_matches_torch(run_dir, tmp_path):
    out = tmp_path / "m.pt"
    check = biotune.export_model(run_dir, "torchscript", out)
    assert out.is_file() and check.same_top1 and check.max_probability_difference < 1e-3
    scripted = torch.jit.load(str(out))
    x = biotune.load_model(run_dir).preprocess(np.zeros((16, 16, 3), np.uint8))
    assert scripted(x).shape == (1, 10)


def test_push_to_hub_goes_through_timm(run_dir, monkeypatch, capsys):
    calls = []

    def fake_push(model, repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return "https://huggingface.co/me/digits/commit/abc"

    monkeypatch.setattr("timm.models.push_to_hf_hub", fake_push)
    assert main(["export", "--model", str(run_dir), "--push-to-hub", "me/digits"]) == 0
    repo, kwargs = calls[0]
    assert repo == "me/digits" and kwargs["model_config"]["label_names"][0] == "0"
    assert kwargs["data_config"]["input_size"] == [3, 16, 16]

    def offline(model, repo_id, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr("timm.models.push_to_hf_hub", offline)
    assert main(["export", "--model", str(run_dir), "--push-to-hub", "me/digits"]) == 2
    assert "upload failed (ConnectionError: no network)" in capsys.readouterr().err


def _broken_copy(run_dir: Path, tmp_path: Path) -> Path:
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in (run_dir / "model").iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    from safetensors.torch import save_file

    state = load_file(str(bad / "model.safetensors"))
    state["classifier.weight"] = state["classifier.weight"][:7]  # weights of a 7-class head
    state["classifier.bias"] = state["classifier.bias"][:7]
    save_file(state, str(bad / "model.safetensors"))
    return bad


@pytest.mark.parametrize("case", ["no model", "mismatched weights", "unreadable image", "two channels",
                                  "missing input", "top-k 0", "export without action", "export mismatched"])
def test_hostile_inputs_to_predict_and_export(case, run_dir, tmp_path, capsys):
    out = tmp_path / "p.csv"
    good = str(run_dir)
    if case == "no model":
        args = ["predict", "--model", str(tmp_path / "nowhere"), str(tmp_path), "--out", str(out)]
        expect = "does not exist"
    elif case == "mismatched weights":
        args = ["predict", "--model", str(_broken_copy(run_dir, tmp_path)), str(tmp_path), "--out", str(out)]
        expect = "does not match its config.json"
    elif case == "unreadable image":
        (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
        args = ["predict", "--model", good, str(tmp_path / "broken.png"), "--out", str(out)]
        expect = "cannot read image"
    elif case == "two channels":
        np.savez(tmp_path / "x.npz", x=np.zeros((3, 8, 8, 2), np.uint8))
        args = ["predict", "--model", good, str(tmp_path / "x.npz"), "--out", str(out)]
        expect = "C in 1, 3 or 4"
    elif case == "missing input":
        args = ["predict", "--model", good, str(tmp_path / "absent.jpg"), "--out", str(out)]
        expect = "does not exist"
    elif case == "top-k 0":
        args = ["predict", "--model", good, str(tmp_path), "--top-k", "0", "--out", str(out)]
        expect = "--top-k must be at least 1"
    elif case == "export without action":
        args = ["export", "--model", good]
        expect = "give --format"
    else:
        args = ["export", "--model", str(_broken_copy(run_dir, tmp_path)), "--format", "torchscript"]
        expect = "does not match its config.json"
    assert main([*args, "--no-progress"] if args[0] == "predict" else args) == 2
    err = capsys.readouterr().err
    assert err.count("biotune: error:") == 1 and expect in err and "Traceback" not in err
    assert not out.exists()
