"""The engine's compile cache: a per-user folder, and a second process starts markedly faster from it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reproduce import inference

REPO = Path(__file__).resolve().parent.parent

CHILD = """
import json, sys, time
import torch
torch.set_num_threads(2)
from torch._dynamo.utils import counters
from reference_models import build_model
from reproduce import inference
from reproduce.inference import Segmenter
# prepacked oneDNN weights are not picklable, so torch's FX graph cache skips such graphs: test without them
inference.COMPILE_OPTIONS["cpp.weight_prepack"] = False
torch.manual_seed(0)
engine = Segmenter.from_module(build_model("deeplabv2_tiny_msc", num_classes=5), device="cpu",
                               precision="fp32", compile=True)
x = torch.randn(1, 3, 65, 65, generator=torch.Generator().manual_seed(1))
t0 = time.perf_counter()
out = engine.forward(x)
first = time.perf_counter() - t0
with torch.inference_mode():
    ref = engine.net(x.contiguous(memory_format=torch.channels_last))
print(json.dumps({"first_call_s": first, "cache": engine.describe()["compile_cache"],
                  "fx": dict(counters["inductor"]), "rel": float((out - ref).abs().max() / ref.abs().max())}))
"""


def test_cache_folder_is_per_user_and_overridable(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv(inference.CACHE_DIR_ENV, raising=False)
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert inference.inductor_cache_dir() == tmp_path / "xdg" / "deeplab-repro" / "inductor"
    # torch's own default (a folder in the temporary directory) is not a user choice: ours wins
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())
    assert inference.inductor_cache_dir() == tmp_path / "xdg" / "deeplab-repro" / "inductor"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "theirs"))
    assert inference.inductor_cache_dir() == tmp_path / "theirs"
    monkeypatch.setenv(inference.CACHE_DIR_ENV, str(tmp_path / "ours"))
    assert inference.inductor_cache_dir() == tmp_path / "ours"
    assert inference.use_inductor_cache_dir() == (tmp_path / "ours").resolve()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str((tmp_path / "ours").resolve())
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv(inference.CACHE_DIR_ENV, str(blocker / "sub"))
    with pytest.raises(inference.InferenceError, match="cannot create the compile cache folder"):
        inference.use_inductor_cache_dir()


@pytest.mark.slow
def test_second_process_compiles_from_the_cache(tmp_path: Path) -> None:
    """Two fresh processes compile the same model and shape in our cache folder; the second one loads the graph
    from inductor's FX graph cache (freezing without weight prepacking, which torch 2.13 can cache)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="2")
    env[inference.CACHE_DIR_ENV] = str(tmp_path / "cache")
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    runs = []
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", CHILD], env=env, cwd=REPO, capture_output=True, text=True,
                              timeout=900)
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    first, second = runs
    assert first["cache"] == second["cache"] == str((tmp_path / "cache").resolve())
    assert first["rel"] < 1e-5 and second["rel"] < 1e-5
    assert first["fx"].get("fxgraph_cache_miss", 0) >= 1 and not first["fx"].get("fxgraph_cache_hit")
    assert second["fx"].get("fxgraph_cache_hit", 0) >= 1 and not second["fx"].get("fxgraph_cache_bypass")
    # nothing is generated or built by a C++ compiler the second time: markedly faster start-up
    assert second["first_call_s"] < 0.7 * first["first_call_s"], runs
