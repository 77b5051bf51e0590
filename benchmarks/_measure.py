"""Measuring one command in a fresh process: wall time and whole-process peak RSS.

How peak RSS is measured
------------------------
:func:`run_measured` starts a tiny launcher (``python -I -S``, ~10 MB), which
``posix_spawn``s the command and reaps it with :func:`os.wait4`; wait4 returns
the resource usage of *that one child*, and its ``ru_maxrss`` (KiB on Linux) is
the peak resident set of the whole process: interpreter, every imported library
(torch's shared objects included) and all data. It is the number
``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` gives in a parent that has
run this one child; ``RUSAGE_CHILDREN`` itself is not used because it is a
running maximum over *all* children reaped so far (after a big run every later
run would report the big one).

Why the launcher: on ``exec`` Linux folds the high-water mark of the address
space being replaced (with vfork/posix_spawn, the parent's) into the new
program's ``maxrss``, so a child's figure is never below its parent's RSS. From
a process that has imported torch (pytest, a notebook) every child would report
at least ~230 MB. The launcher's own peak (``launcher_peak_rss_bytes``) is that
floor and is recorded; it is far below any torch process. The workloads written
here also report ``VmHWM`` from ``/proc/self/status`` just before they exit
(the address space's own peak, reset by exec) as a cross-check.

Wall time is measured by the launcher from spawn to reaping, so it covers the
whole process (interpreter start and imports included) and not the launcher.

Workloads run in the child (``python -m benchmarks._measure WORKLOAD FILE ...``):

- ``baseline``: ``import torch`` and nothing else (plus versions, thread count);
- ``naive``: kazuto1011's method: the whole file parsed with
  ``NetParameter.FromString(open(f, 'rb').read())``, then
  ``torch.tensor(list(blob.data))`` per blob, kept in a dict and written with
  ``torch.save``;
- ``reader``: our streaming reader alone (``iter_layers``), blobs dropped as soon
  as they are counted;
- ``generate``: write the random-weight official-topology caffemodel.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULT_PREFIX = "BENCH-RESULT "  # the line a workload prints its JSON on


@dataclass
class Measurement:
    """One finished child: its command, exit code, wall seconds, peak RSS and the launcher's own peak (bytes)."""

    command: list[str]
    returncode: int
    seconds: float
    peak_rss_bytes: int
    launcher_peak_rss_bytes: int
    stdout: str
    stderr: str

    def result(self) -> dict[str, Any]:
        """The JSON a workload printed on its ``BENCH-RESULT`` line (empty dict if none)."""
        for line in reversed(self.stdout.splitlines()):
            if line.startswith(RESULT_PREFIX):
                return json.loads(line[len(RESULT_PREFIX):])
        return {}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (output trimmed to its tail)."""
        out = asdict(self)
        out["stdout"] = self.stdout[-2000:]
        out["stderr"] = self.stderr[-2000:]
        return out


def child_env(threads: int | None = None) -> dict[str, str]:
    """The environment for a measured child: repository importable, thread count fixed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    n = str(threads) if threads else env.get("OMP_NUM_THREADS", "2")
    env["OMP_NUM_THREADS"] = n
    env["MKL_NUM_THREADS"] = n
    return env


# Run as ``python -I -S -c _LAUNCHER RESULT_FILE CMD...``: spawn CMD, reap it, write "exit seconds maxrss_kib hwm_kib".
_LAUNCHER = """
import os, sys, time
out, cmd = sys.argv[1], sys.argv[2:]
t = time.perf_counter()
pid = os.posix_spawnp(cmd[0], cmd, os.environ)
_, status, ru = os.wait4(pid, 0)
dt = time.perf_counter() - t
hwm = next((int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:')), 0)
with open(out, 'w') as fh:
    fh.write(f'{os.waitstatus_to_exitcode(status)} {dt!r} {ru.ru_maxrss} {hwm}')
"""


def run_measured(command: Sequence[str], *, cwd: str | os.PathLike = REPO, env: dict[str, str] | None = None,
                 timeout: float | None = None) -> Measurement:
    """Run ``command`` in a fresh process; return its wall time and its own peak RSS.

    The command is spawned by a small launcher process and reaped with
    :func:`os.wait4` (see the module docstring), so the figure does not depend on
    how large the caller is. stdout/stderr are captured through files so a chatty
    child cannot block on a full pipe. On ``timeout`` the launcher's process group
    (the launcher and the command) is killed and :class:`TimeoutError` raised.
    """
    import signal
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        result = Path(tmp) / "rusage"
        out_path, err_path = Path(tmp) / "stdout", Path(tmp) / "stderr"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", _LAUNCHER, str(result), *command], cwd=cwd,
                                    env=env or child_env(), stdout=out, stderr=err, start_new_session=True)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise TimeoutError(f"{' '.join(command)} did not finish in {timeout:.0f} s") from None
        stdout = out_path.read_bytes().decode("utf-8", "replace")
        stderr = err_path.read_bytes().decode("utf-8", "replace")
        if proc.returncode != 0 or not result.is_file():
            raise RuntimeError(f"the measuring launcher failed (exit {proc.returncode}): {stderr.strip()[-1500:]}")
        code, seconds, maxrss_kib, hwm_kib = result.read_text(encoding="ascii").split()
    return Measurement(command=list(command), returncode=int(code), seconds=float(seconds),
                       peak_rss_bytes=int(maxrss_kib) * 1024, launcher_peak_rss_bytes=int(hwm_kib) * 1024,
                       stdout=stdout, stderr=stderr)


def git_info() -> dict[str, Any]:
    """``{"commit", "dirty"}`` of the repository (``None`` outside a git checkout)."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}


def _cpuinfo_field(key: str) -> str | None:
    """The first ``key : value`` of ``/proc/cpuinfo`` (``None`` off Linux or when absent)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                name, sep, value = line.partition(":")
                if sep and name.strip().lower() == key:
                    return value.strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's marketing name from ``/proc/cpuinfo`` (or what :mod:`platform` knows)."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_isa(flags: set[str] | None = None) -> str:
    """The vector ISA that decides convolution speed, from the CPU's flags: ``AVX-512+VNNI+BF16+AMX``,
    ``AVX2``, ... (``?`` where the flags are unknown). A VM's model name alone ("AMD EPYC") does not tell a
    Zen 3 (AVX2) from a Zen 4 (AVX-512 with BF16)."""
    if flags is None:
        flags = set((_cpuinfo_field("flags") or "").split())
    if not flags:
        return "?"
    if "avx512f" in flags:
        extras = [name for flag, name in (("avx512_vnni", "VNNI"), ("avx512_bf16", "BF16"), ("avx512_fp16", "FP16"),
                                          ("amx_bf16", "AMX")) if flag in flags]
        return "+".join(["AVX-512", *extras])
    for flag, name in (("avx2", "AVX2"), ("avx", "AVX"), ("sse4_2", "SSE4.2")):
        if flag in flags:
            return name
    return "no AVX"


def cpu_description() -> str:
    """The CPU model and its vector ISA, e.g. ``AMD EPYC [AVX2]``: how every benchmark names its CPU."""
    return f"{cpu_model()} [{cpu_isa()}]"


def proc_status_bytes(key: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (``VmHWM``, ``VmRSS`` ...) in bytes; ``None`` off Linux."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _emit(record: dict[str, Any]) -> None:
    record["vm_hwm_bytes"] = proc_status_bytes("VmHWM")
    print(RESULT_PREFIX + json.dumps(record), flush=True)


# ---- workloads (run in the child) -------------------------------------------------------------------------------


def work_baseline() -> dict[str, Any]:
    """``import torch`` only; report versions and threads for the environment record."""
    import google.protobuf
    import numpy
    import torch

    return {"torch": torch.__version__, "numpy": numpy.__version__, "protobuf": google.protobuf.__version__,
            "protobuf_backend": _protobuf_backend(), "torch_threads": torch.get_num_threads()}


def _protobuf_backend() -> str:
    try:
        from google.protobuf.internal import api_implementation

        return str(api_implementation.Type())
    except Exception:  # noqa: BLE001 - informational only
        return "unknown"


def work_naive(path: Path, out: Path) -> dict[str, Any]:
    """kazuto1011's conversion: whole-file parse, ``torch.tensor(list(blob.data))`` per blob, ``torch.save``.

    Like ours it converts each weight once (the ``_res075``/``_res05`` copies are
    skipped by name), so both write the same amount; the parsed ``NetParameter``
    stays alive while converting, as in the original script.
    """
    import torch

    from converters.caffe.passes import canonical_name
    from converters.proto import load_messages

    net_cls = load_messages("caffe")["caffe.NetParameter"]
    t0 = time.perf_counter()
    net = net_cls.FromString(open(path, "rb").read())
    t_parse = time.perf_counter() - t0
    tensors: dict[str, torch.Tensor] = {}
    for layer in net.layer:
        if canonical_name(layer.name) != layer.name:
            continue
        for i, blob in enumerate(layer.blobs):
            shape = tuple(blob.shape.dim) if blob.HasField("shape") else (blob.num, blob.channels, blob.height,
                                                                          blob.width)
            tensors[f"{layer.name}.{i}"] = torch.tensor(list(blob.data)).reshape(shape)
    t_convert = time.perf_counter() - t0 - t_parse
    torch.save(tensors, out)
    return {"tensors": len(tensors), "parse_seconds": t_parse, "convert_seconds": t_convert,
            "values": sum(t.numel() for t in tensors.values())}


def work_reader(path: Path) -> dict[str, Any]:
    """Our streaming reader alone: iterate the layers, count values, keep nothing."""
    from converters.caffe.reader import iter_layers

    layers = values = 0
    t0 = time.perf_counter()
    for layer in iter_layers(path):
        layers += 1
        values += sum(int(b.size) for b in layer.blobs)
    return {"layers": layers, "values": values, "read_seconds": time.perf_counter() - t0}


def work_generate(path: Path, arch: str, num_classes: int, seed: int) -> dict[str, Any]:
    """Write the random-weight official-topology caffemodel ``arch`` at ``path``."""
    from converters.caffe.synth import official_caffemodel

    official_caffemodel(arch, path, num_classes=num_classes, seed=seed)
    return {"size_bytes": path.stat().st_size}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the child: run one workload and print its ``BENCH-RESULT`` line."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks._measure", description="Measured child workloads of the conversion benchmarks.")
    sub = parser.add_subparsers(dest="workload", required=True)
    sub.add_parser("baseline", help="import torch only")
    p = sub.add_parser("naive", help="whole-file parse + list(blob.data)")
    p.add_argument("caffemodel", type=Path)
    p.add_argument("--out", type=Path, required=True, help="where to torch.save the tensors")
    p = sub.add_parser("reader", help="our streaming reader alone")
    p.add_argument("caffemodel", type=Path)
    p = sub.add_parser("generate", help="write a random official-topology caffemodel")
    p.add_argument("caffemodel", type=Path)
    p.add_argument("--arch", required=True)
    p.add_argument("--num-classes", type=int, default=21)
    p.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.workload == "baseline":
        record = work_baseline()
    elif args.workload == "naive":
        record = work_naive(args.caffemodel, args.out)
    elif args.workload == "reader":
        record = work_reader(args.caffemodel)
    else:
        record = work_generate(args.caffemodel, args.arch, args.num_classes, args.seed)
    _emit(record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
