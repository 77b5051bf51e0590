"""Benchmark: converting a full-size TF DeepLab checkpoint (time and whole-process peak RSS), beside TF's own reader.

The checkpoint is generated once into the work directory from a release manifest
(``converters/manifests/<release>.json``: every variable name and shape of the official
checkpoint) with random float32 values, written by TensorFlow's ``SaveV2`` op, so it
has the official names, layout and size (full: ``deeplabv3_pascal_train_aug_2018_01_04``,
DeepLab v3+ Xception-65, ~157 MiB of weights; quick: the MobileNet-v2 release, ~8 MiB).
Generating needs TensorFlow (``pip install '.[tf]'``); without it the TF part is skipped.

Paths, each in a fresh process measured by ``benchmarks._measure.run_measured``:

- ``ours``: ``python converters/tf2torch.py --dataset RELEASE --checkpoint PREFIX --out X.pth``
  (no TensorFlow imported);
- ``naive``: the usual port recipe: ``tf.train.load_checkpoint`` then ``get_tensor`` for every
  variable into a dict of ``torch.from_numpy`` tensors and ``torch.save`` (TensorFlow imported);
- ``baseline``: ``import torch`` only (from the Caffe benchmark of the same run);
- ``ours_no_verify``: ``ours`` with ``--no-verify`` (no CRC-32C check of the tensors).

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
from converters.io import write_json_atomic

FULL_RELEASE = "deeplabv3_pascal_train_aug_2018_01_04"
QUICK_RELEASE = "deeplabv3_mnv2_pascal_train_aug_2018_01_29"
SEED = 0
MIB = 1 << 20


def _manifest(release: str) -> dict[str, Any]:
    return json.loads((REPO / "converters" / "manifests" / f"{release}.json").read_text(encoding="utf-8"))


def ensure_checkpoint(workdir: Path, release: str, env: dict[str, str], timeout: float) -> tuple[Path, dict]:
    """``<workdir>/tf-<release>/model.ckpt`` (V2), generated unless a complete one is there."""
    folder = workdir / f"tf-{release}"
    prefix = folder / "model.ckpt"
    stamp = folder / "generated.json"
    if stamp.is_file():
        try:
            info = json.loads(stamp.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            info = {}
        files = [Path(str(prefix) + ".index"), Path(str(prefix) + ".data-00000-of-00001")]
        if info.get("release") == release and info.get("seed") == SEED and all(f.is_file() for f in files) and \
                sum(f.stat().st_size for f in files) == info.get("size_bytes"):
            return prefix, {**info, "reused": True}
    folder.mkdir(parents=True, exist_ok=True)
    m = run_measured([sys.executable, "-m", "benchmarks.convert_tf", "generate", str(prefix), "--release", release],
                     env=env, timeout=timeout)
    if m.returncode != 0:
        raise RuntimeError(f"generating the TF checkpoint failed (exit {m.returncode}): {m.stderr.strip()[-1500:]}")
    size = sum(p.stat().st_size for p in folder.glob("model.ckpt.*"))
    info = {"release": release, "seed": SEED, "size_bytes": size, "generate_seconds": round(m.seconds, 3)}
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
    for name, r in runs.items():
        # what the conversion itself holds, beside the interpreter and torch (1.4x this checkpoint on their own)
        r["rss_above_baseline_over_file_size"] = round((r["peak_rss_bytes"] - floor) / size, 3)
        log(f"  {name:<9}{r['seconds']:>8.2f} s {r['peak_rss_mib']:>9.1f} MiB peak RSS "
            f"({r['rss_over_file_size']:.2f}x the checkpoint; above import torch: "
            f"{r['rss_above_baseline_over_file_size']:.2f}x)")
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
        "crc_seconds": round(best, 4),
        "crc_over_ours": round(best / ours_seconds, 4),
        "difference_over_ours": round((ours_seconds - no_verify_seconds) / ours_seconds, 4),
        "read_all_checked_seconds": round(read[True], 4),
        "read_all_unchecked_seconds": round(read[False], 4),
        "limit": 0.10,
        "met": best / ours_seconds <= 0.10,
    }


# ---- workloads (run in the child) -------------------------------------------------------------------------------


def work_generate(prefix: Path, release: str) -> dict[str, Any]:
    """Write a V2 checkpoint holding every manifest variable (random float32) with TensorFlow's SaveV2."""
    import numpy as np
    import tensorflow as tf

    variables = _manifest(release)["variables"]
    rng = np.random.default_rng(SEED)
    names = sorted(variables)
    tensors = [tf.constant(rng.standard_normal(variables[n], dtype=np.float32) * 0.01) for n in names]
    tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=names, shape_and_slices=[""] * len(names), tensors=tensors)
    return {"variables": len(names), "values": int(sum(int(np.prod(variables[n])) for n in names))}


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
    p = sub.add_parser("naive", help="tf.train.load_checkpoint + get_tensor + torch.save")
    p.add_argument("prefix", type=Path)
    p.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    record = work_generate(args.prefix, args.release) if args.workload == "generate" else \
        work_naive(args.prefix, args.out)
    _emit(record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
