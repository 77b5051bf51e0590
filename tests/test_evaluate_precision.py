"""The precision policy: evaluation at the reference precision (IEEE fp32) by default on every device, fp32 that
is fp32 (TF32 off), an explicit ``tf32`` choice, and the record of what ran (``describe()``, ``result.json``,
``result.md``, the benchmark report).

The machines where ``precision="auto"`` picks another precision (an AMX CPU, a CUDA GPU) are simulated: the CPU
flags are replaced, and CUDA is mocked (available, sm80) with the engine built on the CPU.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch

from reference_models import build_model
from reproduce import evaluate as ev
from reproduce import inference
from reproduce.inference import Segmenter, choose_precision, float32_math, float32_math_state
from reproduce.synthetic import write_voc

VAL_IDS = ["2007_000033", "2007_000042", "2007_000061"]
LEAVES = ("cudnn_conv", "cuda_matmul", "mkldnn_conv", "mkldnn_matmul")


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("voc")
    write_voc(root, train_ids=["2007_000032"], val_ids=VAL_IDS, seed=3, sizes=(24, 41))
    return root


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    """Random DeepLab v3+ tiny weights (21 classes) with non-trivial BatchNorm statistics."""
    from converters.io import save_state_dict

    torch.manual_seed(0)
    model = build_model("deeplabv3plus_tiny", num_classes=21)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("w") / "tiny.pth"
    save_state_dict(model.state_dict(), path)
    return path


@pytest.fixture()
def amx_cpu(monkeypatch):
    """A CPU on which ``precision="auto"`` picks bf16 (AMX), as on a Sapphire Rapids VM."""
    monkeypatch.setattr(inference, "cpu_flags", lambda: {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
    assert choose_precision("auto", torch.device("cpu"))[0] == "bf16"


def _argv(voc: Path, weights: Path, out: Path, *extra: str) -> list[str]:
    return ["--model", "deeplabv3plus_tiny", "--weights", str(weights), "--num-classes", "21", "--dataset", "voc12",
            "--root", str(voc), "--split", "val", "--crop-size", "49", "--device", "cpu", "--quiet",
            "--compile", "off", "--out", str(out), *extra]


def _result(out: Path) -> dict:
    return json.loads((out / "result.json").read_text())


class _Watched(Segmenter):
    """The engine, recording the fp32 math settings in force inside each forward of its network."""

    seen: list[dict] = []
    asked: list[dict] = []

    def __init__(self, weights, **kwargs) -> None:
        _Watched.asked.append(dict(kwargs))
        kwargs["device"] = "cpu"  # a mocked CUDA device: the network itself runs on the CPU
        super().__init__(weights, **kwargs)
        self.net.register_forward_hook(lambda *_: _Watched.seen.append(float32_math_state()))


@pytest.fixture()
def watched(monkeypatch):
    _Watched.seen, _Watched.asked = [], []
    monkeypatch.setattr(ev, "Segmenter", _Watched)
    return _Watched


# ------------------------------------------------------------------------------ the default is the reference precision
def test_evaluate_defaults_to_fp32_on_an_amx_cpu_bit_for_bit_equal_to_asking_for_fp32(voc, tiny_weights, tmp_path,
                                                                                      amx_cpu, watched) -> None:
    assert ev.main(_argv(voc, tiny_weights, tmp_path / "default")) == 0
    assert ev.main(_argv(voc, tiny_weights, tmp_path / "fp32", "--precision", "fp32")) == 0
    default, fp32 = _result(tmp_path / "default"), _result(tmp_path / "fp32")
    assert default["run"]["precision"] == {"name": "fp32", "reason": "asked for", "tf32": False, "reference": True}
    assert default["run"]["engine"]["precision"] == "fp32"
    assert default["results"] == fp32["results"]  # confusion matrices and every score, bit for bit
    assert "- precision: fp32 (the reference's; TF32 off)" in (tmp_path / "default" / "result.md").read_text()
    assert watched.seen and not any(state["tf32"] for state in watched.seen)
    # auto stays an opt-in, and says what it ran
    assert ev.main(_argv(voc, tiny_weights, tmp_path / "auto", "--precision", "auto")) == 0
    auto = _result(tmp_path / "auto")["run"]["precision"]
    assert auto["name"] == "bf16" and auto["reference"] is False and "AMX" in auto["reason"]
    assert "**bf16**" in (tmp_path / "auto" / "result.md").read_text()


def test_evaluate_defaults_to_fp32_with_tf32_off_on_a_mocked_cuda_gpu(voc, tiny_weights, tmp_path, monkeypatch,
                                                                      watched) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert choose_precision("auto", torch.device("cuda")) == ("bf16", "auto: CUDA device cuda (sm80) has native bf16")
    torch.backends.cudnn.conv.fp32_precision = "tf32"  # PyTorch's default for cuDNN convolutions
    out = tmp_path / "gpu"
    assert ev.main([*_argv(voc, tiny_weights, out), "--device", "auto"]) == 0
    assert watched.asked[0]["device"] == "cuda" and watched.asked[0]["precision"] == "fp32"
    run = _result(out)["run"]
    assert run["device"] == "cuda" and run["precision"]["name"] == "fp32" and run["precision"]["tf32"] is False
    assert watched.seen and all(s["cudnn_conv"] == "ieee" and s["cuda_matmul"] == "ieee" for s in watched.seen)
    assert torch.backends.cudnn.conv.fp32_precision == "tf32"  # restored after the run
    assert ev.main(_argv(voc, tiny_weights, tmp_path / "fp32", "--precision", "fp32")) == 0
    assert _result(out)["results"] == _result(tmp_path / "fp32")["results"]


def test_amp_still_means_fp16_and_tf32_is_accepted(voc, tiny_weights, tmp_path, watched) -> None:
    args = ev.build_parser().parse_args(_argv(voc, tiny_weights, tmp_path / "x", "--amp"))
    assert args.precision is None and args.amp  # run() turns --amp alone into fp16 (refused on a CPU)
    assert ev.main(_argv(voc, tiny_weights, tmp_path / "amp", "--amp")) == 1
    assert ev.main(_argv(voc, tiny_weights, tmp_path / "tf32", "--precision", "tf32")) == 0
    rec = _result(tmp_path / "tf32")["run"]
    assert rec["precision"]["name"] == "tf32" and rec["precision"]["tf32"] is True
    assert rec["precision"]["reference"] is False and "computes as fp32" in rec["precision"]["reason"]
    assert rec["engine"]["float32_math"]["cudnn_conv"] == "tf32" and rec["engine"]["float32_math"]["set_by"] == "engine"
    assert watched.seen and all(s["tf32"] for s in watched.seen)
    assert "**tf32**" in (tmp_path / "tf32" / "result.md").read_text()


def test_help_says_evaluate_defaults_to_fp32_and_predict_keeps_auto() -> None:
    from reproduce import predict

    text = " ".join(ev.build_parser().format_help().split())
    assert "default fp32, the reference's precision, on every device" in text and "tf32" in text
    text = " ".join(predict.build_parser().format_help().split())
    assert "default auto" in text and "tf32" in text


# ------------------------------------------------------------------------------ fp32 math
def _leaves() -> dict[str, str]:
    state = float32_math_state()
    return {k: state[k] for k in LEAVES}


def test_float32_math_sets_and_restores_the_flags_nested() -> None:
    before, matmul = _leaves(), torch.get_float32_matmul_precision()
    torch.backends.cudnn.conv.fp32_precision = "tf32"
    try:
        with float32_math("fp32"):
            assert _leaves() == dict.fromkeys(LEAVES, "ieee") and not float32_math_state()["tf32"]
            with float32_math("tf32"):
                state = float32_math_state()
                assert state["tf32"] and state["cudnn_conv"] == state["cuda_matmul"] == "tf32"
                assert torch.get_float32_matmul_precision() == "high"  # consistent: inductor reads it
            assert _leaves() == dict.fromkeys(LEAVES, "ieee")
            with float32_math("bf16"):  # autocast precisions leave the settings alone
                assert _leaves() == dict.fromkeys(LEAVES, "ieee")
        assert torch.backends.cudnn.conv.fp32_precision == "tf32"
        assert torch.get_float32_matmul_precision() == matmul
        with pytest.raises(KeyError), float32_math("fp32"):  # restored on an exception too
            raise KeyError("x")
        assert torch.backends.cudnn.conv.fp32_precision == "tf32"
    finally:
        torch.backends.cudnn.conv.fp32_precision = before["cudnn_conv"]
    assert _leaves() == before


def test_float32_math_from_two_threads_restores_once_both_are_done() -> None:
    before = _leaves()
    inside, release = threading.Event(), threading.Event()

    def worker() -> None:
        with float32_math("fp32"):
            inside.set()
            release.wait(10)

    t = threading.Thread(target=worker)
    with float32_math("fp32"):
        t.start()
        assert inside.wait(10)
    assert _leaves() == dict.fromkeys(LEAVES, "ieee")  # the other thread is still inside
    release.set()
    t.join(10)
    assert _leaves() == before


def test_engine_and_plain_model_run_fp32_with_tf32_off_and_describe_says_so() -> None:
    model = build_model("deeplabv3plus_tiny", num_classes=4).eval()
    seen: list[bool] = []
    model.register_forward_hook(lambda *_: seen.append(float32_math_state()["tf32"]))
    torch.backends.cudnn.conv.fp32_precision = "tf32"
    x = torch.randn(1, 3, 33, 33)
    engine = Segmenter.from_module(model, device="cpu", precision="fp32", fuse=False)
    engine.forward(x)
    assert seen == [False]
    desc = engine.describe()["float32_math"]
    assert desc["tf32"] is False and desc["cudnn_conv"] == "ieee" and desc["set_by"] == "engine"
    assert "fp32 TF32 off" in engine.summary()
    assert Segmenter.from_module(model, device="cpu", precision="bf16").describe()["float32_math"]["set_by"] == \
        "process"
    lm = inference.LoadedModel(model, "tiny", "deeplab_v3", 4, inference.default_preprocessing(model), "given",
                               Path("none"))
    inference._forward(lm, x, amp=False)  # eval_every's plain model
    assert seen[-1] is False
    assert torch.backends.cudnn.conv.fp32_precision == "tf32"
    tf32 = Segmenter.from_module(model, device="cpu", precision="tf32", fuse=False)
    assert torch.equal(tf32.forward(x), engine.forward(x))  # no TF32 on a CPU: the same numbers


# ------------------------------------------------------------------------------ the report
def test_report_marks_a_result_evaluated_at_another_precision(voc, tiny_weights, tmp_path) -> None:
    from benchmarks import report

    row = ["--compare-to", "deeplab_v3plus_xception65_voc12_val[0]"]
    assert ev.main(_argv(voc, tiny_weights, tmp_path / "fp32", *row)) == 0
    assert ev.main(_argv(voc, tiny_weights, tmp_path / "bf16", "--precision", "bf16", *row)) == 0
    old = _result(tmp_path / "fp32")
    del old["run"]["precision"]
    old["run"]["engine"]["precision"] = "bf16"  # a result written before the default was fp32, by auto on AMX
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "result.json").write_text(json.dumps(old))
    text = report.reproduction_section(report.load_inputs(
        [tmp_path / "fp32" / "result.json", tmp_path / "bf16" / "result.json", tmp_path / "old" / "result.json"]))
    fp32_part, bf16_part, old_part = text.split("**deeplabv3plus_tiny**")[1:]
    assert "precision fp32)" in fp32_part and "not the reference" not in fp32_part
    for part in (bf16_part, old_part):
        table_row = next(line for line in part.splitlines() if line.startswith("| deeplab_v3plus_xception65"))
        assert "**ours at bf16, not the reference's fp32**" in table_row


# ------------------------------------------------------------------------------ the recipes
@pytest.mark.parametrize("name", ["voc_v3plus", "voc_v3plus_official"])
def test_recipes_evaluate_at_fp32_unless_asked_and_amp_is_not_the_evaluation_precision(name, monkeypatch,
                                                                                        tmp_path) -> None:
    from reproduce import recipe

    rec = recipe.load_recipe(name)
    parser = recipe.build_parser(name, rec)
    official = isinstance(rec, recipe.OfficialRecipe)
    variants = rec.eval.variants
    ev_cfg = rec.eval
    calls: list[list[str]] = []
    monkeypatch.setattr(recipe, "_call", lambda what, fn, argv: calls.append(argv))

    def precision_of(argv: list[str]) -> str | None:
        chosen = recipe.eval_precision(parser.parse_args(argv), official)
        calls.clear()
        recipe.evaluate_variants(variants[:1], ev_cfg, weights=tmp_path / "w.pth", model=None, root=tmp_path,
                                 out=tmp_path, device="cpu", workers=None, crf_workers=None, precision=chosen,
                                 smoke_crop=None, step=lambda *_: None)
        (argv_ev,) = calls
        assert "--amp" not in argv_ev
        return argv_ev[argv_ev.index("--precision") + 1] if "--precision" in argv_ev else None

    assert precision_of([]) is None  # reproduce.evaluate's default: fp32
    assert precision_of(["--precision", "bf16"]) == "bf16"
    assert precision_of(["--amp"]) == ("fp16" if official else None)  # a train recipe's --amp is for training
    assert "default fp32" in " ".join(parser.format_help().split())


# ------------------------------------------------------------------------------ eval_every
def test_eval_every_scores_in_fp32_with_tf32_off_and_records_it(tmp_path, monkeypatch) -> None:
    from benchmarks._common import REPO
    from reproduce import train as T
    from reproduce.training import loop

    cfg = T.apply_overrides(T.load_config(REPO / "reproduce/configs/deeplabv3plus_tiny-shapes-64.yaml"), {
        "progress": False, "tensorboard": False, "solver.iterations": 1, "solver.batch_size": 2,
        "data.kwargs.size": 32, "augment.crop_size": 32,
        "eval": {"dataset": "shapes", "split": "val", "protocol": "whole",
                 "kwargs": {"length": 2, "seed": 99, "size": 32, "num_classes": 4}}})
    weights = T.train(cfg, tmp_path / "run")
    seen: list[bool] = []
    real_load = inference.load_model

    def load(*args, **kwargs):
        lm = real_load(*args, **kwargs)
        lm.model.register_forward_hook(lambda *_: seen.append(float32_math_state()["tf32"]))
        return lm

    monkeypatch.setattr(inference, "load_model", load)
    torch.backends.cudnn.conv.fp32_precision = "tf32"
    result = loop.evaluate_weights(cfg, weights, torch.device("cpu"))
    assert result["precision"] == "fp32" and result["images"] == 2
    assert seen == [False, False]
