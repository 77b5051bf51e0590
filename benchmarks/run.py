"""Run one benchmark suite and write its JSON (named by the environment) for ``benchmarks.report``.

Suites::

    python -m benchmarks.run --suite inference [--models A,B] [--sizes 321,513,1025] [--batch 1,4]
                             [--precision fp32,bf16,fp16] [--memory-format contiguous,channels_last]
                             [--compile off,on] [--peers auto|none|NAME,...] [--quick]
    python -m benchmarks.run --suite train [--configs NAME,...] [--batch N] [--sizes CROP]
                             [--amp off,on] [--memory-format ...] [--quick]
    python -m benchmarks.run --suite convert [--quick] [--workdir DIR]
    python -m benchmarks.run --suite eval [--quick]
    python -m benchmarks.run --suite engine [--models A,B] [--sizes 321,513] [--variants eager,engine,compile,bf16]
                             [--external MODULE:FACTORY[=OURS,...] ...] [--external-path DIR ...] [--resume]
                             [--quick]
    python -m benchmarks.run --suite precision [--models tiny,r101] [--precision fp32,bf16,fp16]
                             [--setting r101.iterations=N ...] [--workdir DIR] [--quick]

The engine suite writes one JSON per model and size, as each completes, into
``--out-dir/engine-rows-<device>-<cpu>-<threads>t/``; ``--resume`` skips the rows already there,
so the table can be run in pieces (``--models``) and ``benchmarks.report`` merges them.

Every suite takes ``--device auto|cpu|cuda`` (GPU-only points are recorded as skipped
with the reason on CPU), ``--threads N``, ``--out FILE`` or ``--out-dir DIR`` (default
``results/benchmarks/``). Exit status: 0 written, 1 a suite failed, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks._common import (
    DEFAULT_RESULTS_DIR,
    MEMORY_FORMATS,
    PRECISIONS,
    REPO,
    SCHEMA_VERSION,
    environment,
    parse_list,
    parse_sizes,
    resolve_device,
    write_result,
)
from benchmarks.inference import PEERS, Grid, Timing
from converters.cli import program_name, run_main
from converters.errors import DeeplabError, UsageError

SUITES = ("inference", "train", "convert", "eval", "engine", "precision")
FULL_TIMING = Timing(warmup=2, repeats=10, min_seconds=2.0, max_seconds=60.0)
QUICK_TIMING = Timing(warmup=1, repeats=3, min_seconds=0.0, max_seconds=5.0)


def build_parser() -> argparse.ArgumentParser:
    """The command line (hyphenated flags; lists are comma-separated)."""
    p = argparse.ArgumentParser(prog=program_name("benchmarks.run"), description="Run one benchmark suite and write its JSON for benchmarks.report.",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="See the module docstrings of benchmarks/{inference,training,evaluation,"
                                       "convert}.py for what each number means.")
    p.add_argument("--suite", required=True, choices=SUITES, help="which benchmark to run")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="auto: CUDA when available, else CPU (default)")
    p.add_argument("--quick", action="store_true",
                   help="CI mode: a tiny default grid (one small model, small sizes) and few repeats")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--out", type=Path, default=None, help="result JSON path (default: --out-dir/<env name>.json)")
    p.add_argument("--out-dir", type=Path, default=DEFAULT_RESULTS_DIR,
                   help=f"directory for the result JSON (default: {DEFAULT_RESULTS_DIR.relative_to(REPO)})")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    g = p.add_argument_group("grid (inference, train)")
    g.add_argument("--models", help="registered model names (inference; default: every registered model)")
    g.add_argument("--sizes", help="input sizes N or HxW (inference default 321,513,1025; train: the crop)")
    g.add_argument("--batch", help="batch sizes (inference default 1; train: overrides each config's batch)")
    g.add_argument("--precision", help=f"{','.join(PRECISIONS)} (default: all; fp16 is CUDA-only)")
    g.add_argument("--memory-format", help=f"{','.join(MEMORY_FORMATS)} (default: both)")
    g.add_argument("--compile", help="off,on (torch.compile; default: both, quick: off)")
    g.add_argument("--peers", default="auto",
                   help="peer implementations: auto (those whose counterpart is in --models), none, or names "
                        f"({', '.join(PEERS)})")
    g.add_argument("--configs", help="train configs: the built-in published setups and reproduce/configs/*.yaml "
                                     "names (default: all but tiny ones; quick: a tiny MobileNet-v2 one)")
    g.add_argument("--amp", help="train: off,on (default: both)")
    g.add_argument("--num-classes", type=int, default=21, help="output classes (default: 21, VOC)")
    g.add_argument("--variants", help="engine: eager,engine,compile,bf16 (default: all; quick: eager,engine)")
    g.add_argument("--external", action="append", default=[], metavar="MODULE:FACTORY[=OURS,...]",
                   help="engine: also time this nn.Module builder (eager NCHW and channels_last); with =OURS in the "
                        "rows of those models of ours, in the same rounds, with a same-weights output check where "
                        "an importer maps its state dict (repeatable)")
    g.add_argument("--external-path", action="append", default=[], metavar="DIR",
                   help="engine: put DIR first on the import path of this run for --external (repeatable)")
    g.add_argument("--resume", action="store_true",
                   help="engine: skip the model/size rows already written in the rows directory with the same "
                        "settings and no failed result")
    t = p.add_argument_group("timing")
    t.add_argument("--warmup", type=int, default=None, help="untimed calls per point (default 2, quick 1)")
    t.add_argument("--repeats", type=int, default=None, help="minimum timed calls per point (default 10, quick 3)")
    t.add_argument("--min-seconds", type=float, default=None, help="minimum timed seconds per point (default 2)")
    t.add_argument("--max-seconds", type=float, default=None,
                   help="stop timing a point after this many seconds, >= 3 samples (default 60, quick 5)")
    c = p.add_argument_group("convert / eval / precision")
    c.add_argument("--workdir", type=Path, default=REPO / "data" / "benchmarks",
                   help="convert: where generated model files go; precision: its trained models go in "
                        "WORKDIR/precision, a finished one is reused (default: data/benchmarks)")
    c.add_argument("--setting", action="append", default=[], metavar="MODEL.FIELD=VALUE",
                   help="precision: a model's plan (benchmarks/precision.py Plan: iterations, batch, train_size, "
                        "eval_size, pad_crop, images, msc_images, scales, precisions), e.g. r101.iterations=10 "
                        "(repeatable)")
    c.add_argument("--crf-workers", type=int, default=0, help="eval: CRF worker processes up to N (default: CPUs)")
    return p


def _timing(args: argparse.Namespace) -> Timing:
    base = QUICK_TIMING if args.quick else FULL_TIMING
    return Timing(warmup=base.warmup if args.warmup is None else args.warmup,
                  repeats=base.repeats if args.repeats is None else args.repeats,
                  min_seconds=base.min_seconds if args.min_seconds is None else args.min_seconds,
                  max_seconds=base.max_seconds if args.max_seconds is None else args.max_seconds)


def _ints(text: str | None, default: list[int]) -> list[int]:
    items = parse_list(text)
    try:
        return [int(i) for i in items] if items else default
    except ValueError:
        raise ValueError(f"expected integers, got {text!r}") from None


def _switch(text: str | None, default: list[bool], what: str) -> list[bool]:
    items = parse_list(text, choices=("off", "on"), what=what)
    return [i == "on" for i in items] if items else default


def suite_inference(args: argparse.Namespace, device: torch.device, log) -> dict[str, Any]:
    from benchmarks.inference import run_inference
    from reference_models import list_models

    registered = list_models()
    models = parse_list(args.models, choices=registered, what="model") or (
        ["deeplabv3_mobilenetv2"] if args.quick else registered)
    grid = Grid(
        models=tuple(models),
        sizes=tuple(parse_sizes(args.sizes or ("65,97" if args.quick else "321,513,1025"))),
        batches=tuple(_ints(args.batch, [1])),
        precisions=tuple(parse_list(args.precision, choices=PRECISIONS, what="precision") or
                         (["fp32", "bf16"] if args.quick else list(PRECISIONS))),
        memory_formats=tuple(parse_list(args.memory_format, choices=MEMORY_FORMATS, what="memory format") or
                             list(MEMORY_FORMATS)),
        compiles=tuple(_switch(args.compile, [False] if args.quick else [False, True], "compile")),
        num_classes=args.num_classes,
    )
    if args.peers == "auto":
        peers = [name for name, peer in PEERS.items() if peer.ours in grid.models]
    elif args.peers == "none":
        peers = []
    else:
        peers = parse_list(args.peers, choices=PEERS, what="peer") or []
    return run_inference(grid, _timing(args), device, peers=peers, quick=args.quick, log=log)


def suite_train(args: argparse.Namespace, device: torch.device, log) -> dict[str, Any]:
    from dataclasses import replace

    from benchmarks.training import QUICK_CONFIG, TRAIN_CONFIGS, project_configs, run_train

    known = {**TRAIN_CONFIGS, **project_configs()}  # the project's reproduce/configs/*.yaml win on a name clash
    names = parse_list(args.configs, choices=known, what="train config")
    quick = [QUICK_CONFIG] if args.quick else None
    configs = [known[n] for n in names] if names else (quick or [c for n, c in known.items()
                                                                if "tiny" not in c.model])
    batches = _ints(args.batch, [])
    sizes = parse_sizes(args.sizes) if args.sizes else []
    if len(batches) > 1 or len(sizes) > 1:
        raise ValueError("train: --batch and --sizes take one value (they override every config's batch/crop)")
    if batches:
        configs = [replace(c, batch=batches[0]) for c in configs]
    if sizes:
        if sizes[0][0] != sizes[0][1]:
            raise ValueError("train: the crop is square; give --sizes N")
        configs = [replace(c, crop=sizes[0][0]) for c in configs]
    amps = _switch(args.amp, [False, True], "amp")
    formats = parse_list(args.memory_format, choices=MEMORY_FORMATS, what="memory format") or list(MEMORY_FORMATS)
    body = run_train(configs, amps, formats, device, _timing(args), num_classes=args.num_classes, log=log)
    body["overrides"] = {"batch": batches[0] if batches else None, "crop": sizes[0][0] if sizes else None}
    return body


def suite_convert(args: argparse.Namespace, device: torch.device, log) -> dict[str, Any]:
    from benchmarks import convert

    argv = ["--workdir", str(args.workdir)] + (["--quick"] if args.quick else [])
    if args.threads:
        argv += ["--threads", str(args.threads)]
    log("caffe: " + ("single-scale ResNet-101 (--quick)" if args.quick else "3-scale ResNet-101 (full size)"))
    caffe = convert.run_benchmark(convert.build_parser().parse_args(argv))
    log(convert.format_table(caffe))
    from benchmarks.convert_tf import run_tf_benchmark

    tf = run_tf_benchmark(args.workdir, quick=args.quick, threads=args.threads, log=log)
    return {"caffe": caffe, "tf": tf, "note": "each path runs in its own process; seconds are whole-process wall "
                                              "time, peak RSS the child's own ru_maxrss (benchmarks/_measure.py)"}


def suite_eval(args: argparse.Namespace, device: torch.device, log) -> dict[str, Any]:
    from benchmarks.evaluation import run_eval

    devices = [torch.device("cpu"), torch.device("cuda")]
    size, batch = (129, 2) if args.quick else (513, 8)
    body = run_eval(devices, _timing(args), batch=batch, size=size, num_classes=args.num_classes,
                    crf_images=4 if args.quick else 16, crf_size=size, crf_workers=args.crf_workers,
                    pipeline_model="deeplabv3plus_tiny" if args.quick else "deeplabv3plus_resnet101",
                    pipeline_images=3 if args.quick else 8, pipeline_size=size, log=log)
    if device.type == "cpu" and torch.cuda.is_available():
        body["note"] = "--device cpu: the CUDA confusion-matrix figure is measured anyway when a GPU is present"
    return body


def suite_engine(args: argparse.Namespace, device: torch.device, log) -> dict[str, Any]:
    from benchmarks.engine import ENGINE_VARIANTS, rows_dir_name, run_engine
    from reference_models import list_models

    registered = list_models()
    models = parse_list(args.models, choices=registered, what="model") or (
        ["deeplabv3plus_tiny"] if args.quick else registered)
    variants = parse_list(args.variants, choices=ENGINE_VARIANTS, what="variant") or (
        ["eager", "engine"] if args.quick else list(ENGINE_VARIANTS))
    if "eager" not in variants:
        variants = ["eager", *variants]  # every ratio is to plain eager fp32 NCHW
    sizes = parse_sizes(args.sizes or ("65" if args.quick else "321,513"))
    rows_dir = (args.out.parent if args.out else args.out_dir) / rows_dir_name(environment(device))
    return run_engine(models, sizes, variants, _timing(args), device, rows_dir=rows_dir, resume=args.resume,
                      externals=args.external, external_paths=args.external_path, quick=args.quick,
                      num_classes=args.num_classes, progress=not args.quiet, log=log)


def suite_precision(args: argparse.Namespace, device: torch.device, log) -> dict[str, Any]:
    from benchmarks import precision

    if device.type != "cpu":
        raise ValueError("precision: measured on the CPU (bf16/fp16 numerics carry over; use --device cpu)")
    models = parse_list(args.models, choices=precision.MODELS, what="precision model") or (
        ["tiny"] if args.quick else list(precision.MODELS))
    precisions = parse_list(args.precision, choices=precision.PRECISIONS, what="precision") or \
        list(precision.PRECISIONS)
    plans = precision.plans_with(args.setting, models, quick=args.quick)
    return precision.run_precision(models, precisions, plans, args.workdir / "precision", log=log)


SUITE_FUNCS = {"inference": suite_inference, "train": suite_train, "convert": suite_convert, "eval": suite_eval,
               "engine": suite_engine, "precision": suite_precision}


def main(argv: list[str] | None = None) -> int:
    """Parse, run the suite, write the JSON atomically; 0 ok, 1 the suite failed, 2 bad arguments."""
    return run_main(build_parser(), lambda args: run(args, argv), argv)


def _print_beside_progress_bars(msg: str) -> None:
    from tqdm import tqdm

    tqdm.write(msg, file=sys.stdout)
    sys.stdout.flush()


def run(args: argparse.Namespace, argv: list[str] | None = None) -> None:
    """Run the suite ``args`` name and write its JSON; UsageError (exit 2) or DeeplabError (exit 1) on failure."""
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.threads:
        torch.set_num_threads(args.threads)
    log = (lambda _msg: None) if args.quiet else _print_beside_progress_bars
    env = environment(device)
    log(f"{args.suite} on {env['device_name']} ({device.type}), torch {env['torch']}, {env['torch_threads']} threads")
    t0 = time.perf_counter()
    try:
        body = SUITE_FUNCS[args.suite](args, device, log)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    except (RuntimeError, TimeoutError, OSError) as exc:
        raise DeeplabError(f"{args.suite} failed: {exc}") from None
    record = {"schema": SCHEMA_VERSION, "suite": args.suite, "mode": "quick" if args.quick else "full",
              "argv": sys.argv[1:] if argv is None else list(argv), "environment": env, **body,
              "total_seconds": round(time.perf_counter() - t0, 1)}
    path = write_result(record, args.out, args.out_dir, quick=args.quick)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
