"""The score of a run: top-1 or balanced accuracy, on preprocessed tensors in batches."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import BioTuneError

__all__ = ["METRICS", "score", "evaluate_accuracy"]


METRICS = ("top1", "balanced")


def score(predicted: torch.Tensor, y: torch.Tensor, metric: str = "top1") -> float:
    """``top1``: share of correct predictions; ``balanced``: mean per-class recall over the
    classes present in ``y`` (scikit-learn's ``balanced_accuracy_score``), for imbalanced data.

    Example:
        >>> y, predicted = torch.tensor([0, 0, 0, 1]), torch.tensor([0, 0, 0, 0])
        >>> score(predicted, y, "top1"), score(predicted, y, "balanced")
        (0.75, 0.5)
    """
    if metric not in METRICS:
        raise BioTuneError(f"`metric` must be one of {', '.join(METRICS)}, got {metric!r}")
    if len(y) == 0:
        return 0.0
    correct = predicted == y
    if metric == "top1":
        return int(correct.sum()) / len(y)
    n = int(y.max()) + 1
    support = torch.bincount(y, minlength=n)
    hits = torch.bincount(y[correct], minlength=n)
    present = support > 0
    return float((hits[present].double() / support[present].double()).mean())


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512, *, forward=None,
                      metric: str = "top1") -> float:
    """Accuracy (``metric``: top-1 or balanced) of ``model`` (put in eval mode) on preprocessed tensors.

    ``forward`` replaces ``model`` as the callable (e.g. a compiled or autocast wrapper).
    """
    model.eval()
    forward = model if forward is None else forward
    predicted = [forward(x[start : start + batch_size]).argmax(1) for start in range(0, len(x), batch_size)]
    return score(torch.cat(predicted) if predicted else y[:0], y, metric)
