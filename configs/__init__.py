"""Typed settings for the pipelines: dataclasses with defaults that work, loadable from YAML."""

from .base import add_arguments, from_args, load_yaml, to_dict
from .frames import FramesConfig
from .predict import PredictConfig
from .reconstruct import ReconstructConfig
from .single import SingleConfig

__all__ = [
    "FramesConfig",
    "PredictConfig",
    "ReconstructConfig",
    "SingleConfig",
    "add_arguments",
    "from_args",
    "load_yaml",
    "to_dict",
]
