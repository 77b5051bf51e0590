"""Timing two forms of one operation against each other on this machine: the engine's per-shape probes
(:mod:`reproduce.depthwise_layout`, :mod:`reproduce.atrous_gemm`)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

__all__ = ["median_ms_interleaved"]


def median_ms_interleaved(runs: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """Call each of ``runs`` once untimed (oneDNN creates its primitives on the first call), then ``rounds`` timed
    rounds of one call each, the order reversed every other round; the median milliseconds of each. The caller
    sets the context (inference mode, autocast)."""
    for fn in runs.values():
        fn()
    names = list(runs)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            t0 = time.perf_counter()
            runs[name]()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(ts) for name, ts in times.items()}
