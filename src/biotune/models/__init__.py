"""Models: a timm classifier with pretrained weights and a new head, cut into blocks (the
unit the search freezes or trains at one learning rate); the delivered fine-tuned model,
its predictions and exports. Builds on :mod:`biotune.data`."""

from .artifact import LoadedModel as LoadedModel
from .artifact import load_model as load_model
from .blocks import Block as Block
from .blocks import partition_model as partition_model
from .build import PretrainedModel as PretrainedModel
from .build import build_model as build_model
from .export import export_model as export_model
from .predict import Predictions as Predictions
from .predict import predict as predict
from .export import push_to_hub as push_to_hub
from .predict import read_inputs as read_inputs
from .predict import write_predictions_csv as write_predictions_csv
