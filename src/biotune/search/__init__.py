"""The search: genomes (which blocks train, at what learning rate), the strategies that propose
them (memetic, TPE, random), their fitness over folds × seeds, the Optuna study that stores
every evaluation, and the final top-k phase. Builds on :mod:`biotune.training`."""

from .engines import RandomSearch as RandomSearch
from .engines import TPESearch as TPESearch
from .engines import make_engine as make_engine
from .evolution import MemeticEvolution as MemeticEvolution
from .final import FinalResult as FinalResult
from .final import Selection as Selection
from .fitness import FitnessEvaluator as FitnessEvaluator
from .genome import decode as decode
from .genome import full_finetune_genome as full_finetune_genome
from .loop import RankedConfiguration as RankedConfiguration
from .loop import SearchListener as SearchListener
from .loop import SearchResult as SearchResult
from .loop import run_search as run_search
from .engines import STRATEGIES as STRATEGIES
from .engines import SearchStrategy as SearchStrategy
from .evolution import batch_sizes as batch_sizes
from .pruning import PRUNERS as PRUNERS
from .report import block_table as block_table
from .report import format_block_table as format_block_table
