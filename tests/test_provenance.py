"""Weights sidecars and weights files of the wrong kind: one line naming the file, never a traceback.

A provenance JSON of the wrong shape (read by predict/evaluate's model loader, the ONNX export and the
training's init weights) and a pickled ``--init-weights`` file (torch's own message advises
``weights_only=False``: never repeated).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from converters.errors import ConversionError
from converters.io import save_state_dict
from converters.provenance import read_provenance
from reference_models import build_model
from reference_models.preprocessing import Preprocessing
from reproduce.inference import InferenceError, load_model
from reproduce.training.config import ConfigError
from reproduce.training.init_weights import load_init_weights

GOOD = {"architecture": "deeplabv3plus_tiny", "num_classes": 4,
        "preprocessing": {"channel_order": "RGB", "mean": [127.5] * 3, "std": [127.5] * 3}}
PRE = Preprocessing("RGB", (127.5,) * 3, (127.5,) * 3)

# (sidecar text, what the one line says)
BAD_SIDECARS = [
    ("[1, 2, 3]", "the file holds a JSON list, not an object"),
    ('"deeplabv3plus_tiny"', "the file holds a JSON str, not an object"),
    (json.dumps({**GOOD, "num_classes": "four"}), "'num_classes' is \"four\", expected an integer"),
    (json.dumps({**GOOD, "num_classes": 0}), "'num_classes' is 0, expected an integer from 1"),
    (json.dumps({**GOOD, "architecture": ["x"]}), "'architecture' is \\[\"x\"\\], expected a model name"),
    (json.dumps({**GOOD, "preprocessing": [1, 2]}), "'preprocessing' is \\[1, 2\\], expected an object"),
    (json.dumps({**GOOD, "preprocessing": {"channel_order": "RGB", "mean": 5}}),
     "'preprocessing.mean' is 5, expected three finite numbers"),
    (json.dumps({**GOOD, "preprocessing": {"channel_order": "RGB", "mean": [1, 2, 3], "std": [1, 0, 1]}}),
     "'preprocessing.std' is \\[1, 0, 1\\], expected three finite non-zero"),
    ('{"architecture": "deeplabv3plus_tiny", "preprocessing": {"channel_order": "RGB", "mean": [NaN, 1, 1]}}',
     "'preprocessing.mean' is \\[NaN, 1, 1\\]"),
    (json.dumps({**GOOD, "preprocessing": {"channel_order": "XYZ", "mean": [1, 2, 3]}}),
     "'preprocessing.channel_order' is \"XYZ\", expected RGB or BGR"),
    (json.dumps({**GOOD, "model_kwargs": {"output_stride": "sixteen"}}), "'model_kwargs.output_stride' is"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ("{not json", "not valid provenance JSON"),
]


def _weights(tmp_path: Path, sidecar: str | None) -> Path:
    weights = tmp_path / "tiny.pth"
    save_state_dict(build_model("deeplabv3plus_tiny", num_classes=4).state_dict(), weights)
    if sidecar is not None:
        weights.with_suffix(".json").write_text(sidecar, encoding="utf-8")
    return weights


@pytest.mark.parametrize("text,match", BAD_SIDECARS)
def test_read_provenance_refuses_the_wrong_shape_in_one_line(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "w.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConversionError, match=rf"^{path}: .*{match}") as exc:
        read_provenance(path)
    assert "\n" not in str(exc.value)


def test_read_provenance_reads_what_the_writers_write(tmp_path: Path) -> None:
    from converters.provenance import provenance_record

    record = provenance_record(tool="t", steps=["a"], architecture="deeplabv3plus_tiny", num_classes=4,
                               load_with="x", source={"file": "f"}, preprocessing=PRE,
                               model={"output_stride": 16})
    path = tmp_path / "w.json"
    path.write_text(json.dumps(record), encoding="utf-8")
    assert read_provenance(path) == json.loads(json.dumps(record))


@pytest.mark.parametrize("text,match", BAD_SIDECARS[2:8])
def test_model_loader_names_the_sidecar(tmp_path: Path, text: str, match: str) -> None:
    """predict / evaluate / the segmenter load weights through load_model: it read the sidecar unchecked."""
    weights = _weights(tmp_path, text)
    with pytest.raises(InferenceError, match=rf"^{weights.with_suffix('.json')}: .*{match}") as exc:
        load_model(None, weights)
    assert "\n" not in str(exc.value)


def test_model_loader_still_reads_a_good_sidecar(tmp_path: Path) -> None:
    loaded = load_model(None, _weights(tmp_path, json.dumps(GOOD)))
    assert loaded.name == "deeplabv3plus_tiny" and loaded.num_classes == 4


@pytest.mark.parametrize("text,match", [BAD_SIDECARS[0], BAD_SIDECARS[6]])
def test_init_weights_name_the_sidecar(tmp_path: Path, text: str, match: str) -> None:
    weights = _weights(tmp_path, text)
    model = build_model("deeplabv3plus_tiny", num_classes=4)
    with pytest.raises(ConfigError, match=rf"^{weights.with_suffix('.json')}: .*{match}") as exc:
        load_init_weights(model, {"weights": str(weights)}, PRE, seed=0)
    assert "\n" not in str(exc.value)


def test_export_names_the_sidecar(tmp_path: Path) -> None:
    pytest.importorskip("onnxscript")
    from converters import export
    from tests.inprocess import run_main

    weights = _weights(tmp_path, "[1, 2, 3]")
    proc = run_main(export.main, ["--weights", weights, "--out", tmp_path / "m.onnx", "--model", "deeplabv3plus_tiny"])
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: {weights.with_suffix('.json')}: ") and "JSON list" in lines[0]
    assert not (tmp_path / "m.onnx").exists()


# ------------------------------------------------------------------------------ pickled init weights
def _pickled(tmp_path: Path) -> Path:
    path = tmp_path / "pickled.pth"
    state = build_model("deeplabv3plus_tiny", num_classes=4).state_dict()
    torch.save({"state_dict": state, "args": argparse.Namespace(lr=0.1)}, path)  # an object beside the tensors
    return path


def test_pickled_init_weights_are_one_line_never_advising_to_unpickle(tmp_path: Path) -> None:
    path = _pickled(tmp_path)
    model = build_model("deeplabv3plus_tiny", num_classes=4)
    with pytest.raises(ConfigError) as exc:
        load_init_weights(model, {"weights": str(path)}, PRE, seed=0)
    message = str(exc.value)
    assert message.startswith(f"{path}: a pickle of Python objects") and "cannot be loaded safely" in message
    assert "safetensors" in message and "caffe2torch" in message and "import_checkpoint" in message
    assert "weights_only" not in message and "\n" not in message


def test_unreadable_init_weights_are_one_line(tmp_path: Path) -> None:
    path = tmp_path / "torn.pth"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    model = build_model("deeplabv3plus_tiny", num_classes=4)
    with pytest.raises(ConfigError, match=rf"^{path}: cannot load the init weights") as exc:
        load_init_weights(model, {"weights": str(path)}, PRE, seed=0)
    assert "\n" not in str(exc.value)


def test_train_cli_pickled_init_weights(tmp_path: Path) -> None:
    from reproduce.training.cli import main
    from tests.inprocess import run_main
    from tests.test_train import tiny_config, write_config

    path = _pickled(tmp_path)
    cfg = write_config(tmp_path, tiny_config("v3"))
    proc = run_main(main, ["--config", cfg, "--out", tmp_path / "run", "--init-weights", path, "--no-progress"])
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and lines, proc.stderr
    assert lines[-1].startswith(f"error: {path}: a pickle of Python objects"), proc.stderr
    assert "weights_only" not in proc.stderr and "Traceback" not in proc.stderr


def test_inference_uses_the_same_message(tmp_path: Path) -> None:
    path = _pickled(tmp_path)
    with pytest.raises(InferenceError) as exc:
        load_model("deeplabv3plus_tiny", path)
    assert str(exc.value).startswith(f"{path}: a pickle of Python objects") and "never unpickled" in str(exc.value)
    assert "weights_only" not in str(exc.value)


@pytest.mark.parametrize("text,match", [("[]", "JSON list"), ('{"trained_with": 5}', "'trained_with' is 5"),
                                        ('{"best": "yes"}', "'best' is \"yes\"")])
def test_recipe_summary_names_a_malformed_final_json(tmp_path: Path, text: str, match: str) -> None:
    from reproduce.recipe import RecipeError, _train_summary

    (tmp_path / "final.json").write_text(text, encoding="utf-8")
    with pytest.raises(RecipeError, match=rf"^{tmp_path / 'final.json'}: .*{match}"):
        _train_summary(tmp_path)
    (tmp_path / "final.json").write_text('{"trained_with": {}, "best": {"score": "x"}}', encoding="utf-8")
    assert "? iterations" in _train_summary(tmp_path)[0] and "mIoU –" in _train_summary(tmp_path)[1]


@pytest.mark.parametrize("obj", [[torch.zeros(1)], {"a": 1}, {"model": {"w": torch.zeros(1)}}, torch.zeros(2)])
def test_init_weights_that_are_not_a_state_dict(tmp_path: Path, obj) -> None:
    """torch.load(weights_only=True) returns any plain structure: each is one line, not an AttributeError."""
    path = tmp_path / "w.pth"
    torch.save(obj, path)
    model = build_model("deeplabv3plus_tiny", num_classes=4)
    with pytest.raises(ConfigError, match=rf"^{path}: not a state dict of named tensors") as exc:
        load_init_weights(model, {"weights": str(path)}, PRE, seed=0)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("text,match", [("[1, 2]", "JSON list"),
                                        ('{"preprocessing": {"std": [1, 1, 1]}}', "bad preprocessing record")])
def test_hub_names_the_sidecar(tmp_path: Path, text: str, match: str) -> None:
    repo = Path(__file__).resolve().parent.parent
    weights = _weights(tmp_path, text)
    with pytest.raises(ValueError, match=rf"^{weights.with_suffix('.json')}: .*{match}") as exc:
        torch.hub.load(str(repo), "deeplabv3plus_tiny", source="local", weights=str(weights), num_classes=4)
    assert "\n" not in str(exc.value)
