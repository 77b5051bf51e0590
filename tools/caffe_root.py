"""BVLC Caffe 1.0 itself, as a reference engine: a Debian 11 root with ``python3-caffe`` (CPU).

Debian 11 (bullseye) packages BVLC Caffe 1.0. This tool builds a minimal bullseye root with
``debootstrap`` into a cache folder, installs ``python3-caffe`` and ``caffe`` inside it with
``apt-get`` and checks that ``import caffe`` works there. The root is made once and reused
(a marker file records a finished install). It needs root (debootstrap, chroot, mounting
``/proc``) and Debian's package registry; the mirror is the one this machine's apt uses.

    python tools/caffe_root.py            # build (or check) the root; print its path
    python tools/caffe_root.py --root D   # somewhere else (default: $DEEPLAB_CAFFE_ROOT or
                                          #   ~/.cache/deeplab-repro/caffe-bullseye)

The tests in ``tests/test_caffe_engine.py`` use :func:`ensure_root` and :func:`run_in_root`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

SUITE = "bullseye"
PACKAGES = ("python3-caffe", "caffe")
MARKER = ".deeplab-caffe-ready"


class CaffeRootUnavailable(RuntimeError):
    """The Caffe root cannot be made here (not root, no debootstrap, no package registry); says why in one line."""


def default_root() -> Path:
    env = os.environ.get("DEEPLAB_CAFFE_ROOT")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "deeplab-repro" / f"caffe-{SUITE}"


def host_debian_mirror() -> str | None:
    """The Debian archive URL this machine's apt already uses (None: let debootstrap use its default)."""
    candidates: list[str] = []
    sources_d = Path("/etc/apt/sources.list.d")
    for path in sorted(sources_d.glob("*.sources")) if sources_d.is_dir() else []:
        for line in path.read_text(errors="replace").splitlines():
            if line.strip().startswith("URIs:"):
                candidates += line.split(":", 1)[1].split()
    legacy = Path("/etc/apt/sources.list")
    if legacy.is_file():
        for line in legacy.read_text(errors="replace").splitlines():
            m = re.match(r"\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)", line)
            if m:
                candidates.append(m.group(1))
    for url in candidates:
        if re.search(r"/debian/?$", url):  # the main archive, not debian-security
            return url.rstrip("/")
    return None


def _run(cmd: Sequence[str], what: str, log: Path) -> None:
    with open(log, "ab") as fh:
        fh.write(("$ " + " ".join(cmd) + "\n").encode())
        fh.flush()
        proc = subprocess.run(list(cmd), stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise CaffeRootUnavailable(f"{what} failed (exit {proc.returncode}); see {log}")


@contextlib.contextmanager
def mounted_proc(root: Path) -> Iterator[None]:
    """``/proc`` mounted inside ``root`` for the duration (left alone if it already is)."""
    target = root / "proc"
    target.mkdir(exist_ok=True)
    if os.path.ismount(target):
        yield
        return
    subprocess.run(["mount", "-t", "proc", "proc", str(target)], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


def is_ready(root: Path) -> bool:
    return (root / MARKER).is_file()


def ensure_root(root: Path | None = None, *, log: Path | None = None) -> Path:
    """Return a bullseye root in which ``python3 -c 'import caffe'`` works, building it if needed.

    Raises :class:`CaffeRootUnavailable` with the reason when it cannot be built here.
    """
    root = Path(root or default_root())
    if is_ready(root):
        return root
    if sys.platform != "linux" or os.geteuid() != 0:
        raise CaffeRootUnavailable("building the Caffe root needs root on Linux (debootstrap, chroot, mount)")
    root.parent.mkdir(parents=True, exist_ok=True)
    log = Path(log or root.parent / f"{root.name}.log")
    if shutil.which("debootstrap") is None:
        if shutil.which("apt-get") is None:
            raise CaffeRootUnavailable("debootstrap is not installed and there is no apt-get to install it")
        _run(["apt-get", "update", "-q"], "apt-get update", log)
        _run(["apt-get", "install", "-y", "-q", "debootstrap"], "apt-get install debootstrap", log)
    if not (root / "usr" / "bin" / "apt-get").exists():
        if root.exists():  # a half-made root from an interrupted run
            shutil.rmtree(root)
        cmd = ["debootstrap", "--variant=minbase", SUITE, str(root)]
        mirror = host_debian_mirror()
        if mirror:
            cmd.append(mirror)
        _run(cmd, f"debootstrap {SUITE}", log)
    env = ["env", "DEBIAN_FRONTEND=noninteractive", "LC_ALL=C"]
    with mounted_proc(root):
        _run(["chroot", str(root), *env, "apt-get", "update", "-q"], "apt-get update inside the root", log)
        _run(["chroot", str(root), *env, "apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES],
             "apt-get install " + " ".join(PACKAGES), log)
        _run(["chroot", str(root), "python3", "-c", "import caffe, numpy"], "import caffe inside the root", log)
    (root / MARKER).write_text("python3-caffe installed and importable\n")
    return root


def run_in_root(root: Path, argv: Sequence[str], *, timeout: float = 1800) -> subprocess.CompletedProcess:
    """Run ``argv`` inside ``root`` (``/proc`` mounted); return the finished process."""
    threads = os.environ.get("OMP_NUM_THREADS") or str(min(os.cpu_count() or 1, 4))
    env = ["env", "LC_ALL=C", f"OMP_NUM_THREADS={threads}", f"OPENBLAS_NUM_THREADS={threads}", "GLOG_minloglevel=2",
           "PYTHONDONTWRITEBYTECODE=1"]
    with mounted_proc(root):
        return subprocess.run(["chroot", str(root), *env, *argv], capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python tools/caffe_root.py",
        description="Build (once) a Debian 11 root with BVLC Caffe 1.0 (python3-caffe, CPU) and print its path. "
                    "Needs root and Debian's package registry.",
    )
    p.add_argument("--root", type=Path, help="where the root goes (default: $DEEPLAB_CAFFE_ROOT or "
                                              "~/.cache/deeplab-repro/caffe-bullseye)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        root = ensure_root(args.root)
    except CaffeRootUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    print(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
