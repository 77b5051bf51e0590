"""Generated peer checkpoints for the importer tests: the peers' exact key names and shapes, random values."""

from __future__ import annotations

from collections.abc import Mapping

import torch


def random_state(manifest: Mapping[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """He-scaled weights, random non-default BatchNorm statistics (so epsilon matters), as a peer's file holds them."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in manifest.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(1000, dtype=torch.long)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=gen) + 0.5
        elif key.endswith(("running_mean", "bias")):
            state[key] = torch.randn(shape, generator=gen) * 0.2
        elif len(shape) == 1:  # BatchNorm gamma
            state[key] = torch.rand(shape, generator=gen) * 0.7 + 0.3
        else:
            fan_in = 1
            for d in shape[1:]:
                fan_in *= d
            state[key] = torch.randn(shape, generator=gen) * (2.0 / fan_in) ** 0.5
    return state


def cheap_state(manifest: Mapping[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Right names and shapes, one stored element each (a zero expanded): tiny files for the error tests."""
    return {k: (torch.zeros((), dtype=torch.long) if k.endswith("num_batches_tracked")
                else torch.zeros(()).expand(shape)) for k, shape in manifest.items()}
