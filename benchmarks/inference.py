"""The ``inference`` suite: latency, throughput, peak memory, FLOPs and fraction of the machine's ceiling.

For every grid point (model x input size x batch x precision x memory format x
torch.compile) the model runs ``forward`` under ``torch.inference_mode`` on a random
NCHW fp32 input (normalisation and data loading excluded, as mmsegmentation's
benchmark does) with random weights in eval mode. Precision ``bf16``/``fp16`` means
``torch.autocast`` with that dtype; the input and weights stay fp32.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` on one fp32 forward
(convolutions and matmuls only; BN, ReLU and interpolation are not counted). The
*ceiling* is the best FLOP/s of several kernels in the precision's dtype and the run's thread
count: square matmuls of several sizes and the convolution shapes the DeepLab models spend
their time in (channels_last, as the engine runs them), timed in the same run with the same
timer, at the start and again at the end of the run, and again whenever a model point beats
it; if a model still beats the re-measured kernels, the model's own rate becomes the ceiling
(recorded as such). So ``ceiling_fraction`` = (FLOPs / median latency) / ceiling FLOP/s is
never above 1.

The ``engine`` suite (plain eager against the inference engine, every model) is in

:mod:`benchmarks.engine`. Points that cannot run on the device (fp16 on CPU, ...) are recorded as skipped with
the reason; points that raise are recorded with the error.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from benchmarks._common import (
    DTYPES,
    PeakMemory,
    autocast_for,
    failed,
    precision_skip_reason,
    size_label,
    skipped,
    summarize,
    synchronize,
    time_iterations,
    torch_memory_format,
)


@dataclass(frozen=True)
class Timing:
    """How long each grid point is measured (see ``benchmarks._common.time_iterations``)."""

    warmup: int = 2
    repeats: int = 10
    min_seconds: float = 2.0
    max_seconds: float = 60.0


@dataclass(frozen=True)
class Grid:
    """The grid of one inference run (every combination is a point)."""

    models: tuple[str, ...]
    sizes: tuple[tuple[int, int], ...]
    batches: tuple[int, ...]
    precisions: tuple[str, ...]
    memory_formats: tuple[str, ...]
    compiles: tuple[bool, ...]
    num_classes: int = 21


@dataclass(frozen=True)
class Peer:
    """Another implementation measured in the same run and reported as a ratio to ``ours``."""

    name: str
    requires: str  # importable module that must be installed
    ours: str  # our registered model it is compared with
    build: Callable[[int], nn.Module]
    note: str


def _torchvision_deeplabv3(depth: int) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        from torchvision.models import segmentation

        fn = getattr(segmentation, f"deeplabv3_resnet{depth}")
        return _OutOnly(fn(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False))

    return build


class _OutOnly(nn.Module):
    """torchvision segmentation models return ``{"out": ...}``; keep only the tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


_TV_NOTE = ("torchvision's builder is OS8 (layer3/4 dilated) with ASPP rates 12/24/36 and upsamples the logits to "
            "the input size; ours is the TF-ported model at its default OS16 (rates 6/12/18), logits at stride 16, "
            "so the ratio compares the two builders as shipped, not equal FLOPs (see the flops fields)")

PEERS: dict[str, Peer] = {
    "torchvision.deeplabv3_resnet101": Peer("torchvision.deeplabv3_resnet101", "torchvision", "deeplabv3_resnet101",
                                            _torchvision_deeplabv3(101), _TV_NOTE),
    "torchvision.deeplabv3_resnet50": Peer("torchvision.deeplabv3_resnet50", "torchvision", "deeplabv3_resnet50",
                                           _torchvision_deeplabv3(50), _TV_NOTE),
}


# Convolutions the DeepLab models spend their time in (batch 1, channels_last): ResNet-101 bottleneck
# 1x1 / 3x3 convs at OS 8 (65x65 for a 513 input, DeepLab v2 and v3 at OS 8) and OS 16 (33x33), ASPP.
CEILING_CONVS: tuple[tuple[str, int, int, int, int, int], ...] = (
    # (name, in, out, kernel, dilation, side)
    ("conv1x1 1024->256 @65", 1024, 256, 1, 1, 65),
    ("conv1x1 256->1024 @65", 256, 1024, 1, 1, 65),
    ("conv3x3 256->256 d2 @65", 256, 256, 3, 2, 65),
    ("conv3x3 512->512 d4 @65", 512, 512, 3, 4, 65),
    ("conv3x3 256->256 @33", 256, 256, 3, 1, 33),
    ("conv1x1 2048->512 @33", 2048, 512, 1, 1, 33),
)
CEILING_MATMULS = (512, 1024, 2048)


def ceiling_size(device: torch.device, quick: bool) -> int:
    """Side of the square matmul that defines the ceiling (large enough to saturate the device)."""
    if quick:
        return 512
    return 8192 if device.type == "cuda" else 2048


def measure_ceiling(device: torch.device, precision: str, n: int, timing: Timing) -> dict[str, Any]:
    """FLOP/s of an ``n x n @ n x n`` matmul in ``precision``'s dtype on ``device`` (median and best)."""
    dtype = DTYPES[precision]
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    with torch.inference_mode():
        samples = time_iterations(lambda: torch.mm(a, b), device, warmup=max(1, timing.warmup),
                                  repeats=max(5, timing.repeats), min_seconds=min(1.0, timing.min_seconds),
                                  max_seconds=min(20.0, timing.max_seconds))
    stats = summarize(samples)
    flops = 2 * n**3
    return {"precision": precision, "dtype": str(dtype).replace("torch.", ""), "n": n, "flops": flops,
            "latency": stats, "tflops_median": flops / stats["median_s"] / 1e12,
            "tflops_best": flops / stats["min_s"] / 1e12}


def measure_conv_ceiling(device: torch.device, precision: str, shape: tuple, timing: Timing) -> dict[str, Any]:
    """FLOP/s of one model-shaped convolution (channels_last, batch 1) in ``precision``'s dtype."""
    name, cin, cout, k, d, side = shape
    dtype = DTYPES[precision]
    gen = torch.Generator(device="cpu").manual_seed(0)
    conv = nn.Conv2d(cin, cout, k, padding=d * (k // 2), dilation=d, bias=False).eval()
    conv = conv.to(device=device, dtype=dtype, memory_format=torch.channels_last)
    x = torch.randn(1, cin, side, side, generator=gen).to(device=device, dtype=dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        samples = time_iterations(lambda: conv(x), device, warmup=max(1, timing.warmup),
                                  repeats=max(5, timing.repeats), min_seconds=min(0.5, timing.min_seconds),
                                  max_seconds=min(10.0, timing.max_seconds))
    stats = summarize(samples)
    flops = 2 * cin * cout * k * k * side * side
    return {"kernel": name, "precision": precision, "flops": flops, "latency": stats,
            "tflops_median": flops / stats["median_s"] / 1e12, "tflops_best": flops / stats["min_s"] / 1e12}


def measure_best_ceiling(device: torch.device, precision: str, timing: Timing, *, quick: bool) -> dict[str, Any]:
    """The best (median) FLOP/s over several matmul sizes and the models' conv shapes; every kernel is kept.
    fp32 kernels run in IEEE fp32 (TF32 off on a GPU), as the fp32 rows they are the ceiling of."""
    from reproduce.inference import float32_math

    with float32_math(precision):
        kernels = [measure_ceiling(device, precision, n, timing)
                   for n in (CEILING_MATMULS[:2] if quick else CEILING_MATMULS)]
        for k in kernels:
            k["kernel"] = f"matmul {k['n']}"
        kernels += [measure_conv_ceiling(device, precision, shape, timing)
                    for shape in (CEILING_CONVS[:2] if quick else CEILING_CONVS)]
    best = max(kernels, key=lambda k: k["tflops_median"])
    return {"precision": precision, "tflops_median": best["tflops_median"], "tflops_best": best["tflops_best"],
            "n": best.get("n"), "kernel": best["kernel"], "source": "kernels",
            "kernels": [{k2: v for k2, v in k.items() if k2 != "latency"} | {"median_s": k["latency"]["median_s"]}
                        for k in kernels], "threads": torch.get_num_threads()}


def _merge_ceiling(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Keep the faster of two ceiling measurements; remember every measurement."""
    kept = new if new["tflops_median"] > old["tflops_median"] else old
    history = old.get("measurements_tflops_median", [old["tflops_median"]]) + [new["tflops_median"]]
    return {**kept, "measurements_tflops_median": history}


def raise_ceiling_if_beaten(ceilings: dict[str, dict[str, Any]], precision: str, achieved: float, who: str,
                            remeasure: Callable[[], dict[str, Any]], log: Callable[[str], None]) -> None:
    """A model faster than the ceiling: re-measure the kernels; if it is still faster, it is the ceiling."""
    ceiling = ceilings.get(precision)
    if ceiling is None or achieved <= ceiling["tflops_median"]:
        return
    log(f"  {who} beat the {precision} ceiling ({achieved * 1e3:.1f} > {ceiling['tflops_median'] * 1e3:.1f} "
        "GFLOP/s): measuring the kernels again")
    ceiling = _merge_ceiling(ceiling, remeasure())
    if achieved > ceiling["tflops_median"]:
        ceiling = {**ceiling, "tflops_median": achieved, "kernel": who, "source": "model (faster than every kernel)"}
    ceilings[precision] = ceiling


def count_flops(model: nn.Module, x: torch.Tensor) -> int:
    """Total FLOPs of one forward of ``model`` on ``x`` (``FlopCounterMode``: convs and matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(x)
    return int(counter.get_total_flops())


def _output_shape(out: Any) -> list[int] | None:
    if isinstance(out, torch.Tensor):
        return list(out.shape)
    if isinstance(out, dict) and out:
        return _output_shape(next(iter(out.values())))
    return None


def compile_skip_reason(device: torch.device) -> str | None:
    """Why torch.compile cannot be tried here (``None`` if it can)."""
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    if device.type == "cpu":
        import shutil

        if not (shutil.which("cc") or shutil.which("gcc") or shutil.which("g++")):
            return "torch.compile (inductor) on CPU needs a C++ compiler and none is on PATH"
    return None


def run_model(name: str, role: str, build: Callable[[], nn.Module], grid: Grid, timing: Timing,
              device: torch.device, ceilings: dict[str, dict[str, Any]], log: Callable[[str], None],
              remeasure: Callable[[str], dict[str, Any]] | None = None) -> list[dict]:
    """Every grid point of one model; returns one record per point (ok, skipped or error)."""
    base = {"model": name, "role": role}
    try:
        model = build().to(device).eval()
    except Exception as exc:  # noqa: BLE001 - a broken builder is reported, the rest of the grid goes on
        return [failed(exc, **base, stage="build")]
    params = sum(p.numel() for p in model.parameters())
    records: list[dict] = []
    flops_cache: dict[tuple, int] = {}
    for memory_format in grid.memory_formats:
        model = model.to(memory_format=torch_memory_format(memory_format))
        for size in grid.sizes:
            for batch in grid.batches:
                x = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(0)).to(device)
                x = x.contiguous(memory_format=torch_memory_format(memory_format))
                key = (size, batch)
                if key not in flops_cache:
                    try:
                        flops_cache[key] = count_flops(model, x)
                    except Exception:  # noqa: BLE001 - FLOPs are informative; the timing still runs
                        flops_cache[key] = -1
                flops = flops_cache[key]
                for precision in grid.precisions:
                    for use_compile in grid.compiles:
                        point = {**base, "size": list(size), "batch": batch, "precision": precision,
                                 "memory_format": memory_format, "compile": use_compile}
                        reason = precision_skip_reason(precision, device) or (
                            compile_skip_reason(device) if use_compile else None)
                        if reason:
                            records.append(skipped(reason, **point))
                            continue
                        log(f"  {name} {size_label(size)} b{batch} {precision} {memory_format}"
                            f"{' compile' if use_compile else ''}")
                        try:
                            rec = _measure_point(model, x, precision, use_compile, device, timing)
                        except Exception as exc:  # noqa: BLE001 - recorded, the grid goes on
                            records.append(failed(exc, **point))
                            log(f"    error: {type(exc).__name__}: {str(exc)[:200]}")
                            continue
                        rec.update(point)
                        rec["params"] = params
                        rec["images_per_s"] = batch / rec["latency"]["median_s"]
                        if flops > 0:
                            rec["flops"] = flops
                            rec["gflops"] = flops / 1e9
                            rec["achieved_tflops"] = flops / rec["latency"]["median_s"] / 1e12
                            if remeasure is not None:
                                raise_ceiling_if_beaten(ceilings, precision, rec["achieved_tflops"],
                                                        f"{name} {size_label(size)} {precision} {memory_format}",
                                                        lambda precision=precision: remeasure(precision), log)
                            ceiling = ceilings.get(precision)
                            if ceiling:
                                rec["ceiling_fraction"] = rec["achieved_tflops"] / ceiling["tflops_median"]
                        records.append({**point, **rec})
                        log(f"    median {rec['latency']['median_s'] * 1e3:.1f} ms, IQR "
                            f"{rec['latency']['iqr_s'] * 1e3:.1f} ms")
    return records


def _measure_point(model: nn.Module, x: torch.Tensor, precision: str, use_compile: bool, device: torch.device,
                   timing: Timing) -> dict[str, Any]:
    fn_model: Callable[[torch.Tensor], Any] = model
    if use_compile:
        torch._dynamo.reset()
        fn_model = torch.compile(model)
    out_shape: list[list[int] | None] = [None]

    def step() -> None:
        with torch.inference_mode(), autocast_for(precision, device):
            out = fn_model(x)
        out_shape[0] = _output_shape(out)

    with PeakMemory(device) as mem:
        t0 = time.perf_counter()
        step()  # first call: includes compilation when compiled, oneDNN primitive creation otherwise
        synchronize(device)
        first = time.perf_counter() - t0
        samples = time_iterations(step, device, warmup=max(0, timing.warmup - 1), repeats=timing.repeats,
                                  min_seconds=timing.min_seconds, max_seconds=timing.max_seconds)
    if use_compile:
        torch._dynamo.reset()
    return {"status": "ok", "latency": summarize(samples), "samples_s": samples, "first_call_s": first,
            "memory": mem.record, "output_shape": out_shape[0],
            "warmup": timing.warmup, "input_dtype": "float32"}


def peer_ratios(results: list[dict]) -> list[dict[str, Any]]:
    """For each measured peer point, its median latency over ours at the same point (>1: ours is faster)."""
    ours = {(r["model"], tuple(r["size"]), r["batch"], r["precision"], r["memory_format"], r["compile"]): r
            for r in results if r.get("role") == "ours" and r.get("status") == "ok"}
    ratios = []
    for r in results:
        if r.get("role") != "peer" or r.get("status") != "ok":
            continue
        key = (r["peer_of"], tuple(r["size"]), r["batch"], r["precision"], r["memory_format"], r["compile"])
        mine = ours.get(key)
        if mine is None:
            continue
        ratios.append({"peer": r["model"], "ours": r["peer_of"], "size": r["size"], "batch": r["batch"],
                       "precision": r["precision"], "memory_format": r["memory_format"], "compile": r["compile"],
                       "latency_peer_over_ours": r["latency"]["median_s"] / mine["latency"]["median_s"],
                       "peak_memory_peer_over_ours": _ratio(r["memory"].get("peak_bytes"),
                                                            mine["memory"].get("peak_bytes")),
                       "flops_peer_over_ours": _ratio(r.get("flops"), mine.get("flops"))})
    return ratios


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def _remeasure_ceilings(ceilings: dict[str, dict[str, Any]], remeasure: Callable[[str], dict[str, Any]],
                        results: list[dict], log: Callable[[str], None]) -> None:
    """Time the ceiling kernels again after the grid and keep the faster measurement per precision.

    On a shared machine a single measurement can fall in a busy moment and make the ceiling too
    low; the best is the closer estimate of what the device can do. A point still faster than
    every kernel becomes the ceiling itself, so ``ceiling_fraction`` (recomputed for every point
    against the kept ceiling) never exceeds 1.
    """
    for precision in list(ceilings):
        log(f"ceiling again: matmuls and conv shapes, {precision}")
        ceilings[precision] = _merge_ceiling(ceilings[precision], remeasure(precision))
    for r in results:
        if r.get("status") == "ok" and r.get("achieved_tflops") and r["precision"] in ceilings:
            c = ceilings[r["precision"]]
            if r["achieved_tflops"] > c["tflops_median"]:
                ceilings[r["precision"]] = {**c, "tflops_median": r["achieved_tflops"],
                                            "kernel": f"{r['model']} {size_label(r['size'])}",
                                            "source": "model (faster than every kernel)"}
    for r in results:
        if r.get("status") == "ok" and r.get("achieved_tflops") and r["precision"] in ceilings:
            r["ceiling_fraction"] = r["achieved_tflops"] / ceilings[r["precision"]]["tflops_median"]


def run_inference(grid: Grid, timing: Timing, device: torch.device, *, peers: list[str], quick: bool,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the grid (ours, then the peers) and return the suite's JSON body (without the environment)."""
    from reference_models import build_model

    ceilings: dict[str, dict[str, Any]] = {}
    ceiling_skips: dict[str, str] = {}

    def remeasure(precision: str) -> dict[str, Any]:
        return measure_best_ceiling(device, precision, timing, quick=quick)

    for precision in grid.precisions:
        reason = precision_skip_reason(precision, device)
        if reason:
            ceiling_skips[precision] = reason
            continue
        log(f"ceiling: matmuls and conv shapes, {precision}")
        ceilings[precision] = remeasure(precision)
        log(f"  {ceilings[precision]['tflops_median'] * 1e3:.1f} GFLOP/s (median, {ceilings[precision]['kernel']})")

    results: list[dict] = []
    for name in grid.models:
        log(f"model {name}")
        results += run_model(name, "ours", lambda name=name: build_model(name, num_classes=grid.num_classes),
                             grid, timing, device, ceilings, log, remeasure)

    peer_records: list[dict] = []
    for peer_name in peers:
        peer = PEERS[peer_name]
        if importlib.util.find_spec(peer.requires) is None:
            peer_records.append(skipped(f"{peer.requires} is not installed in this environment", model=peer.name,
                                        role="peer", peer_of=peer.ours))
            log(f"peer {peer.name}: skipped ({peer.requires} not installed)")
            continue
        log(f"peer {peer.name}")
        recs = run_model(peer.name, "peer", lambda peer=peer: peer.build(grid.num_classes), grid, timing, device,
                         ceilings, log, remeasure)
        for r in recs:
            r["peer_of"] = peer.ours
            r["peer_note"] = peer.note
        results += recs
    results += peer_records
    _remeasure_ceilings(ceilings, remeasure, results, log)
    grid_record = asdict(grid)
    grid_record["sizes"] = [list(s) for s in grid.sizes]
    return {"grid": grid_record, "timing": asdict(timing), "ceilings": ceilings,
            "ceilings_skipped": ceiling_skips, "results": results, "peer_ratios": peer_ratios(results),
            "peers": {p: {"requires": PEERS[p].requires, "ours": PEERS[p].ours, "note": PEERS[p].note} for p in peers}}
