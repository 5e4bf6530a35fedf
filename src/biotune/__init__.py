"""BioTune: find which blocks of a pretrained classifier to fine-tune, and at what learning rate.

The public API; everything else is private. See the README for examples.
"""

from ._version import __version__ as __version__
from .compare.baselines import BASELINES as BASELINES
from .compare.baselines import baseline_plan as baseline_plan
from .compare.baselines import lora_model as lora_model
from .config import PRESETS as PRESETS
from .config import STRATEGIES as STRATEGIES
from .config import DataConfig as DataConfig
from .config import ReadOptions as ReadOptions
from .config import ModelConfig as ModelConfig
from .config import RunConfig as RunConfig
from .config import RuntimeConfig as RuntimeConfig
from .config import SearchConfig as SearchConfig
from .config import TrainConfig as TrainConfig
from .data.dataset import ImageDataset as ImageDataset
from .data.dataset import SplitData as SplitData
from .data.dataset import load_dataset as load_dataset
from .data.dataset import preprocess as preprocess
from .data.dataset import split_dataset as split_dataset
from .errors import BioTuneError as BioTuneError
from .models.artifact import LoadedModel as LoadedModel
from .models.artifact import load_model as load_model
from .models.blocks import Block as Block
from .models.blocks import partition_model as partition_model
from .models.build import build_model as build_model
from .models.export import export_model as export_model
from .models.predict import Predictions as Predictions
from .models.predict import predict as predict
from .pipeline import Configuration as Configuration
from .pipeline import RunResult as RunResult
from .pipeline import finetune as finetune
from .pipeline import load_configuration as load_configuration
from .pipeline import run as run
from .results import FinetuneOutcome as FinetuneOutcome
from .results import SearchOutcome as SearchOutcome
from .search.engines import RandomSearch as RandomSearch
from .search.engines import TPESearch as TPESearch
from .search.engines import make_engine as make_engine
from .search.evolution import MemeticEvolution as MemeticEvolution
from .search.final import FinalResult as FinalResult
from .search.final import Selection as Selection
from .search.fitness import FitnessEvaluator as FitnessEvaluator
from .search.genome import decode as decode
from .search.genome import full_finetune_genome as full_finetune_genome
from .search.loop import RankedConfiguration as RankedConfiguration
from .search.loop import SearchListener as SearchListener
from .search.loop import SearchResult as SearchResult
from .search.loop import run_search as run_search
from .training.groups import param_groups as param_groups
from .training.regime import Regime as Regime
from .training.session import Compute as Compute
from .training.trainer import FineTuner as FineTuner
from .training.trainer import TrainerOptions as TrainerOptions
from .training.trainer import TrainResult as TrainResult
