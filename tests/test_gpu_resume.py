"""On a GPU machine (``pytest -m gpu``; skipped without CUDA): a run resumes on CUDA across AMP on/off and
across the number of visible GPUs, and ends close to the uninterrupted run.

Each test trains the tiny v3 config (trained BatchNorm, dropout) for 6 iterations on CUDA as the reference,
then copies the run folder as a run killed after its checkpoint at iteration 4 (ckpt_6 and final.pth
removed) and resumes it in another setting through the command line. Tolerances: the bilinear upsampling
backward of the loss has no deterministic CUDA kernel, so a resumed fp32 run agrees with the uninterrupted
one to float32 noise over 2 iterations (``FP32_TOL``), not to the bit; 2 iterations in float16 autocast
instead of float32 (one of them possibly skipped by the GradScaler) move the weights by up to ``AMP_TOL``;
both relative to each tensor's norm (at least 1).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from converters.io import load_state_dict
from tests.test_train import ENV, REPO, tiny_config, write_config

pytestmark = pytest.mark.gpu

FP32_TOL = 1e-3
AMP_TOL = 5e-2


def _config() -> dict:
    cfg = tiny_config("v3", iterations=6)
    cfg.update(checkpoint_every=2, keep_checkpoints=3)
    return cfg


def _train(config: Path, out: Path, *extra: str, visible: str | None = None,
           processes: int = 1) -> subprocess.CompletedProcess:
    env = dict(ENV)
    if visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible
    head = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)] \
        if processes > 1 else [sys.executable]
    cmd = [*head, "-m", "reproduce.train", "--config", str(config), "--out", str(out), "--device", "cuda", *extra]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _killed_copy(run: Path, to: Path) -> Path:
    """``run`` as it was after its checkpoint at iteration 4."""
    shutil.copytree(run, to)
    for name in ("ckpt_0000006.pt", "final.pth", "final.json"):
        (to / name).unlink()
    (to / "latest.json").write_text(json.dumps({"iteration": 4, "file": "ckpt_0000004.pt"}))
    return to


def _assert_close(a: Path, b: Path, tol: float) -> None:
    """Every float tensor of ``b`` within ``tol`` of ``a``'s in norm, relative to max(|a|, 1); others equal."""
    sa, sb = load_state_dict(a), load_state_dict(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        x, y = sa[k].double(), sb[k].double()
        assert torch.isfinite(y).all(), k
        if sa[k].is_floating_point():
            assert float((y - x).norm()) <= tol * max(float(x.norm()), 1.0), (k, float((y - x).norm()))
        else:
            assert torch.equal(x, y), k


@pytest.mark.parametrize("first,then", [((), ("--amp",)), (("--amp",), ())], ids=["amp_off_to_on", "amp_on_to_off"])
def test_resume_across_amp(tmp_path: Path, first: tuple, then: tuple) -> None:
    """A run saved without AMP resumed with --amp starts a fresh GradScaler (once: 'The source state dict is
    empty'); a run saved with AMP resumed without it ignores the scaler state. Both end within AMP_TOL."""
    config = write_config(tmp_path, _config())
    straight = tmp_path / "straight"
    _train(config, straight, *first)
    run = _killed_copy(straight, tmp_path / "resumed")
    proc = _train(config, run, *then)
    assert f"resuming {run} at iteration 4" in proc.stderr
    note = ("the checkpoint was written without AMP: the grad scaler starts fresh" if then
            else "AMP is off in this run: the checkpoint's grad-scaler state is not used")
    assert note in proc.stderr
    _assert_close(straight / "final.pth", run / "final.pth", AMP_TOL)
    if then:  # the scaler state the AMP session saved loads into the next AMP session
        ckpt = torch.load(run / "ckpt_0000006.pt", map_location="cpu", weights_only=True)
        assert ckpt["scaler"]["scale"] > 0


@pytest.mark.parametrize("saved_on,resumed_on", [("one", "all"), ("all", "one")])
def test_resume_across_gpu_counts(tmp_path: Path, saved_on: str, resumed_on: str) -> None:
    """Saved in a process that sees one GPU, resumed in one that sees all of them (and the reverse): the CUDA
    RNG states of the devices both see are restored, the others named in one note; within FP32_TOL."""
    n = torch.cuda.device_count()
    visible = {"one": "0", "all": None}
    config = write_config(tmp_path, _config())
    straight = tmp_path / "straight"
    _train(config, straight, visible=visible[saved_on])
    saved = torch.load(straight / "ckpt_0000004.pt", map_location="cpu", weights_only=True)
    assert len(saved["rng"][0]["cuda"]) == (1 if saved_on == "one" else n)
    run = _killed_copy(straight, tmp_path / "resumed")
    proc = _train(config, run, visible=visible[resumed_on])
    assert f"resuming {run} at iteration 4" in proc.stderr
    if n > 1:
        expect = (f"devices 1..{n - 1} keep their current state" if saved_on == "one"
                  else f"the states of devices 1..{n - 1} are not used")
        assert expect in proc.stderr
    _assert_close(straight / "final.pth", run / "final.pth", FP32_TOL)


def test_resume_on_all_gpus_as_processes(tmp_path: Path) -> None:
    """Saved by one process on one GPU, resumed by torchrun with one process per visible GPU (the global batch
    of 4 split over them): within FP32_TOL of the uninterrupted single-process run."""
    n = torch.cuda.device_count()
    if n < 2 or 4 % n:
        pytest.skip(f"needs 2 or 4 visible GPUs (the batch of 4 split evenly), found {n}")
    config = write_config(tmp_path, _config())
    straight = tmp_path / "straight"
    _train(config, straight, visible="0")
    run = _killed_copy(straight, tmp_path / "resumed")
    proc = _train(config, run, processes=n)
    assert f"resuming {run} at iteration 4" in proc.stderr
    _assert_close(straight / "final.pth", run / "final.pth", FP32_TOL)
    assert os.path.isfile(run / "final.json")
