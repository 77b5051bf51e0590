"""torchrun with 2 CPU processes (gloo): the weights of one process with the same global batch; a failing rank
ends the job within seconds."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from reproduce import train as T
from reproduce.checkpoint import find_checkpoint
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
    # each process draws its own dropout masks: the ranks' torch RNG states differ (seed + rank)
    _, ckpt = find_checkpoint(tmp_path / "ddp")
    assert len(ckpt["rng"]) == 2 and not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])


def run_torchrun_until(config, out, *, timeout: float) -> tuple[int | None, str, float]:
    """(exit code or None if still running after ``timeout`` s, stderr, seconds) of a 2-process run.

    A job still running after ``timeout`` gets SIGTERM, which torchrun passes on to its workers (they run
    in sessions of their own), then SIGKILL: a hanging job does not outlive the test.
    """
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "reproduce.train", "--config", str(config), "--out", str(out)]
    t0 = time.monotonic()
    log = Path(out).with_name(Path(out).name + ".stderr")
    with open(log, "w", encoding="utf-8") as err:  # a file: a worker left behind cannot hold a pipe open
        proc = subprocess.Popen(cmd, cwd=REPO, env={**ENV, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.DEVNULL,
                                stderr=err, start_new_session=True)
        try:
            code: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return code, log.read_text(encoding="utf-8", errors="replace"), time.monotonic() - t0


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def _rank1_only_sample(n: int, seed: int, iterations: int) -> int:
    """A sample index rank 1 of 2 reads first, at an iteration > 0 (global batch 2, one image per rank)."""
    ranks = [list(T.DeterministicBatchSampler(n, seed=seed, global_batch=2, accum_steps=1, rank=r, world=2,
                                              max_iter=iterations)) for r in (0, 1)]
    seen: set[int] = set()
    for it in range(iterations):
        (i0, _), (i1, _) = ranks[0][it][0], ranks[1][it][0]
        if it > 0 and i1 not in seen and i1 != i0:
            return i1
        seen.update((i0, i1))
    raise AssertionError("no iteration where rank 1 reads a new sample alone")


def test_a_rank_with_a_corrupt_sample_ends_the_job_in_seconds(tmp_path):
    """Rank 1 fails on a corrupt image while rank 0 waits in a collective: the job ends at once, one line says why."""
    from reproduce.synthetic import write_folder

    root = write_folder(tmp_path / "data", n=8, sizes=(50, 70), splits={"train": range(6), "val": range(6, 8)})
    cfg = tiny_config("v3", iterations=6, batch_size=2)
    cfg.update(data={"dataset": "folder", "root": str(root), "split": "train"}, on_error="error")
    cfg["model"]["num_classes"] = 3
    bad = _rank1_only_sample(6, cfg["seed"], 6)
    (root / "images" / f"img_{bad:03d}.jpg").write_bytes(b"not a jpeg at all")
    code, err, seconds = run_torchrun_until(write_config(tmp_path, cfg), tmp_path / "run", timeout=150)
    assert code is not None, f"the job hung (killed after {seconds:.0f} s)\n{err[-3000:]}"
    assert code != 0
    lines = _error_lines(err)
    assert len(lines) == 1, err[-3000:]
    assert lines[0].startswith("error: rank 1 of 2: ") and f"img_{bad:03d}.jpg" in lines[0]


def test_a_non_finite_loss_ends_every_rank_with_one_line(tmp_path):
    """A diverging run: every rank sees the same all-reduced loss; rank 0 says so in one line, all ranks stop."""
    cfg = tiny_config("v3", iterations=8, base_lr=1e30)
    cfg["model"]["kwargs"]["dropout"] = 0.0
    code, err, seconds = run_torchrun_until(write_config(tmp_path, cfg), tmp_path / "run", timeout=150)
    assert code is not None, f"the job hung (killed after {seconds:.0f} s)\n{err[-3000:]}"
    assert code != 0
    lines = _error_lines(err)
    assert len(lines) == 1, err[-3000:]
    assert re.fullmatch(r"error: rank 0 of 2: loss is (nan|inf|-inf) at iteration \d+; lower the learning rate",
                        lines[0]), lines[0]
    assert not (tmp_path / "run" / "final.pth").exists()


def test_rank_0_evaluates_while_the_others_wait_outside_collectives(tmp_path):
    """eval_every under torchrun: rank 0 scores last.pth, rank 1 takes the result from the store; the run ends."""
    from tests.test_train import _with_eval

    cfg = _with_eval(tiny_config("v3", iterations=4), every=2)
    cfg["model"]["kwargs"]["dropout"] = 0.0
    code, err, _ = run_torchrun_until(write_config(tmp_path, cfg), tmp_path / "run", timeout=300)
    assert code == 0, err[-3000:]
    evals = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()
             if "eval_miou" in line]
    assert [e["iteration"] for e in evals] == [2, 4]
    best = json.loads((tmp_path / "run" / "best.json").read_text())["evaluation"]
    assert json.loads((tmp_path / "run" / "final.json").read_text())["best"] == best
