"""Shared fixtures: generated official-format caffemodels (made once per session)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from reproduce.kernel_probe import PROBE_CACHE_ENV

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

# The engine keeps its kernel probes' verdicts on disk per machine (reproduce.kernel_probe); tests fake some
# verdicts, so no test (or process a test starts) reads or writes the user's file. The cache's own tests set a
# folder of their own.
os.environ[PROBE_CACHE_ENV] = "off"


# The suite runs on the CPU whatever the machine has: a test that leaves the device to "auto" gets the CPU
# (torch.cuda.is_available() is False for it). The CUDA tests carry the `gpu` marker (tests/test_gpu.py): they
# see the GPU, and are skipped where torch sees none; `pytest -m gpu` runs only them.
HAS_CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA GPU (gpu marker)")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _cpu_unless_gpu_marked(request, monkeypatch):
    if "gpu" not in request.keywords:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


# Folders the session-scoped fixtures make under the base temp folder start with this; the others a test
# module's fixtures make (a release tree, a dataset) are deleted when the module ends, so the slow suite's
# disk use stays at about one module's worth (pyproject's tmp_path_retention_policy does the same per test).
SESSION_PREFIX = "session-"


@pytest.fixture(scope="module", autouse=True)
def _drop_module_folders(request, tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    before = {p.name for p in base.iterdir()}
    failed = request.session.testsfailed
    yield
    if request.session.testsfailed > failed:  # kept for a look, as the failing tests' own folders are
        return
    for path in base.iterdir():
        if path.name not in before and not path.name.startswith(SESSION_PREFIX) and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def caffemodels(tmp_path_factory):
    """``get(arch, num_classes=21, seed=0)`` -> (NetParameter, path) of a random official-topology caffemodel."""
    from converters.caffe import synth

    root = tmp_path_factory.mktemp(SESSION_PREFIX + "caffemodels")
    cache: dict[tuple, tuple] = {}

    def get(arch: str, num_classes: int = 21, seed: int = 0):
        key = (arch, num_classes, seed)
        if key not in cache:
            path = root / f"{arch}_{num_classes}_{seed}.caffemodel"
            net = synth.official_caffemodel(arch, path, num_classes=num_classes, seed=seed)
            cache[key] = (net, path)
        return cache[key]

    return get

