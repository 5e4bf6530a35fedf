"""The paper's comparison: the baselines (FT, LP, L2-SP, gradual unfreezing, AutoRGN, LoRA),
the tuned competitors (ftlr, llrd, LP-FT), the grid of (dataset, method, run) cells and its
tables and figures. Builds on :mod:`biotune.search` and :mod:`biotune.training`."""

from .baselines import BASELINES as BASELINES
from .baselines import baseline_plan as baseline_plan
from .baselines import lora_model as lora_model
from .grid import CompareOptions as CompareOptions
from .grid import compare as compare
from .grid import METHODS as METHODS
from .grid import estimate_compare as estimate_compare
from .tuned import TUNED as TUNED
