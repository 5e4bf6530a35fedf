"""The comparison's tables: test accuracy mean (SE) and trainable share, as Markdown, CSV, LaTeX.

Pure functions of a list of finished runs ``{"dataset", "method", "run", "test_accuracy",
"trainable_percent", ...}``; :mod:`biotune.compare.grid` writes them to disk.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any, Sequence

from ..search.final import mean_and_se

__all__ = ["accuracy_table", "distance_table", "ft_reference", "trainable_table", "compute_table", "to_markdown", "to_csv", "to_latex", "Table"]

Table = dict[str, Any]  # {"columns": datasets, "rows": [(method, [cell...])], "bold": {(row, col)}, "footer": ...}


def _cells(runs: Sequence[dict], methods: Sequence[str], datasets: Sequence[str], key: str):
    """(mean, standard error, number of runs) per (method, dataset), or None without runs."""
    out = {}
    for m in methods:
        for d in datasets:
            values = [r[key] for r in runs if r["method"] == m and r["dataset"] == d]
            out[m, d] = (*mean_and_se(values), len(values)) if values else None
    return out


def accuracy_table(runs: Sequence[dict], methods: Sequence[str], datasets: Sequence[str]) -> Table:
    """Table I: test accuracy (%) mean (standard error) per method × dataset.

    The best mean of each dataset is marked bold; when both ``biotune`` and ``ft`` are in,
    a last row gives BioTune's relative gain over FT, 100·(BioTune − FT)/FT. A cell with
    fewer runs than the table's most says how many (one run has no standard error).
    """
    cells = _cells(runs, methods, datasets, "test_accuracy")
    rows = [(m, [None if cells[m, d] is None else (100 * cells[m, d][0], 100 * cells[m, d][1], cells[m, d][2])
                 for d in datasets]) for m in methods]
    bold = set()
    for j, d in enumerate(datasets):
        means = [(row[1][j][0], i) for i, row in enumerate(rows) if row[1][j] is not None]
        if means:
            top = max(v for v, _ in means)
            bold |= {(i, j) for v, i in means if v == top}
    footer = None
    if "biotune" in methods and "ft" in methods:
        gains = []
        for d in datasets:
            b, f = cells["biotune", d], cells["ft", d]
            gains.append(None if b is None or f is None or f[0] == 0 else 100 * (b[0] - f[0]) / f[0])
        footer = ("BioTune vs FT (relative gain, %)", gains)
    runs_max = max((c[2] for c in cells.values() if c is not None), default=0)
    return {"columns": list(datasets), "rows": rows, "bold": bold, "footer": footer, "kind": "mean_se",
            "runs": runs_max}


def ft_reference(methods: Sequence[str]) -> str | None:
    """The FT row the other methods are measured against: ``ft``, else ``ft (tuned)``."""
    return next((m for m in ("ft", "ft (tuned)") if m in methods), None)


def distance_table(runs: Sequence[dict], methods: Sequence[str], datasets: Sequence[str]) -> Table | None:
    """Each method's mean test accuracy minus FT's (points), per dataset; ``None`` without FT."""
    ref = ft_reference(methods)
    if ref is None:
        return None
    cells = _cells(runs, methods, datasets, "test_accuracy")
    rows = []
    for m in methods:
        if m == ref:
            continue
        rows.append((m, [None if cells[m, d] is None or cells[ref, d] is None
                         else 100 * (cells[m, d][0] - cells[ref, d][0]) for d in datasets]))
    return {"columns": list(datasets), "rows": rows, "bold": set(), "footer": None, "kind": "signed",
            "reference": ref}


def trainable_table(runs: Sequence[dict], methods: Sequence[str], datasets: Sequence[str]) -> Table:
    """Table II: trainable parameters (% of the model) per method × dataset (mean over runs)."""
    cells = _cells(runs, methods, datasets, "trainable_percent")
    rows = [(m, [None if cells[m, d] is None else cells[m, d][0] for d in datasets]) for m in methods]
    return {"columns": list(datasets), "rows": rows, "bold": set(), "footer": None, "kind": "value"}


def compute_table(runs: Sequence[dict], methods: Sequence[str], datasets: Sequence[str]) -> Table:
    """Compute per run (mean over runs): training runs, epochs, training images, train seconds and
    FTx, the training images over those of the FT cell on the same dataset.

    Searches and tuned methods count their search or tuning and their final run; a cell reads e.g.
    ``34 runs · 98 ep · 410.0k img · 120 s · 8.2 FTx``. Runs recorded before compute accounting existed show ``–``.
    """
    ref = ft_reference(methods)
    ft_images = {d: [r["compute"]["train_images"] for r in runs if r["method"] == ref and r["dataset"] == d
                     and "compute" in r] for d in datasets}
    rows = []
    for m in methods:
        cells = []
        for d in datasets:
            mine = [r["compute"] for r in runs if r["method"] == m and r["dataset"] == d and "compute" in r]
            if not mine:
                cells.append(None)
                continue
            mean = {k: sum(c[k] for c in mine) / len(mine) for k in ("training_runs", "epochs", "train_images",
                                                                      "train_seconds")}
            images = mean["train_images"]
            shown = f"{images / 1e6:.2f}M" if images >= 1e6 else f"{images / 1e3:.1f}k"
            ftx = (f" · {images / (sum(ft_images[d]) / len(ft_images[d])):.1f} FTx"
                   if ft_images[d] and sum(ft_images[d]) > 0 else "")
            cells.append(f"{mean['training_runs']:.0f} runs · {mean['epochs']:.0f} ep · "
                         f"{shown} img · {mean['train_seconds']:.0f} s{ftx}")
        rows.append((m, cells))
    return {"columns": list(datasets), "rows": rows, "bold": set(), "footer": None, "kind": "text"}


def _format(value, kind: str, runs: int = 0) -> str:
    if value is None:
        return "–"
    if kind == "text":
        return str(value)
    if kind == "signed":
        return f"{value:+.2f}"
    if kind == "mean_se":
        mean, se, n = value
        if n == 1 and runs > 1:
            return f"{mean:.2f} (1 run)"
        return f"{mean:.2f} ({se:.2f}{f'; {n} runs' if n < runs else ''})"
    return f"{value:.2f}" if math.isfinite(value) else "–"


def to_markdown(table: Table, *, corner: str = "method") -> str:
    head = f"| {corner} | " + " | ".join(table["columns"]) + " |"
    lines = [head, "|" + "---|" * (len(table["columns"]) + 1)]
    for i, (name, values) in enumerate(table["rows"]):
        cells = [_format(v, table["kind"], table.get("runs", 0)) for v in values]
        cells = [f"**{c}**" if (i, j) in table["bold"] else c for j, c in enumerate(cells)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if table["footer"]:
        label, gains = table["footer"]
        lines.append(f"| {label} | " + " | ".join("–" if g is None else f"{g:+.2f}" for g in gains) + " |")
    return "\n".join(lines) + "\n"


def to_csv(table: Table, *, corner: str = "method") -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    if table["kind"] == "mean_se":
        writer.writerow([corner] + [f"{d}_{part}" for d in table["columns"] for part in ("mean", "se", "runs")])
        for name, values in table["rows"]:
            writer.writerow([name] + [x for v in values for x in (
                ("", "", "") if v is None else (f"{v[0]:.4f}", f"{v[1]:.4f}" if v[2] > 1 else "", str(v[2])))])
    else:
        writer.writerow([corner] + table["columns"])
        for name, values in table["rows"]:
            writer.writerow([name] + ["" if v is None else _format(v, "text") if table["kind"] == "text" else f"{v:.4f}"
                                      for v in values])
    if table["footer"]:
        label, gains = table["footer"]
        pad = 3 if table["kind"] == "mean_se" else 1
        writer.writerow([label] + [x for g in gains for x in (["" if g is None else f"{g:.4f}"] + [""] * (pad - 1))])
    return buf.getvalue()


def _latex_escape(text: str) -> str:
    return text.replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")


def to_latex(table: Table, *, corner: str = "Method") -> str:
    cols = "l" + "c" * len(table["columns"])
    lines = [rf"\begin{{tabular}}{{{cols}}}", r"\hline",
             " & ".join([corner] + [_latex_escape(c) for c in table["columns"]]) + r" \\", r"\hline"]
    for i, (name, values) in enumerate(table["rows"]):
        cells = [_format(v, table["kind"], table.get("runs", 0)).replace("–", "--") for v in values]
        cells = [rf"\textbf{{{c}}}" if (i, j) in table["bold"] else c for j, c in enumerate(cells)]
        lines.append(" & ".join([_latex_escape(name)] + cells) + r" \\")
    if table["footer"]:
        label, gains = table["footer"]
        lines += [r"\hline", " & ".join([_latex_escape(label)] + ["--" if g is None else f"{g:+.2f}" for g in gains]) + r" \\"]
    lines += [r"\hline", r"\end{tabular}"]
    return "\n".join(lines) + "\n"
