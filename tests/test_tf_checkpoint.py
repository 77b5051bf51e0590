"""converters.tf.reader against checkpoints TensorFlow itself writes.

TensorFlow is only a test dependency: every test that needs it asks for the
``tf`` fixture (``pytest.importorskip``); the format-level tests run without it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from converters.errors import ConversionError
from converters.tf import reader as tf_checkpoint
from converters.tf.reader import crc32c, open_checkpoint


@pytest.fixture(scope="module")
def tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return pytest.importorskip("tensorflow")


def assert_matches_tensorflow(tf, prefix: Path, *, verify: bool = True) -> None:
    """Names, dtypes, shapes and values equal what tf.train.load_checkpoint returns."""
    reference = tf.train.load_checkpoint(str(prefix))
    expected = reference.get_variable_to_shape_map()
    with open_checkpoint(prefix, verify=verify) as ckpt:
        assert ckpt.names() == sorted(expected)
        assert list(ckpt) == ckpt.names() and len(ckpt) == len(expected)
        for name in ckpt:
            assert name in ckpt
            want = np.asarray(reference.get_tensor(name))
            got = ckpt.read(name)
            assert ckpt.shape(name) == tuple(expected[name]) == got.shape == want.shape, name
            if want.dtype.kind == "S":  # TensorFlow returns bytes as numpy "S"; we return object arrays of bytes
                assert got.dtype == ckpt.dtype(name) == np.dtype(object)
                assert got.tolist() == want.tolist(), name
                continue
            assert got.dtype == ckpt.dtype(name) == want.dtype, name
            assert got.dtype.byteorder in "=|<"
            np.testing.assert_array_equal(got, want, err_msg=name)


def copy_checkpoint(prefix: Path, dest: Path) -> Path:
    """Copy all files of checkpoint ``prefix`` into directory ``dest``; return the new prefix."""
    dest.mkdir()
    for path in prefix.parent.glob(prefix.name + ".*"):
        shutil.copy(path, dest / path.name)
    return dest / prefix.name


def write_graph_mode(tf, prefix: Path, build) -> Path:
    """Run ``build()`` in a TF1 graph, initialise, save with tf.compat.v1.train.Saver (V2 format)."""
    v1 = tf.compat.v1
    with tf.Graph().as_default():
        build()
        saver = v1.train.Saver()
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            return Path(saver.save(sess, str(prefix), write_meta_graph=False))


# ------------------------------------------------------------------ format pieces, no TensorFlow
def test_crc32c_known_values_and_numpy_path() -> None:
    assert crc32c(b"") == 0
    assert crc32c(b"123456789") == 0xE3069283  # the standard CRC-32C check value
    assert crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4 test vector
    data = np.random.default_rng(0).integers(0, 256, 300_001, dtype=np.uint8).tobytes()
    bytewise = tf_checkpoint._crc_scalar(0xFFFFFFFF, data) ^ 0xFFFFFFFF
    assert crc32c(data) == tf_checkpoint.crc32c_numpy(data) == bytewise  # numpy lanes + zero-shift chaining
    assert tf_checkpoint.crc32c_numpy(b"123456789") == 0xE3069283


def test_snappy_decoder() -> None:
    # varint length 13 | literal "abcd" | copy len 8 offset 4 (overlapping) | literal "X"
    block = bytes([13, 0x0C]) + b"abcd" + bytes([0x11, 0x04, 0x00]) + b"X"
    assert tf_checkpoint._snappy_decompress(block) == b"abcdabcdabcdX"
    with pytest.raises(tf_checkpoint._Corrupt):
        tf_checkpoint._snappy_decompress(bytes([5, 0x11, 0x04]))  # copy before any output


@pytest.mark.parametrize(
    ("name", "extents"),
    [("w", ()), ("a/b", ((0, -1), (0, -1))), ("x\x00y\xff", ((3, 7), (-70, 2**40))), ("big", ((2**62, -(2**63)),))],
)
def test_slice_key_encoding_round_trips(name: str, extents: tuple) -> None:
    key = tf_checkpoint._ordered_encode(name, extents)
    assert key[:1] == b"\x00"  # sorts after the empty key that holds a V1 file's table of contents
    assert tf_checkpoint._decode_slice_key(key) == (name, tuple((0, -1) if n < 0 else (s, n) for s, n in extents))


@pytest.mark.parametrize(
    ("encoded", "value"),
    [(b"\x80", 0), (b"\xbf", 63), (b"\x7f", -1), (b"\x40", -64), (b"\xc0\x40", 64), (b"\xf0\x42\x42\x42", 0x424242)],
)
def test_ordered_code_signed_numbers(encoded: bytes, value: int) -> None:
    # Examples from the comments of TensorFlow's ordered_code.cc, plus the 1/2-byte boundary.
    assert tf_checkpoint._ordered_signed(encoded + b"tail", 0) == (value, len(encoded))


# ------------------------------------------------------------------ checkpoints written by TensorFlow
def test_dtypes_and_scalars_match_tensorflow(tf, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    values = {
        "f32": rng.standard_normal((3, 4)).astype(np.float32),
        "f64": rng.standard_normal(5),
        "f16": rng.standard_normal((2, 2)).astype(np.float16),
        "i32": rng.integers(-(2**31), 2**31 - 1, (4,), dtype=np.int32),
        "i64": np.array([-(2**62), 0, 2**62 + 7], dtype=np.int64),
        "i8": np.array([-128, 0, 127], dtype=np.int8),
        "u8": np.array([[0, 255], [7, 8]], dtype=np.uint8),
        "flags": np.array([True, False, True]),
        "scalar_f32": np.float32(3.5),
        "scalar_i64": np.int64(-7),
        "empty": np.zeros((0, 3), np.float32),
    }
    variables = {k: tf.Variable(v) for k, v in values.items()}
    variables["bf16"] = tf.Variable(tf.constant([1.5, -2.0, 3.25e5], dtype=tf.bfloat16))
    variables["text"] = tf.Variable(b"hello \x00\xff")  # string tensors are readable too
    prefix = tf.train.Checkpoint(**variables).write(str(tmp_path / "model.ckpt"))
    assert_matches_tensorflow(tf, Path(prefix))
    with open_checkpoint(prefix) as ckpt:
        assert ckpt.read("scalar_f32/.ATTRIBUTES/VARIABLE_VALUE").shape == ()
        assert ckpt.dtype("bf16/.ATTRIBUTES/VARIABLE_VALUE") == tf_checkpoint.BFLOAT16
        np.testing.assert_array_equal(ckpt.read("f32/.ATTRIBUTES/VARIABLE_VALUE"), values["f32"])
        # The object graph TF2 adds is a string tensor holding a serialized proto.
        assert isinstance(ckpt.read("_CHECKPOINTABLE_OBJECT_GRAPH").item(), bytes)


_READ_WITHOUT_ML_DTYPES = """
import json, sys
sys.modules["ml_dtypes"] = None  # an environment without ml_dtypes (TensorFlow brings it; we do not require it)
from converters.tf.reader import open_checkpoint
with open_checkpoint(sys.argv[1]) as ckpt:
    out = {}
    for name in ("bf16", "scalar"):
        array = ckpt.read(name + "/.ATTRIBUTES/VARIABLE_VALUE")
        out[name] = [str(ckpt.dtype(name + "/.ATTRIBUTES/VARIABLE_VALUE")), str(array.dtype), list(array.shape),
                     [float(v) for v in array.reshape(-1)]]
print(json.dumps(out))
"""


def test_bfloat16_without_ml_dtypes_reads_as_its_values(tf, tmp_path: Path) -> None:
    """Without ml_dtypes a bfloat16 tensor reads as float32 holding TensorFlow's values, not as its bit patterns."""
    import json
    import subprocess
    import sys

    from tests.conftest import REPO

    values = tf.constant([[1.5, -2.0, 3.25e5], [1e-3, -7.0e-20, 0.0]], dtype=tf.bfloat16)
    scalar = tf.constant(-0.8125, dtype=tf.bfloat16)
    prefix = tf.train.Checkpoint(bf16=tf.Variable(values), scalar=tf.Variable(scalar)).write(str(tmp_path / "m.ckpt"))
    res = subprocess.run([sys.executable, "-c", _READ_WITHOUT_ML_DTYPES, prefix], capture_output=True, text=True,
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    for name, tensor in (("bf16", values), ("scalar", scalar)):
        want = tf.cast(tensor, tf.float32).numpy()
        assert got[name][:3] == ["float32", "float32", list(want.shape)], got[name]
        np.testing.assert_array_equal(np.array(got[name][3], np.float32), want.reshape(-1))


def test_many_variables_span_several_index_blocks(tf, tmp_path: Path) -> None:
    count = 7000  # distinct ~75-byte keys: ~600 KB of index, more than two 256 KB table blocks
    names = [f"{hashlib.sha256(str(i).encode()).hexdigest()}/weights_{i}" for i in range(count)]
    tensors = [tf.constant(np.full((2,), i, np.int32)) for i in range(count)]
    prefix = tmp_path / "model.ckpt"
    tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=names, shape_and_slices=[""] * count, tensors=tensors)
    buf = (tmp_path / "model.ckpt.index").read_bytes()
    footer = buf[-48:]
    pos = tf_checkpoint._varint(footer, tf_checkpoint._varint(footer, 0)[1])[1]
    index_offset, pos = tf_checkpoint._varint(footer, pos)
    index_size, _ = tf_checkpoint._varint(footer, pos)
    index_block = tf_checkpoint._read_block(buf, index_offset, index_size)
    assert len(list(tf_checkpoint._block_entries(index_block))) >= 3  # data blocks
    with open_checkpoint(prefix) as ckpt:
        assert ckpt.names() == sorted(names)
        for i in (0, 1234, count - 1):
            np.testing.assert_array_equal(ckpt.read(names[i]), [i, i])
    reference = tf.train.load_checkpoint(str(prefix))
    assert sorted(reference.get_variable_to_shape_map()) == sorted(names)


def test_large_tensor_read_alone_with_one_seek(tf, tmp_path: Path, monkeypatch) -> None:
    big = np.random.default_rng(2).standard_normal((1024, 4096)).astype(np.float32)  # 16 MB
    small = np.arange(10, dtype=np.float64)
    prefix = tf.train.Checkpoint(big=tf.Variable(big), small=tf.Variable(small)).write(str(tmp_path / "model.ckpt"))
    assert_matches_tensorflow(tf, Path(prefix), verify=True)  # also runs the CRC over 16 MB

    read_sizes: list[int] = []
    real_open = open

    class CountingFile:
        def __init__(self, handle) -> None:
            self.handle = handle

        def seek(self, offset: int) -> int:
            return self.handle.seek(offset)

        def readinto(self, buf) -> int:
            read_sizes.append(self.handle.readinto(buf))
            return read_sizes[-1]

        def close(self) -> None:
            self.handle.close()

    monkeypatch.setattr(tf_checkpoint, "open", lambda *a: CountingFile(real_open(*a)), raising=False)
    with open_checkpoint(prefix) as ckpt:
        np.testing.assert_array_equal(ckpt.read("small/.ATTRIBUTES/VARIABLE_VALUE"), small)
    assert read_sizes == [small.nbytes]  # the 16 MB neighbour in the same shard was never touched


def test_partitioned_variable_graph_mode_saver(tf, tmp_path: Path) -> None:
    v1 = tf.compat.v1

    def build() -> None:
        init = v1.random_normal_initializer(seed=3)  # per partition, so only TF's reader knows the values
        v1.get_variable("emb/rows", (10, 4), initializer=init, partitioner=v1.fixed_size_partitioner(3))
        # A partitioner returns partitions per axis: split the second axis into 3 instead.
        v1.get_variable("emb/cols", (3, 7), initializer=init, partitioner=lambda shape, dtype: [1, 3])
        v1.get_variable("step", initializer=np.int64(11))

    prefix = write_graph_mode(tf, tmp_path / "model.ckpt", build)
    with open_checkpoint(prefix) as ckpt:
        assert ckpt.names() == ["emb/cols", "emb/rows", "step"]  # partitions are hidden behind the full name
        assert len(ckpt._entries["emb/rows"].slices) == 3 and len(ckpt._entries["emb/cols"].slices) == 3
        assert ckpt.shape("emb/cols") == (3, 7)
    assert_matches_tensorflow(tf, prefix)


def test_partitions_written_by_saveV2_slices(tf, tmp_path: Path) -> None:
    full = np.arange(30, dtype=np.float32).reshape(6, 5)
    specs = ["6 5 0,3:0,2", "6 5 0,3:2,3", "6 5 3,3:-"]  # both axes cut; "-" = whole axis
    parts = [full[0:3, 0:2], full[0:3, 2:5], full[3:6, :]]
    prefix = tmp_path / "model.ckpt"
    tf.raw_ops.SaveV2(
        prefix=str(prefix), tensor_names=["w"] * 3, shape_and_slices=specs, tensors=[tf.constant(p) for p in parts]
    )
    assert_matches_tensorflow(tf, prefix)


def test_tf2_sharded_variable(tf, tmp_path: Path) -> None:
    sharded = pytest.importorskip("tensorflow.python.distribute.sharded_variable")  # private API
    shards = [tf.Variable(np.full((3, 4), i, np.float32)) for i in range(3)]
    ckpt = tf.train.Checkpoint(emb=sharded.ShardedVariable(shards))
    prefix = Path(ckpt.write(str(tmp_path / "model.ckpt")))
    assert_matches_tensorflow(tf, prefix)
    with open_checkpoint(prefix) as reader:
        assert reader.shape("emb/.ATTRIBUTES/VARIABLE_VALUE") == (9, 4)


def test_multi_shard_checkpoint(tf, tmp_path: Path) -> None:
    variables = {f"v{i}": tf.Variable(np.full((1000,), i, np.float32)) for i in range(5)}
    options = tf.train.CheckpointOptions(
        experimental_sharding_callback=tf.train.experimental.MaxShardSizePolicy(max_shard_size=5000)
    )
    prefix = Path(tf.train.Checkpoint(**variables).write(str(tmp_path / "model.ckpt"), options=options))
    assert len(list(tmp_path.glob("model.ckpt.data-*"))) > 1
    with open_checkpoint(prefix) as ckpt:  # this policy also splits single variables across shards
        assert any(ckpt._entries[name].slices for name in ckpt)
    assert_matches_tensorflow(tf, prefix)


# ------------------------------------------------------------------ bad input
@pytest.fixture(scope="module")
def small_ckpt(tf, tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("small")
    variables = {f"v{i}": tf.Variable(np.full((100,), i, np.float32)) for i in range(4)}
    options = tf.train.CheckpointOptions(
        experimental_sharding_callback=tf.train.experimental.MaxShardSizePolicy(max_shard_size=500)
    )
    return Path(tf.train.Checkpoint(**variables).write(str(directory / "model.ckpt"), options=options))


def shard_files(prefix: Path) -> list[Path]:
    return sorted(prefix.parent.glob(prefix.name + ".data-*"))


def test_missing_index(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match=r"nothing\.ckpt\.index: checkpoint index file not found"):
        open_checkpoint(tmp_path / "nothing.ckpt")


@pytest.mark.parametrize("keep", [0.5, 0.99])
def test_truncated_index(small_ckpt: Path, tmp_path: Path, keep: float) -> None:
    prefix = copy_checkpoint(small_ckpt, tmp_path / "c")
    index = Path(str(prefix) + ".index")
    data = index.read_bytes()
    index.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ConversionError, match=r"model\.ckpt\.index: .*(bad table magic|truncated)"):
        open_checkpoint(prefix)


def test_garbage_index(tmp_path: Path) -> None:
    (tmp_path / "junk.index").write_bytes(np.random.default_rng(4).bytes(1000))
    with pytest.raises(ConversionError, match=r"junk\.index: not a TensorFlow checkpoint index"):
        open_checkpoint(tmp_path / "junk")


def test_corrupt_index_block(small_ckpt: Path, tmp_path: Path) -> None:
    prefix = copy_checkpoint(small_ckpt, tmp_path / "c")
    index = Path(str(prefix) + ".index")
    data = bytearray(index.read_bytes())
    data[20] ^= 0x01  # inside the first data block; the footer stays valid
    index.write_bytes(bytes(data))
    with pytest.raises(ConversionError, match=r"model\.ckpt\.index: block checksum mismatch"):
        open_checkpoint(prefix)


def test_truncated_data_shard(small_ckpt: Path, tmp_path: Path) -> None:
    prefix = copy_checkpoint(small_ckpt, tmp_path / "c")
    shard = shard_files(prefix)[-1]
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(ConversionError, match=rf"{shard.name}: data shard truncated"):
        open_checkpoint(prefix)


def test_missing_data_shard(small_ckpt: Path, tmp_path: Path) -> None:
    prefix = copy_checkpoint(small_ckpt, tmp_path / "c")
    shards = shard_files(prefix)
    assert len(shards) > 1
    shards[1].unlink()
    with pytest.raises(ConversionError, match=rf"{shards[1].name}: checkpoint data shard missing"):
        open_checkpoint(prefix)


def test_unknown_name(small_ckpt: Path) -> None:
    with open_checkpoint(small_ckpt) as ckpt:
        assert "nope" not in ckpt
        for call in (ckpt.read, ckpt.shape, ckpt.dtype):
            with pytest.raises(ConversionError, match=r"model\.ckpt\.index: no tensor named 'nope'"):
                call("nope")


def test_corrupt_tensor_bytes_caught_unless_verify_is_off(small_ckpt: Path, tmp_path: Path) -> None:
    prefix = copy_checkpoint(small_ckpt, tmp_path / "c")
    with open_checkpoint(prefix) as ckpt:
        name = "v0/.ATTRIBUTES/VARIABLE_VALUE"
        entry = ckpt._entries[name]
        assert not entry.slices
    shard = Path(f"{prefix}.data-{entry.shard:05d}-of-{ckpt._num_shards:05d}")
    data = bytearray(shard.read_bytes())
    data[entry.offset + 7] ^= 0x40
    shard.write_bytes(bytes(data))
    with open_checkpoint(prefix, verify=False) as ckpt:
        assert not np.array_equal(ckpt.read(name), np.full((100,), 0, np.float32))  # read as stored
    with open_checkpoint(prefix) as ckpt, pytest.raises(ConversionError, match="CRC-32C mismatch"):
        ckpt.read(name)  # the default checks, as TensorFlow does


def test_index_suffix_accepted_and_close_is_idempotent(small_ckpt: Path) -> None:
    ckpt = open_checkpoint(str(small_ckpt) + ".index")
    ckpt.read(ckpt.names()[1])
    ckpt.close()
    ckpt.close()
    assert ckpt.shape(ckpt.names()[1]) == (100,)


# ------------------------------------------------------------------ V1 (TensorSliceWriter) checkpoints
def write_v1(tf, prefix: Path, build, *, sharded: bool = False) -> tuple[Path, dict[str, np.ndarray]]:
    """Save the variables ``build()`` makes with a graph-mode V1 Saver; return the path the
    saver reports and each variable's value (full value for a partitioned one) from the session.

    ``build`` may place variables on ``/cpu:0`` and ``/cpu:1``: the session has two CPU devices,
    so a sharded saver writes one file per device."""
    v1 = tf.compat.v1
    with tf.Graph().as_default():
        variables = build()
        saver = v1.train.Saver(write_version=v1.train.SaverDef.V1, sharded=sharded)
        with v1.Session(config=v1.ConfigProto(device_count={"CPU": 2})) as sess:
            sess.run(v1.global_variables_initializer())
            values = sess.run({name: tf.convert_to_tensor(var) for name, var in variables.items()})
            path = saver.save(sess, str(prefix), write_meta_graph=False)
    return Path(path), values


# TensorFlow writes these dtypes into V1 files but its V1 reader answers "Data type not supported".
TF_V1_UNREADABLE = {np.dtype(t) for t in (np.float16, np.uint16, np.complex64, np.complex128)}


def assert_v1_matches(tf, path: Path, values: dict[str, np.ndarray], *, verify: bool = True) -> None:
    """Names, dtypes and shapes equal tf.train.load_checkpoint's; values equal the session's and,
    where TensorFlow's own V1 reader can read them (one slice, not TF_V1_UNREADABLE), TensorFlow's."""
    reference = tf.train.load_checkpoint(str(path))
    shapes = reference.get_variable_to_shape_map()
    dtypes = reference.get_variable_to_dtype_map()
    with open_checkpoint(path, verify=verify) as ckpt:
        assert ckpt.format_version == 1
        assert ckpt.names() == sorted(shapes) == sorted(values)
        for name in ckpt:
            got = ckpt.read(name)
            want = values[name]
            assert ckpt.shape(name) == tuple(shapes[name]) == got.shape == want.shape, name
            if want.dtype.kind in "SO":
                assert got.dtype == ckpt.dtype(name) == np.dtype(object)
                assert got.tolist() == want.tolist(), name
                continue
            assert got.dtype == ckpt.dtype(name) == dtypes[name].as_numpy_dtype == want.dtype, name
            assert got.flags.writeable and got.dtype.byteorder in "=|<"
            np.testing.assert_array_equal(got, want, err_msg=name)
            if len(ckpt._entries[name].slices) == 1 and want.dtype not in TF_V1_UNREADABLE:
                np.testing.assert_array_equal(got, reference.get_tensor(name), err_msg=name)


def test_v1_dtypes_match_tensorflow(tf, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    arrays = {
        "f32": rng.standard_normal((3, 4)).astype(np.float32),
        "f64": rng.standard_normal(5),
        "i32": rng.integers(-(2**31), 2**31 - 1, (2, 3), dtype=np.int32),
        "i64": np.array([-(2**62), 0, 2**62 + 7], dtype=np.int64),
        "flags": np.array([[True, False, True], [False, False, True]]),
        "i8": np.array([-128, 0, 127], dtype=np.int8),
        "u8": np.array([0, 255, 7], dtype=np.uint8),
        "i16": np.array([-32768, 5, 32767], dtype=np.int16),
        "u16": np.array([0, 65535, 9], dtype=np.uint16),
        "f16": rng.standard_normal((2, 2)).astype(np.float16),
        "c64": (rng.standard_normal(3) + 1j * rng.standard_normal(3)).astype(np.complex64),
        "c128": rng.standard_normal(2) - 2j,
        "scalar/f32": np.float32(3.5),
        "scalar/i64": np.int64(-7),
        "empty": np.zeros((0, 3), np.float32),
    }

    def build():
        v1 = tf.compat.v1
        variables = {name: v1.get_variable(name, initializer=value) for name, value in arrays.items()}
        variables["text"] = v1.Variable(tf.constant([b"ab", b"\x00\xff", b""]), name="text")
        return variables

    path, values = write_v1(tf, tmp_path / "model.ckpt", build)
    assert path == tmp_path / "model.ckpt" and not list(tmp_path.glob("*.index"))
    assert_v1_matches(tf, path, values)
    for name, value in arrays.items():  # and the session saw what we initialised
        np.testing.assert_array_equal(values[name], value)


def test_v1_large_tensor_and_lazy_open(tf, tmp_path: Path, monkeypatch) -> None:
    big = np.random.default_rng(6).standard_normal((1100, 4096)).astype(np.float32)  # 18 MB

    def build():
        v1 = tf.compat.v1
        # "a" sorts first, so the big record does not share the block of the table of contents.
        return {"a": v1.get_variable("a", initializer=np.arange(3.0)), "zbig": v1.get_variable("zbig", initializer=big)}

    path, values = write_v1(tf, tmp_path / "model.ckpt", build)
    assert path.stat().st_size > 16 << 20
    assert_v1_matches(tf, path, values, verify=True)  # also checks the 18 MB block's CRC
    with open_checkpoint(path) as ckpt:  # TensorFlow stores it as one record, not in pieces
        assert len(ckpt._entries["zbig"].slices) == 1 and ckpt._parts["zbig"][((0, 1100), (0, 4096))].size > big.nbytes

    read_bytes: list[int] = []
    real_open = open

    class CountingFile:
        def __init__(self, handle) -> None:
            self.handle = handle

        def read(self, size: int = -1) -> bytes:
            data = self.handle.read(size)
            read_bytes.append(len(data))
            return data

        def __getattr__(self, attr: str):
            return getattr(self.handle, attr)

        def __enter__(self):
            return self

        def __exit__(self, *exc_info: object) -> None:
            self.handle.close()

    monkeypatch.setattr(tf_checkpoint, "open", lambda *a: CountingFile(real_open(*a)), raising=False)
    with open_checkpoint(path) as ckpt:
        assert ckpt.shape("zbig") == big.shape
        np.testing.assert_array_equal(ckpt.read("a"), np.arange(3.0))
        assert sum(read_bytes) < 100_000  # footer, index, table of contents, block of "a"
        np.testing.assert_array_equal(ckpt.read("zbig"), big)


def test_v1_partitioned_variables(tf, tmp_path: Path) -> None:
    def build():
        v1 = tf.compat.v1
        init = v1.random_normal_initializer(seed=7)
        return {
            "emb/rows": v1.get_variable(
                "emb/rows", (10, 4), initializer=init, partitioner=v1.fixed_size_partitioner(3)
            ),
            "emb/cols": v1.get_variable("emb/cols", (3, 7), initializer=init, partitioner=lambda shape, dtype: [1, 3]),
            "step": v1.get_variable("step", initializer=np.int64(11)),
        }

    path, values = write_v1(tf, tmp_path / "model.ckpt", build)
    with open_checkpoint(path) as ckpt:
        assert ckpt.names() == ["emb/cols", "emb/rows", "step"]
        assert len(ckpt._entries["emb/rows"].slices) == 3 and len(ckpt._entries["emb/cols"].slices) == 3
    assert_v1_matches(tf, path, values)  # TensorFlow's V1 reader refuses sliced tensors: session values


def test_v1_many_variables_span_several_blocks(tf, tmp_path: Path) -> None:
    count = 600  # ~1.2 KB records: ~730 KB, three 256 KB data blocks

    def build():
        v1 = tf.compat.v1
        names = [f"{hashlib.sha256(str(i).encode()).hexdigest()}/weights_{i}" for i in range(count)]
        return {n: v1.get_variable(n, initializer=np.full((256,), i, np.float32)) for i, n in enumerate(names)}

    path, values = write_v1(tf, tmp_path / "model.ckpt", build)
    with open_checkpoint(path) as ckpt:
        assert len(ckpt._tables[0]._blocks) >= 3
        assert len({(part.offset, part.size) for parts in ckpt._parts.values() for part in parts.values()}) >= 3
    assert_v1_matches(tf, path, values, verify=False)


def test_v1_sharded_saver(tf, tmp_path: Path) -> None:
    def build():
        v1 = tf.compat.v1
        with tf.device("/cpu:0"):
            a = v1.get_variable("a", initializer=np.arange(3, dtype=np.float32))
            emb = v1.get_variable("emb", (10, 4), partitioner=v1.fixed_size_partitioner(3))
        with tf.device("/cpu:1"):
            b = v1.get_variable("b", initializer=np.arange(4, dtype=np.int64))
        return {"a": a, "emb": emb, "b": b}

    path, values = write_v1(tf, tmp_path / "model.ckpt", build, sharded=True)
    assert path.name == "model.ckpt-?????-of-00002"
    assert len(list(tmp_path.glob("model.ckpt-*"))) == 2
    assert_v1_matches(tf, path, values)
    with open_checkpoint(tmp_path / "model.ckpt") as ckpt:  # the saver's prefix finds the shards too
        assert ckpt.names() == ["a", "b", "emb"] and ckpt._num_shards == 2
        np.testing.assert_array_equal(ckpt.read("emb"), values["emb"])
    (tmp_path / "model.ckpt-00001-of-00002").unlink()
    for prefix in (path, tmp_path / "model.ckpt"):
        with pytest.raises(ConversionError, match=r"model\.ckpt-00001-of-00002: V1 checkpoint shard missing"):
            open_checkpoint(prefix)


@pytest.fixture(scope="module")
def v1_ckpt(tf, tmp_path_factory) -> Path:
    """A V1 file with a small tensor ("a", in the first block) and a 1.6 MB one in its own block."""
    directory = tmp_path_factory.mktemp("v1")

    def build():
        v1 = tf.compat.v1
        return {
            "a": v1.get_variable("a", initializer=np.arange(5, dtype=np.float32)),
            "w": v1.get_variable("w", initializer=np.arange(400_000, dtype=np.float32)),
        }

    return write_v1(tf, directory / "model.ckpt", build)[0]


def corrupt_copy(source: Path, dest: Path, edit) -> Path:
    dest.mkdir()
    data = bytearray(source.read_bytes())
    path = dest / source.name
    path.write_bytes(bytes(edit(data)))
    return path


@pytest.mark.parametrize("keep", [0.3, 0.999])
def test_v1_truncated(v1_ckpt: Path, tmp_path: Path, keep: float) -> None:
    path = corrupt_copy(v1_ckpt, tmp_path / "c", lambda data: data[: int(len(data) * keep)])
    with pytest.raises(
        ConversionError,
        match=r"model\.ckpt: not a TensorFlow checkpoint: no model\.ckpt\.index, and not a V1 .*truncated",
    ):
        open_checkpoint(path)


def test_v1_too_short_and_garbage(tmp_path: Path) -> None:
    (tmp_path / "tiny.ckpt").write_bytes(b"\x00" * 10)
    with pytest.raises(ConversionError, match=r"tiny\.ckpt: too short to be a TensorFlow checkpoint"):
        open_checkpoint(tmp_path / "tiny.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(np.random.default_rng(8).bytes(1000))
    with pytest.raises(
        ConversionError, match=r"junk\.ckpt: not a TensorFlow checkpoint: no junk\.ckpt\.index, and not a V1 checkpoint"
    ):
        open_checkpoint(tmp_path / "junk.ckpt")


def test_v1_corrupt_table_of_contents(v1_ckpt: Path, tmp_path: Path) -> None:
    def flip(data: bytearray) -> bytearray:
        data[12] ^= 0x01  # inside the first block, which holds the table of contents
        return data

    path = corrupt_copy(v1_ckpt, tmp_path / "c", flip)
    with pytest.raises(ConversionError, match=r"model\.ckpt: block checksum mismatch at offset 0"):
        open_checkpoint(path)


def test_v1_corrupt_tensor_caught_unless_verify_is_off(v1_ckpt: Path, tmp_path: Path) -> None:
    with open_checkpoint(v1_ckpt) as ckpt:
        part = ckpt._parts["w"][((0, 400_000),)]

    def flip(data: bytearray) -> bytearray:
        data[part.offset + part.size // 2] ^= 0x40  # the middle of w's float values
        return data

    path = corrupt_copy(v1_ckpt, tmp_path / "c", flip)
    with open_checkpoint(path, verify=False) as ckpt:  # block CRCs of tensor data not checked
        assert not np.array_equal(ckpt.read("w"), np.arange(400_000, dtype=np.float32))
        np.testing.assert_array_equal(ckpt.read("a"), np.arange(5, dtype=np.float32))
    with (
        open_checkpoint(path) as ckpt,  # the default checks them
        pytest.raises(ConversionError, match=r"model\.ckpt: block checksum"),
    ):
        ckpt.read("w")


def test_v1_unparseable_record(v1_ckpt: Path, tmp_path: Path) -> None:
    with open_checkpoint(v1_ckpt) as ckpt:
        part = ckpt._parts["w"][((0, 400_000),)]
    # w's record is the first entry of its block: 3 varints (shared key bytes = 0, key length,
    # value length), the key, then the value. Break the value's framing: its first field
    # (SavedTensorSlices.data, tag 0x12) gets a length far beyond the record.
    data = bytearray(v1_ckpt.read_bytes())
    pos = part.offset
    for _ in range(3):
        _, pos = tf_checkpoint._varint(data, pos)
    start = pos + len(part.key)
    assert data[pos:start] == part.key and data[start] == 0x12
    data[start + 1 : start + 4] = b"\xff\xff\x7f"
    path = corrupt_copy(v1_ckpt, tmp_path / "c", lambda _: data)
    with (
        open_checkpoint(path, verify=False) as ckpt,  # (with the check, the block's CRC fails first)
        pytest.raises(ConversionError, match=r"model\.ckpt: unparseable record of tensor 'w'"),
    ):
        ckpt.read("w")


def test_v1_unknown_name_and_repr(v1_ckpt: Path) -> None:
    with open_checkpoint(v1_ckpt) as ckpt:
        assert "V1" in repr(ckpt) and "nope" not in ckpt
        with pytest.raises(ConversionError, match=r"model\.ckpt: no tensor named 'nope'"):
            ckpt.read("nope")
