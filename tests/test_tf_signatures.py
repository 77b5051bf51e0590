"""converters/tf/signatures.json equals the registry's models, and tf2torch.py converts without torch.

The streaming conversion (``tf2torch.py``, ``write_tf_checkpoint``) plans against the stored state-dict
signatures instead of building the models, so that its process never imports torch (its imports were the
floor of its peak memory). These tests rebuild every signature from the meta-device models (several class
counts, every allowed output stride) and run the converter in a fresh interpreter, checking at exit that
neither torch nor TensorFlow was imported and that the file it wrote loads strictly and equals the
in-memory conversion.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from converters.tf import signatures
from converters.tf.signatures import COMMAND, SIGNATURES_PATH, build_meta, signature_of, stored
from tests.conftest import REPO

RELEASE = "deeplabv3_mnv2_pascal_train_aug_2018_01_29"  # 8.6 MB of float32


def test_stored_signatures_equal_the_registry() -> None:
    """Every TF-convertible architecture (and no other), its strides, preprocessing and state dict; the
    generator also checks that every allowed stride gives the same state dict."""
    text = signatures.render()
    assert text == SIGNATURES_PATH.read_text(encoding="utf-8"), \
        f"{SIGNATURES_PATH} differs from the model registry: regenerate it with {COMMAND}"
    assert signatures.tf_archs() == signatures.registry_tf_archs()


@pytest.mark.parametrize("num_classes", [1, 4, 150])
def test_class_count_is_the_only_symbolic_dimension(num_classes: int) -> None:
    """A stored model signature at any class count is the model's built with it (at another stride than
    the generator's first)."""
    _, models = signatures.tf_archs()
    for arch in models:
        record = stored(arch)
        for stride in record.output_strides:
            built = signature_of(build_meta(arch, "model", output_stride=stride, num_classes=num_classes))
            assert built == record.signature.resolve(num_classes), \
                f"{arch} at {num_classes} classes, output stride {stride}: regenerate with {COMMAND}"
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        stored(models[0]).signature.resolve(0)


# --------------------------------------------------------------------------- the converter's process
_WRAPPER = """
import json, sys
from converters import tf2torch
codes = [tf2torch.main(argv) for argv in json.loads(sys.argv[1])]
print(json.dumps({"codes": codes, "imported": sorted(m for m in ("torch", "tensorflow", "reference_models")
                                                          if m in sys.modules)}))
"""


def _checkpoint(folder: Path, classes: int | None = None) -> tuple[Path, dict[str, np.ndarray]]:
    """The release's variables with distinct values in the V2 layout (written without TensorFlow);
    ``classes``: the logits re-shaped for that many classes."""
    from converters.releases import TF_RELEASES
    from tests.fuzzing import write_v2_checkpoint

    variables = json.loads(TF_RELEASES[RELEASE].manifest_path.read_text())["variables"]
    if classes is not None:
        variables = {**variables, "logits/semantic/weights": [1, 1, 256, classes],
                     "logits/semantic/biases": [classes]}
    rng = np.random.default_rng(0)
    values = {n: rng.standard_normal(s, dtype=np.float32) for n, s in sorted(variables.items())}
    folder.mkdir()
    return write_v2_checkpoint(folder / "model.ckpt", values), values


def test_tf2torch_imports_neither_torch_nor_tensorflow(tmp_path: Path) -> None:
    from converters.io import load_state_dict
    from converters.tf.convert import convert_tf_checkpoint
    from reference_models import build_model

    release_prefix, values = _checkpoint(tmp_path / "release")
    other_prefix, other_values = _checkpoint(tmp_path / "five", classes=5)
    runs = {  # a release into .pth; a non-release checkpoint of 5 classes (read from its logits) into .safetensors
        tmp_path / "release.pth": (["--dataset", RELEASE, "--checkpoint", str(release_prefix)],
                                   {"release": RELEASE}, release_prefix, values, 21),
        tmp_path / "five.safetensors": (["--checkpoint", str(other_prefix), "--arch", "deeplabv3_mobilenetv2",
                                         "--output-stride", "8"],
                                        {"arch": "deeplabv3_mobilenetv2", "output_stride": 8}, other_prefix,
                                        other_values, 5),
    }
    argvs = [[*argv, "--out", str(out), "--quiet"] for out, (argv, *_) in runs.items()]
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    res = subprocess.run([sys.executable, "-c", _WRAPPER, json.dumps(argvs)], capture_output=True, text=True,
                         cwd=REPO, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report == {"codes": [0, 0], "imported": []}, res.stderr

    for out, (_, kwargs, prefix, written, classes) in runs.items():
        state = load_state_dict(out)  # torch.load(weights_only=True) / safetensors
        model = build_model("deeplabv3_mobilenetv2", num_classes=classes, output_stride=16)
        model.load_state_dict(state, strict=True)
        in_memory = convert_tf_checkpoint(prefix, **kwargs).state_dict
        assert list(state) == list(in_memory) if out.suffix == ".pth" else sorted(state) == sorted(in_memory)
        for key, value in in_memory.items():
            assert state[key].dtype == value.dtype and torch.equal(state[key], value), key
        # two values laid out here with numpy, independently of the converter's rules
        kernel = written["logits/semantic/weights"].transpose(3, 2, 0, 1)
        assert torch.equal(state["logits.semantic.weight"], torch.from_numpy(np.ascontiguousarray(kernel)))
        depthwise = written["MobilenetV2/expanded_conv/depthwise/depthwise_weights"]  # (3, 3, 32, 1)
        expected = depthwise.transpose(2, 3, 0, 1).reshape(-1, 1, 3, 3)
        assert torch.equal(state["backbone.expanded_conv.depthwise.weight"], torch.from_numpy(expected))
        record = json.loads(out.with_suffix(".json").read_text())
        assert record["converter"]["torch"] == torch.__version__ and record["num_classes"] == classes


def test_parser_and_help_need_no_torch() -> None:
    """``--help`` (the --arch choices come from the stored signatures), in a fresh interpreter."""
    code = ("import sys; from converters import tf2torch; rc = tf2torch.main(['--help']); "
            "assert 'torch' not in sys.modules and 'reference_models' not in sys.modules, 'imported'; sys.exit(rc)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "deeplabv3plus_xception65" in res.stdout and "xception_65" in res.stdout


def test_numpy_class_count_converts_alike_on_both_paths(tmp_path: Path) -> None:
    """``num_classes`` given as a numpy integer: the streamed file and the in-memory result agree and the
    provenance records a plain int (strict JSON)."""
    from converters.io import load_state_dict
    from converters.tf.convert import convert_tf_checkpoint, write_tf_checkpoint

    prefix, _ = _checkpoint(tmp_path / "ckpt")
    kwargs = {"arch": "deeplabv3_mobilenetv2", "num_classes": np.int64(21)}
    in_memory = convert_tf_checkpoint(prefix, **kwargs)
    out = tmp_path / "w.safetensors"
    record = write_tf_checkpoint(out, prefix, **kwargs)
    assert type(record["num_classes"]) is int and type(in_memory.num_classes) is int
    assert json.loads(out.with_suffix(".json").read_text())["num_classes"] == 21
    state = load_state_dict(out)
    assert sorted(state) == sorted(in_memory.state_dict)
    assert all(torch.equal(state[k], v) for k, v in in_memory.state_dict.items())


@pytest.mark.parametrize("damage", ["not json {", '{"format": "something else", "archs": {}}', "entry"])
def test_a_damaged_signatures_file_is_a_one_line_error_naming_it(tmp_path, monkeypatch, capsys, damage) -> None:
    """A damaged installed ``signatures.json`` (truncated, foreign, an entry missing its fields) stops
    ``tf2torch.py`` with one line naming the file and how to repair it, exit 1, never a traceback."""
    from converters import tf2torch
    from converters.tf import signatures

    bad = tmp_path / "signatures.json"
    if damage == "entry":
        data = json.loads(signatures.SIGNATURES_PATH.read_text(encoding="utf-8"))
        arch = next(iter(data["archs"]))
        del data["archs"][arch]["state_dict"]
        bad.write_text(json.dumps(data), encoding="utf-8")
        argv = ["--checkpoint", str(tmp_path / "model.ckpt"), "--arch", arch, "--out", str(tmp_path / "o.pth")]
        (tmp_path / "model.ckpt.index").write_bytes(b"")
    else:
        bad.write_text(damage, encoding="utf-8")
        argv = ["--help"]
    monkeypatch.setattr(signatures, "SIGNATURES_PATH", bad)
    for fn in (signatures._load, signatures.stored):
        fn.cache_clear()
    try:
        code = tf2torch.main(argv)
    finally:
        for fn in (signatures._load, signatures.stored):
            fn.cache_clear()
    err = capsys.readouterr().err
    assert code == 1, err
    assert err.startswith("error: ") and err.count("\n") == 1 and str(bad) in err, err
    assert "regenerate it with python -m converters.tf.signatures --write" in err


def test_generated_files_check_and_write(tmp_path: Path, capsys) -> None:
    """The --check / --write command of the generated files (signatures.json, keras_layouts.json)."""
    from converters.cli import generated_file_command

    path = tmp_path / "gen.json"
    path.write_text("old\n", encoding="utf-8")
    run = lambda *argv: generated_file_command(list(argv), prog="gen", description="d", path=path,  # noqa: E731
                                               render=lambda: "new\n", command="gen --write", source="code")
    assert run("--check") == 1
    assert capsys.readouterr().err == f"error: {path} is stale: regenerate it with gen --write\n"
    assert run("--write") == 0 and path.read_text(encoding="utf-8") == "new\n"
    assert run("--check") == 0
    assert run() == 2 and run("--write", "--check") == 2
