"""torchrun with 2 CPU processes (gloo) gives the weights of one process with the same global batch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.test_train import ENV, REPO, assert_same_weights, run_cli, tiny_config, write_config


def run_torchrun(config, out, nproc: int = 2) -> None:
    # --standalone: a local rendezvous on a free port, so parallel test runs do not collide.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "reproduce.train", "--config", str(config), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env={**ENV, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True,
                          timeout=600)
    if proc.returncode != 0:
        raise AssertionError(f"torchrun exit {proc.returncode}\n{proc.stderr[-4000:]}")


@pytest.mark.slow
def test_two_processes_equal_one_frozen_bn(tmp_path):
    """No-BN v2 multi-scale model, 4-term loss, Caffe SGD: 2 x (2 micro-batches of 1) == 1 x (1 of 4)."""
    cfg = tiny_config("v2", iterations=4, accum_steps=2)
    config = write_config(tmp_path, cfg)
    run_torchrun(config, tmp_path / "ddp")
    single = write_config(tmp_path, tiny_config("v2", iterations=4, accum_steps=1), "single.yaml")
    run_cli(single, tmp_path / "single")
    assert_same_weights(tmp_path / "single" / "final.pth", tmp_path / "ddp" / "final.pth", atol=1e-5)


@pytest.mark.slow
def test_two_processes_equal_one_sync_bn(tmp_path):
    """Trained BatchNorm: synchronised over the 2 processes, statistics equal one process's batch of 4."""
    cfg = tiny_config("v3", iterations=4)
    cfg["model"]["kwargs"]["dropout"] = 0.0  # dropout masks are drawn per process
    config = write_config(tmp_path, cfg)
    run_torchrun(config, tmp_path / "ddp")
    run_cli(config, tmp_path / "single")
    assert_same_weights(tmp_path / "single" / "final.pth", tmp_path / "ddp" / "final.pth", atol=1e-5)
