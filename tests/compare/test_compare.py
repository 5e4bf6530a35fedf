"""`biotune compare`: the tables on known numbers, and a resumable grid that never repeats a run."""

from __future__ import annotations

import json

import pytest

from biotune.cli import main
from biotune.compare.tables import accuracy_table, to_csv, to_latex, to_markdown, trainable_table

RUNS = [
    {"dataset": "a", "method": "ft", "run": 0, "test_accuracy": 0.80, "trainable_percent": 100.0},
    {"dataset": "a", "method": "ft", "run": 1, "test_accuracy": 0.90, "trainable_percent": 100.0},
    {"dataset": "a", "method": "biotune", "run": 0, "test_accuracy": 0.90, "trainable_percent": 40.0},
    {"dataset": "a", "method": "biotune", "run": 1, "test_accuracy": 0.96, "trainable_percent": 60.0},
    {"dataset": "b", "method": "ft", "run": 0, "test_accuracy": 0.50, "trainable_percent": 100.0},
]


def test_accuracy_table_mean_se_bold_and_gain_on_known_numbers():
    table = accuracy_table(RUNS, ["ft", "biotune"], ["a", "b"])
    ft_a, bio_a = table["rows"][0][1][0], table["rows"][1][1][0]
    assert ft_a == pytest.approx((85.0, 5.0, 2))  # mean 0.85, SE = std(ddof=1)/sqrt(2) = 0.0707/1.414 = 0.05
    assert bio_a == pytest.approx((93.0, 3.0, 2))
    assert table["rows"][1][1][1] is None  # biotune has no run on b
    assert table["bold"] == {(1, 0), (0, 1)}
    label, gains = table["footer"]
    assert gains[0] == pytest.approx(100 * (93 - 85) / 85) and gains[1] is None
    md = to_markdown(table)
    assert "| biotune | **93.00 (3.00)** | – |" in md and "+9.41" in md
    assert "| ft | 85.00 (5.00) | **50.00 (1 run)** |" in md  # one run: no standard error to show
    assert "ft,85.0000,5.0000,2,50.0000,,1" in to_csv(table)
    assert r"\textbf{93.00 (3.00)}" in to_latex(table)


def test_trainable_table_is_the_mean_share():
    table = trainable_table(RUNS, ["ft", "biotune"], ["a"])
    assert table["rows"][1][1][0] == pytest.approx(50.0)


TINY = ["--model", "test_efficientnet", "--weights", "random", "--image-size", "16", "--epochs", "1",
        "--patience", "1", "--population", "3", "--elites", "1", "--generations", "1", "--seeds", "1",
        "--batch-size", "64", "--no-progress"]


@pytest.mark.slow
def test_compare_writes_tables_and_figures_and_resumes_without_repeating(tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", "--datasets", "digits", "--runs", "2", "--out", str(out), *TINY]
    assert main([*args, "--methods", "ft,lp"]) == 0
    first = (out / "runs.jsonl").read_text().splitlines()
    assert len(first) == 4
    assert main([*args, "--methods", "ft,lp,l2sp,gfl,autorgn,lora,biotune,random,tpe"]) == 0, capsys.readouterr().err
    lines = (out / "runs.jsonl").read_text().splitlines()
    assert lines[:4] == first  # the finished ft and lp runs were kept, not repeated
    records = [json.loads(line) for line in lines]
    keys = [(r["dataset"], r["method"], r["run"]) for r in records]
    assert len(keys) == len(set(keys)) == 18
    for r in records:
        assert 0.0 <= r["test_accuracy"] <= 1.0 and 0.0 < r["trainable_percent"] <= 100.0
    by = {(r["method"], r["run"]): r for r in records}
    assert by["lp", 0]["trainable_percent"] < by["lora", 0]["trainable_percent"] < by["ft", 0]["trainable_percent"] == 100.0
    for name in ("table1_accuracy.md", "table1_accuracy.csv", "table1_accuracy.tex", "table2_trainable.md",
                 "table4_compute.md", "fig2_heatmap.png", "convergence-digits-biotune-run0.png",
                 "convergence-digits-random-run1.png"):
        assert (out / name).is_file(), name
    for r in records:  # every method states its compute; a search counts its search and its final runs
        c = r["compute"]
        assert c["training_runs"] >= 1 and c["epochs"] >= c["training_runs"] and c["train_images"] > 0
        if r["method"] in ("biotune", "random", "tpe"):
            search = r["search_compute"]
            assert c["training_runs"] == search["training_runs"] + len(r["candidates"])
            assert r["selected_by"] == "validation"
            best = max(r["candidates"], key=lambda x: x["val_accuracy"])
            assert r["val_accuracy"] == best["val_accuracy"] and r["genes"] == best["genes"]
    assert "BioTune vs FT" in (out / "table1_accuracy.md").read_text()
    before = (out / "runs.jsonl").read_text()
    assert main([*args, "--methods", "ft,biotune"]) == 0  # everything done: nothing retrained
    assert (out / "runs.jsonl").read_text() == before


@pytest.mark.slow
def test_compare_fractions_write_table3(tmp_path):
    out = tmp_path / "cmp"
    assert main(["compare", "--datasets", "digits", "--methods", "ft", "--runs", "1", "--out", str(out),
                 "--fractions", "0.5,1.0", *TINY]) == 0
    table = (out / "table3_fractions.md").read_text()
    assert "| 0.5 |" in table and "| 1 |" in table and "–" not in table
    fractions = [json.loads(line).get("fraction") for line in (out / "runs.jsonl").read_text().splitlines()]
    assert sorted(f for f in fractions if f is not None) == [0.5, 1.0]


def test_compare_refuses_unknown_methods(tmp_path, capsys):
    assert main(["compare", "--datasets", "digits", "--methods", "ft,magic", "--out", str(tmp_path / "x"), *TINY]) == 2
    assert "unknown method(s) magic" in capsys.readouterr().err
