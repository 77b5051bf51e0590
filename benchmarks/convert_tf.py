"""Benchmark: converting a full-size TF DeepLab checkpoint (time and whole-process peak RSS), beside TF's own reader.

The checkpoint is generated once into the work directory from a release manifest
(``converters/manifests/<release>.json``: every variable name and shape of the official
checkpoint) with random float32 values, written by TensorFlow's ``SaveV2`` op, so it
has the official names, layout and size (full: ``deeplabv3_pascal_train_aug_2018_01_04``,
DeepLab v3+ Xception-65, ~157 MiB of weights; quick: the MobileNet-v2 release, ~8 MiB).
Generating needs TensorFlow (``pip install '.[tf]'``); without it the TF part is skipped.

Paths, each in a fresh process measured by ``benchmarks._measure.run_measured``:

- ``ours``: ``python converters/tf2torch.py --dataset RELEASE --checkpoint PREFIX --out X.pth``
  (neither TensorFlow nor torch imported);
- ``naive``: the usual port recipe: ``tf.train.load_checkpoint`` then ``get_tensor`` for every
  variable into a dict of ``torch.from_numpy`` tensors and ``torch.save`` (TensorFlow imported);
- ``baseline``: ``import torch`` only (from the Caffe benchmark of the same run);
- ``ours_no_verify``: ``ours`` with ``--no-verify`` (no CRC-32C check of the tensors);
- ``imports``: what ``tf2torch.py`` imports before it reads a tensor (the converters, numpy, protobuf,
  the stored state-dict signatures; the parser built; no torch, no reference model: it plans against
  ``converters/tf/signatures.json``), nothing converted: the floor of the conversion process.

``rss_above_imports_over_file_size`` is what the conversion itself adds above that floor, per byte of
checkpoint; streaming keeps it near one tensor plus buffers.

``python -m benchmarks.convert_tf stream --workdir DIR --out-dir DIR`` measures the streaming conversion
on several full-size checkpoints written in their releases' exact on-disk formats (:data:`STREAM_CASES`:
the DeepLab-TF zoo Xception-65 (V2), TF-slim's resnet_v1_101 (V1, one ``TensorSliceWriter`` file) and a
DeepLab training checkpoint with a ``Momentum`` slot per trainable variable and ``global_step`` (V2),
the kind ``train.py`` leaves behind) and writes ``convert_tf_stream.json`` and ``stream_table.md`` there.

The CRC-32C check (on by default, as in TensorFlow's restore) is costed three ways (``crc_cost``;
the bound is 10 % of ``ours``): ``crc32c`` timed alone over every data shard; reading every tensor
with and without the check, in this process; and the difference between the ``ours`` and
``ours_no_verify`` processes (on a busy machine mostly run-to-run noise).

Run directly with ``python -m benchmarks.convert_tf WORKLOAD ...`` only as the child.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks._measure import REPO, _emit, child_env, run_measured
from benchmarks.convert import _run_entry
from converters.io import provenance_path, write_json_atomic
from converters.keras_writer import keras_provenance_path

FULL_RELEASE = "deeplabv3_pascal_train_aug_2018_01_04"
QUICK_RELEASE = "deeplabv3_mnv2_pascal_train_aug_2018_01_29"
SEED = 0
MIB = 1 << 20


def _manifest(release: str) -> dict[str, Any]:
    return json.loads((REPO / "converters" / "manifests" / f"{release}.json").read_text(encoding="utf-8"))


def ensure_checkpoint(workdir: Path, release: str, env: dict[str, str], timeout: float, *, fmt: str = "V2",
                      momentum: bool = False) -> tuple[Path, dict]:
    """``<workdir>/tf-<release>[-V1][-training]/model.ckpt``, generated unless a complete one is there."""
    folder = workdir / f"tf-{release}{'-V1' if fmt == 'V1' else ''}{'-training' if momentum else ''}"
    prefix = folder / "model.ckpt"
    stamp = folder / "generated.json"
    files = [prefix] if fmt == "V1" else [Path(str(prefix) + ".index"), Path(str(prefix) + ".data-00000-of-00001")]
    if stamp.is_file():
        try:
            info = json.loads(stamp.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            info = {}
        if info.get("release") == release and info.get("seed") == SEED and all(f.is_file() for f in files) and \
                info.get("format", "V2") == fmt and info.get("momentum", False) == momentum and \
                sum(f.stat().st_size for f in files) == info.get("size_bytes"):
            return prefix, {**info, "reused": True}
    folder.mkdir(parents=True, exist_ok=True)
    m = run_measured([sys.executable, "-m", "benchmarks.convert_tf", "generate", str(prefix), "--release", release,
                      "--format", fmt, *(["--momentum"] if momentum else [])], env=env, timeout=timeout)
    if m.returncode != 0:
        raise RuntimeError(f"generating the TF checkpoint failed (exit {m.returncode}): {m.stderr.strip()[-1500:]}")
    size = sum(f.stat().st_size for f in files)
    info = {"release": release, "seed": SEED, "format": fmt, "momentum": momentum, "size_bytes": size,
            "generate_seconds": round(m.seconds, 3)}
    write_json_atomic(stamp, info)
    return prefix, {**info, "reused": False}


def run_tf_benchmark(workdir: Path, *, quick: bool, threads: int | None, log: Callable[[str], None] = print,
                     timeout: float = 900.0) -> dict[str, Any]:
    """Generate (or reuse) the checkpoint, measure ours and the naive path; the ``tf`` part of the convert suite."""
    if importlib.util.find_spec("tensorflow") is None:
        return {"status": "skipped", "reason": "tensorflow is not installed: it is needed to write the test "
                                                "checkpoint and for the naive reference (pip install '.[tf]')"}
    release = QUICK_RELEASE if quick else FULL_RELEASE
    env = child_env(threads)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    workdir = workdir.resolve()
    log(f"tf: {release} ({'quick' if quick else 'full size'})")
    prefix, info = ensure_checkpoint(workdir, release, env, timeout)
    size = info["size_bytes"]
    py = sys.executable
    runs: dict[str, dict[str, Any]] = {}

    baseline = run_measured([py, "-m", "benchmarks._measure", "baseline"], env=env, timeout=timeout)
    runs["baseline"] = _run_entry(baseline, size)
    imports = run_measured([py, "-m", "benchmarks.convert_tf", "imports"], env=env, timeout=timeout)
    if imports.returncode != 0:
        raise RuntimeError(f"the imports-only run failed (exit {imports.returncode}): {imports.stderr[-1500:]}")
    runs["imports"] = _run_entry(imports, size)
    out_pth = prefix.parent / "ours.pth"
    ours = run_measured([py, str(REPO / "converters" / "tf2torch.py"), "--dataset", release, "--checkpoint",
                         str(prefix), "--out", str(out_pth), "--quiet"], env=env, timeout=timeout)
    if ours.returncode != 0:
        raise RuntimeError(f"tf2torch.py failed (exit {ours.returncode}): {ours.stderr.strip()[-1500:]}")
    runs["ours"] = _run_entry(ours, size)
    runs["ours"]["output_bytes"] = out_pth.stat().st_size
    naive_pth = prefix.parent / "naive.pth"
    naive = run_measured([py, "-m", "benchmarks.convert_tf", "naive", str(prefix), "--out", str(naive_pth)],
                         env=env, timeout=timeout)
    if naive.returncode != 0:
        raise RuntimeError(f"the naive TF conversion failed (exit {naive.returncode}): {naive.stderr[-1500:]}")
    runs["naive"] = _run_entry(naive, size)
    unchecked = run_measured([py, str(REPO / "converters" / "tf2torch.py"), "--dataset", release, "--checkpoint",
                              str(prefix), "--out", str(out_pth), "--quiet", "--no-verify"], env=env, timeout=timeout)
    if unchecked.returncode != 0:
        raise RuntimeError(f"tf2torch.py --no-verify failed (exit {unchecked.returncode}): {unchecked.stderr[-1500:]}")
    runs["ours_no_verify"] = _run_entry(unchecked, size)
    crc_cost = measure_crc_cost(prefix, ours.seconds, unchecked.seconds)
    log(f"  CRC-32C: {crc_cost['crc_seconds']:.3f} s alone over {crc_cost['bytes'] / MIB:.0f} MiB "
        f"({crc_cost['crc_over_ours']:.1%} of ours; ours - no-verify = {crc_cost['difference_over_ours']:+.1%})")
    for p in (out_pth, out_pth.with_suffix(".json"), naive_pth):
        p.unlink(missing_ok=True)
    floor = runs["baseline"]["peak_rss_bytes"]  # `import torch` alone
    after_imports = runs["imports"]["peak_rss_bytes"]  # what tf2torch.py imports, nothing converted
    for name, r in runs.items():
        # what the conversion itself holds, beside the interpreter and torch (1.4x this checkpoint on their own)
        r["rss_above_baseline_over_file_size"] = round((r["peak_rss_bytes"] - floor) / size, 3)
        r["rss_above_imports_over_file_size"] = round((r["peak_rss_bytes"] - after_imports) / size, 3)
        log(f"  {name:<15}{r['seconds']:>8.2f} s {r['peak_rss_mib']:>9.1f} MiB peak RSS "
            f"({r['rss_over_file_size']:.2f}x the checkpoint; above import torch: "
            f"{r['rss_above_baseline_over_file_size']:.2f}x; above the converter's imports: "
            f"{r['rss_above_imports_over_file_size']:.2f}x)")
    return {
        "status": "ok",
        "file": {"release": release, "prefix": str(prefix), "size_bytes": size, "size_mib": round(size / MIB, 1),
                 "reused": info.get("reused"), "generate_seconds": info.get("generate_seconds"),
                 "contents": "random float32 values under the release manifest's names and shapes (TF SaveV2)"},
        "results": runs,
        "naive_over_ours": {"seconds": round(naive.seconds / ours.seconds, 2),
                            "peak_rss": round(naive.peak_rss_bytes / ours.peak_rss_bytes, 2)},
        "crc_cost": crc_cost,
    }


def measure_crc_cost(prefix: Path, ours_seconds: float, no_verify_seconds: float, repeats: int = 3) -> dict[str, Any]:
    """Seconds ``crc32c`` takes over every data shard, and reading every tensor with and without the check
    (in this process, best of ``repeats``: whole-process times of busy machines differ by more than the CRC)."""
    from converters.tf.reader import _crc32c_package, crc32c, open_checkpoint

    read = {True: float("inf"), False: float("inf")}
    for _ in range(repeats):
        for verify in (True, False):
            t0 = time.perf_counter()
            with open_checkpoint(prefix, verify=verify) as ckpt:
                for name in ckpt.names():
                    ckpt.read(name)
            read[verify] = min(read[verify], time.perf_counter() - t0)

    shards = sorted(prefix.parent.glob(prefix.name + ".data-*"))
    data = [p.read_bytes() for p in shards]
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for blob in data:
            crc32c(blob)
        best = min(best, time.perf_counter() - t0)
    return {
        "implementation": "crc32c package (C)" if _crc32c_package is not None else "numpy fallback",
        "bytes": sum(len(b) for b in data),
        "crc_seconds": float(f"{best:.4g}"),
        "crc_over_ours": float(f"{best / ours_seconds:.4g}"),  # significant digits: a fast CRC is not 0
        "difference_over_ours": round((ours_seconds - no_verify_seconds) / ours_seconds, 4),
        "read_all_checked_seconds": round(read[True], 4),
        "read_all_unchecked_seconds": round(read[False], 4),
        "limit": 0.10,
        "met": best / ours_seconds <= 0.10,
    }


# (case, release, on-disk format, Momentum slots): the checkpoints the streaming benchmark converts
STREAM_CASES: dict[str, tuple[str, str, bool]] = {
    "xception65_zoo": ("deeplabv3_pascal_train_aug_2018_01_04", "V2", False),
    "resnet_v1_101_slim": ("resnet_v1_101_2016_08_28", "V1", False),
    "xception65_training": ("deeplabv3_pascal_train_aug_2018_01_04", "V2", True),
}
STREAM_LIMIT = 1.5  # whole-process peak RSS per byte of checkpoint


def _largest_converted(release: str) -> int:
    """Bytes of the largest float32 tensor the conversion writes (ignored variables aside)."""
    from math import prod

    from converters.tf.rules import ignore_reason

    return max(4 * prod(s) for n, s in _manifest(release)["variables"].items() if ignore_reason(n) is None)


def run_stream_benchmark(workdir: Path, cases: list[str], *, threads: int | None = None, timeout: float = 900.0,
                         log: Callable[[str], None] = print) -> dict[str, Any]:
    """Each case's checkpoint generated (or reused), then ``tf2torch.py`` to ``.pth`` and ``.safetensors`` and
    ``tf2keras.py`` to ``.weights.h5`` in fresh processes, beside the ``import torch`` and ``tf2torch.py``'s
    imports floors (``tf2keras.py`` imports h5py on top)."""
    from datetime import datetime, timezone

    from benchmarks.convert import environment

    if importlib.util.find_spec("tensorflow") is None:
        raise RuntimeError("tensorflow is needed to write the checkpoints (pip install '.[tf]')")
    env = child_env(threads)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    workdir = workdir.resolve()
    py = sys.executable
    baseline = run_measured([py, "-m", "benchmarks._measure", "baseline"], env=env, timeout=timeout)
    imports = run_measured([py, "-m", "benchmarks.convert_tf", "imports"], env=env, timeout=timeout)
    for m, what in ((baseline, "the import-torch baseline"), (imports, "the imports-only run")):
        if m.returncode != 0:
            raise RuntimeError(f"{what} failed (exit {m.returncode}): {m.stderr.strip()[-1500:]}")
    floors = {"import_torch_peak_rss_bytes": baseline.peak_rss_bytes,
              "after_imports_peak_rss_bytes": imports.peak_rss_bytes,
              "after_imports_vm_rss_bytes": imports.result().get("vm_rss_after_imports_bytes"),
              "after_imports_torch_imported": imports.result().get("torch_imported")}
    log(f"floors: import torch {baseline.peak_rss_bytes / MIB:.1f} MiB; tf2torch.py's imports "
        f"{imports.peak_rss_bytes / MIB:.1f} MiB (torch imported: {floors['after_imports_torch_imported']})")
    out: dict[str, Any] = {}
    for case in cases:
        release, fmt, momentum = STREAM_CASES[case]
        prefix, info = ensure_checkpoint(workdir, release, env, timeout, fmt=fmt, momentum=momentum)
        size = info["size_bytes"]
        largest = _largest_converted(release)
        runs: dict[str, Any] = {}
        for label, tool, suffix, sidecar in (("pth", "tf2torch.py", ".pth", provenance_path),
                                             ("safetensors", "tf2torch.py", ".safetensors", provenance_path),
                                             ("keras .weights.h5", "tf2keras.py", ".weights.h5", keras_provenance_path)):
            target = prefix.parent / f"ours{suffix}"
            m = run_measured([py, str(REPO / "converters" / tool), "--dataset", release, "--checkpoint",
                              str(prefix), "--out", str(target), "--quiet"], env=env, timeout=timeout)
            if m.returncode != 0:
                raise RuntimeError(f"{tool} on {case} failed (exit {m.returncode}): {m.stderr.strip()[-1500:]}")
            above = m.peak_rss_bytes - imports.peak_rss_bytes
            runs[label] = {
                "seconds": round(m.seconds, 3),
                "peak_rss_bytes": m.peak_rss_bytes,
                "peak_rss_mib": round(m.peak_rss_bytes / MIB, 1),
                "rss_over_file_size": round(m.peak_rss_bytes / size, 3),
                "rss_above_imports_bytes": above,
                "rss_above_imports_mib": round(above / MIB, 1),
                "rss_above_imports_over_file_size": round(above / size, 3),
                "rss_above_imports_over_largest_tensor": round(above / largest, 2),
                "output_bytes": target.stat().st_size,
                "met": m.peak_rss_bytes <= STREAM_LIMIT * size,
                "command": m.command,
                "tool": tool,
            }
            target.unlink(missing_ok=True)
            sidecar(target).unlink(missing_ok=True)
            r = runs[label]
            log(f"{case} -> {label}: {r['seconds']:.1f} s, peak {r['peak_rss_mib']} MiB = {r['rss_over_file_size']}x "
                f"the {size / MIB:.1f} MiB checkpoint; {r['rss_above_imports_mib']} MiB above the imports "
                f"({r['rss_above_imports_over_file_size']}x the file, {r['rss_above_imports_over_largest_tensor']}x "
                "the largest tensor)")
        out[case] = {"release": release, "format": fmt, "momentum_slots": momentum, "size_bytes": size,
                     "size_mib": round(size / MIB, 1), "largest_tensor_bytes": largest,
                     "reused": info.get("reused"), "runs": runs,
                     # is <= 1.5x reachable at all for this file? the floor plus one tensor is the least a stream holds
                     "imports_over_file_size": round(imports.peak_rss_bytes / size, 3),
                     "imports_plus_largest_tensor_over_file_size": round((imports.peak_rss_bytes + largest) / size, 3),
                     "limit_reachable": imports.peak_rss_bytes + largest <= STREAM_LIMIT * size}
    return {
        "benchmark": "TF conversion streamed into the output: whole-process peak RSS per checkpoint",
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "rss_method": "ru_maxrss of each child from os.wait4 in a ~10 MB launcher (the whole process)",
        "environment": environment(baseline.result(), env),
        "limit_ratio": STREAM_LIMIT,
        "floors": floors,
        "cases": out,
    }


def format_stream_table(record: dict[str, Any]) -> str:
    """The human table of :func:`run_stream_benchmark`'s record (Markdown)."""
    env, floors = record["environment"], record["floors"]
    lines = [f"CPU: {env['cpu_model']} [{env.get('cpu_isa', '?')}] ({env['cpu_count']} cores, {env['omp_num_threads']} threads), torch "
             f"{env['torch']}, Python {env['python']}; commit {(env['git'] or {}).get('commit')}",
             "",
             f"Floors (fresh processes): `import torch` {floors['import_torch_peak_rss_bytes'] / MIB:.1f} MiB; "
             f"tf2torch.py's imports with nothing converted {floors['after_imports_peak_rss_bytes'] / MIB:.1f} MiB"
             + ("" if floors.get("after_imports_torch_imported") is None else
                " (torch imported)" if floors["after_imports_torch_imported"] else " (torch not imported)") + ".",
             "",
             "| checkpoint | format | file MiB | output | seconds | peak RSS MiB | peak / file | above imports MiB "
             "| above imports / file | above imports / largest tensor | <= 1.5x |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|"]
    for case, c in record["cases"].items():
        fmt = c["format"] + (" + Momentum" if c["momentum_slots"] else "")
        for label, r in c["runs"].items():
            verdict = "met" if r["met"] else ("NOT met; out of reach: the imports plus one tensor are "
                                              f"{c['imports_plus_largest_tensor_over_file_size']}x"
                                              if not c["limit_reachable"] else "NOT met")
            lines.append(f"| {case} (`{c['release']}`) | {fmt} | {c['size_mib']} | {label} | {r['seconds']:.1f} | "
                         f"{r['peak_rss_mib']} | {r['rss_over_file_size']:.2f}x | {r['rss_above_imports_mib']} | "
                         f"{r['rss_above_imports_over_file_size']:.3f}x | {r['rss_above_imports_over_largest_tensor']}x "
                         f"| {verdict} |")
    return "\n".join(lines)


def write_stream_report(record: dict[str, Any], out_dir: Path) -> None:
    """``convert_tf_stream.json`` (strict JSON) and the table in ``README.md`` under ``out_dir``."""
    from converters.io import write_text_atomic

    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(record, indent=2, allow_nan=False) + "\n"
    write_text_atomic(out_dir / "convert_tf_stream.json", text)
    table = format_stream_table(record)
    write_text_atomic(out_dir / "stream_table.md", table + "\n")


# ---- workloads (run in the child) -------------------------------------------------------------------------------


def training_variables(variables: dict[str, list[int]]) -> dict[str, list[int]]:
    """A training checkpoint's variables: the model's, a ``Momentum`` slot beside every trainable one (what
    ``tf.train.MomentumOptimizer`` adds; BatchNorm moving statistics are not trainable) and ``global_step``."""
    out = dict(variables)
    for name, shape in variables.items():
        if not name.endswith(("/moving_mean", "/moving_variance")):
            out[f"{name}/Momentum"] = shape
    out["global_step"] = []
    return out


def work_generate(prefix: Path, release: str, fmt: str = "V2", momentum: bool = False) -> dict[str, Any]:
    """Write a checkpoint holding every manifest variable (random float32) with TensorFlow's own kernels:
    ``SaveV2`` (V2: ``.index`` + ``.data-00000-of-00001``) or ``Save`` (V1: one ``TensorSliceWriter`` file,
    as the 2016 TF-slim releases). ``momentum``: add the training slots (:func:`training_variables`)."""
    import numpy as np
    import tensorflow as tf

    variables = _manifest(release)["variables"]
    if momentum:
        variables = training_variables(variables)
    rng = np.random.default_rng(SEED)
    names = sorted(variables)

    def value(name: str):
        if name == "global_step":
            return tf.constant(30000, dtype=tf.int64)
        return tf.constant(rng.standard_normal(variables[name], dtype=np.float32) * 0.01)

    tensors = [value(n) for n in names]
    if fmt == "V1":
        tf.raw_ops.Save(filename=str(prefix), tensor_names=names, data=tensors)
    else:
        tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=names, shape_and_slices=[""] * len(names),
                          tensors=tensors)
    return {"variables": len(names), "values": int(sum(int(np.prod(variables[n])) for n in names))}


def work_imports() -> dict[str, Any]:
    """What ``tf2torch.py`` imports before reading a tensor, its parser built and the stored signatures
    read; nothing converted. Reports whether torch got imported (the streaming path never imports it)."""
    import converters.cli  # noqa: F401
    import converters.provenance  # noqa: F401
    import converters.streaming  # noqa: F401
    import converters.tf.reader  # noqa: F401
    import converters.tf.rules  # noqa: F401
    from benchmarks._measure import proc_status_bytes
    from converters import tf2torch
    from converters.tf.signatures import stored, tf_archs

    tf2torch.build_parser()
    for arch in sum(tf_archs(), []):
        stored(arch)
    return {"vm_rss_after_imports_bytes": proc_status_bytes("VmRSS"), "torch_imported": "torch" in sys.modules}


def work_naive(prefix: Path, out: Path) -> dict[str, Any]:
    """TF's checkpoint reader, every tensor into torch, ``torch.save`` (what most ports do)."""
    import tensorflow as tf
    import torch

    t0 = time.perf_counter()
    reader = tf.train.load_checkpoint(str(prefix))
    tensors = {name: torch.from_numpy(reader.get_tensor(name)) for name in reader.get_variable_to_shape_map()}
    t_read = time.perf_counter() - t0
    torch.save(tensors, out)
    return {"tensors": len(tensors), "values": int(sum(t.numel() for t in tensors.values())), "read_seconds": t_read}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.convert_tf", description="TF conversion benchmark workloads (run as the measured child).")
    sub = parser.add_subparsers(dest="workload", required=True)
    p = sub.add_parser("generate", help="write a random checkpoint from a release manifest")
    p.add_argument("prefix", type=Path)
    p.add_argument("--release", required=True)
    p.add_argument("--format", choices=("V1", "V2"), default="V2")
    p.add_argument("--momentum", action="store_true", help="add Momentum slots and global_step (training)")
    sub.add_parser("imports", help="import what tf2torch.py imports, convert nothing")
    p = sub.add_parser("stream", help="the streaming conversion on several full-size checkpoints, with a report")
    p.add_argument("--workdir", type=Path, default=REPO / "data" / "benchmarks")
    p.add_argument("--out-dir", type=Path, required=True, help="report folder: convert_tf_stream.json, stream_table.md")
    p.add_argument("--cases", default=",".join(STREAM_CASES), help=f"comma-separated, of {', '.join(STREAM_CASES)}")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--timeout", type=float, default=900.0)
    p = sub.add_parser("naive", help="tf.train.load_checkpoint + get_tensor + torch.save")
    p.add_argument("prefix", type=Path)
    p.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.workload == "stream":
        cases = [c for c in args.cases.split(",") if c]
        unknown = [c for c in cases if c not in STREAM_CASES]
        if unknown:
            parser.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(STREAM_CASES)}")
        try:
            record = run_stream_benchmark(args.workdir, cases, threads=args.threads, timeout=args.timeout)
        except (RuntimeError, TimeoutError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        write_stream_report(record, args.out_dir)
        print(format_stream_table(record))
        return 0
    if args.workload == "generate":
        record = work_generate(args.prefix, args.release, args.format, args.momentum)
    elif args.workload == "imports":
        record = work_imports()
    else:
        record = work_naive(args.prefix, args.out)
    _emit(record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
