"""converters/streaming.py: ``.pth`` and ``.safetensors`` written one tensor at a time, equal to what
``torch.save`` / ``safetensors.torch.save_file`` write; and the TF conversion never holds the checkpoint.

The memory tests are structural or use ``tracemalloc`` (it counts the numpy buffers and bytearrays the
reader and the layout step allocate; deterministic, whatever the machine's load), not wall-clock RSS.
"""

from __future__ import annotations

import json
import struct
import tracemalloc
import weakref
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from converters.streaming import TensorSpec, torch_save_pickle, write_state_dict_streamed

MIB = 1 << 20


def sample_state_dict() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "conv.weight": torch.randn(8, 3, 3, 3, generator=g),
        "bn.running_mean": torch.randn(8, generator=g),
        "bn.num_batches_tracked": torch.tensor(0),
        "scalar": torch.tensor(1.5),
        "empty": torch.zeros(0, 4),
        "half": torch.randn(5, generator=g).half(),
        "bf16": torch.randn(3, generator=g).bfloat16(),
        "double": torch.randn(2, 2, generator=g).double(),
        "ints": torch.arange(6, dtype=torch.int32).reshape(2, 3),
        "bytes": torch.arange(7, dtype=torch.uint8),
        "flags": torch.tensor([True, False, True]),
    }


def specs_of(sd: dict[str, torch.Tensor]) -> list[TensorSpec]:
    return [TensorSpec(k, tuple(v.shape), v.dtype) for k, v in sd.items()]


def test_pth_records_equal_torch_save(tmp_path: Path) -> None:
    sd = sample_state_dict()
    ours, ref = tmp_path / "w.pth", tmp_path / "ref" / "w.pth"
    ref.parent.mkdir()
    write_state_dict_streamed(ours, specs_of(sd), lambda k: sd[k])
    torch.save(sd, ref)
    with zipfile.ZipFile(ours) as a, zipfile.ZipFile(ref) as b:
        assert a.testzip() is None  # every record's CRC-32 is right
        assert a.namelist() == b.namelist()
        for name in a.namelist():
            if not name.endswith("serialization_id"):
                assert a.read(name) == b.read(name), name  # data.pkl included: byte for byte
        raw = ours.read_bytes()
        for info in a.infolist():  # record data aligned as torch aligns it (what mmap loading relies on)
            name_len, extra_len = struct.unpack_from("<HH", raw, info.header_offset + 26)
            assert (info.header_offset + 30 + name_len + extra_len) % 64 == 0, info.filename
    for mmap in (False, True):
        loaded = torch.load(ours, weights_only=True, mmap=mmap)
        assert list(loaded) == list(sd)
        for key, value in sd.items():
            assert loaded[key].dtype == value.dtype and torch.equal(loaded[key], value), key


def test_pickle_of_a_real_model_equals_torch_save() -> None:
    """The metadata pickle for a whole reference model, byte for byte (the real dtypes, shapes and keys)."""
    import io

    from reference_models import build_model

    sd = build_model("deeplabv3_mobilenetv2", num_classes=21, output_stride=16).state_dict()
    buf = io.BytesIO()
    torch.save(dict(sd), buf)
    buf.seek(0)
    with zipfile.ZipFile(buf) as z:
        expected = z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))
    assert torch_save_pickle(specs_of(dict(sd))) == expected


def test_safetensors_equal_save_file(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    sd = sample_state_dict()
    ours, ref = tmp_path / "w.safetensors", tmp_path / "ref.safetensors"
    asked = []
    write_state_dict_streamed(ours, specs_of(sd), lambda k: asked.append(k) or sd[k])
    save_file(sd, str(ref))
    assert ours.read_bytes() == ref.read_bytes()
    assert sorted(asked) == sorted(sd) and asked != list(sd)  # asked in the file's order (dtype, then name)
    loaded = load_file(str(ours))
    assert all(torch.equal(loaded[k], v) for k, v in sd.items())


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_each_tensor_is_dropped_before_the_next_is_asked_for(tmp_path: Path, suffix: str) -> None:
    """The writer keeps no reference to a written tensor: a regression to collecting them all fails here."""
    specs = [TensorSpec(f"t{i}", (64, 64), torch.float32) for i in range(30)]
    alive: set[int] = set()
    most = 0

    def produce(key: str) -> torch.Tensor:
        nonlocal most
        most = max(most, len(alive))
        t = torch.full((64, 64), float(key[1:]))
        alive.add(id(t))
        weakref.finalize(t, alive.discard, id(t))
        return t

    write_state_dict_streamed(tmp_path / f"w{suffix}", specs, produce)
    assert most == 0


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_failure_mid_stream_leaves_nothing(tmp_path: Path, suffix: str) -> None:
    specs = [TensorSpec(f"t{i}", (4,), torch.float32) for i in range(5)]
    out = tmp_path / f"w{suffix}"
    out.write_bytes(b"previous")  # an existing output is left as it was

    def produce(key: str) -> torch.Tensor:
        if key == "t3":
            raise KeyboardInterrupt
        return torch.zeros(4)

    with pytest.raises(KeyboardInterrupt):
        write_state_dict_streamed(out, specs, produce)
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name] and out.read_bytes() == b"previous"
    with pytest.raises(ValueError, match="'t0': got \\(5,\\)"):  # a tensor that is not what the plan says
        write_state_dict_streamed(out, specs, lambda k: torch.zeros(5))
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


# --------------------------------------------------------------------------- the TF conversion
RELEASE = "resnet_v1_50_2016_08_28"  # ~98 MiB of float32: big enough that holding it is obvious


@pytest.fixture(scope="module")
def resnet_ckpt(tmp_path_factory) -> tuple[Path, int, int]:
    """(prefix, checkpoint bytes, largest converted tensor's bytes, values): the release's variables, written
    without TensorFlow in the V2 layout (cheap distinct values; the CRC-32C of each tensor is real)."""
    from converters.releases import TF_RELEASES
    from converters.tf.rules import ignore_reason
    from tests.fuzzing import write_v2_checkpoint

    variables = json.loads(TF_RELEASES[RELEASE].manifest_path.read_text())["variables"]
    values = {n: (np.arange(int(np.prod(s)), dtype=np.float32) * np.float32(1e-3) + i).reshape(s)
              for i, (n, s) in enumerate(sorted(variables.items()))}
    prefix = write_v2_checkpoint(tmp_path_factory.mktemp("r50") / "model.ckpt", values)
    size = sum(p.stat().st_size for p in prefix.parent.iterdir())
    largest = max(v.nbytes for n, v in values.items() if ignore_reason(n) is None)
    return prefix, size, largest, values


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_tf_conversion_holds_one_tensor_at_a_time(resnet_ckpt, tmp_path: Path, suffix: str) -> None:
    """tf2torch.py in-process: the numpy/bytearray memory it allocates peaks near two copies of the largest
    tensor (read buffer + laid-out copy), far below the checkpoint; and every tensor is dropped before the
    next is read. Catches a regression to collecting the state dict before writing."""
    from converters import tf2torch
    from converters.io import load_state_dict
    from converters.tf.convert import TFConversion

    prefix, size, largest, values = resnet_ckpt
    read = TFConversion.array
    alive: set[int] = set()
    most = 0

    def tracked(self, key):
        nonlocal most
        most = max(most, len(alive))
        t = read(self, key)
        alive.add(id(t))
        weakref.finalize(t, alive.discard, id(t))
        return t

    out = tmp_path / f"w{suffix}"
    args = ["--dataset", RELEASE, "--checkpoint", str(prefix), "--out", str(out), "--quiet"]
    TFConversion.array = tracked
    tracemalloc.start()
    try:
        assert tf2torch.main(args) == 0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        TFConversion.array = read
    assert most == 0
    bound = 3 * largest + 8 * MIB
    assert bound < size / 2
    assert peak < bound, f"traced peak {peak / MIB:.1f} MiB; the checkpoint is {size / MIB:.1f} MiB"
    state = load_state_dict(out)
    assert len(state) == json.loads(out.with_suffix(".json").read_text())["weights"]["tensors"]
    # every tensor equals the in-memory conversion, byte for byte; a few against the values written, laid out
    # here with numpy (conv kernels HWIO -> OIHW), independently of the converter's rules
    from converters.tf.convert import convert_tf_checkpoint

    in_memory = convert_tf_checkpoint(prefix, release=RELEASE).state_dict
    assert sorted(state) == sorted(in_memory)
    for key, value in in_memory.items():
        assert state[key].dtype == value.dtype and torch.equal(state[key], value), key
    for tf_name, key in (("resnet_v1_50/conv1/weights", "conv1.weight"),
                         ("resnet_v1_50/block4/unit_3/bottleneck_v1/conv2/weights", "block4.unit_3.conv2.weight"),
                         ("resnet_v1_50/block1/unit_1/bottleneck_v1/conv1/BatchNorm/moving_mean",
                          "block1.unit_1.conv1.bn.running_mean")):
        array = values[tf_name]
        expected = array.transpose(3, 2, 0, 1) if array.ndim == 4 else array
        assert torch.equal(state[key], torch.from_numpy(np.ascontiguousarray(expected))), key


def test_crc_mismatch_mid_stream_leaves_nothing(tmp_path: Path, capsys) -> None:
    """A corrupt tensor late in the stream (many already written): one line naming it, exit 1, no file left."""
    from converters import tf2torch
    from converters.releases import TF_RELEASES
    from tests.fuzzing import flip_tensor_byte, write_v2_checkpoint

    release = "deeplabv3_mnv2_pascal_train_aug_2018_01_29"
    variables = json.loads(TF_RELEASES[release].manifest_path.read_text())["variables"]
    values = {n: np.full(s, 0.25, dtype=np.float32) for n, s in variables.items()}
    src = tmp_path / "src"
    src.mkdir()
    prefix = write_v2_checkpoint(src / "model.ckpt", values)
    name = "logits/semantic/weights"  # the model's last parameter: every other tensor is written before it
    shard = flip_tensor_byte(prefix, name)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for suffix in (".pth", ".safetensors"):
        out = out_dir / f"w{suffix}"
        capsys.readouterr()
        assert tf2torch.main(["--dataset", release, "--checkpoint", str(prefix), "--out", str(out), "--quiet"]) == 1
        assert capsys.readouterr().err == f"error: {shard}: CRC-32C mismatch in tensor '{name}' (corrupt data shard)\n"
        assert list(out_dir.iterdir()) == []  # no weights, no provenance, no temporary file
