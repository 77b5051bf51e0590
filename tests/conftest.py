"""Shared fixtures: generated official-format caffemodels (made once per session)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent

# Parity against BVLC Caffe itself needs a Debian 11 root with python3-caffe: `tox -e caffe` runs it
# (DEEPLAB_CAFFE=1); the other environments do not collect it at all.
collect_ignore = [] if os.environ.get("DEEPLAB_CAFFE") == "1" else ["test_caffe_engine.py"]

# Under pytest-xdist (tox runs `-n auto`: one worker per core) each worker gets one intra-op thread, for torch,
# TensorFlow and the processes the tests start, so the workers do not oversubscribe the cores. A test that
# measures threads sets its own count (benchmarks: --threads).
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS"):
        os.environ[_var] = "1"
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))


@pytest.fixture(scope="session")
def caffemodels(tmp_path_factory):
    """``get(arch, num_classes=21, seed=0)`` -> (NetParameter, path) of a random official-topology caffemodel."""
    from converters.caffe import synth

    root = tmp_path_factory.mktemp("caffemodels")
    cache: dict[tuple, tuple] = {}

    def get(arch: str, num_classes: int = 21, seed: int = 0):
        key = (arch, num_classes, seed)
        if key not in cache:
            path = root / f"{arch}_{num_classes}_{seed}.caffemodel"
            net = synth.official_caffemodel(arch, path, num_classes=num_classes, seed=seed)
            cache[key] = (net, path)
        return cache[key]

    return get
