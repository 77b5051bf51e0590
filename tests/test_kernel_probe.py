"""The engine's probes (reproduce.kernel_probe): the timing (one untimed call each, then alternating rounds,
medians) and the verdicts kept per machine on disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from reproduce import kernel_probe

REPO = Path(__file__).resolve().parent.parent
CHOICES = ("conv", "gemm")


def test_untimed_first_calls_then_alternating_rounds_and_medians(monkeypatch) -> None:
    calls: list[str] = []
    clock = iter(float(t) for t in range(1000))
    monkeypatch.setattr(kernel_probe.time, "perf_counter", lambda: next(clock))
    durations = {"a": iter([5, 1, 3]), "b": iter([2, 2, 9])}

    def run(name: str):
        def fn() -> None:
            calls.append(name)
            if len(calls) > 2:  # a timed call: advance the fake clock by its duration - 1 (the end read adds 1)
                for _ in range(next(durations[name]) - 1):
                    next(clock)
        return fn

    ms = kernel_probe.median_ms_interleaved({"a": run("a"), "b": run("b")}, rounds=3)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then a-b, b-a, a-b
    assert ms == {"a": 3000.0, "b": 2000.0}  # medians of (5, 1, 3) and (2, 2, 9) seconds, in ms


# ------------------------------------------------------------------------------ verdicts kept on disk per machine
@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A probe-cache folder of the test's own and a fresh process's memory; ``restart()`` forgets the memory
    (a new process on the same machine)."""
    folder = tmp_path / "probes"
    monkeypatch.setenv(kernel_probe.PROBE_CACHE_ENV, str(folder))

    def restart() -> None:
        monkeypatch.setattr(kernel_probe, "_MEMORY", {})
        monkeypatch.setattr(kernel_probe, "_DISK", {})

    restart()
    return SimpleNamespace(folder=folder, restart=restart)


def _measure(calls: list[int], choice: str = "gemm"):
    def measure() -> dict:
        calls.append(1)
        return {"conv_ms": [3.0], "gemm_ms": [1.0], "choice": choice}
    return measure


def test_a_verdict_is_measured_once_per_machine_and_read_back(cache) -> None:
    calls: list[int] = []
    first = kernel_probe.probed("atrous m=0.8", (64, 32, 6, 6, True, torch.bfloat16, 2), _measure(calls), CHOICES)
    assert first["source"] == "measured" and first["choice"] == "gemm" and calls == [1]
    assert kernel_probe.probed("atrous m=0.8", (64, 32, 6, 6, True, torch.bfloat16, 2), _measure(calls),
                               CHOICES) is first  # the same process: from memory
    path = kernel_probe.probe_cache_file()
    assert path is not None and path.parent == cache.folder and list(cache.folder.iterdir()) == [path]
    data = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(c))
    assert data["format"] == kernel_probe.CACHE_FORMAT and data["machine"]["torch"] == torch.__version__
    cache.restart()  # another process on this machine
    again = kernel_probe.probed("atrous m=0.8", (64, 32, 6, 6, True, torch.bfloat16, 2), _measure(calls), CHOICES)
    assert calls == [1] and again["source"] == "cache"
    assert {k: v for k, v in again.items() if k != "source"} == {k: v for k, v in first.items() if k != "source"}
    # another dtype, thread count or probe setting is another verdict; verdicts accumulate in the one file
    for kind, key in [("atrous m=0.8", (64, 32, 6, 6, True, None, 2)), ("atrous m=0.8", (64, 32, 6, 6, True,
                      torch.bfloat16, 4)), ("atrous m=0.5", (64, 32, 6, 6, True, torch.bfloat16, 2))]:
        assert kernel_probe.probed(kind, key, _measure(calls, "conv"), CHOICES)["source"] == "measured"
    assert len(calls) == 4 and len(json.loads(path.read_text())["probes"]) == 4


def test_the_file_is_per_machine_kind(cache, monkeypatch) -> None:
    here = kernel_probe.probe_cache_file()
    other = {**kernel_probe.machine(), "torch": "0.0.0"}
    monkeypatch.setattr(kernel_probe, "machine", lambda: other)
    assert kernel_probe.probe_cache_file() != here and kernel_probe.probe_cache_file().parent == here.parent
    monkeypatch.setenv(kernel_probe.PROBE_CACHE_ENV, "off")
    assert kernel_probe.probe_cache_file() is None


@pytest.mark.parametrize("content", [b"{not json", b'{"format": "something else", "probes": {}}', b"\xff\xfe",
                                     b'{"format": "deeplab-repro kernel probes v1", "probes": {"x": NaN}}', b"[]",
                                     "too large", "bad choice"])
def test_a_bad_cache_file_means_measuring_again_and_a_good_file_after(cache, content) -> None:
    calls: list[int] = []
    key = (8, 8, 2, 2, False, None, 1)
    kernel_probe.probed("k", key, _measure(calls), CHOICES)
    path = kernel_probe.probe_cache_file()
    if content == "too large":
        data = json.loads(path.read_text())
        data["padding"] = "x" * kernel_probe.MAX_CACHE_BYTES
        path.write_text(json.dumps(data))
    elif content == "bad choice":
        data = json.loads(path.read_text())
        data["probes"] = {name: {**v, "choice": "rm -rf"} for name, v in data["probes"].items()}
        path.write_text(json.dumps(data))
    else:
        path.write_bytes(content)
    cache.restart()
    verdict = kernel_probe.probed("k", key, _measure(calls), CHOICES)
    assert calls == [1, 1] and verdict["source"] == "measured" and verdict["choice"] == "gemm"
    data = json.loads(path.read_text())  # replaced by a valid file
    assert data["format"] == kernel_probe.CACHE_FORMAT and len(data["probes"]) == 1
    assert [p.name for p in cache.folder.iterdir()] == [path.name]  # no temporary file left


def test_an_unwritable_cache_is_no_error_and_off_writes_nothing(cache, monkeypatch, tmp_path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(kernel_probe.PROBE_CACHE_ENV, str(blocker / "probes"))
    calls: list[int] = []
    assert kernel_probe.probed("k", (1,), _measure(calls), CHOICES)["source"] == "measured"
    monkeypatch.setenv(kernel_probe.PROBE_CACHE_ENV, "off")
    cache.restart()
    assert kernel_probe.probed("k", (1,), _measure(calls), CHOICES)["source"] == "measured"
    cache.restart()
    assert kernel_probe.probed("k", (1,), _measure(calls), CHOICES)["source"] == "measured"
    assert calls == [1, 1, 1] and blocker.read_text() == "not a folder" and not cache.folder.exists()


def test_a_second_engine_process_reads_the_first_ones_probes(tmp_path) -> None:
    """Two real processes: the first measures every probe of a channels_last engine, the second measures none
    and rewrites the model the same way."""
    script = textwrap.dedent("""
        import json, torch
        from reference_models import build_model
        from reproduce import atrous_gemm, depthwise_layout
        from reproduce.inference import Segmenter
        torch.manual_seed(0)
        model = build_model("deeplabv3plus_tiny", num_classes=5)
        info = Segmenter.from_module(model, device="cpu", precision="fp32").describe()
        print(json.dumps({k: info[k] for k in ("atrous_probes", "depthwise_probes", "probe_cache",
                                                 "atrous_convs_as_gemm", "depthwise_nchw")}))
    """)
    env = {**os.environ, kernel_probe.PROBE_CACHE_ENV: str(tmp_path / "probes"), "PYTHONPATH": str(REPO)}
    runs = []
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    first, second = runs
    assert first["atrous_probes"] and first["probe_cache"] == second["probe_cache"]
    assert Path(first["probe_cache"]).parent == tmp_path / "probes"
    assert {p["source"] for p in first["atrous_probes"] + first["depthwise_probes"]} == {"measured"}
    assert {p["source"] for p in second["atrous_probes"] + second["depthwise_probes"]} == {"cache"}
    for kind in ("atrous_probes", "depthwise_probes"):
        assert [{k: v for k, v in p.items() if k != "source"} for p in first[kind]] == [
            {k: v for k, v in p.items() if k != "source"} for p in second[kind]]
    assert (first["atrous_convs_as_gemm"], first["depthwise_nchw"]) == (
        second["atrous_convs_as_gemm"], second["depthwise_nchw"])
