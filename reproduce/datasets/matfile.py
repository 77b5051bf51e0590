"""MATLAB ``.mat`` labels (SBD's ``cls/*.mat``, COCO-Stuff 10k's ``annotations/*.mat``), read where a
crash cannot take the caller down.

scipy's ``.mat`` reader is a C extension over a format full of declared sizes: on corrupt files it
raises a dozen unrelated exception types (``zlib.error``, ``MatReadError``, ``IndexError``,
``MemoryError``, ...) and has been seen to end the process with a segmentation fault, which no
Python handler can catch. One corrupt file among SBD's 11,355 must not kill a run, so the
files are parsed in a small helper process (this module run as a script: numpy and scipy only,
an address-space limit, started once per process and reused). A file that crashes it, hangs it
or exhausts its memory is reported as a :class:`MatProblem` naming what happened; the helper is
restarted for the next file. ``contained=False`` parses in this process (the helper's own path).

This module imports neither torch nor the rest of the package, so the helper starts in a fraction
of a second. The dataset readers turn :class:`MatProblem` into their ``DatasetError``.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # the helper runs this file as a script: keep the package folder off the path
    sys.path.pop(0)

import atexit  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import select  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, BinaryIO  # noqa: E402

import numpy as np  # noqa: E402

__all__ = ["MatProblem", "parse_label", "read_label", "READERS"]

HELPER_MEMORY_LIMIT = 4 << 30  # bytes of address space for the helper: a label is a few MB at most
HELPER_TIMEOUT = 60.0  # seconds for one file


class MatProblem(Exception):
    """A ``.mat`` file that is not what it should be; ``str()`` is one line (the problem, no path)."""


def _loadmat(path: str | os.PathLike, **kwargs: Any) -> dict:
    import scipy.io

    try:
        return scipy.io.loadmat(str(path), **kwargs)
    except FileNotFoundError:
        raise MatProblem("file not found") from None
    except RecursionError:
        raise MatProblem("cannot read MATLAB file (nesting too deep)") from None
    except Exception as e:  # noqa: BLE001 - scipy raises many unrelated types on corrupt files (see module doc)
        text = " ".join(str(e).split())[:200]
        raise MatProblem(f"cannot read MATLAB file ({type(e).__name__}: {text})") from None


def parse_sbd(path: str | os.PathLike) -> np.ndarray:
    """``GTcls.Segmentation`` of an SBD ``cls/<id>.mat`` as an ``(H, W)`` uint8 array (0..20)."""
    mat = _loadmat(path, squeeze_me=True, struct_as_record=False)
    gt = mat.get("GTcls")
    if gt is None:
        raise MatProblem(f"no 'GTcls' struct (variables: {sorted(k for k in mat if not k.startswith('__'))})")
    seg = getattr(gt, "Segmentation", None)
    if seg is None:
        raise MatProblem("struct 'GTcls' has no field 'Segmentation'")
    seg = np.asarray(seg)
    if seg.ndim != 2 or seg.dtype.kind not in "iuf":
        raise MatProblem(f"GTcls.Segmentation must be a 2-D numeric array, got {seg.dtype} {seg.shape}")
    if seg.dtype.kind == "f":
        if not np.isfinite(seg).all() or not np.array_equal(seg, np.round(seg)):
            raise MatProblem("GTcls.Segmentation holds non-integer values")
    if seg.size and (seg.min() < 0 or seg.max() > 255):
        raise MatProblem(f"GTcls.Segmentation values [{seg.min()}, {seg.max()}] do not fit uint8")
    return seg.astype(np.uint8)


def parse_cocostuff10k(path: str | os.PathLike) -> np.ndarray:
    """Variable ``S`` of a COCO-Stuff 10k annotation, mapped 1..182 -> 0..181 and 0 -> 255 (int64).

    Values above 182 stay out of range (shifted, > 181) so the caller's range check reports them.
    """
    mat = _loadmat(path, variable_names=["S"])
    if "S" not in mat:
        raise MatProblem("no variable 'S' in the annotation file")
    s = np.asarray(mat["S"])
    if s.ndim != 2 or s.dtype.kind not in "iuf":
        raise MatProblem(f"S must be a 2-D numeric array, got {s.dtype} {s.shape}")
    if s.dtype.kind == "f" and (not np.isfinite(s).all() or not np.array_equal(s, np.round(s))):
        raise MatProblem("S holds non-integer values")
    if s.size and (s.min() < 0 or s.max() > 65535):
        raise MatProblem(f"S values [{s.min()}, {s.max()}] are not class indices")
    s = s.astype(np.int64)
    return np.where(s == 0, 255, s - 1)


READERS = {"sbd": parse_sbd, "cocostuff10k": parse_cocostuff10k}


def parse_label(kind: str, path: str | os.PathLike) -> np.ndarray:
    """Parse in this process (no crash containment)."""
    return READERS[kind](path)


# --------------------------------------------------------------------------- the helper process
def _write_message(out: BinaryIO, header: dict, payload: bytes = b"") -> None:
    out.write(json.dumps({**header, "nbytes": len(payload)}).encode() + b"\n")
    out.write(payload)
    out.flush()


def serve(stdin: BinaryIO, stdout: BinaryIO) -> None:
    """Answer ``{"kind": ..., "path": ...}`` lines with a header line and the array's raw bytes."""
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (HELPER_MEMORY_LIMIT, HELPER_MEMORY_LIMIT))
    except (ImportError, ValueError, OSError):  # pragma: no cover - platform without limits
        pass
    for line in stdin:
        request = json.loads(line)
        try:
            array = np.ascontiguousarray(parse_label(request["kind"], request["path"]))
        except MatProblem as e:
            _write_message(stdout, {"ok": False, "problem": str(e)})
            continue
        except MemoryError:
            _write_message(stdout, {"ok": False, "problem": "cannot read MATLAB file (it declares more data than "
                                    f"the {HELPER_MEMORY_LIMIT >> 30} GiB a label may use)"})
            continue
        _write_message(stdout, {"ok": True, "dtype": array.dtype.str, "shape": list(array.shape)}, array.tobytes())


class _Helper:
    """One helper process per (OS) process; restarted after a crash; safe across fork."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.pid = -1
        self.lock = threading.Lock()
        self.buf = bytearray()

    def _start(self) -> subprocess.Popen:
        env = {**os.environ, "PYTHONNOUSERSITE": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-u", str(Path(__file__).resolve())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, bufsize=0,
        )
        self.pid = os.getpid()
        self.buf = bytearray()
        return self.proc

    def close(self) -> None:
        """End the helper (it also ends by itself when this process closes its stdin, e.g. on exit)."""
        proc = self.proc
        if proc is None or self.pid != os.getpid():
            return
        self.proc = None
        try:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def _stop(self) -> None:
        if self.proc is not None and self.pid == os.getpid():
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def _read(self, proc: subprocess.Popen, n: int | None, deadline: float) -> bytes:
        """``n`` bytes (a line when ``n`` is None) from the helper; b"" if it died; TimeoutError at the deadline."""
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        while True:
            if n is None and b"\n" in self.buf:
                end = self.buf.index(b"\n") + 1
            elif n is not None and len(self.buf) >= n:
                end = n
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                    raise TimeoutError
                data = os.read(fd, 1 << 20)
                if not data:
                    return b""
                self.buf += data
                continue
            out = bytes(self.buf[:end])
            del self.buf[:end]
            return out

    def read(self, kind: str, path: str | os.PathLike, timeout: float) -> np.ndarray:
        with self.lock:
            proc = self.proc if (self.proc is not None and self.pid == os.getpid()
                                 and self.proc.poll() is None) else self._start()
            request = json.dumps({"kind": kind, "path": str(Path(path).resolve())}) + "\n"
            deadline = time.monotonic() + timeout
            try:
                assert proc.stdin is not None
                proc.stdin.write(request.encode())
                proc.stdin.flush()
                line = self._read(proc, None, deadline)
                header = json.loads(line) if line else None
                payload = self._read(proc, header["nbytes"], deadline) if header and header["nbytes"] else b""
            except TimeoutError:
                self._stop()
                raise MatProblem(f"the MATLAB reader did not finish within {timeout:g} s; the file is corrupt") \
                    from None
            except (BrokenPipeError, ValueError, OSError):
                header = None
            if header is None or (header["nbytes"] and len(payload) != header["nbytes"]):
                proc.kill()
                rc = proc.wait()
                self.proc = None
                how = f"signal {signal.Signals(-rc).name}" if rc < 0 else f"exit code {rc}"
                raise MatProblem(f"scipy's MATLAB reader crashed on this file ({how}); the file is corrupt")
            if not header["ok"]:
                raise MatProblem(header["problem"])
            return np.frombuffer(payload, dtype=np.dtype(header["dtype"])).reshape(header["shape"]).copy()


_HELPER = _Helper()
atexit.register(_HELPER.close)


def read_label(kind: str, path: str | os.PathLike, *, contained: bool = True,
               timeout: float = HELPER_TIMEOUT) -> np.ndarray:
    """Parse a ``kind`` ("sbd" or "cocostuff10k") label file; :class:`MatProblem` for a bad file.

    ``contained`` (default) parses in the helper process, so a crash, hang or memory blow-up of
    scipy's reader becomes a :class:`MatProblem` instead of ending this process.
    """
    if kind not in READERS:
        raise ValueError(f"unknown .mat label kind {kind!r}; known: {sorted(READERS)}")
    if not os.path.exists(path) or os.path.isdir(path):
        raise MatProblem("file not found")
    if not contained:
        return parse_label(kind, path)
    return _HELPER.read(kind, path, timeout)


if __name__ == "__main__":
    serve(sys.stdin.buffer, sys.stdout.buffer)
