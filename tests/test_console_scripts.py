"""The console scripts in pyproject.toml and the shared command-line contract, without installing anything."""

from __future__ import annotations

import importlib
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]


def test_the_table_names_every_command() -> None:
    assert all(name.startswith("deeplab-") for name in SCRIPTS)
    assert {"deeplab-caffe2torch", "deeplab-tf2torch", "deeplab-caffe2tf", "deeplab-tf2keras", "deeplab-train",
            "deeplab-evaluate", "deeplab-predict", "deeplab-prepare", "deeplab-recipe", "deeplab-benchmark",
            "deeplab-download", "deeplab-export", "deeplab-import-checkpoint"} <= set(SCRIPTS)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_entry_point_is_an_importable_main(name: str) -> None:
    module, _, attr = SCRIPTS[name].partition(":")
    assert attr == "main", f"{name}: console scripts call main(argv=None) -> int"
    main = getattr(importlib.import_module(module), attr)
    params = inspect.signature(main).parameters
    assert callable(main) and list(params) == ["argv"] and params["argv"].default is None, name


def test_help_works_without_docstrings() -> None:
    """`python -OO` strips docstrings: every command's --help must still print and exit 0."""
    code = (
        "import importlib, sys, contextlib, io\n"
        "bad = []\n"
        f"for name, target in {sorted(SCRIPTS.items())!r}:\n"
        "    module, _, attr = target.partition(':')\n"
        "    out = io.StringIO()\n"
        "    try:\n"
        "        with contextlib.redirect_stdout(out):\n"
        "            rc = getattr(importlib.import_module(module), attr)(['--help'])\n"
        "    except SystemExit as e:\n"
        "        rc = e.code\n"
        "    except Exception as e:\n"
        "        rc = repr(e)\n"
        "    if rc != 0 or 'usage' not in out.getvalue():\n"
        "        bad.append((name, rc))\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-OO", "-c", code], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_converter_runs_as_a_file_from_the_repository_root(tmp_path: Path) -> None:
    """`python converters/caffe2torch.py ...` as written in the README: no install, no PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "converters/caffe2torch.py", "--caffemodel", str(tmp_path / "none"),
                           "--arch", "deeplabv2_resnet101"], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=300)
    assert proc.returncode == 1 and proc.stderr == f"error: {tmp_path / 'none'}: file not found\n", proc.stderr
