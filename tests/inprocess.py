"""Run a command's ``main(argv)`` in the test process, as the CLI contract is built (converters/cli.py run_main).

Starting a Python process per check costs seconds (torch, TensorFlow); the contract's parts that need a real
process (exit codes through the interpreter, ``python -OO --help``, a converter run as a file, the console
scripts) keep their own subprocess tests (test_console_scripts.py and one per converter).
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path


def run_main(main: Callable[[list[str]], int], args: Sequence[str], cwd: Path | str | None = None,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``main(list(args))`` in ``cwd`` with ``env`` added, capturing stdout and stderr at the file-descriptor
    level too (what native libraries print goes there), so ``stderr`` is what a user would see on the
    terminal. Returns a ``CompletedProcess`` like ``subprocess.run(..., capture_output=True, text=True)``."""
    args = [str(a) for a in args]
    sys.stdout.flush()
    sys.stderr.flush()
    saved_fds = os.dup(1), os.dup(2)
    saved_env = {k: os.environ.get(k) for k in (env or {})}
    old_cwd = os.getcwd()
    with tempfile.TemporaryFile() as out_file, tempfile.TemporaryFile() as err_file:
        out_text, err_text = io.StringIO(), io.StringIO()
        try:
            os.dup2(out_file.fileno(), 1)
            os.dup2(err_file.fileno(), 2)
            os.environ.update(env or {})
            if cwd is not None:
                os.chdir(cwd)
            with contextlib.redirect_stdout(out_text), contextlib.redirect_stderr(err_text):
                try:
                    code = main(args)
                except SystemExit as exc:  # a main that lets argparse exit
                    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            os.chdir(old_cwd)
            for k, v in saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            os.dup2(saved_fds[0], 1)
            os.dup2(saved_fds[1], 2)
            os.close(saved_fds[0])
            os.close(saved_fds[1])
        out_file.seek(0)
        err_file.seek(0)
        stdout = out_file.read().decode(errors="replace") + out_text.getvalue()
        stderr = err_file.read().decode(errors="replace") + err_text.getvalue()
    return subprocess.CompletedProcess([getattr(main, "__module__", "main"), *args], code, stdout, stderr)


def wrapper_argv(script: Path, *args: str, workdir: Path) -> list[str]:
    """The arguments a shell wrapper (``reproduce/*.sh``) hands to ``${PYTHON:-python}``: the wrapper runs
    through bash with, as ``PYTHON``, a stand-in in ``workdir`` that prints its arguments one per line."""
    recorder = Path(workdir) / "record-python-argv"
    if not recorder.exists():
        recorder.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
        recorder.chmod(0o755)
    done = subprocess.run(["bash", str(script), *args], capture_output=True, text=True, check=True, cwd=workdir,
                          env={**os.environ, "PYTHON": str(recorder)})
    return done.stdout.splitlines()
