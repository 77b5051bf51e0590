"""The engine in channels_last against the engine in NCHW, per registered model, side by side in one run.

``Segmenter(memory_format="auto")`` picks its layout by device and precision
(:func:`reproduce.inference.choose_memory_format`). This harness measures the choice: for every model
and size it builds two engines that differ only in ``memory_format`` (BatchNorm folded, the precision
``auto`` chose, no compile), checks that both give the same output, and times them in interleaved
rounds (alternating order). The ratio is channels_last's median over NCHW's; below 1, channels_last is
faster. Random weights, batch 1.

    python -m benchmarks.memory_format --out benchmarks/reports/memory-format-DATE [--models a,b] [--sizes 321,513]

writes ``<out>/memory-format.json`` (strict JSON: environment, per model and size the samples, medians,
ratio and the max relative difference) and ``<out>/README.md`` (the table).
"""

from __future__ import annotations

import copy
import json
import shlex
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks._common import environment, parse_sizes, resolve_device, size_label, synchronize
from benchmarks.engine import interleaved

RERUN = "python -m benchmarks.memory_format --out benchmarks/reports/memory-format-DATE"


def measure(name: str, size: tuple[int, int], *, device: torch.device, rounds: int, num_classes: int,
            max_seconds: float = 120.0) -> dict[str, Any]:
    """Both layouts of the engine for model ``name`` at ``size``: medians, ratio, output difference."""
    from reference_models import build_model
    from reproduce.inference import Segmenter

    torch.manual_seed(0)
    model = build_model(name, num_classes=num_classes).eval()
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0)).to(device)
    engines = {fmt: Segmenter.from_module(copy.deepcopy(model), device=device, memory_format=fmt)
               for fmt in ("channels_last", "contiguous")}
    del model
    outs = {}
    for fmt, engine in engines.items():  # the first calls create the oneDNN / cuDNN primitives: not timed
        engine.forward(x)
        outs[fmt] = engine.forward(x)
        synchronize(device)
    a, b = outs["channels_last"], outs["contiguous"]
    max_rel = float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))
    fns: dict[str, Callable[[], Any]] = {fmt: (lambda e=e: e.forward(x)) for fmt, e in engines.items()}
    samples = interleaved(fns, rounds, device, max_seconds)
    med = {fmt: statistics.median(v) for fmt, v in samples.items()}
    return {"model": name, "size": list(size), "precision": engines["contiguous"].precision,
            "rounds": len(samples["contiguous"]),
            "channels_last_ms": round(med["channels_last"] * 1e3, 2), "nchw_ms": round(med["contiguous"] * 1e3, 2),
            "channels_last_over_nchw": round(med["channels_last"] / med["contiguous"], 4),
            "max_rel_diff": max_rel,
            "samples_s": {fmt: [round(t, 5) for t in v] for fmt, v in samples.items()}}


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| model | size | precision | NCHW | channels_last | channels_last / NCHW | max rel diff |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {size_label(r['size'])} | – | failed: {r['error']} | | | |")
            continue
        lines.append(f"| {r['model']} | {size_label(r['size'])} | {r['precision']} | {r['nchw_ms']:.1f} ms | "
                     f"{r['channels_last_ms']:.1f} ms | {r['channels_last_over_nchw']:.3f} | {r['max_rel_diff']:.1e} |")
    ok = [r["channels_last_over_nchw"] for r in rows if "error" not in r]
    if ok:
        faster = sum(1 for v in ok if v < 1)
        lines += ["", f"channels_last faster in {faster} of {len(ok)} (ratio {min(ok):.3f} to {max(ok):.3f})."]
    return "\n".join(lines) + "\n"


def build_parser() -> Any:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.memory_format",
        description="The inference engine in channels_last against NCHW for every registered model, side by side "
                    "in one run (random weights, batch 1, interleaved rounds).",
        epilog=f"example:\n  {RERUN}\n\nwrites <out>/memory-format.json (strict JSON) and <out>/README.md; exit 0 ok, "
               "1 failed, 2 usage, 130 interrupted",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--models", help="comma list of registered models (default: all)")
    parser.add_argument("--sizes", default="321,513", help="input sizes, comma list of N or HxW (default 321,513)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--device", default="auto", help="auto (cuda when available, else cpu), cpu, cuda")
    parser.add_argument("--num-classes", type=int, default=21, help="classes (default 21, VOC)")
    return parser


def _run_cli(args: Any) -> None:
    from tqdm import tqdm

    from converters.errors import UsageError
    from converters.io import write_text_atomic
    from reference_models import list_models

    known = list_models()
    models = [m for m in (args.models or "").split(",") if m] or known
    unknown = [m for m in models if m not in known]
    if unknown:
        raise UsageError(f"--models: unknown {', '.join(unknown)}")
    if args.rounds < 1 or args.num_classes < 1:
        raise UsageError("--rounds and --num-classes must be >= 1")
    try:
        sizes = parse_sizes(args.sizes)
    except ValueError as exc:
        raise UsageError(f"--sizes: {exc}") from None
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if not sizes or min(min(s) for s in sizes) < 1:
        raise UsageError(f"--sizes: give positive sizes, got {args.sizes!r}")
    env = environment(device)
    rows = []
    for size in sizes:
        for name in tqdm(models, desc=f"memory format {size_label(size)}", file=sys.stderr):
            try:
                rows.append(measure(name, size, device=device, rounds=args.rounds, num_classes=args.num_classes))
            except Exception as exc:  # noqa: BLE001 - reported in the table, the run goes on
                rows.append({"model": name, "size": list(size), "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
    command = "python -m benchmarks.memory_format " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    record = {"suite": "memory-format", "schema": 1, "command": command, "environment": env, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(record, indent=2, allow_nan=False) + "\n"
    write_text_atomic(args.out / "memory-format.json", text)
    md = (f"# Engine memory format: channels_last against NCHW\n\nCommand: `{command}`\n\n"
          f"Device: {env['device_name']} ({env['cpus_usable']} usable cores), torch {env['torch']}, "
          f"{env['torch_threads']} threads; load average at start {env['loadavg_at_start']}; {env['created_utc']}, "
          f"commit {(env.get('git') or {}).get('commit')}\n\n" + format_table(rows))
    write_text_atomic(args.out / "README.md", md)
    print(format_table(rows))
    print(f"wrote {args.out / 'memory-format.json'} and {args.out / 'README.md'}")
    if any("error" in r for r in rows):
        from converters.errors import DeeplabError

        raise DeeplabError(f"{sum('error' in r for r in rows)} measurement(s) failed (see {args.out / 'README.md'})")


def main(argv: list[str] | None = None) -> int:
    """The command line (see :func:`build_parser`): exit 0 ok, 1 failed, 2 usage, 130 interrupted."""
    from converters.cli import run_main

    return run_main(build_parser(), _run_cli, argv)


if __name__ == "__main__":
    raise SystemExit(main())
