"""Benchmark harnesses (``python -m benchmarks.run``) and the report (``python -m benchmarks.report``).

Each suite's quick mode runs end to end on CPU on a tiny grid and writes valid JSON; the
report renders Markdown and PNGs from those JSONs (and from a reproduction result).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import inference, report, run
from benchmarks._common import parse_sizes, result_filename, summarize

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """A directory the suite tests write into and the report test reads."""
    return tmp_path_factory.mktemp("bench-results")


def _run(argv: list[str]) -> int:
    return run.main(["--quiet", "--threads", "1", *argv])


def _load(path: Path) -> dict:
    record = json.loads(path.read_text(encoding="utf-8"))
    env = record["environment"]
    for key in ("torch", "device", "device_name", "torch_threads", "git", "python"):
        assert key in env, key
    assert record["schema"] == 1 and record["mode"] == "quick"
    return record


def test_inference_quick(results: Path, monkeypatch):
    # A peer that is always installed (our own model under another name) and one that is not.
    monkeypatch.setitem(inference.PEERS, "fake.mobilenetv2", inference.Peer(
        "fake.mobilenetv2", "torch", "deeplabv3_mobilenetv2",
        lambda n: __import__("reference_models").build_model("deeplabv3_mobilenetv2", num_classes=n), "test peer"))
    monkeypatch.setitem(inference.PEERS, "missing.peer", inference.Peer(
        "missing.peer", "no_such_module_xyz", "deeplabv3_mobilenetv2", lambda n: None, "never built"))
    out = results / "inference.json"
    assert _run(["--suite", "inference", "--quick", "--device", "cpu", "--sizes", "65", "--batch", "1,2",
                 "--precision", "fp32,bf16,fp16", "--memory-format", "contiguous", "--repeats", "2",
                 "--out", str(out)]) == 0
    record = _load(out)
    assert set(record["ceilings"]) == {"fp32", "bf16"} and "fp16" in record["ceilings_skipped"]
    ours = [r for r in record["results"] if r.get("role") == "ours"]
    ok = [r for r in ours if r["status"] == "ok"]
    assert len(ok) == 4  # 2 batches x (fp32, bf16)
    for r in ok:
        assert r["latency"]["median_s"] > 0 and r["latency"]["iqr_s"] >= 0 and r["latency"]["n"] >= 2
        assert r["flops"] > 0 and 0 < r["ceiling_fraction"] < 2
        assert r["memory"]["peak_bytes"] > 0 and r["images_per_s"] > 0
        assert r["output_shape"][0] == r["batch"]
    fp16 = [r for r in ours if r["precision"] == "fp16"]
    assert fp16 and all(r["status"] == "skipped" and "CUDA" in r["reason"] for r in fp16)
    # the installed peer is measured and compared point by point; the missing one is skipped with a reason
    assert len(record["peer_ratios"]) == 4 and all(x["latency_peer_over_ours"] > 0 for x in record["peer_ratios"])
    missing = [r for r in record["results"] if r["model"] == "missing.peer"]
    assert missing and missing[0]["status"] == "skipped" and "not installed" in missing[0]["reason"]


def test_train_quick(results: Path):
    out = results / "train.json"
    assert _run(["--suite", "train", "--quick", "--device", "cpu", "--amp", "off,on", "--memory-format",
                 "contiguous,channels_last", "--repeats", "2", "--out", str(out)]) == 0
    record = _load(out)
    assert "step_source" in record and len(record["results"]) == 4
    for r in record["results"]:
        assert r["status"] == "ok", r
        assert r["images_per_s"] > 0 and r["finite"] and r["memory"]["peak_bytes"] > 0


def test_eval_quick(results: Path):
    out = results / "eval.json"
    assert _run(["--suite", "eval", "--quick", "--device", "cpu", "--crf-workers", "1", "--out", str(out)]) == 0
    record = _load(out)
    by_impl = {(r.get("implementation", "")[:5], r["device"]): r for r in record["confusion_matrix"]}
    assert by_impl[("repro", "cpu")]["megapixels_per_s"] > 0
    assert by_impl[("numpy", "cpu")]["equals_ours"] is True
    cuda = by_impl[("repro", "cuda")]
    assert cuda["status"] == "ok" or "CUDA" in cuda["reason"]
    crf = record["crf"]
    assert crf and all(c["status"] in ("ok", "skipped") for c in crf)
    if crf[0]["status"] == "ok":  # reproduce/crf.py and pydensecrf are installed
        assert [c["workers"] for c in crf] == [0, 1] and all(c["same_labels_as_first"] for c in crf)
    pipeline = record["pipeline"]
    assert pipeline["status"] == "ok" and pipeline["images"] == 3
    assert pipeline["forward_images_per_s"] > 0 and pipeline["eval_images_per_s"] > 0


def test_engine_quick_with_an_external_builder(results: Path):
    out = results / "engine.json"
    assert _run(["--suite", "engine", "--quick", "--device", "cpu", "--variants", "eager,engine,bf16",
                 "--external", "reference_models.tiny:deeplabv3_tiny", "--repeats", "3", "--out", str(out)]) == 0
    record = _load(out)
    assert record["precision_auto"]["choice"] in ("fp32", "bf16") and record["precision_auto"]["reason"]
    by = {(r["model"], r["variant"]): r for r in record["results"]}
    eager, engine = by[("deeplabv3plus_tiny", "eager")], by[("deeplabv3plus_tiny", "engine")]
    assert eager["ratio_to_eager"] == 1.0 and engine["ratio_to_eager"] > 0
    assert engine["argmax_agreement"] > 0.99 and engine["max_rel_diff"] < 1e-4
    assert len(engine["samples_s"]) == len(eager["samples_s"]) >= 3  # interleaved: one call each per round
    assert engine["engine"]["batchnorm_folded"] and engine["engine"]["memory_format"] == "channels_last"
    bf16 = by[("deeplabv3plus_tiny", "bf16")]
    if record["precision_auto"]["choice"] == "fp32":
        assert bf16["status"] == "skipped" and "does not pick bf16" in bf16["reason"]
    ext = by[("reference_models.tiny:deeplabv3_tiny", "external")]
    assert ext["status"] == "ok" and ext["role"] == "external" and ext["latency"]["median_s"] > 0
    # the ceiling is a best over matmuls and conv shapes, and no point exceeds it
    ceiling = record["ceilings"]["fp32"]
    assert {k["kernel"].split()[0] for k in ceiling["kernels"]} == {"matmul", "conv1x1"}
    assert all(0 < r["ceiling_fraction"] <= 1.0 for r in record["results"] if r.get("ceiling_fraction"))


def test_a_model_faster_than_the_ceiling_remeasures_then_becomes_it():
    calls = []
    ceilings = {"fp32": {"tflops_median": 1.0, "kernel": "matmul 512"}}

    def remeasure():
        calls.append(1)
        return {"tflops_median": 1.5, "kernel": "conv3x3"}

    inference.raise_ceiling_if_beaten(ceilings, "fp32", 0.9, "m", remeasure, lambda _m: None)
    assert not calls and ceilings["fp32"]["tflops_median"] == 1.0  # not beaten: nothing measured
    inference.raise_ceiling_if_beaten(ceilings, "fp32", 1.2, "m", remeasure, lambda _m: None)
    assert calls and ceilings["fp32"]["kernel"] == "conv3x3" and ceilings["fp32"]["tflops_median"] == 1.5
    inference.raise_ceiling_if_beaten(ceilings, "fp32", 2.0, "model x", remeasure, lambda _m: None)
    assert ceilings["fp32"]["tflops_median"] == 2.0 and ceilings["fp32"]["source"].startswith("model")


def test_external_spec_errors():
    with pytest.raises(ValueError, match="MODULE:FACTORY"):
        inference.load_external("no_colon")
    with pytest.raises(ValueError, match="cannot import"):
        inference.load_external("no_such_module_xyz:f")


@pytest.mark.slow
def test_convert_quick(results: Path, tmp_path: Path):
    """Single-scale caffemodel (~177 MB) and, with TensorFlow, the MobileNet-v2 TF release layout."""
    out = results / "convert.json"
    assert _run(["--suite", "convert", "--quick", "--workdir", str(tmp_path), "--out", str(out)]) == 0
    record = _load(out)
    caffe = record["caffe"]
    assert set(caffe["results"]) == {"baseline", "ours", "naive", "reader"}
    assert caffe["naive_over_ours"]["seconds"] > 0
    tf = record["tf"]
    if tf["status"] == "ok":
        assert tf["results"]["ours"]["peak_rss_bytes"] > 0 and tf["naive_over_ours"]["peak_rss"] > 0
        crc = tf["crc_cost"]  # the CRC-32C check on by default, costed against the conversion
        assert tf["results"]["ours_no_verify"]["seconds"] > 0 and crc["bytes"] > 0
        assert crc["met"] and 0 < crc["crc_over_ours"] <= crc["limit"]
        text = report.convert_section({"convert": [(out, record)]}, tmp_path, [])
        assert "CRC-32C check of every tensor" in text
    else:
        assert tf["reason"]


def test_report_renders_markdown_and_pngs(results: Path, tmp_path: Path):
    inputs = sorted(results.glob("*.json"))
    assert {p.stem for p in inputs} >= {"inference", "train", "eval", "engine"}
    repro = tmp_path / "result.json"
    repro.write_text(json.dumps({
        "format": "deeplab-repro evaluation v1",
        "run": {"model": {"name": "deeplabv2_resnet101_msc"}, "dataset": {"name": "voc12", "split": "val"},
                "images": 1449, "protocol": "whole", "scales": [1.0], "flip": False},
        "results": {"plain": {"pixel_acc": 0.9, "mean_acc": 0.8, "miou": 0.7512, "fwiou": 0.85}, "crf": None},
        "comparison": [{"row": "deeplab_v2_resnet101_voc12_val[0]", "compared_with": "plain"}],
    }), encoding="utf-8")
    out = tmp_path / "report"
    assert report.main([*map(str, inputs), str(repro), "--out", str(out)]) == 0
    text = (out / "README.md").read_text(encoding="utf-8")
    for heading in ("## Environment", "## Inference engine vs plain eager", "## Inference", "## Training step",
                    "## Evaluation", "## Reproduction"):
        assert heading in text, heading
    assert "75.12" in text and "Peers" in text and "Speed-ups" in text
    pngs = sorted(out.glob("*.png"))
    names = {p.name for p in pngs}
    assert {"inference_latency_vs_size.png", "inference_ceiling_fraction.png", "train_throughput.png",
            "inference_throughput_vs_batch.png"} <= names
    for p in pngs:
        assert p.read_bytes()[:8] == PNG_MAGIC and p.stat().st_size > 5000, p.name
        assert f"]({p.name})" in text


def test_report_rejects_unknown_json(tmp_path: Path, capsys):
    bad = tmp_path / "x.json"
    bad.write_text("{\"hello\": 1}", encoding="utf-8")
    assert report.main([str(bad), "--out", str(tmp_path / "r")]) == 1
    assert "not a benchmark" in capsys.readouterr().err


def test_bad_arguments_exit_2(tmp_path: Path):
    assert _run(["--suite", "inference", "--models", "no_such_model", "--out", str(tmp_path / "x.json")]) == 2
    assert run.main(["--suite", "nope"]) == 2


def test_helpers():
    assert parse_sizes("321,1024x2048") == [(321, 321), (1024, 2048)]
    s = summarize([1.0, 2.0, 3.0, 4.0, 100.0])
    assert s["median_s"] == 3.0 and s["iqr_s"] == 2.0 and s["n"] == 5
    env = {"device": "cpu", "device_name": "AMD EPYC 7B13", "torch": "2.13.0+cpu", "torch_threads": 2,
           "git": {"commit": "abcdef0123", "dirty": False}}
    assert result_filename("inference", env, quick=True) == "inference-cpu-amd-epyc-7b13-torch2.13.0-cpu-2t-abcdef0-quick.json"
