"""The engine's per-shape probes (:mod:`reproduce.depthwise_layout`, :mod:`reproduce.atrous_gemm`): two forms of one
operation timed against each other on this machine, and the modules rewritten where the probe chose the other form."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Hashable
from typing import Any

from torch import nn

__all__ = ["median_ms_interleaved", "replace_where_probed"]


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


def replace_where_probed(net: nn.Module, candidate: Callable[[nn.Module], bool], key: Callable[[nn.Module], Hashable],
                         probe: Callable[[nn.Module], dict[str, Any]], choice: str,
                         replace: Callable[[nn.Module], nn.Module]) -> list[dict[str, Any]]:
    """Replace, in place, every ``candidate`` module of ``net`` whose ``probe`` (run once per distinct ``key``) says
    ``choice`` by ``replace(module)``; return the probes, one per key, each with ``modules``: how many were
    replaced (0 where the probe kept the original)."""
    probes: dict[Hashable, dict[str, Any]] = {}
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if not candidate(child):
                continue
            k = key(child)
            if k not in probes:
                probes[k] = {**probe(child), "modules": 0}
            if probes[k]["choice"] == choice:
                setattr(parent, name, replace(child))
                probes[k]["modules"] += 1
    return list(probes.values())
