"""DeepLab v2's 3-scale (MSC) forward and the engine's compile cache, measured side by side.

Two parts, each written as strict JSON plus a Markdown table (``--out`` folder):

* ``eager``: ways to run the MSC model's three scale branches (1, 0.75, 0.5; shared trunk, max
  fusion) in ONE process, interleaved round by round so a noisy neighbour slows all of them alike:
  the model's own sequential forward on the engine's network (BatchNorm folded, channels_last),
  the same with the max fused in place, the branches on two threads (1 or 2 intra-op threads
  each) and, for the flip protocol, the image and its mirror as one batch of 2 vs two calls.
  Every variant's output is compared with the sequential one.
* ``compile``: fresh processes, each compiling the engine's network with inductor: the whole MSC
  forward as one graph or each branch's trunk + head as its own graph, with and without weight
  freezing; a process run twice on the same cache folder shows what the on-disk cache saves
  (first call = compile + one forward; steady state = median of later calls, eager timed
  interleaved in the same process).

Random weights (timing does not depend on them); threads fixed by ``--threads``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from converters.cli import run_main
from converters.errors import DeeplabError, UsageError
from converters.io import write_json_atomic, write_text_atomic

MODEL = "deeplabv2_resnet101_msc"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    from reproduce.inference import cpu_flags

    flags = cpu_flags()
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "cpu_flags": sorted(f for f in flags if f.startswith(("avx512_bf16", "amx", "avx512f", "avx512_vnni"))),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def _engine(model: str, seed: int = 0):
    from reference_models import build_model
    from reproduce.inference import Segmenter

    torch.manual_seed(seed)
    return Segmenter.from_module(build_model(model, num_classes=21), device="cpu", precision="fp32")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


# ---------------------------------------------------------------------------------------------- eager
def eager_part(sizes: list[int], rounds: int, log, only: list[str] | None = None) -> list[dict[str, Any]]:
    from reference_models.caffe_ops import caffe_resize, scaled_size

    engine = _engine(MODEL)
    net = engine.net
    cl = torch.channels_last
    pool = ThreadPoolExecutor(2)

    def inputs(x):
        h, w = x.shape[-2:]
        return [x] + [caffe_resize(x, (scaled_size(h, s), scaled_size(w, s))) for s in net.scales[1:]]

    def fuse_into(outs):
        fused = outs[0]
        for o in outs[1:]:
            torch.maximum(fused, caffe_resize(o, tuple(fused.shape[-2:])), out=fused)
        return fused

    def on_threads(threads, fn, *args):
        torch.set_num_threads(threads)
        return fn(*args)

    def threaded(threads):
        def run(x):
            xs = inputs(x)
            big = pool.submit(on_threads, threads, net._single, xs[0])
            small = pool.submit(on_threads, threads, lambda a, b: (net._single(a), net._single(b)), xs[1], xs[2])
            return fuse_into([big.result(), *small.result()])
        return run

    variants = {
        "sequential (model forward)": net,
        "sequential, max in place": lambda x: fuse_into([net._single(v) for v in inputs(x)]),
        "2 threads x 1 intra-op thread (1x | 0.75x+0.5x)": threaded(1),
        "2 threads x 2 intra-op threads (1x | 0.75x+0.5x)": threaded(2),
        "flip pair: two calls": lambda x: (net(x), net(x.flip(-1).contiguous(memory_format=cl))),
        "flip pair: one batch of 2": lambda x: net(torch.cat([x, x.flip(-1)]).contiguous(memory_format=cl)),
    }
    if only:
        variants = {k: v for k, v in variants.items() if k.startswith(("sequential (", "flip pair: two"))
                    or any(word in k for word in only)}
    rows = []
    for size in sizes:
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(size)).contiguous(memory_format=cl)
        times: dict[str, list[float]] = {k: [] for k in variants}
        outs: dict[str, Any] = {}
        with torch.inference_mode():
            for r in range(rounds + 1):  # round 0 warms up
                for name, fn in variants.items():
                    t0 = time.perf_counter()
                    outs[name] = fn(x)
                    if r:
                        times[name].append(time.perf_counter() - t0)
                log(f"  {size}: round {r}/{rounds}")
        ref = outs["sequential (model forward)"]
        two = outs["flip pair: two calls"]
        base = times["sequential (model forward)"]
        for name, ts in times.items():
            out = outs[name]
            if name.startswith("flip"):
                got = torch.cat(list(out)) if isinstance(out, tuple) else out
                diff = _rel(got, torch.cat(list(two)))
                base_t = times["flip pair: two calls"]
            else:
                diff, base_t = _rel(out, ref), base
            rows.append({"size": size, "variant": name, "median_ms": round(statistics.median(ts) * 1e3, 1),
                         "runs": len(ts), "ratio_vs_baseline": round(statistics.median(
                             [t / b for t, b in zip(ts, base_t)]), 3),
                         "max_rel_diff_vs_baseline": diff})
            log(f"  {size} {name}: {rows[-1]['median_ms']} ms, x{rows[-1]['ratio_vs_baseline']}, diff {diff:.2e}")
    pool.shutdown()
    return rows


# ---------------------------------------------------------------------------------------------- compile
def compile_child(model: str, size: int, mode: str, freezing: str, repeats: int) -> dict[str, Any]:
    """One fresh process: compile, time the first call, then eager vs compiled interleaved."""
    import torch._inductor.config as inductor_config
    from torch._dynamo.utils import counters

    from reproduce.inference import use_inductor_cache_dir

    engine = _engine(model)
    net = engine.net
    cache = use_inductor_cache_dir()
    inductor_config.freezing = freezing != "off"
    # "noprepack": freezing without oneDNN weight prepacking (prepacked weights are mkldnn tensors,
    # which inductor's FX graph cache cannot pickle, so it bypasses the cache for such graphs)
    inductor_config.cpp.weight_prepack = freezing != "noprepack"
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(size)).contiguous(
        memory_format=torch.channels_last)
    with torch.inference_mode():
        ref = net(x)
        t0 = time.perf_counter()
        if mode == "whole":
            compiled = torch.compile(net, backend="inductor", dynamic=False)
            out = compiled(x)
        else:  # each branch's trunk + head its own graph; resizes and max stay eager
            import copy

            compiled = copy.copy(net)
            compiled._single = torch.compile(net._single, backend="inductor", dynamic=False)
            out = compiled(x)
        first = time.perf_counter() - t0
        eager_t, comp_t = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            net(x)
            eager_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            compiled(x)
            comp_t.append(time.perf_counter() - t0)
    return {"model": model, "size": size, "mode": mode, "freezing": freezing, "cache_dir": str(cache),
            "first_call_s": round(first, 2),
            "eager_median_ms": round(statistics.median(eager_t) * 1e3, 1),
            "compiled_median_ms": round(statistics.median(comp_t) * 1e3, 1),
            "ratio_compiled_vs_eager": round(statistics.median([c / e for c, e in zip(comp_t, eager_t)]), 3),
            "max_rel_diff_vs_eager": _rel(out, ref),
            "fx_graph_cache": {k: v for k, v in counters["inductor"].items() if k.startswith("fxgraph_cache")},
            "aot_autograd_cache": {k: v for k, v in counters["aot_autograd"].items() if "cache" in k}}


def compile_part(model: str, sizes: list[int], modes: list[str], freezings: list[str], repeats: int,
                 threads: int, log) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="msc-cache-") as tmp:
        for size in sizes:
            for mode in modes:
                for freezing in freezings:
                    cache = Path(tmp) / f"{size}-{mode}-{freezing}"
                    for run in ("first process (empty cache)", "second process (same cache)"):
                        env = dict(os.environ, DEEPLAB_INDUCTOR_CACHE_DIR=str(cache))
                        cmd = [sys.executable, "-m", "benchmarks.msc_compile", "--child", "--model", model,
                               "--sizes", str(size), "--modes", mode, "--freezing", freezing,
                               "--repeats", str(repeats), "--threads", str(threads)]
                        t0 = time.perf_counter()
                        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
                        wall = time.perf_counter() - t0
                        if proc.returncode != 0:
                            raise DeeplabError(f"compile child failed: {(proc.stderr.strip().splitlines() or [''])[-1]}")
                        row = json.loads(proc.stdout.strip().splitlines()[-1])
                        row.update(run=run, process_wall_s=round(wall, 1))
                        rows.append(row)
                        log(f"  {size} {mode} freezing={freezing} {run}: first call {row['first_call_s']} s, "
                            f"compiled {row['compiled_median_ms']} ms vs eager {row['eager_median_ms']} ms, "
                            f"fx cache {row['fx_graph_cache']}")
    return rows


# ---------------------------------------------------------------------------------------------- tables
def markdown(record: dict[str, Any]) -> str:
    env = record["environment"]
    lines = [f"CPU: {env['cpu']} ({env['cores']} cores), torch {env['torch']}, {env['torch_threads']} threads; "
             f"load average at start {env['load_average']}", ""]
    if record.get("eager"):
        lines += ["| size | variant | median ms | ratio vs baseline (paired median) | max rel diff |",
                  "|---:|---|---:|---:|---:|"]
        lines += [f"| {r['size']} | {r['variant']} | {r['median_ms']} | {r['ratio_vs_baseline']} | "
                  f"{r['max_rel_diff_vs_baseline']:.1e} |" for r in record["eager"]]
        lines.append("")
    if record.get("compile"):
        lines += ["| size | graphs | freezing | process | first call s | compiled ms | eager ms | compiled/eager |"
                  " FX cache | AOT cache |", "|---:|---|---|---|---:|---:|---:|---:|---|---|"]
        for r in record["compile"]:
            fx = ", ".join(f"{k.split('_')[-1]} {v}" for k, v in sorted(r["fx_graph_cache"].items())) or "-"
            aot = ", ".join(f"{k.split('_')[-1]} {v}" for k, v in sorted(r["aot_autograd_cache"].items())) or "-"
            lines.append(f"| {r['size']} | {r['mode']} | {r['freezing']} | {r['run']} | "
                         f"{r['first_call_s']} | {r['compiled_median_ms']} | {r['eager_median_ms']} | "
                         f"{r['ratio_compiled_vs_eager']} | {fx} | {aot} |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.msc_compile",
                                description="DeepLab v2 MSC branch strategies and the engine's compile cache, "
                                            "measured side by side; writes JSON and a Markdown table.")
    p.add_argument("--part", choices=("eager", "compile", "both"), default="both")
    p.add_argument("--model", default=MODEL, help="registered model (compile part; default %(default)s)")
    p.add_argument("--sizes", default="321,513", help="square input sizes, comma separated (default %(default)s)")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds of the eager part (default %(default)s)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per compile process (default %(default)s)")
    p.add_argument("--modes", default="whole,branch", help="compile graphs: whole and/or branch")
    p.add_argument("--freezing", default="on,noprepack,off",
                   help="inductor freezing: on, noprepack (freezing without oneDNN weight prepacking), off")
    p.add_argument("--variants", default="", help="eager part: only the variants whose names contain one of "
                   "these comma-separated words (the baselines always run); default all")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default %(default)s)")
    p.add_argument("--out", type=Path, help="folder for results.json and results.md")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return p


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s]
        modes = [m for m in args.modes.split(",") if m]
        freezings = [f for f in args.freezing.split(",") if f]
    except ValueError:
        raise UsageError("--sizes takes integers") from None
    if any(f not in ("on", "noprepack", "off") for f in freezings):
        raise UsageError("--freezing takes on, noprepack and/or off")
    if not sizes or any(s < 33 for s in sizes) or any(m not in ("whole", "branch") for m in modes):
        raise UsageError("--sizes must be >= 33 and --modes whole/branch")
    if args.child:
        print(json.dumps(compile_child(args.model, sizes[0], modes[0], freezings[0], args.repeats)))
        return
    if args.out is None:
        raise UsageError("--out FOLDER is required")
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    record: dict[str, Any] = {"schema": 1, "argv": sys.argv[1:], "environment": environment()}
    if args.part in ("eager", "both"):
        log("eager MSC variants")
        record["eager"] = eager_part(sizes, args.rounds, log, [w for w in args.variants.split(",") if w])
    if args.part in ("compile", "both"):
        log("compile processes")
        record["compile"] = compile_part(args.model, sizes, modes, freezings, args.repeats, args.threads, log)
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"{args.part}"
    write_json_atomic(args.out / f"{name}.json", record)
    write_text_atomic(args.out / f"{name}.md", markdown(record))
    print(f"wrote {args.out / (name + '.json')}")


def main(argv: list[str] | None = None) -> int:
    return run_main(build_parser(), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
