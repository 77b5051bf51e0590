"""benchmarks/precision.py (the ``precision`` suite) on tiny settings: strict JSON, the human table, the report
section, the same numbers as ``reproduce.evaluate.evaluate``, a finished training reused, bad settings refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks import precision, report
from benchmarks import run as bench_run


def _strict(path: Path) -> dict:
    def refuse(name: str) -> None:
        raise AssertionError(f"{path}: non-strict JSON constant {name}")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("precision")
    out = tmp / "precision.json"
    assert bench_run.main(["--suite", "precision", "--quick", "--device", "cpu", "--workdir", str(tmp / "work"),
                           "--out", str(out), "--quiet"]) == 0
    return tmp, _strict(out)


def test_quick_suite_writes_every_precision_and_protocol_against_fp32(quick_run) -> None:
    _, rec = quick_run
    assert rec["suite"] == "precision" and rec["precisions"] == ["fp32", "bf16", "fp16"]
    (tiny,) = rec["models"]
    assert tiny["training"]["iterations"] == precision.QUICK_PLANS["tiny"].iterations
    rows = {(r["protocol"], r["precision"]): r for r in tiny["rows"]}
    assert set(rows) == {(p, q) for p in precision.PROTOCOLS for q in ("fp32", "bf16", "fp16")}
    for (protocol, prec), r in rows.items():
        assert r["engine"]["precision"] == prec
        assert (r["flip"], len(r["scales"])) == ((True, 2) if protocol == "msc_flip" else (False, 1))
        if prec == "fp32":
            assert "miou_delta_pp" not in r and r["engine"]["float32_math"]["tf32"] is False
        else:
            assert 0.0 <= r["argmax_agreement"] <= 1.0 and 0.0 <= r["argmax_agreement_all"] <= 1.0
            assert r["miou_delta_pp"] == pytest.approx(100 * (r["miou"] - rows[(protocol, "fp32")]["miou"]))
    assert "| tiny | msc_flip [0.75, 1.25] + flip | 1 | fp16 |" in rec["table"]


def test_report_renders_the_precision_section(quick_run) -> None:
    tmp, _ = quick_run
    md = report.render([tmp / "precision.json"], tmp / "report").read_text()
    assert "## The cost of bf16 and fp16 in mIoU" in md and "| tiny | pad (crop 33) | 2 | bf16 |" in md


def test_a_finished_training_is_reused(quick_run, capsys) -> None:
    tmp, _ = quick_run
    plan = precision.QUICK_PLANS["tiny"]
    _, training = precision.train_model("tiny", plan, tmp / "work" / "precision", print)
    assert training["reused"] is True and training["seconds"] is None


def test_the_suite_scores_as_reproduce_evaluate_does(quick_run) -> None:
    """The suite's per-image loop gives the confusion matrix of ``reproduce.evaluate.evaluate`` (same engine)."""
    from reproduce.evaluate import EvalOptions, evaluate
    from reproduce.shapes import ShapesDataset

    tmp, _ = quick_run
    plan = precision.QUICK_PLANS["tiny"]
    weights = next((tmp / "work" / "precision").glob("tiny-*/final.pth"))
    for prec in ("fp32", "bf16"):
        engine = precision.engine_at(weights, prec)
        for protocol in precision.PROTOCOLS:
            config = precision.protocol_config(protocol, plan)
            data = ShapesDataset(length=2, seed=precision.HELD_OUT_SEED, size=plan.eval_size, num_classes=4)
            ours, _, _ = precision.evaluate_precision(engine, data, config, 2)
            theirs = evaluate(engine, data, EvalOptions(config=config, progress=False, prefetch=0))["plain"]
            assert torch.equal(torch.as_tensor(ours.matrix), torch.as_tensor(theirs.matrix))


def test_fp16_engine_runs_fp16_autocast_on_the_cpu(quick_run) -> None:
    tmp, _ = quick_run
    weights = next((tmp / "work" / "precision").glob("tiny-*/final.pth"))
    engine = precision.engine_at(weights, "fp16")
    dtypes: list[torch.dtype] = []
    conv = next(m for m in engine.net.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda _m, _i, out: dtypes.append(out.dtype))
    engine.forward(torch.randn(1, 3, 33, 33))
    assert dtypes == [torch.float16] and engine.describe()["precision"] == "fp16"


@pytest.mark.parametrize("setting, message", [
    ("r101.iterations", "use MODEL.FIELD=VALUE"),
    ("vgg.iterations=3", "use MODEL.FIELD=VALUE"),
    ("tiny.batch=two", "takes an integer"),
    ("tiny.pad_crop=8", "below eval_size"),
    ("r101.images=3", "not among the models"),
])
def test_bad_settings_are_usage_errors(setting, message, tmp_path, capsys) -> None:
    code = bench_run.main(["--suite", "precision", "--quick", "--device", "cpu", "--models", "tiny",
                           "--setting", setting, "--workdir", str(tmp_path), "--out", str(tmp_path / "x.json")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.json").exists()


def test_settings_apply_to_the_named_model() -> None:
    plans = precision.plans_with(["r101.iterations=10", "r101.scales=0.5,1", "tiny.images=7"], ["tiny", "r101"])
    assert plans["r101"].iterations == 10 and plans["r101"].scales == "0.5,1" and plans["tiny"].images == 7
    assert plans["r101"].train_size == 321 and precision.PLANS["r101"].iterations == 300
