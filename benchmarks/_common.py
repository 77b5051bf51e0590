"""Shared pieces of the benchmark suites: environment record, file naming, timing, peak memory, JSON.

Timing contract: :func:`time_iterations` runs ``fn`` ``warmup`` times untimed, then times
each further call on its own (``time.perf_counter`` around the call on CPU; a pair of CUDA
events and a synchronise on GPU, so queued kernels are counted) until it has at least
``repeats`` samples *and* ``min_seconds`` of them, or ``max_seconds`` have passed (never
fewer than 3 samples). :func:`summarize` reduces samples to median and IQR (seconds).

Peak memory contract (:class:`PeakMemory`): on CUDA ``torch.cuda.max_memory_allocated``
after ``reset_peak_memory_stats`` (tensors only, the caching allocator's slack excluded);
on CPU the process's resident-set high-water mark ``VmHWM``, reset before the measured
block by writing ``5`` to ``/proc/self/clear_refs`` (Linux >= 4.0), so each configuration
gets its own peak. The CPU figure is the *whole process* (interpreter, torch, the model's
weights); ``peak_above_start_bytes`` subtracts the RSS at the start of the block.
"""

from __future__ import annotations

import os
import platform
import re
import statistics
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from benchmarks._measure import cpu_description, cpu_isa, cpu_model, git_info, proc_status_bytes
from converters.io import write_json_atomic

REPO = Path(__file__).resolve().parent.parent
DEFAULT_RESULTS_DIR = REPO / "results" / "benchmarks"
SCHEMA_VERSION = 1

PRECISIONS = ("fp32", "bf16", "fp16")
MEMORY_FORMATS = ("contiguous", "channels_last")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# ---- environment ---------------------------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU raises ``ValueError``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but torch.cuda.is_available() is False "
                         f"(torch {torch.__version__}, built with CUDA {torch.version.cuda})")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    """``torch.cuda.get_device_name`` on GPU, the CPU model and its vector ISA otherwise (``AMD EPYC [AVX2]``)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_description()


def environment(device: torch.device) -> dict[str, Any]:
    """Where the numbers came from: versions, device, threads, load, commit."""
    import numpy

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = None
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": device.type,
        "device_name": device_name(device),
        "cpu_model": cpu_model(),
        "cpu_isa": cpu_isa(),
        # the kernels torch's CPU build dispatches to here (DEFAULT, AVX2, AVX512, ...)
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "mkldnn": torch.backends.mkldnn.is_available(),
        # the process's fp32 math settings (TF32 on CUDA); the fp32 rows themselves run IEEE fp32 (autocast_for)
        "float32_math": _float32_math(),
        # other users of the machine show up here; a loaded machine gives slower, noisier numbers
        "loadavg_at_start": load,
        "git": git_info(),
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["gpu_memory_bytes"] = props.total_memory
        env["gpu_capability"] = f"{props.major}.{props.minor}"
        env["cudnn_benchmark"] = torch.backends.cudnn.benchmark
    return env


def _float32_math() -> dict[str, Any]:
    from reproduce.inference import float32_math_state

    return {**float32_math_state(), "fp32_rows": "IEEE fp32, TF32 off (reproduce.inference.float32_math)"}


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")[:40] or "unknown"


def result_filename(suite: str, env: dict[str, Any], *, quick: bool) -> str:
    """``<suite>-<device>-<device name>-torch<ver>-<threads>t-<commit7>[-quick].json`` (named by its environment)."""
    commit = (env.get("git") or {}).get("commit") or "nogit"
    dirty = "+dirty" if (env.get("git") or {}).get("dirty") else ""
    parts = [suite, env["device"], _slug(env["device_name"]), "torch" + _slug(env["torch"]),
             f"{env['torch_threads']}t", commit[:7] + dirty]
    return "-".join(parts) + ("-quick" if quick else "") + ".json"


def write_result(record: dict[str, Any], out: Path | None, out_dir: Path, *, quick: bool) -> Path:
    """Write ``record`` atomically to ``out`` or ``out_dir/<result_filename>``; return the path."""
    path = out or out_dir / result_filename(record["suite"], record["environment"], quick=quick)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, record)
    return path


def skipped(reason: str, **config: Any) -> dict[str, Any]:
    """A grid point that was not run, and why (recorded, never silently dropped)."""
    return {**config, "status": "skipped", "reason": reason}


def failed(exc: BaseException, **config: Any) -> dict[str, Any]:
    """A grid point that raised; the message is kept so the report can show it."""
    msg = f"{type(exc).__name__}: {exc}".strip()
    return {**config, "status": "error", "error": msg[:2000]}


# ---- timing --------------------------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_iterations(fn: Callable[[], Any], device: torch.device, *, warmup: int, repeats: int,
                    min_seconds: float = 0.0, max_seconds: float = float("inf")) -> list[float]:
    """Seconds per call of ``fn`` (see the module docstring for the stopping rule)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    samples: list[float] = []
    start = time.perf_counter()
    while True:
        if device.type == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(begin.elapsed_time(end) / 1000.0)
        else:
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
        spent = time.perf_counter() - start
        if len(samples) >= 3 and spent >= max_seconds:
            break
        if len(samples) >= repeats and spent >= min_seconds:
            break
    return samples


def summarize(samples: Iterable[float]) -> dict[str, Any]:
    """Median, quartiles, IQR, mean, min, max (seconds) and the count of ``samples``."""
    xs = sorted(samples)
    if not xs:
        raise ValueError("no samples")
    if len(xs) >= 2:
        q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    else:
        q1 = q3 = xs[0]
    return {"median_s": statistics.median(xs), "q1_s": q1, "q3_s": q3, "iqr_s": q3 - q1,
            "mean_s": statistics.fmean(xs), "min_s": xs[0], "max_s": xs[-1], "n": len(xs)}


# ---- memory --------------------------------------------------------------------------------------------------------


def _reset_rss_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


class PeakMemory:
    """Context manager measuring the peak memory of its block; read :attr:`record` afterwards."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.record: dict[str, Any] = {}

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            self._reset = _reset_rss_peak()
            self._start = proc_status_bytes("VmRSS")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
            self.record = {"method": "torch.cuda.max_memory_allocated", "peak_bytes": peak,
                           "peak_above_start_bytes": peak - self._start}
        else:
            peak = proc_status_bytes("VmHWM")
            method = "VmHWM (whole-process peak RSS, reset via /proc/self/clear_refs)" if self._reset else \
                "VmHWM (whole-process peak RSS since process start: clear_refs unavailable)"
            self.record = {"method": method, "peak_bytes": peak,
                           "peak_above_start_bytes": None if peak is None or self._start is None
                           else peak - self._start}


# ---- precision / layout --------------------------------------------------------------------------------------------


def precision_skip_reason(precision: str, device: torch.device) -> str | None:
    """Why ``precision`` cannot run on ``device`` in these harnesses (``None`` if it can)."""
    if precision not in PRECISIONS:
        return f"unknown precision {precision!r}"
    if precision == "fp16" and device.type != "cuda":
        return "fp16 autocast is measured on CUDA only (CPU fp16 convolutions are not a deployment target)"
    if precision == "bf16" and device.type == "cuda":
        from reproduce.inference import cuda_native_bf16

        if not cuda_native_bf16(device)[0]:
            return "this GPU has no native bf16 (needs sm80+)"
    return None


@contextmanager
def autocast_for(precision: str, device: torch.device):
    """fp32: IEEE fp32 (TF32 off for convolutions and matmuls on a GPU, :func:`reproduce.inference.float32_math`);
    bf16/fp16: ``torch.autocast`` on ``device`` with that dtype."""
    if precision == "fp32":
        from reproduce.inference import float32_math

        with float32_math("fp32"):
            yield
    else:
        with torch.autocast(device_type=device.type, dtype=DTYPES[precision]):
            yield


def torch_memory_format(name: str) -> torch.memory_format:
    return {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}[name]


def parse_list(text: str | None, *, choices: Iterable[str] | None = None, what: str = "value") -> list[str] | None:
    """``"a,b"`` -> ``["a", "b"]`` (``None`` stays ``None``); unknown choices raise ``ValueError``."""
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    if choices is not None:
        bad = [t for t in items if t not in set(choices)]
        if bad:
            raise ValueError(f"unknown {what}(s) {bad}; choose from {sorted(set(choices))}")
    return items


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``"321,513,1024x2048"`` -> ``[(321, 321), (513, 513), (1024, 2048)]`` (height x width)."""
    sizes = []
    for item in parse_list(text) or []:
        h, _, w = item.lower().partition("x")
        try:
            sizes.append((int(h), int(w or h)))
        except ValueError:
            raise ValueError(f"bad size {item!r}: use N or HxW") from None
    return sizes


def size_label(size: tuple[int, int] | list[int]) -> str:
    h, w = size
    return str(h) if h == w else f"{h}x{w}"

