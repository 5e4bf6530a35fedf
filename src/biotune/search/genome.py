"""Genome decoding: genes → freeze mask, importance weights, per-block learning rates.

A genome for a model of B+1 blocks is ``ν = [ν_0 .. ν_B, ε_f]`` with every gene in [0, 1].
Block b is trainable iff ``ν_b > ε_f``; its importance weight is ``W_b = 10^(2(ν_b − 0.5))``
(in [0.1, 10]) and its learning rate ``λ_b = S_b · W_b · λ⁰``. Pure numpy: no torch, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import BioTuneError

__all__ = [
    "gene_for",
    "baseline_genome",
    "warm_start_genomes",
    "WARM_START",
    "check_initial",
    "leading_frozen_distribution",
    "Decoded",
    "importance_weights",
    "trainable_mask",
    "learning_rates",
    "decode",
    "check_genome",
    "is_valid",
    "repair",
    "random_genome",
    "full_finetune_genome",
]

# Smallest step used when a repair lowers the threshold under the largest block gene.
_REPAIR_EPS = 1e-6


def importance_weights(block_genes: np.ndarray) -> np.ndarray:
    """W_b = 10^(2(ν_b − 0.5)): 0.1 at ν=0, 1 at ν=0.5, 10 at ν=1."""
    return 10.0 ** (2.0 * (np.asarray(block_genes, dtype=float) - 0.5))


def trainable_mask(genome: np.ndarray) -> np.ndarray:
    """S_b: True where the block gene exceeds the threshold gene (the last gene)."""
    genome = np.asarray(genome, dtype=float)
    return genome[:-1] > genome[-1]


def learning_rates(genome: np.ndarray, base_lr: float) -> np.ndarray:
    """λ_b = S_b · W_b · λ⁰ (0 for a frozen block)."""
    genome = np.asarray(genome, dtype=float)
    return np.where(trainable_mask(genome), importance_weights(genome[:-1]) * base_lr, 0.0)


@dataclass(frozen=True)
class Decoded:
    """What a genome means for training.

    Attributes:
        mask: per-block trainable flags S_b.
        weights: per-block importance weights W_b (defined for frozen blocks too).
        lrs: per-block learning rates λ_b (0 where frozen).
        threshold: the freeze threshold ε_f.
    """

    mask: tuple[bool, ...]
    weights: tuple[float, ...]
    lrs: tuple[float, ...]
    threshold: float

    @property
    def multipliers(self) -> tuple[float, ...]:
        """Effective LR multipliers S_b · W_b."""
        return tuple(w if m else 0.0 for m, w in zip(self.mask, self.weights))

    def key(self) -> tuple:
        """Hashable identity of the training configuration (mask and learning rates)."""
        return (self.mask, self.lrs)


def check_genome(genome: np.ndarray, n_blocks: int | None = None) -> np.ndarray:
    """Return ``genome`` as a float array after checking shape and range.

    Raises:
        BioTuneError: wrong length, a gene outside [0, 1] or not finite.
    """
    arr = np.asarray(genome, dtype=float)
    if arr.ndim != 1 or arr.size < 2:
        raise BioTuneError(f"a genome needs at least one block gene and a threshold, got shape {arr.shape}")
    if n_blocks is not None and arr.size != n_blocks + 1:
        raise BioTuneError(
            f"a genome for {n_blocks} blocks has {n_blocks + 1} genes (blocks + threshold), got {arr.size}"
        )
    if not np.all(np.isfinite(arr)) or arr.min() < 0.0 or arr.max() > 1.0:
        raise BioTuneError(f"genes must be finite and in [0, 1], got {arr.tolist()}")
    return arr


def decode(genome: np.ndarray, base_lr: float) -> Decoded:
    """Decode a valid genome into mask, weights and learning rates.

    Raises:
        BioTuneError: the genome is malformed or freezes every block.
    """
    arr = check_genome(genome)
    if not is_valid(arr):
        raise BioTuneError(
            f"invalid genome: the threshold {arr[-1]:.4f} freezes every block "
            f"(largest block gene {arr[:-1].max():.4f})"
        )
    mask = trainable_mask(arr)
    return Decoded(
        mask=tuple(bool(m) for m in mask),
        weights=tuple(float(w) for w in importance_weights(arr[:-1])),
        lrs=tuple(float(x) for x in learning_rates(arr, base_lr)),
        threshold=float(arr[-1]),
    )


def is_valid(genome: np.ndarray, *, head: bool = False) -> bool:
    """A genome is valid when at least one block is trainable, and, with ``head``, the last
    block (the classifier head) is one of them."""
    mask = trainable_mask(genome)
    return bool(mask[-1] if head else mask.any())


def repair(genome: np.ndarray, *, head: bool = False) -> np.ndarray:
    """Make an invalid genome valid; a valid genome is returned unchanged.

    All frozen: the smallest change, unfreeze the largest gene (the threshold is lowered just
    under it, or, when that gene is 0, the gene is raised just over a zero threshold).

    With ``head``, a frozen head gene ν ∈ [0, ε_f] is reflected into (ε_f, 1] by the linear map
    ν ↦ 1 − ν(1 − ε_f)/ε_f, which sends U[0, ε_f] to U[ε_f, 1]: the head's learning rate is
    then distributed as it is among the genomes that train the head, instead of piling up
    just above the threshold (the smallest change would set the head's LR multiplier to
    10^(2(ε_f − 0.5)), the lowest any trainable head can have).
    """
    arr = np.array(genome, dtype=float)
    if head:
        if arr[-1] >= 1.0:
            arr[-1] = 1.0 - _REPAIR_EPS
        if arr[-2] <= arr[-1]:
            arr[-2] = 1.0 - arr[-2] * (1.0 - arr[-1]) / arr[-1] if arr[-1] > 0 else _REPAIR_EPS
            arr[-2] = max(arr[-2], min(1.0, arr[-1] + _REPAIR_EPS))
        assert is_valid(arr, head=True)
        return arr
    if is_valid(arr):
        return arr
    top = int(np.argmax(arr[:-1]))
    if arr[top] > _REPAIR_EPS:
        arr[-1] = arr[top] - _REPAIR_EPS
    else:
        arr[-1] = 0.0
        arr[top] = _REPAIR_EPS
    assert is_valid(arr)
    return arr


def random_genome(rng: np.random.Generator, n_blocks: int, *, head: bool = False) -> np.ndarray:
    """Draw every gene from U[0, 1], re-sampling until the genome is valid (see :func:`is_valid`)."""
    while True:
        genome = rng.random(n_blocks + 1)
        if is_valid(genome, head=head):
            return genome


def full_finetune_genome(n_blocks: int) -> np.ndarray:
    """The genome of plain full fine-tuning: every block trainable at multiplier 1."""
    return np.concatenate([np.full(n_blocks, 0.5), [0.0]])


def gene_for(multiplier: float) -> float:
    """The gene whose importance weight is ``multiplier`` (the inverse of W = 10^(2(ν − 0.5)))."""
    if not 0.1 <= multiplier <= 10.0:
        raise BioTuneError(f"`multiplier` must be in [0.1, 10] (the genome's range), got {multiplier}")
    return 0.5 + float(np.log10(multiplier)) / 2.0


def baseline_genome(n_blocks: int, multiplier: float, *, last: int | None = None) -> np.ndarray:
    """The genome of a practitioner's baseline inside the genome space: the last ``last`` blocks
    (all of them when None: full fine-tuning) trainable at base LR × ``multiplier``, the others
    frozen (gene 0, threshold half way up)."""
    g = gene_for(multiplier)
    last = n_blocks if last is None else last
    if not 1 <= last <= n_blocks:
        raise BioTuneError(f"`last` must be in [1, {n_blocks}], got {last}")
    genes = np.zeros(n_blocks)
    genes[n_blocks - last:] = g
    return np.concatenate([genes, [0.0 if last == n_blocks else g / 2]])


# The warm start's portfolio, best first: what a practitioner would try, inside the genome
# space. Chosen from the measured tuned-LR baseline (benchmarks/results/reproduction, `ftlr`):
# over 4 datasets x 3 runs its validation chose base LR x4.6 (4.6e-3) 9 times and x2.2 the
# other 3 (of 1e-4 ... 1e-2); the third entry keeps x4.6 but freezes the first half of the
# blocks (what a practitioner tries next on a small dataset).
WARM_START: tuple[tuple[str, float, float | None], ...] = (
    ("FT x4.6", 10 ** (2 / 3), None),
    ("FT x2.2", 10 ** (1 / 3), None),
    ("last half x4.6", 10 ** (2 / 3), 0.5),
)


def warm_start_genomes(n_blocks: int, count: int) -> list[tuple[str, np.ndarray]]:
    """The first ``count`` configurations of :data:`WARM_START`, named, for a model of ``n_blocks``."""
    out = []
    for name, multiplier, share in WARM_START[: max(0, count)]:
        last = None if share is None else max(1, int(round(n_blocks * share)))
        out.append((name, baseline_genome(n_blocks, multiplier, last=last)))
    return out


def check_initial(initial, n_blocks: int, first_batch: int, *, head: bool = False) -> tuple[np.ndarray, ...]:
    """Validate the genomes that open the first batch (the warm start): valid, and at most a third of it."""
    initial = tuple(np.asarray(g, dtype=float) for g in initial)
    if len(initial) > first_batch // 3:
        raise BioTuneError(f"the warm start may fill at most a third of the first batch ({first_batch // 3} of "
                           f"{first_batch}), got {len(initial)} configurations")
    for g in initial:
        if g.shape != (n_blocks + 1,) or not is_valid(g, head=head):
            raise BioTuneError(f"a warm-start genome must be a valid genome of {n_blocks + 1} genes, got {g.tolist()}")
    return initial


def leading_frozen_distribution(n_blocks: int, *, head: bool = False, draws: int = 4000) -> dict[int, float]:
    """Share of the prior's genomes (:func:`random_genome`) whose first ``d`` blocks are frozen,
    ``{d: share}``: what a search's runs cost depends on it (a frozen prefix is read from the
    cache and gets no backward pass). Drawn with a fixed generator, so always the same."""
    rng = np.random.default_rng(0)
    counts: dict[int, int] = {}
    for _ in range(draws):
        mask = trainable_mask(random_genome(rng, n_blocks, head=head))
        depth = int(np.argmax(mask))
        counts[depth] = counts.get(depth, 0) + 1
    return {d: c / draws for d, c in sorted(counts.items())}
