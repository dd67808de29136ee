"""Typed settings for the pipelines: dataclasses with defaults that work, loadable from YAML."""

from .base import add_arguments, from_args, load_yaml, to_dict
from .predict import PredictConfig
from .reconstruct import ReconstructConfig

__all__ = ["PredictConfig", "ReconstructConfig", "add_arguments", "from_args", "load_yaml", "to_dict"]
