"""One fine-tuning run (per-block parameter groups, frozen blocks in eval mode, the exact
frozen-prefix cache, early stopping), where runs are performed (in process, worker processes,
Ray) and what they cost (the measured time estimate). Builds on :mod:`biotune.models` and
:mod:`biotune.data`; hands :class:`RunRequest` → :class:`RunOutcome` to the search."""

from .groups import param_groups as param_groups
from .regime import Regime as Regime
from .session import Compute as Compute
from .session import RunOutcome as RunOutcome
from .session import RunRequest as RunRequest
from .session import Session as Session
from .session import SessionSpec as SessionSpec
from .trainer import FineTuner as FineTuner
from .trainer import TrainResult as TrainResult
from .estimate import format_seconds as format_seconds
from .executor import EXECUTORS as EXECUTORS
from .session import DeviceSplits as DeviceSplits
from .trainer import TrainerOptions as TrainerOptions
