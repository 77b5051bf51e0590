"""Benchmark harnesses (``python -m benchmarks.run``) and the report (``python -m benchmarks.report``).

Each suite's quick mode runs end to end on CPU on a tiny grid and writes valid JSON; the
report renders Markdown and PNGs from those JSONs (and from a reproduction result).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import engine, inference, report, run
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
    for key in ("torch", "device", "device_name", "torch_threads", "git", "python", "cpu_isa", "torch_cpu_capability"):
        assert key in env, key
    if env["device"] == "cpu":  # the CPU is named with its vector ISA: "AMD EPYC" alone is a Zen 3 or a Zen 4
        assert env["device_name"].endswith(f"[{env['cpu_isa']}]"), env["device_name"]
    assert record["schema"] == 1 and record["mode"] == "quick"
    return record


def test_cpu_isa_names_the_vector_tier():
    from benchmarks._measure import cpu_isa

    assert cpu_isa({"sse4_2", "avx", "fma", "avx2"}) == "AVX2"  # Zen 3, Haswell..Skylake client
    assert cpu_isa({"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16"}) == "AVX-512+VNNI+BF16+FP16"
    assert cpu_isa({"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile"}) == "AVX-512+VNNI+BF16+AMX"
    assert cpu_isa({"avx2", "avx512f"}) == "AVX-512"
    assert cpu_isa({"sse2"}) == "no AVX"
    assert cpu_isa(set()) == "?"  # flags unknown (not Linux)


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


def test_engine_quick_with_an_external_builder(results: Path, tmp_path: Path, monkeypatch):
    # a peer's code in a folder of its own, imported through --external-path only
    peer_dir = tmp_path / "peer_code"
    peer_dir.mkdir()
    (peer_dir / "fake_peer_builders.py").write_text(
        "from reference_models import build_model\n"
        "def same_as_ours(num_classes=21):\n    return build_model('deeplabv3_tiny', num_classes=num_classes)\n"
        "def other_network(num_classes=21):\n    return build_model('deeplabv3plus_tiny', num_classes=num_classes)\n",
        encoding="utf-8")
    path_before = list(sys.path)
    out = results / "engine.json"
    assert _run(["--suite", "engine", "--quick", "--device", "cpu", "--variants", "eager,engine,bf16",
                 "--models", "deeplabv3plus_tiny,deeplabv3_tiny", "--external", "reference_models.tiny:deeplabv3_tiny",
                 "--external-path", str(peer_dir),
                 "--external", "fake_peer_builders:same_as_ours=deeplabv3_tiny",
                 "--external", "fake_peer_builders:other_network=deeplabv3_tiny,deeplabv3plus_tiny",
                 "--repeats", "3", "--out", str(out)]) == 0
    assert sys.path == path_before and "fake_peer_builders" in sys.modules  # the path was for the run only
    record = _load(out)
    assert record["precision_auto"]["choice"] in ("fp32", "bf16") and record["precision_auto"]["reason"]
    by = {(r["model"], r["variant"], r.get("peer_of")): r for r in record["results"]}
    eager, eng = by[("deeplabv3plus_tiny", "eager", None)], by[("deeplabv3plus_tiny", "engine", None)]
    assert eager["ratio_to_eager"] == 1.0 and eng["ratio_to_eager"] > 0
    bound = 1e-4 if eng["precision"] == "fp32" else 2e-2  # the engine runs what auto picks: bf16 on an AMX CPU
    assert eng["precision"] == record["precision_auto"]["choice"]
    assert eng["argmax_agreement"] > 0.99 and eng["max_rel_diff"] < bound and 0 < eng["margin_pixels"] <= 1
    assert len(eng["samples_s"]) == len(eager["samples_s"]) >= 3  # interleaved: one call each per round
    assert eng["engine"]["batchnorm_folded"] and eng["engine"]["memory_format"] == "channels_last"
    bf16 = by[("deeplabv3plus_tiny", "bf16", None)]
    if record["precision_auto"]["choice"] == "fp32":
        assert bf16["status"] == "skipped" and bf16["not_native"] and bf16["reason"].startswith("not native")
    else:  # bf16 native (AMX): the default engine already runs bf16, and the bf16 row says it is that configuration
        assert bf16["status"] == "ok" and bf16["same_configuration_as"] == "engine"
    # an external on its own: one row per size; attached ones: timed in our rows, in the same rounds
    alone = by[("reference_models.tiny:deeplabv3_tiny", "external", None)]
    assert alone["status"] == "ok" and alone["role"] == "external" and alone["latency"]["median_s"] > 0
    peer = by[("fake_peer_builders:same_as_ours", "external_cl", "deeplabv3_tiny")]
    ours = by[("deeplabv3_tiny", "eager", None)]
    assert len(peer["samples_s"]) == len(ours["samples_s"]) and peer["ratio_to_ours_eager"] > 0
    assert ("fake_peer_builders:other_network", "external", "deeplabv3plus_tiny") in by
    checks = {(c["external"], c["ours"]): c for c in record["same_network"]}
    same = checks[("fake_peer_builders:same_as_ours", "deeplabv3_tiny")]
    assert same["status"] == "ok" and same["mapping"] == "identical state-dict layout" and same["max_rel_diff"] == 0
    other = checks[("fake_peer_builders:other_network", "deeplabv3_tiny")]
    assert other["status"] == "skipped" and "different network" in other["reason"]
    # the ceiling is a best over matmuls and conv shapes, and no point exceeds it
    ceiling = record["ceilings"]["fp32"]
    assert {k["kernel"].split()[0] for k in ceiling["kernels"]} == {"matmul", "conv1x1"}
    assert all(0 < r["ceiling_fraction"] <= 1.0 for r in record["results"] if r.get("ceiling_fraction"))
    # one strict-JSON file per row, named by the environment's rows folder
    rows_dir = results / record["rows_dir"].split("/")[-1]
    names = sorted(p.name for p in rows_dir.glob("*.json"))
    assert names == ["deeplabv3_tiny@65.json", "deeplabv3plus_tiny@65.json",
                     "reference_models.tiny-deeplabv3_tiny@65.json"]
    row = json.loads((rows_dir / "deeplabv3_tiny@65.json").read_text(encoding="utf-8"))
    assert row["format"] == engine.ROW_FORMAT and row["wall_s"] > 0 and row["gflops"] > 0 and row["environment"]
    assert record["estimate_full_table"]["rows"] == 2 and record["estimate_full_table"]["seconds"] > 0


def test_engine_resume_runs_only_missing_rows_and_the_report_merges_the_pieces(tmp_path: Path, capsys):
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    common = ["--suite", "engine", "--quick", "--device", "cpu", "--variants", "eager,engine", "--repeats", "3"]
    assert _run([*common, "--models", "deeplabv3_tiny", "--out", str(first)]) == 0
    (rows_dir,) = tmp_path.glob("engine-rows-*")
    kept = (rows_dir / "deeplabv3_tiny@65.json").read_bytes()
    assert _run([*common, "--models", "deeplabv3_tiny,deeplabv2_tiny_msc", "--resume", "--out", str(second)]) == 0
    record = json.loads(second.read_text(encoding="utf-8"))
    assert record["rows_resumed"] == 1 and record["rows_measured"] == 1
    assert {r["model"] for r in record["results"]} == {"deeplabv2_tiny_msc"}
    assert (rows_dir / "deeplabv3_tiny@65.json").read_bytes() == kept  # a finished row is never rewritten
    out = tmp_path / "report"
    assert report.main([str(rows_dir), "--out", str(out), "--title", "merged"]) == 0
    text = (out / "README.md").read_text(encoding="utf-8")
    table = text[text.index("| model | size | plain eager fp32 NCHW"):]
    assert "| deeplabv3_tiny | 65 |" in table and "| deeplabv2_tiny_msc | 65 |" in table
    assert f"Device: **{record['environment']['device_name']}**" in text  # the CPU is named
    assert (out / "engine_ratios.png").read_bytes()[:8] == PNG_MAGIC
    # other settings: rows timed with other variants are measured again (not silently kept) ...
    third = tmp_path / "c.json"
    assert _run([*common[:-4], "--variants", "eager,engine,bf16", "--repeats", "3",
                 "--models", "deeplabv3_tiny,deeplabv2_tiny_msc", "--resume", "--out", str(third)]) == 0
    record = json.loads(third.read_text(encoding="utf-8"))
    assert record["rows_resumed"] == 0 and record["rows_measured"] == 2
    assert {(r["model"], r["variant"]) for r in record["results"]} >= {("deeplabv3_tiny", "bf16"),
                                                                       ("deeplabv2_tiny_msc", "bf16")}
    row = json.loads((rows_dir / "deeplabv3_tiny@65.json").read_text(encoding="utf-8"))
    assert row["settings"]["variants"] == ["eager", "engine", "bf16"] and row["settings"]["rounds"] == 5
    # ... and so is a row with a failed result, with one line saying why
    engine_rec = next(r for r in row["results"] if r["variant"] == "engine")
    engine_rec.update(status="error", error="RuntimeError: out of memory")
    (rows_dir / "deeplabv3_tiny@65.json").write_text(json.dumps(row), encoding="utf-8")
    capsys.readouterr()
    fourth = tmp_path / "d.json"
    assert run.main(["--threads", "1", *common[:-4], "--variants", "eager,engine,bf16", "--repeats", "3",
                     "--models", "deeplabv3_tiny,deeplabv2_tiny_msc", "--resume", "--out", str(fourth)]) == 0
    assert "resume: deeplabv3_tiny@65.json measured again: engine failed in it" in capsys.readouterr().out
    record = json.loads(fourth.read_text(encoding="utf-8"))
    assert record["rows_resumed"] == 1 and {r["model"] for r in record["results"]} == {"deeplabv3_tiny"}
    assert all(r["status"] != "error" for r in record["results"])


# A row the engine suite wrote before rows stored their settings (deeplabv3plus_resnet101 at 321 of the first
# 2026-12-01 CPU table, measured on a shared machine and re-measured since: kept here as the old format).
OLD_ROW = Path(__file__).resolve().parent / "data" / "engine_row_without_settings.json"


def test_engine_resume_judges_rows_written_before_rows_stored_their_settings(tmp_path: Path):
    # --repeats 5 --threads 2, every variant, sizes 321,513, VainF attached
    shutil.copy(OLD_ROW, tmp_path / "deeplabv3plus_resnet101@321.json")
    row = engine.read_rows(tmp_path)["deeplabv3plus_resnet101@321.json"]
    assert "settings" not in row
    exts = [engine.External(spec, (row["model"],), lambda _n: None) for spec in row["externals"]]
    timing = run._timing(run.build_parser().parse_args(["--suite", "engine", "--repeats", "5"]))

    def settings(variants=engine.ENGINE_VARIANTS, timing=timing, num_classes=21, **over):
        # the torch of that table (the installed one may differ): the comparison itself is checked below
        return {**engine.row_settings(variants, timing, quick=False, num_classes=num_classes),
                "torch": row["environment"]["torch"], **over}

    assert engine.rerun_reason(row, exts, settings()) is None and engine.row_is_done(row, exts, settings())
    assert engine.rerun_reason(row, exts, settings(variants=["eager", "engine"])).startswith("variants")
    extra = engine.External("peer_factories:other", (row["model"],), lambda _n: None)
    assert "peer_factories:other not timed" in engine.rerun_reason(row, [*exts, extra], settings())
    assert engine.rerun_reason(row, exts, settings(timing=inference.Timing(repeats=10))) == (
        "5 rounds in it, 10 asked")
    assert "with 19 classes" in engine.rerun_reason(row, exts, settings(num_classes=19))
    assert engine.rerun_reason(row, exts, settings(torch="2.99.0")).startswith("torch 2.13.0")
    # a row written now stores its settings, and every one of them counts
    now = {**row, "settings": settings()}
    assert engine.row_is_done(now, exts, settings())
    for changed in (settings(variants=[*engine.ENGINE_VARIANTS][:3]), settings(num_classes=19),
                    {**settings(), "quick": True},
                    settings(timing=inference.Timing(warmup=1, repeats=5, max_seconds=60.0))):
        assert not engine.row_is_done(now, exts, changed), changed


def test_engine_rows_record_the_precision_auto_chose(tmp_path: Path, monkeypatch):
    import reproduce.inference as ri

    real = ri.choose_precision
    monkeypatch.setattr(ri, "choose_precision",  # as on a CPU with AMX or an Ampere GPU
                        lambda req, dev: ("bf16", "auto: test says native") if req == "auto" else real(req, dev))
    fake = {"fp32": 1e3, "bf16": 1e-12}  # no model reaches the fp32 one; every bf16 model beats the bf16 one
    monkeypatch.setattr(engine, "measure_best_ceiling", lambda _dev, precision, _timing, quick: {
        "tflops_median": fake[precision], "kernel": f"fake {precision}"})
    events: list[str] = []
    forward = ri.Segmenter.forward
    monkeypatch.setattr(ri.Segmenter, "forward", lambda self, x: (events.append("forward"), forward(self, x))[1])
    monkeypatch.setattr(engine, "synchronize", lambda _dev: events.append("sync"))
    body = engine.run_engine(["deeplabv2_tiny_msc"], [(33, 33)], ["eager", "engine", "bf16"],
                             inference.Timing(warmup=1, repeats=3, min_seconds=0.0, max_seconds=2.0),
                             torch.device("cpu"), rows_dir=tmp_path, quick=True, log=lambda _m: None)
    assert events[:3] == ["sync", "forward", "sync"]  # the first call (compile time) is timed synchronised
    by = {r["variant"]: r for r in body["results"]}
    assert by["eager"]["precision"] == "fp32"
    assert by["engine"]["precision"] == "bf16" == by["engine"]["engine"]["precision"]
    assert by["bf16"]["status"] == "ok" and by["bf16"]["same_configuration_as"] == "engine"
    assert "same_configuration_as" not in by["engine"]
    # each held to its own dtype's ceiling: the bf16 engine never becomes the fp32 ceiling
    ceilings = body["ceilings"]
    assert ceilings["fp32"]["tflops_median"] == 1e3 and ceilings["fp32"]["kernel"] == "fake fp32"
    assert ceilings["bf16"]["source"].startswith("model")
    for r in by.values():
        assert r["ceiling_fraction"] == pytest.approx(r["achieved_tflops"] / ceilings[r["precision"]]["tflops_median"])
    row = json.loads((tmp_path / "deeplabv2_tiny_msc@33.json").read_text(encoding="utf-8"))
    assert "same configuration" in row["note"] and row["ceilings"]["fp32"]["tflops_median"] == 1e3


def test_bf16_where_not_native_gives_an_untimed_agreement_and_the_report_shows_it(tmp_path: Path, monkeypatch):
    import reproduce.inference as ri

    real = ri.choose_precision
    monkeypatch.setattr(ri, "choose_precision",  # as on a CPU without native bf16, whatever this one has
                        lambda req, dev: ("fp32", "auto: test says not native") if req == "auto" else real(req, dev))
    monkeypatch.setattr(engine, "measure_best_ceiling", lambda _dev, precision, _timing, quick: {
        "tflops_median": 1e3, "kernel": f"fake {precision}"})
    precisions: list[str] = []
    forward = ri.Segmenter.forward
    monkeypatch.setattr(ri.Segmenter, "forward", lambda self, x: (precisions.append(self.precision), forward(self, x))[1])
    rows_dir = tmp_path / "rows"
    lines: list[str] = []
    body = engine.run_engine(["deeplabv3_tiny"], [(33, 33)], ["eager", "engine", "bf16"],
                             inference.Timing(warmup=1, repeats=3, min_seconds=0.0, max_seconds=2.0),
                             torch.device("cpu"), rows_dir=rows_dir, quick=True, log=lines.append)
    by = {r["variant"]: r for r in body["results"]}
    bf16 = by["bf16"]
    assert bf16["status"] == "skipped" and bf16["not_native"] and bf16["reason"] == "not native: auto: test says not native"
    assert precisions.count("bf16") == 1 and "latency" not in bf16 and "ratio_to_eager" not in bf16  # one forward, untimed
    assert bf16["untimed"] and bf16["untimed_forward_s"] > 0
    # really bf16 (not fp32's numbers) and still close to fp32: the agreement is measured, not assumed
    assert 1e-4 < bf16["max_rel_diff"] < 0.1 and 0.9 <= bf16["argmax_agreement"] <= 1.0
    assert by["engine"]["precision"] == "fp32" and by["engine"]["max_rel_diff"] < 1e-4
    assert any(f"bf16 not native (untimed: {100 * bf16['argmax_agreement']:.2f} %)" in line for line in lines)
    out = tmp_path / "report"
    assert report.main([str(rows_dir), "--out", str(out), "--title", "untimed bf16"]) == 0
    text = (out / "README.md").read_text(encoding="utf-8")
    assert f"not native (untimed: {100 * bf16['argmax_agreement']:.2f} %)" in text
    # the 513 targets line: the agreement target (>= 99.5 %) is the v3/v3+ models'; a v2 row only reports it
    (row_file,) = rows_dir.glob("*.json")
    row = json.loads(row_file.read_text(encoding="utf-8"))
    for model, agree in (("deeplabv3_resnet101", 0.994), ("deeplabv2_resnet101", 0.98)):
        forged = json.loads(json.dumps(row).replace('"deeplabv3_tiny"', f'"{model}"'))
        forged["size"] = [513, 513]
        for r in forged["results"]:
            r["size"] = [513, 513]
            if r["variant"] == "bf16":
                r["argmax_agreement"] = agree
        (rows_dir / f"{model}@513.json").write_text(json.dumps(forged), encoding="utf-8")
    assert report.main([str(rows_dir), "--out", str(out), "--title", "targets"]) == 0
    text = (out / "README.md").read_text(encoding="utf-8")
    assert "deeplabv3_resnet101 bf16 agreement 99.40 % (untimed, not native here; target >= 99.5 %): NOT met" in text
    assert "deeplabv2_resnet101 bf16 agreement 98.00 % (untimed, not native here; the agreement target is for " \
           "the v3/v3+ models)" in text


def test_engine_agreement_ignores_pixels_without_a_margin():
    ref = torch.zeros(1, 3, 2, 2)
    ref[0, 0] = 1.0  # class 0 wins clearly on every pixel ...
    ref[0, :, 0, 0] = torch.tensor([1.0, 1.0 - 1e-6, 0.0])  # ... except one near-tie
    out = ref.clone()
    out[0, 1, 0, 0] = 1.0 + 1e-6  # float noise flips the near-tie
    a = engine.agreement(out, ref)
    assert a["argmax_agreement"] == 1.0 and a["argmax_agreement_all"] == 0.75 and a["margin_pixels"] == 0.75
    out[0, 2, 1, 1] = 5.0  # a real disagreement is counted
    assert engine.agreement(out, ref)["argmax_agreement"] == pytest.approx(2 / 3)


def test_engine_estimate_fits_rows_and_compile_time():
    done = [{"gflops": 10.0, "wall_s": 12.0, "modules": 100, "loadavg_start": [1.0],
             "results": [{"variant": "compile", "status": "ok", "first_call_s": 10.0}]},
            {"gflops": 30.0, "wall_s": 26.0, "modules": 100, "loadavg_start": [2.0],
             "results": [{"variant": "compile", "status": "ok", "first_call_s": 20.0}]}]
    est = engine.estimate(done, [{"gflops": 20.0, "modules": 200}])
    # non-compile part: 2 s at 10 GFLOP, 6 s at 30 -> 0 + 0.2 s/GFLOP; compile 0.1 or 0.2 s/module (median 0.2)
    assert est["seconds_per_gflop"] == pytest.approx(0.2) and est["seconds_per_row"] == pytest.approx(0.0)
    assert est["seconds"] == pytest.approx(4.0 + 0.2 * 200) and est["loadavg_of_measured_rows"] == 2.0
    assert engine.estimate([], [{"gflops": 1.0}]) is None
    assert "no estimate" in engine.format_estimate(None, "x")


def test_external_spec_errors(tmp_path: Path):
    with pytest.raises(ValueError, match="MODULE:FACTORY"):
        engine.load_external("no_colon")
    with pytest.raises(ValueError, match="cannot import"):
        engine.load_external("no_such_module_xyz:f")
    assert engine.parse_external("a.b:c=x, y") == ("a.b:c", ("x", "y"))
    # attached to a model that is not in the run: a usage error
    assert _run(["--suite", "engine", "--quick", "--device", "cpu", "--external",
                 "reference_models.tiny:deeplabv3_tiny=deeplabv3_resnet101", "--out", str(tmp_path / "x.json")]) == 2


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


@pytest.mark.parametrize("capability, skipped", [((7, 5), True), ((7, 0), True), ((8, 0), False), ((9, 0), False)])
def test_bf16_is_benchmarked_on_gpus_with_native_bf16_only(monkeypatch, capability, skipped):
    """sm70/75 emulate bf16 (is_bf16_supported() still says yes): no bf16 column there; the device asked is the one given."""
    from benchmarks._common import precision_skip_reason

    asked = []
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: asked.append(device) or capability)
    reason = precision_skip_reason("bf16", torch.device("cuda:1"))
    assert (reason is not None) == skipped and asked == [torch.device("cuda:1")]
    assert precision_skip_reason("fp32", torch.device("cuda:1")) is None


def test_memory_format_benchmark_writes_strict_json_and_a_table(tmp_path, monkeypatch) -> None:
    """Both layouts of the engine are timed side by side and give the same output."""
    import json

    from benchmarks import memory_format
    from reproduce import inference

    # precision "auto" is fp32 whatever this CPU has (on a CPU with AVX512-BF16 its probe may pick bf16, whose
    # layouts differ by bf16's rounding, not 1e-4)
    monkeypatch.setattr(inference, "cpu_flags", lambda: {"avx2", "fma"})

    out = tmp_path / "mf"
    code = memory_format.main(["--out", str(out), "--models", "deeplabv3_tiny,deeplabv2_tiny_msc", "--sizes", "33",
                               "--rounds", "3", "--device", "cpu"])
    assert code == 0
    record = json.loads((out / "memory-format.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    rows = record["rows"]
    assert [r["model"] for r in rows] == ["deeplabv3_tiny", "deeplabv2_tiny_msc"]
    for r in rows:
        assert r["rounds"] == 3 and len(r["samples_s"]["channels_last"]) == 3 and r["max_rel_diff"] < 1e-4, r
        assert r["channels_last_over_nchw"] == pytest.approx(r["channels_last_ms"] / r["nchw_ms"], rel=1e-2)
    assert "| deeplabv2_tiny_msc | 33 |" in (out / "README.md").read_text()
    assert record["environment"]["cpu_model"]


def test_memory_format_benchmark_refuses_an_unknown_model(tmp_path, capsys) -> None:
    from benchmarks import memory_format

    assert memory_format.main(["--out", str(tmp_path / "x"), "--models", "no_such_model"]) == 2
    assert "unknown no_such_model" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_same_network_check_runs_our_model_on_the_device_of_the_input(monkeypatch) -> None:
    """The external rows' same-weights check builds our model on the CPU: it is moved to the input's device (a
    CUDA row's), and both run in IEEE fp32. Seam: the device our model is moved to, and the math in force."""
    import reference_models
    from reproduce.inference import float32_math_state

    moves: list[torch.device] = []
    math: list[bool] = []
    real_build = reference_models.build_model

    def build(name: str, **kwargs):
        model = real_build(name, **kwargs)
        real_to = model.to

        def to(*args, **kw):
            moves.append(torch.device(args[0]) if args else kw.get("device"))
            return real_to(*args, **kw)

        model.to = to
        model.register_forward_hook(lambda *_: math.append(float32_math_state()["tf32"]))
        return model

    monkeypatch.setattr(reference_models, "build_model", build)
    torch.manual_seed(0)
    peer = engine.DictOut(real_build("deeplabv3_tiny", num_classes=5)).eval()
    x = torch.randn(1, 3, 33, 33)
    result = engine.same_network_check(peer, "deeplabv3_tiny", x, 5)
    assert result["status"] == "ok" and result["max_abs_diff"] == 0.0
    assert moves == [x.device] and math == [False]


def test_environment_records_the_fp32_math_and_fp32_rows_run_with_tf32_off() -> None:
    from benchmarks._common import autocast_for, environment
    from reproduce.inference import float32_math_state

    env = environment(torch.device("cpu"))
    assert set(env["float32_math"]) >= {"tf32", "cudnn_conv", "cuda_matmul"} and "TF32 off" in env["float32_math"][
        "fp32_rows"]
    before = torch.backends.cudnn.conv.fp32_precision
    torch.backends.cudnn.conv.fp32_precision = "tf32"
    try:
        with autocast_for("fp32", torch.device("cpu")):
            assert float32_math_state()["tf32"] is False
        assert torch.backends.cudnn.conv.fp32_precision == "tf32"
    finally:
        torch.backends.cudnn.conv.fp32_precision = before
