"""Each training reproduction script runs end to end with --smoke (miniature data, random official-format weights)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.test_train import REPO

SCRIPTS = ["voc_v2.sh", "cocostuff10k_v2.sh", "cocostuff164k_v2.sh", "voc_v3.sh", "voc_v3plus.sh"]
PY = {"PYTHON": sys.executable}  # the wrappers run ${PYTHON:-python}


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_script_smoke(script, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, **PY, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    start = time.time()
    proc = subprocess.run(["bash", str(REPO / "reproduce" / script), "--smoke", "--out", str(out)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert (out / "train" / "final.pth").is_file() and (out / "train" / "final.json").is_file()
    report = (out / "report.md").read_text()
    assert "SMOKE RUN" in report and "published result" in report
    assert "== [1/" in proc.stdout and "training" in proc.stdout
    if script != "voc_v2.sh":  # the rerun costs another evaluation: check resuming on one script
        return
    # Rerunning resumes: conversion is skipped, training is already complete and is not redone.
    again = subprocess.run(["bash", str(REPO / "reproduce" / script), "--smoke", "--out", str(out)], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already converted" in again.stdout and "already built" in again.stdout
    assert "resuming" in again.stderr  # training was complete: nothing is redone
    print(f"{script}: {time.time() - start:.0f} s for both runs")


def test_scripts_help_and_bad_arguments(tmp_path):
    """Every wrapper, through bash, hands its arguments to ``python -m reproduce.recipe`` (a stand-in for
    Python records them, one line each), and the recipe's main given exactly those arguments prints the
    help / refuses the unknown flag; one wrapper runs end to end through the real interpreter too."""
    from reproduce import recipe
    from tests.inprocess import run_main, wrapper_argv

    for script in SCRIPTS:
        path = REPO / "reproduce" / script
        for flag, code, stream, text in (("--help", 0, "stdout", "Published"), ("--bogus", 2, "stderr",
                                                                                "unknown argument")):
            passed = wrapper_argv(path, flag, workdir=tmp_path)
            assert passed[:2] == ["-m", "reproduce.recipe"] and passed[-1] == flag, (script, passed)
            res = run_main(recipe.main, passed[2:])
            assert res.returncode == code and text in getattr(res, stream), (script, flag, res)
            if flag == "--help":
                assert "--smoke" in res.stdout and f"reproduce/{script}" in res.stdout
    ok = subprocess.run(["bash", str(REPO / "reproduce" / SCRIPTS[0]), "--help"], capture_output=True, text=True,
                        env={**os.environ, **PY})
    assert ok.returncode == 0 and "--smoke" in ok.stdout and "Published" in ok.stdout
    bad = subprocess.run(["bash", str(REPO / "reproduce" / SCRIPTS[0]), "--bogus"], capture_output=True, text=True,
                         env={**os.environ, **PY})
    assert bad.returncode == 2 and "unknown argument" in bad.stderr


def test_missing_weights_are_explained(tmp_path):
    proc = subprocess.run(["bash", str(REPO / "reproduce" / "voc_v2.sh"), "--models-dir", str(tmp_path / "models"),
                           "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, env={**os.environ, **PY, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 1
    assert "init.caffemodel" in proc.stderr and "download" in proc.stderr.lower()


def test_recipe_help_lists_recipes_without_docstrings():
    proc = subprocess.run([sys.executable, "-OO", "-m", "reproduce.recipe", "--help"], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert proc.returncode == 0 and "voc_v3plus_xception65" in proc.stdout and "voc_v2_official" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "reproduce.recipe", "voc_v22"], cwd=REPO, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert bad.returncode == 1 and "did you mean voc_v2?" in bad.stderr


@pytest.mark.slow
def test_xception65_recipe_is_one_config_file(tmp_path):
    """The Xception-65 v3+ training recipe has no script: its config alone runs every step (TF writes the smoke ckpt)."""
    pytest.importorskip("tensorflow", reason="the smoke run writes the Xception-65 ImageNet checkpoint with TensorFlow")
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "reproduce.recipe", "voc_v3plus_xception65", "--smoke", "--out",
                           str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=1500,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
                               "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "== [7/7] report" in proc.stdout
    for name in ("final.pth", "best.pth", "last.pth", "best.json"):
        assert (out / "train" / name).is_file(), name
    report = (out / "report.md").read_text()
    assert "best checkpoint" in report and "deeplab_v3plus_xception65_voc12_val[3]" in report
