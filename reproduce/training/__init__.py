"""Training as a package: config schema, distributed helpers, data pipeline, init weights, logging, loop, CLI.

``train_step`` is the one solver iteration both the training loop and ``benchmarks/training.py`` run.
"""

from __future__ import annotations

from .config import Config, ConfigError, apply_overrides, fingerprint, load_config, parse_config, to_dict
from .data import (
    AugmentedDataset,
    DeterministicBatchSampler,
    build_preprocessing,
    build_train_dataset,
    build_transform,
)
from .init_weights import build_model, load_init_weights
from .loop import StepResult, build_criterion, build_solver, train, train_step

__all__ = [
    "Config", "ConfigError", "apply_overrides", "fingerprint", "load_config", "parse_config", "to_dict",
    "AugmentedDataset", "DeterministicBatchSampler", "build_preprocessing", "build_train_dataset",
    "build_transform", "build_model", "load_init_weights", "StepResult", "build_criterion", "build_solver",
    "train", "train_step",
]
