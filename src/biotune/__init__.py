"""BioTune: find which blocks of a pretrained classifier to fine-tune, and at what learning rate.

The public API; everything else is private. See the README for examples.
"""

from ._version import __version__ as __version__
from .artifact import LoadedModel as LoadedModel
from .artifact import load_model as load_model
from .baselines import BASELINES as BASELINES
from .baselines import baseline_plan as baseline_plan
from .baselines import lora_model as lora_model
from .config import PRESETS as PRESETS
from .config import STRATEGIES as STRATEGIES
from .config import DataConfig as DataConfig
from .config import ModelConfig as ModelConfig
from .config import RunConfig as RunConfig
from .config import RuntimeConfig as RuntimeConfig
from .config import SearchConfig as SearchConfig
from .config import TrainConfig as TrainConfig
from .data import ImageDataset as ImageDataset
from .data import SplitData as SplitData
from .data import load_dataset as load_dataset
from .data import preprocess as preprocess
from .data import split_dataset as split_dataset
from .engines import RandomSearch as RandomSearch
from .engines import TPESearch as TPESearch
from .engines import make_engine as make_engine
from .errors import BioTuneError as BioTuneError
from .evolution import MemeticEvolution as MemeticEvolution
from .export import export_model as export_model
from .final import FinalResult as FinalResult
from .final import Selection as Selection
from .fitness import FitnessEvaluator as FitnessEvaluator
from .genome import decode as decode
from .genome import full_finetune_genome as full_finetune_genome
from .models import Block as Block
from .models import build_model as build_model
from .models import partition_model as partition_model
from .pipeline import Configuration as Configuration
from .pipeline import RunResult as RunResult
from .pipeline import finetune as finetune
from .pipeline import load_configuration as load_configuration
from .pipeline import run as run
from .predict import Predictions as Predictions
from .predict import predict as predict
from .search import RankedConfiguration as RankedConfiguration
from .search import SearchListener as SearchListener
from .search import SearchResult as SearchResult
from .search import run_search as run_search
from .session import Compute as Compute
from .trainer import FineTuner as FineTuner
from .trainer import Regime as Regime
from .trainer import TrainResult as TrainResult
from .trainer import param_groups as param_groups
