"""The score of a run: top-1 or balanced accuracy, on preprocessed tensors in batches."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import BioTuneError

__all__ = ["METRICS", "Scored", "score", "evaluate", "evaluate_accuracy", "paired_gap"]


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


@dataclass(frozen=True)
class Scored:
    """A model scored on one split: the metric, the mean cross-entropy, and each image's predicted class."""

    accuracy: float
    loss: float
    predicted: torch.Tensor


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512, *, forward=None,
             metric: str = "top1") -> Scored:
    """Accuracy (``metric``), mean cross-entropy and predictions of ``model`` (put in eval mode) on
    preprocessed tensors: the loss breaks ties between equal accuracies and the predictions let two
    models be compared image by image (:func:`paired_gap`)."""
    model.eval()
    forward = model if forward is None else forward
    predicted, loss = [], 0.0
    for start in range(0, len(x), batch_size):
        logits = forward(x[start : start + batch_size]).float()
        loss += float(nn.functional.cross_entropy(logits, y[start : start + batch_size], reduction="sum"))
        predicted.append(logits.argmax(1))
    pred = torch.cat(predicted) if predicted else y[:0]
    return Scored(score(pred, y, metric), loss / max(1, len(y)), pred)


def paired_gap(a: torch.Tensor, b: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """How far model ``a`` is ahead of ``b`` in top-1 accuracy on the same images, and the standard
    error of that difference from the images they disagree on (paired, as McNemar's test): two
    models scored on one validation set share its sampling noise, so only the discordant images
    count.

    Example:
        >>> y = torch.tensor([0, 1, 1, 0])
        >>> gap, se = paired_gap(torch.tensor([0, 1, 1, 1]), torch.tensor([0, 1, 0, 0]), y)
        >>> gap, round(se, 3)
        (0.0, 0.354)
    """
    n = len(y)
    if n == 0:
        return 0.0, 0.0
    right_a, right_b = a.cpu() == y.cpu(), b.cpu() == y.cpu()
    only_a, only_b = int((right_a & ~right_b).sum()), int((right_b & ~right_a).sum())
    variance = max(0.0, only_a + only_b - (only_a - only_b) ** 2 / n)
    return (only_a - only_b) / n, math.sqrt(variance) / n


def evaluate_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512, *, forward=None,
                      metric: str = "top1") -> float:
    """Accuracy (``metric``: top-1 or balanced) of ``model`` (put in eval mode) on preprocessed tensors.

    ``forward`` replaces ``model`` as the callable (e.g. a compiled or autocast wrapper).
    """
    return evaluate(model, x, y, batch_size, forward=forward, metric=metric).accuracy
