"""converters.tf_checkpoint against checkpoints TensorFlow itself writes.

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

from converters import tf_checkpoint
from converters.errors import ConversionError
from converters.tf_checkpoint import crc32c, open_checkpoint


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
    assert crc32c(data) == bytewise  # numpy lanes + zero-shift chaining == plain loop


def test_snappy_decoder() -> None:
    # varint length 13 | literal "abcd" | copy len 8 offset 4 (overlapping) | literal "X"
    block = bytes([13, 0x0C]) + b"abcd" + bytes([0x11, 0x04, 0x00]) + b"X"
    assert tf_checkpoint._snappy_decompress(block) == b"abcdabcdabcdX"
    with pytest.raises(tf_checkpoint._Corrupt):
        tf_checkpoint._snappy_decompress(bytes([5, 0x11, 0x04]))  # copy before any output


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


def test_corrupt_tensor_bytes_caught_only_with_verify(small_ckpt: Path, tmp_path: Path) -> None:
    prefix = copy_checkpoint(small_ckpt, tmp_path / "c")
    with open_checkpoint(prefix) as ckpt:
        name = "v0/.ATTRIBUTES/VARIABLE_VALUE"
        entry = ckpt._entries[name]
        assert not entry.slices
    shard = Path(f"{prefix}.data-{entry.shard:05d}-of-{ckpt._num_shards:05d}")
    data = bytearray(shard.read_bytes())
    data[entry.offset + 7] ^= 0x40
    shard.write_bytes(bytes(data))
    with open_checkpoint(prefix) as ckpt:
        assert not np.array_equal(ckpt.read(name), np.full((100,), 0, np.float32))  # default: no CRC check
    with open_checkpoint(prefix, verify=True) as ckpt, pytest.raises(ConversionError, match="CRC-32C mismatch"):
        ckpt.read(name)


def test_v1_checkpoint_is_reported(tf, tmp_path: Path) -> None:
    v1 = tf.compat.v1
    with tf.Graph().as_default():
        v1.get_variable("w", initializer=np.zeros(3, np.float32))
        saver = v1.train.Saver(write_version=v1.train.SaverDef.V1)
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            prefix = saver.save(sess, str(tmp_path / "model.ckpt"), write_meta_graph=False)
    with pytest.raises(ConversionError, match=r"model\.ckpt: V1 \(TensorSliceWriter\) checkpoint"):
        open_checkpoint(prefix)


def test_index_suffix_accepted_and_close_is_idempotent(small_ckpt: Path) -> None:
    ckpt = open_checkpoint(str(small_ckpt) + ".index")
    ckpt.read(ckpt.names()[1])
    ckpt.close()
    ckpt.close()
    assert ckpt.shape(ckpt.names()[1]) == (100,)
