"""``python -m reproduce.train``: the entry point of :mod:`reproduce.training` (see ``--help``)."""

from __future__ import annotations

import sys

from reproduce.losses import SegmentationLoss
from reproduce.training import (
    AugmentedDataset,
    ConfigError,
    DeterministicBatchSampler,
    apply_overrides,
    build_model,
    build_preprocessing,
    build_train_dataset,
    build_transform,
    load_config,
    load_init_weights,
    train,
    train_step,
)
from reproduce.training.cli import main

__all__ = ["ConfigError", "AugmentedDataset", "DeterministicBatchSampler", "SegmentationLoss", "apply_overrides",
           "build_model", "build_preprocessing", "build_train_dataset", "build_transform", "load_config",
           "load_init_weights", "train", "train_step", "main"]

if __name__ == "__main__":
    sys.exit(main())
