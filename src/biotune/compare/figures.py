"""The comparison's figure of accuracy against compute (``compare_cost.png``)."""

from __future__ import annotations

from pathlib import Path

from .._files import save_figure

__all__ = ["plot_cost"]


def plot_cost(path: str | Path, points: dict[str, dict[str, tuple[float, float]]], *, metric: str = "top1") -> None:
    """Accuracy against compute: one panel per dataset, one marker per method.

    Args:
        points: ``{dataset: {method: (training images processed, test accuracy %)}}`` (means over runs).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, len(points))
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.6), squeeze=False)
    markers = "osD^v<>pP*Xh"
    methods = sorted({m for per in points.values() for m in per})
    for ax, (dataset, per) in zip(axes[0], points.items()):
        for i, method in enumerate(methods):
            if method in per:
                x, y = per[method]
                ax.scatter([max(x, 1.0)], [y], marker=markers[i % len(markers)], s=45, label=method)
        ax.set_xscale("log")
        ax.set_xlabel("training images processed (log scale)")
        ax.set_ylabel(f"test accuracy, {metric} (%)")
        ax.set_title(dataset, fontsize=10)
        ax.grid(alpha=0.3, which="both")
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.suptitle("Accuracy against compute (search and final runs included)", fontsize=10)
    save_figure(fig, path)
    plt.close(fig)
