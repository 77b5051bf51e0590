"""The official reproduction scripts: --help, input checks, and a full --smoke run of each (as CI runs them)."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = ("voc_v2_official.sh", "voc_v3plus_official.sh")


def _run(script: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(["bash", str(REPO / "reproduce" / script), *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=timeout)


def _run_in_process(script: str, *args: str, workdir: Path) -> subprocess.CompletedProcess:
    """What the wrapper hands Python (bash runs it with a recording stand-in), then the recipe's main on it."""
    from reproduce import recipe
    from tests.inprocess import run_main, wrapper_argv

    argv = wrapper_argv(REPO / "reproduce" / script, *args, workdir=workdir)
    assert argv[:2] == ["-m", "reproduce.recipe"] and argv[-len(args):] == list(args), argv
    return run_main(recipe.main, argv[2:], cwd=REPO)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script: str, tmp_path: Path) -> None:
    run = _run if script == SCRIPTS[0] else functools.partial(_run_in_process, workdir=tmp_path)  # one for real
    proc = run(script, "--help")
    assert proc.returncode == 0
    for flag in ("--data-root", "--weights-dir", "--out", "--smoke"):
        assert flag in proc.stdout
    assert run(script, "--bogus").returncode == 2


@pytest.mark.parametrize("script", SCRIPTS)
def test_missing_inputs_are_explained_before_any_work(script: str, tmp_path: Path) -> None:
    proc = _run_in_process(script, "--data-root", str(tmp_path / "nodata"), "--weights-dir", str(tmp_path), "--out",
                           str(tmp_path / "out"), workdir=tmp_path)
    assert proc.returncode == 1
    assert "VOC 2012 not found" in proc.stderr and "VOCtrainval_11-May-2012.tar" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_missing_weights_say_where_to_get_them(tmp_path: Path) -> None:
    from reproduce._smoke import make_voc

    make_voc(tmp_path / "data")
    proc = _run("voc_v2_official.sh", "--data-root", str(tmp_path / "data"), "--weights-dir", str(tmp_path / "w"),
                "--out", str(tmp_path / "out"))
    assert proc.returncode == 1 and "train_iter_20000.caffemodel not found" in proc.stderr
    assert "prototxt_and_model.zip" in proc.stderr


def test_v2_smoke(tmp_path: Path) -> None:
    proc = _run("voc_v2_official.sh", "--smoke", "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    result = json.loads((tmp_path / "out" / "eval" / "result.json").read_text())
    assert result["run"]["images"] == 3 and result["results"]["crf"] is not None
    assert [c["row"] for c in result["comparison"]] == ["deeplab_v2_resnet101_voc12_val[5]",
                                                        "deeplab_v2_resnet101_voc12_val[6]"]
    assert [c["compared_with"] for c in result["comparison"]] == ["plain", "crf"]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "76.35" in report and "77.69" in report and "SMOKE RUN" in report
    assert (tmp_path / "out" / "deeplabv2_resnet101_msc_voc12.json").is_file()  # provenance of the conversion


@pytest.mark.slow
def test_v3plus_smoke(tmp_path: Path) -> None:
    pytest.importorskip("tensorflow", reason="the v3+ smoke run writes its TF checkpoint with TensorFlow")
    proc = _run("voc_v3plus_official.sh", "--smoke", "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    os16 = json.loads((tmp_path / "out" / "os16" / "result.json").read_text())
    os8 = json.loads((tmp_path / "out" / "os8_ms_flip" / "result.json").read_text())
    assert os16["run"]["model"]["build_kwargs"] == {"output_stride": 16} and os16["run"]["scales"] == [1.0]
    assert os8["run"]["model"]["build_kwargs"] == {"output_stride": 8} and os8["run"]["flip"] is True
    assert os8["run"]["scales"] == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    assert os8["run"]["model"]["preprocessing"]["channel_order"] == "RGB"
    report = (tmp_path / "out" / "report.md").read_text()
    assert "82.20" in report and "83.58" in report
