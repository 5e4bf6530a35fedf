"""One baseline run on a prepared session: the model it needs (LoRA rebuilds it), its rates and
regime from its knobs, and the share of the model it trained (averaged over the epochs run).

Shared by the default baseline cells (:mod:`biotune.compare.grid`) and their tuning on
validation (:mod:`biotune.compare.tuned`), so a tuned run is the same run with other knobs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..config import RunConfig
from ..models.blocks import partition_model, trainable_percent
from ..models.build import build_model
from ..training.session import RunOutcome, RunRequest, Session
from ..training.trainer import FineTuner
from .baselines import Knobs, baseline_plan, lora_model, mean_trainable_share

__all__ = ["BaselineRun", "perform_baseline"]


@dataclass(frozen=True)
class BaselineRun:
    """A baseline run's outcome, the share of the model it trained (%), what the record adds."""

    outcome: RunOutcome
    trainable_percent: float
    details: dict


def perform_baseline(session: Session, config: RunConfig, method: str, knobs: Knobs, fold: int | None, seed: int,
                     *, kernels_only: bool = False) -> BaselineRun:
    """Train ``method`` with ``knobs`` on a search fold (``fold``) or on all training data (``None``)."""
    blocks, tuner, details = session.blocks, session.finetuner, {}
    base_lr, epochs = config.train.lr, config.train.epochs
    if method == "lora":
        pm = build_model(config.model.name, session.pretrained.num_classes, weights=config.model.weights,
                         seed=config.search.seed)
        lm = lora_model(pm.model, partition_model(pm.model, config.model.granularity, partition=config.model.partition),
                        knobs.rank, knobs.lora_alpha)
        # Every runtime option kept; the prefix cache off (its entries name the original model's weights).
        tuner = FineTuner(lm.model, lm.blocks, config.train, tuner.device,
                          dataclasses.replace(tuner.options, cache_memory=0, cache_dir=None))
        lrs, regime = lm.lrs(base_lr, knobs), None
        # Share of the original model: the adapters are parameters it did not have.
        shares = [100.0 * sum(b.num_params for b in lm.blocks[1:]) / sum(b.num_params for b in blocks)]
        details["lora_excluded"] = list(lm.excluded)
    else:
        setup = baseline_plan(method, tuner.model, blocks, tuner.initial_state, base_lr, knobs, epochs=epochs,
                              kernels_only=kernels_only)
        lrs, regime = setup.lrs, setup.regime
        masks = regime.masks if regime is not None and regime.masks else (setup.trainable,)
        shares = [trainable_percent(blocks, tuple(m and t for m, t in zip(mask, setup.trainable))) for mask in masks]
    outcome = session.perform(RunRequest(tuple(lrs), fold, seed), finetuner=tuner, regime=regime)
    return BaselineRun(outcome, mean_trainable_share(shares, outcome.epochs_run), details)
