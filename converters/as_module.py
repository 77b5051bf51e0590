"""Run a converter file (``python converters/caffe2torch.py ...``) as the package module it is.

A converter started as a file has its own folder, not the repository root, as ``sys.path[0]``, so
``import converters`` would fail. Each such file starts with::

    if __name__ == "__main__" and not __package__:  # run as a file
        import as_module; as_module.rerun(__file__)

(``as_module`` is importable as a top-level name exactly then: it sits in that folder). :func:`rerun`
replaces the process with ``python [the same interpreter options] -m converters.<name> [the same
arguments]`` with the repository root prepended to ``PYTHONPATH``: no module edits ``sys.path``,
and the package is imported once, under its real name. It imports only the standard library.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

__all__ = ["rerun"]


def rerun(file: str) -> NoReturn:
    """Re-execute ``file`` (a module of a top-level package) as ``python -m <package>.<module>``."""
    path = os.path.abspath(file)
    folder = os.path.dirname(path)
    root = os.path.dirname(folder)
    module = f"{os.path.basename(folder)}.{os.path.splitext(os.path.basename(path))[0]}"
    # interpreter options (-O, -X ..., -W ...) stand between the interpreter and the script in orig_argv
    options = sys.orig_argv[1:len(sys.orig_argv) - len(sys.argv)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (root, os.environ.get("PYTHONPATH"))))}
    os.execve(sys.executable, [sys.executable, *options, "-m", module, *sys.argv[1:]], env)
