"""The engine's per-shape probes (:mod:`reproduce.depthwise_layout`, :mod:`reproduce.atrous_gemm`): two forms of one
operation timed against each other on this machine, and the modules rewritten where the probe chose the other form.

A verdict is kept for the process and on disk (:func:`probed`), so only the first engine built on a machine pays
for the timing (seconds per ResNet-101 engine: oneDNN's slow bf16 atrous kernels are what the probe times).
The file is one JSON object per machine kind under ``$XDG_CACHE_HOME/deeplab-repro/probes/`` (``~/.cache/...``),
named by a hash of the CPU (model, flags), the torch version and its CPU capability; ``$DEEPLAB_PROBE_CACHE``
names another folder, or ``off`` for none. Delete the file to have the probes measured again. A file that
cannot be read or written is left alone: the probes are then measured as without a cache.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reproduce import user_cache_dir

__all__ = ["median_ms_interleaved", "probe_cache_file", "probed", "replace_where_probed"]

PROBE_CACHE_ENV = "DEEPLAB_PROBE_CACHE"
CACHE_FORMAT = "deeplab-repro kernel probes v1"
MAX_CACHE_BYTES = 1 << 20  # a larger file is not ours (a full cache holds a few dozen verdicts: a few KB)
_MEMORY: dict[str, dict[str, Any]] = {}  # verdicts of this process, by probe name
_DISK: dict[Path, dict[str, dict[str, Any]]] = {}  # the cache files read by this process


@functools.cache
def machine() -> dict[str, Any]:
    """What a probe's verdict depends on besides the shape: the CPU, the torch build and its kernels."""
    cpu: dict[str, str] = {}
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                name, _, value = line.partition(":")
                name = name.strip()
                if name in ("vendor_id", "cpu family", "model", "model name", "stepping", "flags") and name not in cpu:
                    cpu[name] = " ".join(sorted(value.split())) if name == "flags" else value.strip()
                elif not line.strip() and cpu:
                    break  # the first processor's block
    return {"cpu": cpu or {"processor": platform.processor() or platform.machine()}, "machine": platform.machine(),
            "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def probe_cache_file() -> Path | None:
    """This machine's probe file (see the module's docstring); ``None`` with ``DEEPLAB_PROBE_CACHE=off``."""
    folder = os.environ.get(PROBE_CACHE_ENV)
    if folder is not None and folder.strip().lower() in ("off", "0", "none", ""):
        return None
    digest = hashlib.sha256(json.dumps(machine(), sort_keys=True).encode()).hexdigest()[:16]
    return (Path(folder).expanduser() if folder else user_cache_dir("probes")) / f"{digest}.json"


def _read(path: Path) -> dict[str, dict[str, Any]]:
    """The verdicts in ``path``; nothing where it is missing, too large, not strict JSON or not a probe file."""
    try:
        if path.stat().st_size > MAX_CACHE_BYTES:
            return {}
        data = json.loads(path.read_text(encoding="utf-8"), parse_constant=_no_constant)
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or not isinstance(data.get("probes"), dict):
        return {}
    return {k: v for k, v in data["probes"].items() if isinstance(v, dict)}


def _no_constant(name: str) -> Any:
    raise ValueError(f"not strict JSON: {name}")


def _write(path: Path, name: str, verdict: dict[str, Any]) -> None:
    """Add ``verdict`` to the file (read again first: another process may have added its own), atomically."""
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        probes = {**_read(path), name: verdict}
        text = json.dumps({"format": CACHE_FORMAT, "machine": machine(), "probes": probes}, indent=1, sort_keys=True,
                          allow_nan=False)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text + "\n")
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _DISK[path] = probes


def probed(kind: str, key: Sequence[Any], measure: Callable[[], dict[str, Any]],
           choices: tuple[str, ...]) -> dict[str, Any]:
    """The verdict of the probe ``kind`` (which includes its settings: margin, sizes) for ``key`` (the shape,
    dtype and thread count): from this process's memory, else from this machine's probe file, else ``measure()``
    (saved to both). A verdict carries ``choice`` (one of ``choices``) and ``source``: ``"measured"`` or
    ``"cache"``; the same dict is returned for the same probe within a process."""
    name = kind + " " + json.dumps([str(k) if isinstance(k, torch.dtype) else k for k in key])
    if name in _MEMORY:
        return _MEMORY[name]
    path = probe_cache_file()
    verdict: dict[str, Any] | None = None
    if path is not None:
        if path not in _DISK:
            _DISK[path] = _read(path)
        stored = _DISK[path].get(name)
        if stored is not None and stored.get("choice") in choices:
            verdict = {**stored, "source": "cache"}
    if verdict is None:
        verdict = {**measure(), "source": "measured"}
        if path is not None:
            _write(path, name, {k: v for k, v in verdict.items() if k != "source"})
    _MEMORY[name] = verdict
    return verdict


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
