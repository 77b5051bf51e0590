"""ONNX export (converters/export.py) against PyTorch, run by onnxruntime (an independent engine).

* Every registered model (the list comes from the registry, so models added later are covered):
  random weights with non-default BatchNorm statistics, one dynamic graph checked at two sizes of
  different parity and batch (TF SAME padding, Caffe ceil pooling and MSC resizing depend on both):
  max |onnx - torch| / max |torch| <= 1e-4, argmax agreement >= 99.9 % where the top-2 margin allows.
  The tiny models run in the fast suite; the full-size ones are slow (minutes of export each).
* The TF layer quirks under symbolic sizes (strided SAME conv, SAME max pool, align_corners resize)
  in a small module, fast.
* The command line: model and classes from the provenance JSON, the preprocessing contract in the
  ONNX metadata, fixed-size graphs, and one-line errors with nothing written.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from converters.export import (  # noqa: E402
    ARGMAX_MIN,
    REL_TOL,
    check_parity,
    export_onnx,
    main,
    read_metadata,
)
from converters.io import provenance_path, save_state_dict  # noqa: E402
from reference_models import build_model, list_models  # noqa: E402
from reference_models.preprocessing import DEEPLAB_TF_UNIT_RANGE  # noqa: E402
from reference_models.tf_ops import Conv2dTF, max_pool_same, resize_bilinear_align_corners  # noqa: E402
from reproduce.inference import default_preprocessing  # noqa: E402

NUM_CLASSES = 5
TRACE = (65, 65)
CASES = [(1, 65, 65), (2, 50, 42)]  # odd then even sizes, batch 1 then 2: one dynamic graph


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """He-scaled weights, random biases and BatchNorm statistics (so every tensor matters); eval mode."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.zeros_like(value)
        elif key.endswith("running_var"):
            state[key] = torch.rand(value.shape, generator=gen) + 0.5
        elif key.endswith(("running_mean", "bias")):
            state[key] = torch.randn(value.shape, generator=gen) * 0.2
        elif value.ndim == 1:
            state[key] = torch.rand(value.shape, generator=gen) * 0.7 + 0.3
        else:
            state[key] = torch.randn(value.shape, generator=gen) * (2.0 / value[0].numel()) ** 0.5
    model.load_state_dict(state, strict=True)
    return model.eval()


def _params(name: str):
    return pytest.param(name, marks=() if "tiny" in name else pytest.mark.slow, id=name)


@pytest.mark.parametrize("name", [_params(n) for n in list_models()])
def test_every_registered_model_exports_with_parity_at_two_sizes(name, tmp_path):
    model = randomize(build_model(name, num_classes=NUM_CLASSES))
    out = tmp_path / f"{name}.onnx"
    rows = export_onnx(model, out, preprocessing=default_preprocessing(model), metadata={"model": name},
                       dynamic=True, height=TRACE[0], width=TRACE[1], check_cases=CASES)
    assert out.is_file() and read_metadata(out)["model"] == name
    assert [(r.batch, r.height, r.width) for r in rows] == CASES
    for r in rows:
        assert r.output_shape[:2] == (r.batch, NUM_CLASSES)
        assert r.max_rel_diff <= REL_TOL, r
        assert r.argmax_agree >= ARGMAX_MIN and r.margin_pixels > 0.5, r
    # the two sizes really give different output sizes from the one graph
    assert rows[0].output_shape[2:] != rows[1].output_shape[2:]


class _TFQuirks(nn.Module):
    """Strided TF SAME conv (odd/even sizes pad differently), SAME max pool, align_corners resize back."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = Conv2dTF(3, 8, 3, stride=2, bn_eps=1e-3, activation="relu")
        self.conv2 = Conv2dTF(8, 8, 1, stride=2)  # k < stride: padding clamps at 0
        self.conv3 = Conv2dTF(8, 4, 3, dilation=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = max_pool_same(self.conv1(x), 3, 2)
        y = self.conv3(self.conv2(y))
        return resize_bilinear_align_corners(y, x.shape[-2:])


def test_tf_quirks_stay_exact_under_dynamic_sizes(tmp_path):
    model = randomize(_TFQuirks())
    out = tmp_path / "quirks.onnx"
    cases = [(1, 33, 34), (2, 40, 41), (1, 47, 47)]
    rows = export_onnx(model, out, preprocessing=DEEPLAB_TF_UNIT_RANGE, metadata={}, dynamic=True, height=33,
                       width=34, check_cases=cases)
    assert all(r.ok and r.max_rel_diff <= REL_TOL for r in rows), rows


def test_parity_check_catches_a_different_model(tmp_path):
    model = randomize(build_model("deeplabv3plus_tiny", num_classes=NUM_CLASSES))
    out = tmp_path / "m.onnx"
    export_onnx(model, out, preprocessing=DEEPLAB_TF_UNIT_RANGE, metadata={}, dynamic=False, height=33, width=33)
    other = randomize(build_model("deeplabv3plus_tiny", num_classes=NUM_CLASSES), seed=1)
    (row,) = check_parity(other, out, [(1, 33, 33)], DEEPLAB_TF_UNIT_RANGE)
    assert not row.ok and row.max_rel_diff > 1e-2


def _weights(tmp_path, name="deeplabv3plus_tiny", *, provenance=True, **kwargs):
    model = randomize(build_model(name, num_classes=NUM_CLASSES, **kwargs))
    path = tmp_path / "w.pth"
    save_state_dict(model.state_dict(), path)
    if provenance:
        provenance_path(path).write_text(json.dumps({
            "format": "deeplab-repro provenance v1", "architecture": name, "num_classes": NUM_CLASSES,
            "model_kwargs": kwargs, "preprocessing": DEEPLAB_TF_UNIT_RANGE.to_dict(),
            "weights": {"file": path.name, "sha256": "0" * 64}}))
    return model, path


def test_cli_reads_provenance_and_writes_the_contract(tmp_path, capsys):
    model, weights = _weights(tmp_path, output_stride=8)
    out = tmp_path / "sub" / "m.onnx"
    assert main(["--weights", str(weights), "--out", str(out), "--height", "49", "--width", "57"]) == 0
    meta = read_metadata(out)
    assert meta["model"] == "deeplabv3plus_tiny" and meta["num_classes"] == str(NUM_CLASSES)
    assert json.loads(meta["preprocessing"]) == json.loads(json.dumps(DEEPLAB_TF_UNIT_RANGE.to_dict()))
    assert meta["channel_order"] == "RGB" and json.loads(meta["mean"]) == [127.5, 127.5, 127.5]
    assert json.loads(meta["build_kwargs"]) == {"output_stride": 8} and meta["dynamic"] == "false"
    # onnxruntime on the written file, independently of the command's own check
    x = DEEPLAB_TF_UNIT_RANGE.apply(np.random.default_rng(3).integers(0, 256, (49, 57, 3), dtype=np.uint8))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        ref = model(x).numpy()
    assert got.shape == ref.shape and np.abs(got - ref).max() <= REL_TOL * np.abs(ref).max()
    with pytest.raises(Exception):  # noqa: B017 - a fixed-size graph refuses another size
        session.run(None, {"image": np.zeros((1, 3, 41, 41), np.float32)})
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["parity"][0]["ok"] is True


@pytest.mark.parametrize("case", ["missing", "mismatch", "unwritable", "suffix"])
def test_cli_errors_are_one_line_and_write_nothing(tmp_path, capsys, case):
    _, weights = _weights(tmp_path)
    out = tmp_path / "m.onnx"
    args = ["--weights", str(weights), "--out", str(out), "--height", "33"]
    if case == "missing":
        args[1] = str(tmp_path / "nope.pth")
    elif case == "mismatch":
        args += ["--model", "deeplabv3_tiny"]
    elif case == "unwritable":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "m.onnx"
        args[3] = str(out)
    else:
        out = tmp_path / "m.pth"
        args[3] = str(out)
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert not out.exists() and not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob(".*tmp"))


def test_cli_usage_errors():
    assert main(["--weights", "w.pth", "--out", "m.onnx", "--dynamic", "--width", "33"]) == 2
    assert main(["--weights", "w.pth", "--out", "m.onnx", "--dynamic", "--height", "33"]) == 2


def test_export_refuses_to_check_a_fixed_graph_elsewhere(tmp_path):
    model = randomize(build_model("deeplabv3_tiny", num_classes=NUM_CLASSES))
    with pytest.raises(ValueError):
        export_onnx(model, tmp_path / "m.onnx", preprocessing=DEEPLAB_TF_UNIT_RANGE, metadata={}, dynamic=False,
                    height=33, width=33, check_cases=[(1, 41, 41)])
    assert not (tmp_path / "m.onnx").exists()
