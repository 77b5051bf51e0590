"""The ``engine`` suite: plain eager fp32 NCHW against the inference engine, for every registered model and size.

One *row* is one model at one input size (batch 1, random input, random weights, eval mode). Its
variants are timed **interleaved** (round-robin, one call each per round, alternating order) and
compared by their medians, so a busy neighbour slows them alike:

* ``eager``: the model as built, fp32 (TF32 off on a GPU), NCHW, ``torch.inference_mode`` (what a plain user
  runs);
* ``engine``: :class:`reproduce.inference.Segmenter` with its defaults (BatchNorm folded,
  channels_last, ``precision="auto"``); the result records the precision auto chose and is held to
  that dtype's ceiling;
* ``compile``: the engine with ``torch.compile`` (inductor, frozen weights); the first call (the
  compilation) is timed apart as ``first_call_s``;
* ``bf16``: the engine under bf16 autocast, timed only where bf16 is native (``precision="auto"``
  picks it); elsewhere the row records ``not native`` with the engine's reason, and one untimed
  bf16 forward gives its argmax agreement (``untimed``: bf16's numerics do not depend on the CPU).
  Where it runs, it is the same configuration as ``engine`` (auto picked bf16): its result says so
  (``same_configuration_as``), and the pair's ratio is the timing noise of one configuration;
* externals (``--external MODULE:FACTORY[=OURS,...]``): another implementation's own builder in
  eager fp32 NCHW and eager fp32 channels_last (what its users can do). Attached to our models
  (``=OURS``) it is timed in their rows, in the same rounds; if an importer of ``converters/peers``
  maps its state dict onto that model (or the layouts are identical), the row also records that the
  two give the same output with the same weights (so the comparison is the same network).

Every variant's argmax is compared with eager fp32's on the pixels whose top-2 margin exceeds
``MARGIN_TOL`` x max |eager| (float noise cannot flip those); the share of such pixels is recorded.

Incremental: each row is written, as it completes, to its own strict-JSON file in a rows
directory named by the environment (device, CPU, threads), with the settings it was measured with
(:func:`row_settings`: variants, timing, quick, class count, torch version); ``resume=True`` skips a
row whose file has the same settings, every external asked of it and no failed result (anything
else is measured again, with one line saying why), so a long table runs in pieces and
``benchmarks.report`` merges every row file and run record it is given into one table. :func:`estimate` predicts the time of rows not yet measured
from the ones that were (per-GFLOP rates and per-module compile time, FLOPs counted on the meta
device).
"""

from __future__ import annotations

import copy
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks._common import failed, size_label, skipped, summarize, synchronize
from benchmarks.inference import (
    Timing,
    compile_skip_reason,
    count_flops,
    measure_best_ceiling,
    raise_ceiling_if_beaten,
)
from reproduce.inference import float32_math

ENGINE_VARIANTS = ("eager", "engine", "compile", "bf16")
VARIANT_LABELS = {"eager": "plain eager fp32 NCHW", "engine": "engine default", "compile": "engine + compile",
                  "bf16": "engine bf16 (where native)", "external": "external, eager fp32 NCHW",
                  "external_cl": "external, eager fp32 channels_last"}
MARGIN_TOL = 1e-4  # relative to max |reference|: fp32 noise at the end of a ResNet-101 is ~5e-4 of float64's
ROW_FORMAT = "deeplab-repro engine row v1"


# ---- externals -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class External:
    """``MODULE:FACTORY`` and the models of ours it is timed beside (empty: on its own, one row per size)."""

    spec: str
    vs: tuple[str, ...]
    build: Callable[[int], nn.Module]


class DictOut(nn.Module):
    """Any model; a dict output (torchvision's segmentation models) gives its ``"out"`` tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return out["out"] if isinstance(out, dict) else out


def parse_external(text: str) -> tuple[str, tuple[str, ...]]:
    """``"MODULE:FACTORY[=OURS,OURS]"`` -> (``MODULE:FACTORY``, our model names); ``ValueError`` if malformed."""
    spec, _, vs = text.partition("=")
    module_name, sep, factory_name = spec.partition(":")
    if not sep or not module_name or not factory_name:
        raise ValueError(f"--external {text!r}: use MODULE:FACTORY[=OUR_MODEL,...] (e.g. "
                         "torchvision.models.segmentation:deeplabv3_resnet101)")
    return spec, tuple(v.strip() for v in vs.split(",") if v.strip())


def load_external(text: str) -> External:
    """Import ``MODULE:FACTORY``; the factory is called with ``num_classes=`` when it takes it, else bare."""
    import importlib
    import inspect

    spec, vs = parse_external(text)
    module_name, _, factory_name = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), factory_name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"--external {spec!r}: cannot import it ({type(exc).__name__}: {exc})") from None

    def build(num_classes: int) -> nn.Module:
        try:
            params = inspect.signature(factory).parameters
        except (TypeError, ValueError):
            params = {}
        return DictOut(factory(num_classes=num_classes) if "num_classes" in params else factory())

    return External(spec, vs, build)


@contextmanager
def extra_import_paths(paths: Sequence[str | os.PathLike]) -> Iterator[None]:
    """``paths`` first on ``sys.path`` for the benchmark process's run, restored afterwards."""
    saved = list(sys.path)
    sys.path[:0] = [str(Path(p).resolve()) for p in paths]
    try:
        yield
    finally:
        sys.path[:] = saved


# ---- comparisons ---------------------------------------------------------------------------------------------------


def agreement(out: torch.Tensor, ref: torch.Tensor, tol: float = MARGIN_TOL) -> dict[str, Any]:
    """Argmax agreement of ``out`` with ``ref`` on the pixels whose top-2 margin in ``ref`` exceeds
    ``tol`` x max |ref| (``argmax_agreement``), on every pixel (``argmax_agreement_all``), the share of
    pixels with such a margin, and max |out - ref| / max |ref|."""
    out, ref = out.float(), ref.float()
    if out.shape != ref.shape:
        return {"argmax_agreement": None, "shape_mismatch": [list(out.shape), list(ref.shape)]}
    scale = float(ref.abs().max()) or 1.0
    agree = out.argmax(1) == ref.argmax(1)
    if ref.shape[1] >= 2:
        top2 = ref.topk(2, dim=1).values
        clear = (top2[:, 0] - top2[:, 1]) > tol * scale
    else:
        clear = torch.ones_like(agree)
    return {"argmax_agreement": float(agree[clear].float().mean()) if bool(clear.any()) else 1.0,
            "argmax_agreement_all": float(agree.float().mean()), "margin_pixels": float(clear.float().mean()),
            "margin_tol": tol, "max_rel_diff": float((out - ref).abs().max()) / scale}


def _perturb_batchnorm(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BatchNorm statistics and affine (fresh builders have mean 0, var 1: a weak comparison)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                n = m.running_mean.numel()
                m.running_mean.copy_(torch.rand(n, generator=gen) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                if m.weight is not None:
                    m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                    m.bias.copy_(torch.rand(n, generator=gen) * 0.2 - 0.1)


def same_network_check(peer: nn.Module, ours_name: str, x: torch.Tensor, num_classes: int) -> dict[str, Any]:
    """Load the external model's weights into our ``ours_name`` and compare outputs on ``x``.

    The mapping is the identity when both state dicts have the same keys and shapes, else the first
    importer of ``converters/peers`` whose detection maps the state dict onto ``ours_name``."""
    from converters.peers import available_formats, get_format
    from converters.peers.common import convert_state
    from reference_models import build_model

    peer = copy.deepcopy(peer).eval()
    _perturb_batchnorm(peer)
    inner = peer.model if isinstance(peer, DictOut) else peer
    state = {k: v for k, v in inner.state_dict().items()}
    ours = build_model(ours_name, num_classes=num_classes).eval()
    ours_state = ours.state_dict()
    how = None
    if set(state) == set(ours_state) and all(state[k].shape == ours_state[k].shape for k in state):
        ours.load_state_dict(state, strict=True)
        how = {"mapping": "identical state-dict layout"}
    else:
        for name in available_formats():
            fmt = get_format(name)
            try:
                target = fmt.detect(state, "<external>")
            except Exception:  # noqa: BLE001 - not this format
                continue
            if target.arch != ours_name:
                continue
            try:
                _, ours, _ = convert_state(dict(state), target, "<external>")
            except Exception as exc:  # noqa: BLE001 - recorded: the layouts looked alike but do not load
                return failed(exc, ours=ours_name, mapping=f"converters.peers.{name}")
            how = {"mapping": f"converters.peers.{name}", "peer_model": target.peer_model, "arch": target.arch}
            break
    if how is None:
        return skipped(f"no importer in converters/peers maps this builder's state dict onto {ours_name}: a "
                       "different network, timed side by side only", ours=ours_name)
    ours = ours.to(x.device)  # built and loaded on the CPU; the peer and x are on the row's device (CUDA too)
    with torch.inference_mode(), float32_math("fp32"):
        a, b = peer(x), DictOut(ours.eval())(x)
    return {"status": "ok", "ours": ours_name, **how, **agreement(b, a),
            "max_abs_diff": float((a.float() - b.float()).abs().max()) if a.shape == b.shape else None}


# ---- timing --------------------------------------------------------------------------------------------------------


def interleaved(fns: dict[str, Callable[[], Any]], rounds: int, device: torch.device,
                max_seconds: float) -> dict[str, list[float]]:
    """Round-robin timing: each round calls every variant once, in alternating order; stops after ``rounds``
    or when ``max_seconds`` have passed (at least 3 rounds)."""
    samples: dict[str, list[float]] = {k: [] for k in fns}
    start = time.perf_counter()
    for r in range(rounds):
        order = list(fns) if r % 2 == 0 else list(reversed(fns))  # no variant always runs right after another
        for k in order:
            synchronize(device)
            t0 = time.perf_counter()
            fns[k]()
            synchronize(device)
            samples[k].append(time.perf_counter() - t0)
        if r >= 2 and time.perf_counter() - start > max_seconds:
            break
    return samples


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def count_flops_meta(name: str, size: tuple[int, int], num_classes: int) -> int:
    """FLOPs of one forward of registered model ``name`` at ``size``, counted on the meta device (no compute)."""
    from reference_models import build_model

    with torch.device("meta"):
        model = build_model(name, num_classes=num_classes).eval()
        x = torch.empty(1, 3, *size)
    return count_flops(model, x)


def module_count(name: str, num_classes: int) -> int:
    from reference_models import build_model

    with torch.device("meta"):
        return sum(1 for _ in build_model(name, num_classes=num_classes).modules())


# ---- one row -------------------------------------------------------------------------------------------------------


def engine_rounds(timing: Timing) -> int:
    """Interleaved rounds per row: ``timing.repeats``, at least 5."""
    return max(5, timing.repeats)


@dataclass
class RowContext:
    device: torch.device
    timing: Timing
    variants: tuple[str, ...]
    num_classes: int
    auto_precision: str
    auto_reason: str
    ceilings: dict[str, dict[str, Any]]
    remeasure: Callable[[str], dict[str, Any]]
    log: Callable[[str], None]

    @property
    def rounds(self) -> int:
        return engine_rounds(self.timing)


def _bf16_numerics(model: nn.Module, x: torch.Tensor, ctx: RowContext,
                   rec: dict[str, Any]) -> tuple[dict[str, Any], torch.Tensor] | None:
    """Where bf16 is not native, one untimed forward of the engine at ``precision="bf16"``: its output, for the
    argmax agreement with eager fp32 that ``run_row`` adds to ``rec`` (``untimed: True``).

    The agreement is a property of the dtype, not of the CPU: autocast rounds the same operands to bf16 and
    every backend (AVX2 emulation, AVX512-BF16, AMX, CUDA) accumulates in fp32, so only the summation order
    differs. So the bf16 target's agreement half (>= 99.5 % on v3/v3+) is measured on every machine; its
    speed half only where bf16 is native. ``None`` (and the error in ``rec``) if the forward fails.
    """
    from reproduce.inference import Segmenter

    try:
        engine = Segmenter.from_module(copy.deepcopy(model), device=ctx.device, precision="bf16")
        t0 = time.perf_counter()
        out = engine.forward(x)
        synchronize(ctx.device)
        rec.update(untimed=True, untimed_forward_s=time.perf_counter() - t0)
        return rec, out
    except Exception as exc:  # noqa: BLE001 - recorded, the row goes on
        rec["numerics_error"] = failed(exc)["error"]
        return None


def run_row(name: str, size: tuple[int, int], externals: Sequence[External], ctx: RowContext) -> dict[str, Any]:
    """Time every variant of our model ``name`` (or, for ``name=None``-like external rows, see
    :func:`run_external_row`) at ``size`` interleaved; returns the row record."""
    from reference_models import build_model
    from reproduce.inference import Segmenter

    t_row = time.perf_counter()
    row: dict[str, Any] = {"format": ROW_FORMAT, "model": name, "role": "ours", "size": list(size), "batch": 1,
                           "externals": [e.spec for e in externals], "loadavg_start": _loadavg(),
                           "started_utc": _now()}
    results: list[dict[str, Any]] = []
    point = {"model": name, "size": list(size), "batch": 1, "role": "ours"}
    try:
        torch.manual_seed(0)
        model = build_model(name, num_classes=ctx.num_classes).to(ctx.device).eval()
    except Exception as exc:  # noqa: BLE001 - reported, the table goes on
        row["results"] = [failed(exc, **point, variant="build")]
        return _finish_row(row, t_row)
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0)).to(ctx.device)
    try:
        flops = count_flops(model, x)
    except Exception:  # noqa: BLE001 - informative only
        flops = -1
    row["gflops"] = flops / 1e9 if flops > 0 else None
    row["modules"] = sum(1 for _ in model.modules())
    fns: dict[str, Callable[[], Any]] = {}
    meta: dict[str, dict[str, Any]] = {}
    owner: dict[str, dict[str, Any]] = {}
    untimed_bf16: tuple[dict[str, Any], torch.Tensor] | None = None

    def eager(model=model, x=x) -> torch.Tensor:
        with torch.inference_mode(), float32_math("fp32"):  # fp32 that is fp32: TF32 off on a GPU
            return model(x)

    fns["eager"] = eager
    owner["eager"] = point
    for variant in ctx.variants:
        if variant == "eager":
            continue
        label = VARIANT_LABELS[variant]
        if variant == "bf16" and ctx.auto_precision != "bf16":
            rec = skipped(f"not native: {ctx.auto_reason}", **point, variant="bf16", label=label, not_native=True)
            results.append(rec)
            untimed_bf16 = _bf16_numerics(model, x, ctx, rec)
            continue
        if variant == "compile" and compile_skip_reason(ctx.device):
            results.append(skipped(compile_skip_reason(ctx.device), **point, variant="compile", label=label))
            continue
        try:
            engine = Segmenter.from_module(copy.deepcopy(model), device=ctx.device,
                                           precision="bf16" if variant == "bf16" else "auto",
                                           compile=variant == "compile")
            synchronize(ctx.device)  # timed like a round: a GPU's queued work is in the figure
            t0 = time.perf_counter()
            engine.forward(x)  # the first call compiles (compile) or creates oneDNN primitives
            synchronize(ctx.device)
            meta[variant] = {"first_call_s": time.perf_counter() - t0, "engine": engine.describe()}
            fns[variant] = lambda engine=engine, x=x: engine.forward(x)
            owner[variant] = point
        except Exception as exc:  # noqa: BLE001
            results.append(failed(exc, **point, variant=variant, label=label))
            ctx.log(f"  {name} {size_label(size)} {variant}: error {type(exc).__name__}: {str(exc)[:200]}")
    same_network: list[dict[str, Any]] = []
    for ext in externals:
        ext_point = {"model": ext.spec, "size": list(size), "batch": 1, "role": "external", "peer_of": name}
        try:
            torch.manual_seed(0)
            peer = ext.build(ctx.num_classes).to(ctx.device).eval()
            peer_flops = count_flops(peer, x)
        except Exception as exc:  # noqa: BLE001
            results.append(failed(exc, **ext_point, variant="external"))
            continue
        try:
            same_network.append({"external": ext.spec, **same_network_check(peer, name, x, ctx.num_classes)})
        except Exception as exc:  # noqa: BLE001
            same_network.append(failed(exc, external=ext.spec, ours=name))
        peer_cl = copy.deepcopy(peer).to(memory_format=torch.channels_last)
        x_cl = x.contiguous(memory_format=torch.channels_last)

        def run_peer(peer=peer) -> torch.Tensor:
            with torch.inference_mode(), float32_math("fp32"):
                return peer(x)

        def run_peer_cl(peer_cl=peer_cl, x_cl=x_cl) -> torch.Tensor:
            with torch.inference_mode(), float32_math("fp32"):
                return peer_cl(x_cl)

        for variant, fn in (("external", run_peer), ("external_cl", run_peer_cl)):
            key = f"{variant}:{ext.spec}"
            fns[key] = fn
            owner[key] = ext_point
            meta[key] = {"flops": peer_flops}
    row["same_network"] = same_network
    same = same_configuration(meta.get("bf16", {}).get("engine"), meta.get("engine", {}).get("engine"))
    if same:  # precision="auto" picked bf16: the default engine already is the bf16 engine
        meta["bf16"]["same_configuration_as"] = "engine"
        row["note"] = "engine default and bf16 are the same configuration (precision auto picks bf16)"
    outputs: dict[str, torch.Tensor] = {}
    for key, fn in fns.items():
        for _ in range(max(1, ctx.timing.warmup)):
            outputs[key] = fn()
    if untimed_bf16 is not None:  # bf16 numerics where bf16 is not native: agreement only, never a time
        untimed_bf16[0].update(agreement(untimed_bf16[1], outputs["eager"]))
    samples = interleaved(fns, ctx.rounds, ctx.device, ctx.timing.max_seconds * len(fns))
    eager_median = summarize(samples["eager"])["median_s"]
    for key, ts in samples.items():
        variant = key.split(":", 1)[0]
        stats = summarize(ts)
        info = meta.get(key, {})
        rec = {**owner[key], "variant": variant, "label": VARIANT_LABELS[variant], "status": "ok",
               "latency": stats, "samples_s": ts, "ratio_to_eager": stats["median_s"] / eager_median,
               "precision": (info.get("engine") or {}).get("precision", "fp32"),  # what the engine chose
               **{k: v for k, v in info.items() if k != "flops"}}
        if variant.startswith("external"):
            rec["ratio_to_ours_eager"] = rec.pop("ratio_to_eager")
        else:
            rec.update(agreement(outputs[key], outputs["eager"]))
        f = info.get("flops", flops)
        if f and f > 0:
            rec["flops"] = f
            rec["achieved_tflops"] = f / stats["median_s"] / 1e12
            raise_ceiling_if_beaten(ctx.ceilings, rec["precision"], rec["achieved_tflops"],
                                    f"{rec['model']} {size_label(size)} {variant}",
                                    lambda p=rec["precision"]: ctx.remeasure(p), ctx.log)
        results.append(rec)
    for rec in results:
        c = ctx.ceilings.get(rec.get("precision", ""))
        if rec.get("achieved_tflops") and c:
            rec["ceiling_fraction"] = rec["achieved_tflops"] / c["tflops_median"]
    row["results"] = results
    row["rounds"] = len(samples["eager"])
    del fns, outputs, model
    if "compile" in ctx.variants:
        torch._dynamo.reset()
    return _finish_row(row, t_row)


# describe() keys that are not settings: why auto chose, and what the engine has run so far
_NOT_CONFIGURATION = frozenset({"precision_reason", "memory_format_reason", "forwards", "compiled_shapes"})


def same_configuration(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """Two engines' :meth:`~reproduce.inference.Segmenter.describe` agree on every setting."""
    if not a or not b:
        return False
    return ({k: v for k, v in a.items() if k not in _NOT_CONFIGURATION}
            == {k: v for k, v in b.items() if k not in _NOT_CONFIGURATION})


def run_external_row(ext: External, size: tuple[int, int], ctx: RowContext) -> dict[str, Any]:
    """An external builder on its own: eager fp32 NCHW and channels_last, interleaved."""
    t_row = time.perf_counter()
    point = {"model": ext.spec, "size": list(size), "batch": 1, "role": "external"}
    row: dict[str, Any] = {"format": ROW_FORMAT, "model": ext.spec, "role": "external", "size": list(size),
                           "batch": 1, "loadavg_start": _loadavg(), "started_utc": _now()}
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0)).to(ctx.device)
    try:
        torch.manual_seed(0)
        model = ext.build(ctx.num_classes).to(ctx.device).eval()
        flops = count_flops(model, x)
    except Exception as exc:  # noqa: BLE001
        row["results"] = [failed(exc, **point, variant="external")]
        return _finish_row(row, t_row)
    cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)

    def eager() -> Any:
        with torch.inference_mode(), float32_math("fp32"):
            return model(x)

    def channels_last() -> Any:
        with torch.inference_mode(), float32_math("fp32"):
            return cl(x_cl)

    fns = {"external": eager, "external_cl": channels_last}
    for fn in fns.values():
        for _ in range(max(1, ctx.timing.warmup)):
            fn()
    samples = interleaved(fns, ctx.rounds, ctx.device, ctx.timing.max_seconds * 2)
    row["gflops"] = flops / 1e9
    row["results"] = []
    for variant, ts in samples.items():
        stats = summarize(ts)
        rec = {**point, "variant": variant, "label": VARIANT_LABELS[variant], "status": "ok", "precision": "fp32",
               "latency": stats, "samples_s": ts, "flops": flops, "achieved_tflops": flops / stats["median_s"] / 1e12}
        raise_ceiling_if_beaten(ctx.ceilings, "fp32", rec["achieved_tflops"], f"{ext.spec} {size_label(size)}",
                                lambda: ctx.remeasure("fp32"), ctx.log)
        row["results"].append(rec)
    for rec in row["results"]:
        rec["ceiling_fraction"] = rec["achieved_tflops"] / ctx.ceilings["fp32"]["tflops_median"]
    row["rounds"] = len(samples["external"])
    return _finish_row(row, t_row)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _finish_row(row: dict[str, Any], t0: float) -> dict[str, Any]:
    row["wall_s"] = round(time.perf_counter() - t0, 2)
    row["loadavg_end"] = _loadavg()
    row["finished_utc"] = _now()
    for rec in row.get("results", []):
        rec["measured_utc"] = row["finished_utc"]
    return row


# ---- rows on disk --------------------------------------------------------------------------------------------------


def row_filename(model: str, size: Sequence[int]) -> str:
    """``<model>@<size>.json``; an external's ``MODULE:FACTORY`` becomes ``MODULE-FACTORY``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", model) + f"@{size_label(tuple(size))}.json"


def read_rows(rows_dir: Path) -> dict[str, dict[str, Any]]:
    """Every complete row file in ``rows_dir`` by file name (unreadable ones are ignored: they are re-run)."""
    rows = {}
    for path in sorted(rows_dir.glob("*.json")) if rows_dir.is_dir() else []:
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(rec, dict) and rec.get("format") == ROW_FORMAT and "results" in rec:
            rows[path.name] = rec
    return rows


def row_settings(variants: Sequence[str], timing: Timing, *, quick: bool, num_classes: int) -> dict[str, Any]:
    """What a row's numbers depend on besides the code (stored in each row; ``--resume`` compares them).

    The git commit is recorded in the row's environment but not compared: the engine may improve
    between the pieces of one table, and the report shows each row's commit."""
    return {"variants": list(variants), "timing": asdict(timing), "rounds": engine_rounds(timing),
            "quick": bool(quick), "num_classes": num_classes, "torch": torch.__version__}


def legacy_settings(row: dict[str, Any]) -> dict[str, Any]:
    """The settings of a row written before rows stored them, as far as the row shows them: the variants of
    its results, its rounds and torch version (warm-up, ``max_seconds``, quick and the class count it
    does not record: :func:`rerun_reason` checks the class count through the row's FLOPs)."""
    ours = [r.get("variant") for r in row.get("results", [])
            if r.get("role", "ours") == "ours" and r.get("variant") != "build"]
    return {"variants": ours, "rounds_timed": row.get("rounds"),
            "torch": (row.get("environment") or {}).get("torch"), "legacy": True}


def _time_limited(row: dict[str, Any], max_seconds: float) -> bool:
    """The row's rounds stopped at the time limit (``max_seconds`` per timed variant, see :func:`interleaved`)."""
    timed = [r for r in row.get("results", []) if r.get("status") == "ok" and r.get("samples_s")]
    spent = sum(sum(r["samples_s"]) for r in timed)
    return bool(timed) and spent >= 0.95 * max_seconds * len(timed)


def rerun_reason(row: dict[str, Any] | None, externals: Sequence[External], settings: dict[str, Any]) -> str | None:
    """``None`` when the row on disk is done for ``settings`` (:func:`row_settings`) and ``externals``, else why
    it is measured again: missing, an external not timed in it, a result that failed, other settings."""
    if row is None:
        return "not measured yet"
    missing = sorted({e.spec for e in externals} - set(row.get("externals", [])))
    if missing:
        return f"external {', '.join(missing)} not timed in it"
    errors = [str(r.get("variant")) for r in row.get("results", []) if r.get("status") == "error"]
    if errors:
        return f"{', '.join(errors)} failed in it"
    have = row.get("settings") or legacy_settings(row)
    ours = row.get("role", "ours") == "ours"
    if ours and set(have.get("variants") or []) != set(settings["variants"]):
        return (f"variants {','.join(have.get('variants') or [])} in it, "
                f"{','.join(settings['variants'])} asked")
    if have.get("torch") != settings["torch"]:
        return f"torch {have.get('torch')} in it, {settings['torch']} now"
    if have.get("legacy"):
        timed, asked = have.get("rounds_timed"), settings["rounds"]
        if timed != asked and not (timed is not None and 3 <= timed < asked
                                   and _time_limited(row, settings["timing"]["max_seconds"])):
            return f"{timed} rounds in it, {asked} asked"
        return _legacy_classes_reason(row, settings["num_classes"]) if ours else None
    for key in ("quick", "num_classes", "rounds"):
        if have.get(key) != settings[key]:
            return f"{key} {have.get(key)} in it, {settings[key]} asked"
    for key in ("warmup", "max_seconds"):  # the timing fields the engine suite uses (rounds: from repeats)
        if (have.get("timing") or {}).get(key) != settings["timing"][key]:
            return f"{key} {(have.get('timing') or {}).get(key)} in it, {settings['timing'][key]} asked"
    return None


def _legacy_classes_reason(row: dict[str, Any], num_classes: int) -> str | None:
    """A row without settings was built with ``num_classes`` classes when its FLOPs are the model's with them."""
    if not row.get("gflops"):
        return None
    try:
        gflops = count_flops_meta(row["model"], tuple(row["size"]), num_classes) / 1e9
    except Exception:  # noqa: BLE001 - not countable on the meta device: the class count cannot be checked
        return None
    if abs(gflops - row["gflops"]) > 1e-6 * max(gflops, 1e-9):
        return f"{row['gflops']:.6g} GFLOP in it, {gflops:.6g} with {num_classes} classes"
    return None


def row_is_done(row: dict[str, Any] | None, externals: Sequence[External], settings: dict[str, Any]) -> bool:
    """A row on disk counts as done when :func:`rerun_reason` finds no reason to measure it again."""
    return rerun_reason(row, externals, settings) is None


# ---- estimate ------------------------------------------------------------------------------------------------------


def estimate(done: Sequence[dict[str, Any]], todo: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Seconds the rows of ``todo`` (``gflops``, ``modules``) will take, from the rows in ``done``.

    A row costs its compilation (``first_call_s`` of ``compile``; per module of the model, the median
    rate of the done rows) plus everything else (building, warm-up, the timed rounds: per GFLOP, the
    median rate). ``None`` without a usable done row."""
    points, per_module = [], []
    for row in done:
        if not row.get("gflops") or not row.get("wall_s"):
            continue
        comp = sum(r.get("first_call_s", 0.0) for r in row.get("results", [])
                   if r.get("variant") == "compile" and r.get("status") == "ok")
        points.append((row["gflops"], max(row["wall_s"] - comp, 0.0)))
        if comp and row.get("modules"):
            per_module.append(comp / row["modules"])
    if not points:
        return None
    fixed, rate = _fit_line(points)
    comp_rate = sorted(per_module)[len(per_module) // 2] if per_module else 0.0
    seconds = sum(fixed + rate * t["gflops"] + comp_rate * t.get("modules", 0) for t in todo)
    loads = [max(r["loadavg_start"]) for r in done if r.get("loadavg_start")]
    return {"seconds": seconds, "rows": len(todo), "from_rows": len(points), "seconds_per_row": fixed,
            "seconds_per_gflop": rate,
            "compile_seconds_per_module": comp_rate, "loadavg_of_measured_rows": max(loads) if loads else None}


def _fit_line(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Least squares ``y = a + b x`` with ``a, b >= 0`` (through the origin when the free fit is not)."""
    n = len(points)
    mx, my = sum(p[0] for p in points) / n, sum(p[1] for p in points) / n
    sxx = sum((p[0] - mx) ** 2 for p in points)
    if n >= 2 and sxx > 0:
        b = sum((p[0] - mx) * (p[1] - my) for p in points) / sxx
        a = my - b * mx
        if a >= 0 and b >= 0:
            return a, b
    sx = sum(p[0] ** 2 for p in points)
    return 0.0, (sum(p[0] * p[1] for p in points) / sx if sx else 0.0)


def format_estimate(est: dict[str, Any] | None, what: str) -> str:
    if not est:
        return f"{what}: no estimate (no row measured yet)"
    s = est["seconds"]
    load = est.get("loadavg_of_measured_rows")
    return (f"{what}: {est['rows']} rows, about {int(s // 3600)} h {int(s % 3600 // 60):02d} min at the rates of "
            f"{est['from_rows']} measured rows ({est['seconds_per_row']:.1f} s/row + {est['seconds_per_gflop']:.2f} s/GFLOP, "
            f"compile "
            f"{est['compile_seconds_per_module'] * 1000:.0f} ms/module; load average up to {load} when measured)")


# ---- the suite -----------------------------------------------------------------------------------------------------


def rows_dir_name(env: dict[str, Any]) -> str:
    """``engine-rows-<device>-<device name>-<threads>t``: rows of different machines or thread counts never mix."""
    slug = re.sub(r"[^a-z0-9.]+", "-", str(env.get("device_name", "unknown")).lower()).strip("-")[:40]
    return f"engine-rows-{env.get('device', 'cpu')}-{slug}-{env.get('torch_threads', 0)}t"


def run_engine(models: list[str], sizes: list[tuple[int, int]], variants: list[str], timing: Timing,
               device: torch.device, *, rows_dir: Path | None = None, resume: bool = False,
               externals: Sequence[str] = (), external_paths: Sequence[str | os.PathLike] = (),
               quick: bool = False, num_classes: int = 21, progress: bool = False,
               log: Callable[[str], None] = print) -> dict[str, Any]:
    """The engine table (see the module docstring); returns the suite's JSON body."""
    with extra_import_paths(external_paths):
        return _run_engine(models, sizes, variants, timing, device, rows_dir=rows_dir, resume=resume,
                           externals=externals, quick=quick, num_classes=num_classes, progress=progress, log=log)


def _run_engine(models, sizes, variants, timing, device, *, rows_dir, resume, externals, quick, num_classes,
                progress, log) -> dict[str, Any]:
    from reproduce.inference import choose_precision

    exts = [load_external(spec) for spec in externals]
    unknown = sorted({v for e in exts for v in e.vs} - set(models))
    if unknown:
        raise ValueError(f"--external ...={','.join(unknown)}: not among the models of this run ({', '.join(models)})")
    loadavg_start = _loadavg()
    auto_precision, auto_reason = choose_precision("auto", device)
    log(f"precision auto -> {auto_precision} ({auto_reason})")
    plan: list[tuple[str, tuple[int, int], Any]] = []
    for size in sizes:
        for name in models:
            plan.append((row_filename(name, size), size, name))
        for ext in exts:
            if not ext.vs:
                plan.append((row_filename(ext.spec, size), size, ext))
    on_disk = read_rows(rows_dir) if (resume and rows_dir is not None) else {}

    def attached(name: str) -> list[External]:
        return [e for e in exts if name in e.vs]

    settings = row_settings(variants, timing, quick=quick, num_classes=num_classes)
    todo = []
    for f, s, w in plan:
        reason = rerun_reason(on_disk.get(f), attached(w) if isinstance(w, str) else [], settings)
        if reason is None:
            continue
        if f in on_disk:
            log(f"resume: {f} measured again: {reason}")
        todo.append((f, s, w))
    if resume:
        log(f"resume: {len(plan) - len(todo)} of {len(plan)} rows already in {rows_dir}")
        done_before = [r for r in on_disk.values() if r.get("role") == "ours"]
        if done_before and todo:
            left = [{"gflops": count_flops_meta(w, s, num_classes) / 1e9, "modules": module_count(w, num_classes)}
                    for _, s, w in todo if isinstance(w, str)]
            log(format_estimate(estimate(done_before, left), "this run (rows left)"))
    ceilings: dict[str, dict[str, Any]] = {}

    def remeasure(precision: str) -> dict[str, Any]:
        return measure_best_ceiling(device, precision, timing, quick=quick)

    # the engine variants run in what auto picks (bf16 on AMX / most GPUs): each is held to its own dtype's ceiling
    engined = {"engine", "compile", "bf16"} & set(variants)
    precisions = ["fp32"] + ([auto_precision] if auto_precision != "fp32" and engined else [])
    if todo:
        for p in precisions:
            log(f"ceiling: matmuls and conv shapes, {p}")
            ceilings[p] = remeasure(p)
            log(f"  {ceilings[p]['tflops_median'] * 1e3:.1f} GFLOP/s ({ceilings[p]['kernel']})")
    from benchmarks._common import environment

    env = environment(device)
    row_env = {k: env.get(k) for k in ("device", "device_name", "torch", "torch_threads", "cpus_usable")}
    row_env["commit"] = (env.get("git") or {}).get("commit")
    ctx = RowContext(device, timing, tuple(variants), num_classes, auto_precision, auto_reason, ceilings,
                     remeasure, log)
    rows: list[dict[str, Any]] = []
    from tqdm import tqdm

    bar = tqdm(todo, desc="engine rows", unit="row", disable=not progress, dynamic_ncols=True)
    for fname, size, what in bar:
        bar.set_postfix_str(f"{what if isinstance(what, str) else what.spec} {size_label(size)}")
        row = run_row(what, size, attached(what), ctx) if isinstance(what, str) else run_external_row(what, size, ctx)
        row["ceilings"] = {p: {"tflops_median": c["tflops_median"], "kernel": c["kernel"]} for p, c in ceilings.items()}
        row["precision_auto"] = {"choice": auto_precision, "reason": auto_reason}
        row["environment"] = row_env
        row["settings"] = settings
        rows.append(row)
        if rows_dir is not None:
            from converters.io import write_json_atomic

            rows_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(rows_dir / fname, row)
        _log_row(row, log)
    bar.close()
    if todo:
        for precision in list(ceilings):  # the end-of-run measurement; the best one is kept
            from benchmarks.inference import _merge_ceiling

            ceilings[precision] = _merge_ceiling(ceilings[precision], remeasure(precision))
    results = [r for row in rows for r in row["results"]]
    from benchmarks.report import apply_ceilings

    apply_ceilings(results, ceilings)  # the final ceiling; a model faster than every kernel is the ceiling itself
    done = rows + [r for f, r in on_disk.items() if f not in {t[0] for t in todo}]
    body = {"precision_auto": {"choice": auto_precision, "reason": auto_reason}, "ceilings": ceilings,
            "models": models, "sizes": [list(s) for s in sizes], "variants": list(variants),
            "externals": list(externals), "rounds": ctx.rounds, "timing": asdict(timing),
            "rows_dir": str(rows_dir) if rows_dir else None, "rows_measured": len(rows),
            "rows_resumed": len(plan) - len(todo), "loadavg_at_start": loadavg_start, "loadavg_at_end": _loadavg(),
            "results": results, "same_network": [dict(s, size=row["size"]) for row in rows
                                                 for s in row.get("same_network", [])]}
    # quick (CI) mode estimates its own models only; a real run every registered model (FLOPs on the meta device)
    body["estimate_full_table"] = full_table_estimate(done, sizes, num_classes, log,
                                                      models=models if quick else None)
    return body


def full_table_estimate(done: Sequence[dict[str, Any]], sizes: Sequence[tuple[int, int]], num_classes: int,
                        log: Callable[[str], None], models: Sequence[str] | None = None) -> dict[str, Any] | None:
    """Estimate the whole table (``models``, default every registered model, at ``sizes``, all variants) from the
    rows in ``done``."""
    from reference_models import list_models

    ours = [r for r in done if r.get("role") == "ours"]
    if not ours:
        return None
    todo = []
    for name in models or list_models():
        try:
            modules = module_count(name, num_classes)
            for size in sizes:
                todo.append({"model": name, "size": list(size), "modules": modules,
                             "gflops": count_flops_meta(name, size, num_classes) / 1e9})
        except Exception:  # noqa: BLE001 - a model that cannot run on the meta device is left out
            continue
    est = estimate(ours, todo)
    what = "every registered model" if models is None else f"{len(models)} models"
    log(format_estimate(est, f"estimate for {what} at {', '.join(size_label(s) for s in sizes)}"))
    return est


def _log_row(row: dict[str, Any], log: Callable[[str], None]) -> None:
    parts = []
    for r in row["results"]:
        tag = r.get("variant", "?") + (f"[{r['model']}]" if r.get("role") == "external" else "")
        if r.get("precision") not in (None, "fp32") and r.get("variant") != r.get("precision"):
            tag += f" ({r['precision']})"
        if r.get("status") != "ok":
            untimed = r.get("argmax_agreement") if r.get("untimed") else None
            parts.append(f"{tag} {'not native' if r.get('not_native') else r.get('status')}"
                         + (f" (untimed: {100 * untimed:.2f} %)" if untimed is not None else ""))
            continue
        ratio = r.get("ratio_to_eager", r.get("ratio_to_ours_eager"))
        agree = r.get("argmax_agreement")
        extra = ([f"{ratio:.3f}x"] if ratio is not None else []) + ([f"{100 * agree:.2f} %"] if agree is not None else [])
        parts.append(f"{tag} {r['latency']['median_s'] * 1e3:.0f} ms" + (f" ({', '.join(extra)})" if extra else ""))
    log(f"{row['model']} {size_label(row['size'])} [{row['wall_s']:.0f} s]: " + "; ".join(parts))
    for s in row.get("same_network", []):
        if s.get("status") == "ok":
            log(f"  same weights via {s['mapping']}: max rel diff {s['max_rel_diff']:.2e}, argmax "
                f"{100 * s['argmax_agreement']:.2f} %")
        else:
            log(f"  same network: {s.get('status')}: {s.get('reason') or s.get('error')}")
