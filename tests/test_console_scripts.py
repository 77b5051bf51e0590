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


# Files that change sys.path, and why (nothing else may: run as files, the converters re-run themselves as
# modules through converters/as_module.py; the maintainer tools run as `python -m tools.<name>`).
SYS_PATH_EDITS = {
    # The .mat helper process runs this file as a script, which puts reproduce/datasets/ first on sys.path;
    # its modules (base.py, folder.py, voc.py, ...) must not shadow what numpy/scipy import. Python 3.10 (the
    # oldest we support) has no -P flag to keep the script's folder off the path.
    "reproduce/datasets/matfile.py",
    # --external-path: the benchmark times a user-named outside project (a peer's repository) whose modules
    # import each other by top-level name; the folders go first on sys.path for that run only, then are restored.
    "benchmarks/engine.py",
}


def _sys_path_edits(tree) -> list[int]:
    """Line numbers where ``tree`` assigns to, deletes from or calls a mutating method of sys.path."""
    import ast

    def is_sys_path(node) -> bool:
        while isinstance(node, ast.Subscript):
            node = node.value
        return (isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name)
                and node.value.id == "sys")

    lines = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        elif isinstance(node, ast.Delete):
            targets = node.targets
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if is_sys_path(node.func.value) and node.func.attr in (
                    "insert", "append", "extend", "pop", "remove", "clear", "reverse", "sort", "__setitem__"):
                lines.append(node.lineno)
            elif node.func.attr == "addsitedir":
                lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module == "sys" and any(a.name == "path" for a in node.names):
            lines.append(node.lineno)  # `from sys import path` would hide the edits from this check
        lines += [node.lineno for t in targets if is_sys_path(t)]
    return sorted(lines)


def test_no_module_edits_sys_path() -> None:
    import ast

    found = {}
    for folder in ("converters", "reproduce", "reference_models", "benchmarks", "tools"):
        for path in sorted((REPO / folder).rglob("*.py")):
            lines = _sys_path_edits(ast.parse(path.read_text(encoding="utf-8"), str(path)))
            if lines:
                found[path.relative_to(REPO).as_posix()] = lines
    assert set(found) <= SYS_PATH_EDITS, {k: v for k, v in found.items() if k not in SYS_PATH_EDITS}
    assert _sys_path_edits(ast.parse("import sys\nsys.path.insert(0, 'x')\nsys.path[:0] = ['y']\n")) == [2, 3]


def test_converter_files_rerun_through_one_helper() -> None:
    """Every converter a user may run as a file re-runs itself with converters/as_module.py (no copies)."""
    for path in sorted((REPO / "converters").glob("*.py")):
        text = path.read_text(encoding="utf-8")
        assert ("execve" in text) == (path.name == "as_module.py"), path.name
        if 'if __name__ == "__main__":' in text:
            assert "    import as_module\n    as_module.rerun(__file__)\n" in text, path.name


@pytest.mark.parametrize("script", ["converters/export.py", "converters/releases_readme.py"])
def test_converter_help_as_a_file_keeps_interpreter_options(script: str) -> None:
    """Run as a file with -OO (docstrings stripped) and -X importtime: the re-run as a module keeps both."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-OO", "-X", "importtime", script, "--help"], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: "), proc.stderr[-2000:]
    assert "| converters\n" in proc.stderr  # the package, imported (and timed) by the re-run under its name


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_usage_names_the_command_the_user_typed(name: str, monkeypatch, capsys) -> None:
    """Run as the console script, `usage:` says `deeplab-...` (not `python -m ...`), whatever the module."""
    module, _, attr = SCRIPTS[name].partition(":")
    main = getattr(importlib.import_module(module), attr)
    monkeypatch.setattr(sys, "argv", [f"/venv/bin/{name}", "--help"])
    rc = main(["--help"])
    usage = capsys.readouterr().out.split("\n", 1)[0]
    assert rc == 0 and usage.startswith(f"usage: {name}"), usage
