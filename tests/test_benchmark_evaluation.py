"""benchmarks/evaluation.py as a command: one run writes strict JSON and the tables, every pass checked."""

from __future__ import annotations

import json

import pytest

from benchmarks import evaluation


def test_pipeline_benchmark_command_writes_checked_json_and_tables(tmp_path) -> None:
    pytest.importorskip("pydensecrf.densecrf", reason="pydensecrf2 not installed (pip install -e .[crf])")
    out = tmp_path / "report"
    assert evaluation.main(["--out", str(out), "--model", "deeplabv3plus_tiny", "--size", "65", "--images", "2",
                            "--image-sizes", "30,50", "--rounds", "1", "--crf-max-workers", "2",
                            "--decode", "default,thread"]) == 0
    record = json.loads((out / "eval-pipeline.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    p = record["pipeline"]
    assert record["environment"]["cpu_model"] and p["loadavg_at_start"] is not None and p["loadavg_at_end"]
    assert set(p["rates"]) == {"forward", "eval[default]", "eval[thread]", "crf[1]", "crf[2]", "eval_crf"}
    assert p["default_decode"] in ("inline", "thread, 2 ahead")
    assert all(r["images_per_s"] > 0 for r in p["rates"].values())
    assert p["checks"] and all(p["checks"].values()), p["checks"]
    assert {"eval[thread] / forward", "crf[2] / (2 x crf[1])"} <= set(p["ratios"])
    assert p["ratios"]["eval[thread] / forward"]["target"] == 0.9
    table = (out / "README.md").read_text()
    assert "| eval[thread] / forward |" in table and "| eval[default] / forward |" in table
    assert "load average" in table and f"default decoding here: {p['default_decode']}" in table


def test_pipeline_benchmark_usage_errors(tmp_path, capsys) -> None:
    assert evaluation.main(["--out", str(tmp_path), "--decode", "thread,bogus"]) == 2
    assert evaluation.main(["--out", str(tmp_path), "--image-sizes", "500"]) == 2
    assert capsys.readouterr().err.count("error:") == 2
