"""The conversion benchmark (``benchmarks/convert.py``): its measurement helper and a ``--quick`` run end to end.

The memory requirement itself (peak RSS < 2x the size of the 3-scale file) is
measured by the full benchmark, not asserted here: the quick run uses the
single-scale file, for which only completeness and sanity are checked.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import convert
from benchmarks._measure import REPO, child_env, run_measured

MIB = 1 << 20


def _alloc(mib: int) -> list[str]:
    return [sys.executable, "-c", f"b = bytearray({mib} * {MIB}); b[::4096] = b'x' * len(b[::4096]); print('ok')"]


def test_run_measured_reports_each_childs_own_peak():
    """Each figure is the child's own peak, whatever the caller's size (this pytest process holds torch).

    A small run after a big one is not reported as big (RUSAGE_CHILDREN would), and
    a small child is not floored at the caller's RSS (a direct spawn would be).
    """
    big = run_measured(_alloc(200))
    small = run_measured(_alloc(0))
    assert big.returncode == 0 and small.returncode == 0
    assert big.stdout.strip() == "ok"
    assert big.peak_rss_bytes >= 200 * MIB
    assert small.peak_rss_bytes < 100 * MIB < big.peak_rss_bytes
    assert big.seconds > 0
    assert small.launcher_peak_rss_bytes < 64 * MIB


def test_run_measured_reports_the_exit_code():
    m = run_measured([sys.executable, "-c", "import sys; sys.exit(3)"])
    assert m.returncode == 3


def test_run_measured_timeout_kills_the_child():
    with pytest.raises(TimeoutError):
        run_measured([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.5)


def test_child_env_makes_the_repository_importable():
    env = child_env(3)
    assert env["OMP_NUM_THREADS"] == "3"
    assert str(REPO) in env["PYTHONPATH"].split(":")


@pytest.mark.slow
def test_quick_benchmark_end_to_end(tmp_path: Path):
    """``python -m benchmarks.convert --quick`` in its own process (so the parent stays small, as in real use)."""
    out = tmp_path / "results" / "convert-test.json"
    workdir = tmp_path / "work"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.convert", "--quick", "--workdir", str(workdir),
                           "--out", str(out)], cwd=REPO, env=child_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "peak RSS" in proc.stdout and "naive/ours" in proc.stdout
    record = json.loads(out.read_text(encoding="utf-8"))

    assert record["mode"] == "quick"
    env = record["environment"]
    for key in ("python", "torch", "protobuf", "cpu_model", "omp_num_threads", "torch_threads", "git"):
        assert env[key] not in (None, ""), key
    size = record["file"]["size_bytes"]
    assert size == (workdir / "resnet101.caffemodel").stat().st_size
    assert size > 100 * MIB  # the full single-scale ResNet-101 (~177 MB)

    results = record["results"]
    assert set(results) == {"baseline", "ours", "naive", "reader"}
    for name, r in results.items():
        assert r["seconds"] > 0, name
        assert r["peak_rss_bytes"] > 0, name
        assert r["rss_over_file_size"] == pytest.approx(r["peak_rss_bytes"] / size, abs=1e-3), name
        assert 0 < r["launcher_peak_rss_bytes"] < 64 * MIB, name
    # every torch process pays at least the bare import; the reader alone never holds the file
    assert results["ours"]["peak_rss_bytes"] > results["baseline"]["peak_rss_bytes"]
    assert results["naive"]["peak_rss_bytes"] > results["baseline"]["peak_rss_bytes"]
    assert results["reader"]["peak_rss_bytes"] < size
    assert results["ours"]["output_bytes"] > 0.9 * size  # the .pth holds every weight once
    # both conversions saw the same values
    assert results["naive"]["detail"]["values"] == results["reader"]["detail"]["values"] > 40_000_000

    ratios = record["naive_over_ours"]
    for key in ("seconds", "peak_rss", "seconds_above_baseline", "peak_rss_above_baseline"):
        assert ratios[key] is not None and ratios[key] > 0, key
    req = record["requirement"]
    assert req["applies"] is False and req["limit_bytes"] == 2 * size
    assert isinstance(req["met"], bool)

    # a second run reuses the generated file
    again = subprocess.run([sys.executable, "-m", "benchmarks.convert", "--quick", "--workdir", str(workdir),
                            "--out", str(out), "--skip-naive", "--skip-reader"], cwd=REPO, env=child_env(),
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    second = json.loads(out.read_text(encoding="utf-8"))
    assert second["file"]["reused"] is True and set(second["results"]) == {"baseline", "ours"}
    assert "naive_over_ours" not in second


def test_format_table_mentions_every_run():
    record = {
        "mode": "full",
        "file": {"synth_arch": "resnet101_msc", "size_mib": 505.5, "size_bytes": 530033815},
        "results": {n: {"seconds": 1.0, "peak_rss_mib": 500.0, "rss_over_file_size": 1.0}
                    for n in ("baseline", "ours", "naive")},
        "naive_over_ours": {"seconds": 2.0, "peak_rss": 2.0, "seconds_above_baseline": 3.0,
                            "peak_rss_above_baseline": 3.0},
        "requirement": {"limit_ratio": 2.0, "met": True, "ours_rss_over_file_size": 1.0, "applies": True},
    }
    table = convert.format_table(record)
    assert all(n in table for n in ("baseline", "ours", "naive", "met"))
