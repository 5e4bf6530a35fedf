"""Outputs of a run: ``best.json``, ``history.csv``, the per-block heatmap, the convergence plot,
and the terminal summary. Files are written atomically (temporary file, then rename)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .._files import atomic_write_bytes, save_figure
from ..models.blocks import Block
from .genome import decode

__all__ = [
    "block_table",
    "write_history_csv",
    "plot_heatmap",
    "plot_convergence",
    "plot_race",
    "format_block_table",
]

SNOWFLAKE = "\u2744"


def block_table(blocks: Sequence[Block], genes: Sequence[float], base_lr: float) -> list[dict[str, Any]]:
    """Per-block configuration: name, trainable, LR multiplier S_b·W_b, LR, parameter count."""
    decoded = decode(np.asarray(genes), base_lr)
    return [
        {
            "name": b.name,
            "trainable": m,
            "lr_multiplier": mult,
            "lr": lr,
            "num_params": b.num_params,
            "gene": float(g),
        }
        for b, m, mult, lr, g in zip(blocks, decoded.mask, decoded.multipliers, decoded.lrs, genes)
    ]


def write_history_csv(path: str | Path, records, gene_names: Sequence[str]) -> None:
    """One row per evaluation: generation, slot, role, fold, fitness, accuracies, genes."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(
        ["generation", "slot", "role", "fold", "fitness", "accuracies", "seconds", "source", "trial", *gene_names]
    )
    for r in records:
        c, e = r.candidate, r.evaluation
        writer.writerow(
            [c.generation, c.slot, c.role, r.fold, f"{e.fitness:.6f}",
             " ".join(f"{a:.6f}" for a in e.accuracies), f"{e.seconds:.2f}", r.source,
             "" if r.trial_number is None else r.trial_number, *(f"{g:.6f}" for g in c.genes)]
        )
    atomic_write_bytes(path, buf.getvalue().encode())


def plot_heatmap(
    path: str | Path,
    block_names: Sequence[str],
    rows: Sequence[tuple[str, Sequence[float]]],
    *,
    title: str = "BioTune per-block learning-rate multipliers",
) -> None:
    """Heatmap of LR multipliers (rows × blocks) on a log scale 0.1–10; frozen blocks (0) get ❄.

    Args:
        block_names: column labels.
        rows: ``(label, multipliers)``; a multiplier of 0 marks a frozen block.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    values = np.array([[float(m) for m in mult] for _, mult in rows])
    masked = np.ma.masked_where(values <= 0, values)
    cmap = plt.get_cmap("viridis").with_extremes(bad="#d9d9d9")
    width = max(6.0, 0.55 * len(block_names) + 2.5)
    fig, ax = plt.subplots(figsize=(width, 1.2 + 0.6 * len(rows)))
    im = ax.imshow(masked, cmap=cmap, norm=LogNorm(vmin=0.1, vmax=10.0), aspect="auto")
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            if values[i, j] <= 0:
                ax.text(j, i, SNOWFLAKE, ha="center", va="center", fontsize=12, color="#1f4e79")
            else:
                ax.text(j, i, f"{values[i, j]:.2g}", ha="center", va="center", fontsize=7,
                        color="white" if values[i, j] < 1.5 else "black")
    ax.set_xticks(range(len(block_names)), labels=block_names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), labels=[label for label, _ in rows])
    ax.set_title(title, fontsize=10)
    cbar = fig.colorbar(im, ax=ax, pad=0.01)
    cbar.set_label(f"LR multiplier (log scale; {SNOWFLAKE} = frozen)")
    save_figure(fig, path)
    plt.close(fig)


def plot_convergence(path: str | Path, generations, *, title: str = "BioTune search convergence") -> None:
    """Best and mean population fitness per generation (Φ, lower is better)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gens = [s.generation for s in generations]
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    ax.plot(gens, [s.best for s in generations], "o-", label="best")
    ax.plot(gens, [s.mean for s in generations], "s--", label="population mean")
    ax.set_xlabel("generation (0 = initial population)")
    ax.set_ylabel("fitness Φ = 1 − mean val. accuracy")
    ax.set_xticks(gens)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title, fontsize=10)
    save_figure(fig, path)
    plt.close(fig)


def plot_race(path: str | Path, selection, *, title: str = "final race") -> None:
    """Each racer's validation accuracy per epoch; a cross where it was dropped, a star on the chosen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for i, c in enumerate(selection.candidates):
        curve = c.runs[0].val_accuracies
        name = c.label or f"#{i + 1}"
        line, = ax.plot(range(1, len(curve) + 1), curve, "o-", ms=3,
                        label=name + (" (chosen)" if i == selection.chosen else ""))
        if c.dropped_at is not None and curve:
            ax.plot([len(curve)], [curve[-1]], "x", ms=9, color=line.get_color())
        if i == selection.chosen and curve:
            ax.plot([c.runs[0].best_epoch], [c.runs[0].val_accuracy], "*", ms=12, color=line.get_color())
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    save_figure(fig, path)
    plt.close(fig)


def format_block_table(rows: Sequence[dict[str, Any]], *, total_params: int | None = None) -> str:
    """Plain-text table of a per-block configuration or partition."""
    total = total_params or sum(r["num_params"] for r in rows)
    has_cfg = "trainable" in rows[0] if rows else False
    width = max([len(r["name"]) for r in rows] + [5])
    head = f"{'#':>3}  {'block':<{width}}  {'params':>11}  {'share':>6}"
    if has_cfg:
        head += f"  {'state':<9}  {'LR mult.':>8}"
    lines = [head, "-" * len(head)]
    for i, r in enumerate(rows):
        line = f"{i:>3}  {r['name']:<{width}}  {r['num_params']:>11,}  {100 * r['num_params'] / total:>5.1f}%"
        if has_cfg:
            state = "trainable" if r["trainable"] else f"frozen {SNOWFLAKE}"
            mult = f"{r['lr_multiplier']:.3g}" if r["trainable"] else "-"
            line += f"  {state:<9}  {mult:>8}"
        lines.append(line)
    return "\n".join(lines)


