"""The fuzz suite (tests/fuzzing.py): a fast subset here, >= 2,000 cases per format in the slow run;
plus the crashes it found, as plain regression tests."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from converters.errors import ConversionError
from converters.tf.reader import _snappy_decompress, open_checkpoint
from tests import fuzzing

FAST_CASES = int(os.environ.get("DEEPLAB_FUZZ_FAST_CASES", "25"))  # per format, in the default run
FULL_CASES = int(os.environ.get("DEEPLAB_FUZZ_CASES", "2000"))  # per format, in the slow run


def _check(report: fuzzing.FuzzReport, cases: int) -> None:
    print("\n" + report.table() + f"\n{report.seconds:.0f} s")
    for fmt, counts in report.counts.items():
        assert sum(counts.values()) == cases, fmt
        assert counts["error"] > 0, f"{fmt}: no mutant was refused; the mutators do not reach the reader"
    assert not report.failures, report.failures[:5]


def test_fuzz_fast_subset(tmp_path: Path) -> None:
    report = fuzzing.run([(fmt, 0, FAST_CASES) for fmt in fuzzing.FORMATS], tmp_path)
    _check(report, FAST_CASES)


@pytest.mark.slow
def test_fuzz_full(tmp_path: Path) -> None:
    """Every format, FULL_CASES cases each (seed 1: other cases than the fast subset's)."""
    report = fuzzing.run([(fmt, 0, FULL_CASES) for fmt in fuzzing.FORMATS], tmp_path, seed=1)
    _check(report, FULL_CASES)


# ------------------------------------------------------------------------------ the writer the seeds use
def test_seed_checkpoint_reads_back(tmp_path: Path) -> None:
    values = fuzzing.seed_tensors()
    prefix = fuzzing.write_v2_checkpoint(tmp_path / "model.ckpt", values)
    with open_checkpoint(prefix) as ckpt:
        assert ckpt.names() == sorted(values)
        for name, value in values.items():
            np.testing.assert_array_equal(ckpt.read(name), value)
    v1 = fuzzing.write_v1_checkpoint(tmp_path / "v1.ckpt", values)
    with open_checkpoint(v1) as ckpt:
        assert ckpt.format_version == 1 and ckpt.names() == sorted(values)
        for name, value in values.items():
            np.testing.assert_array_equal(ckpt.read(name), value)
    tf = pytest.importorskip("tensorflow")
    for path in (prefix, v1):
        reader = tf.train.load_checkpoint(str(path))
        for name, value in values.items():
            np.testing.assert_array_equal(reader.get_tensor(name), value)


# ------------------------------------------------------------------------------ what the fuzzer found
def _rewrite_entry(prefix: Path, name: bytes, change) -> None:
    from converters.tf.reader import _table_entries

    header_cls, entry_cls = fuzzing.bundle_messages()
    index = Path(f"{prefix}.index")
    entries = []
    for key, value in _table_entries(index.read_bytes()):
        if key == name:
            msg = (header_cls if key == b"" else entry_cls).FromString(value)
            change(msg)
            value = msg.SerializeToString()
        entries.append((key, value))
    index.write_bytes(fuzzing.sstable(entries))


@pytest.mark.parametrize("name,change,match", [
    (b"", lambda h: setattr(h, "num_shards", 2**31 - 1), "bad shard count 2147483647"),
    (b"a/biases", lambda e: setattr(e, "size", -1), "'a/biases' declares a negative offset, size or shard"),
    (b"a/biases", lambda e: setattr(e, "size", 2**62), "'a/biases': the index declares 4611686018427387904 bytes"),
    (b"a/weights", lambda e: e.shape.dim.add(size=2**40), r"'a/weights': the index declares 1152 bytes, its shape"),
    (b"a/weights", lambda e: setattr(e, "dtype", 2), "'a/weights': the index declares 1152 bytes, .* float64"),
    (b"a/biases", lambda e: setattr(e, "shard_id", 3), "tensor 'a/biases' refers to shard 3 of 1"),
    (b"a/biases", lambda e: setattr(e, "offset", 2**40), "data shard truncated"),
])
def test_declared_sizes_checked_before_allocating(tmp_path: Path, name, change, match) -> None:
    prefix = fuzzing.write_v2_checkpoint(tmp_path / "model.ckpt", fuzzing.seed_tensors())
    _rewrite_entry(prefix, name, change)
    with pytest.raises(ConversionError, match=match) as exc:
        with open_checkpoint(prefix) as ckpt:
            for n in ckpt.names():
                ckpt.read(n)
    assert "\n" not in str(exc.value)


def _empty_with_dims(dims: list[int], dtype: int | None = None):
    """A BundleEntryProto change: no bytes (size 0, the CRC of nothing), a shape of ``dims``."""
    def change(e) -> None:
        del e.shape.dim[:]
        for d in dims:
            e.shape.dim.add(size=d)
        e.size, e.crc32c = 0, fuzzing._mask_crc(0)
        if dtype is not None:
            e.dtype = dtype
    return change


@pytest.mark.parametrize("dims,dtype", [
    ([0, 2**62], None),  # numpy: "array is too big"
    ([0, 2**61, 8], None),
    ([3, 2**62, 0, 2**40, 2**31], None),  # numpy: "cannot reshape array of size 0" (the product wraps)
    ([2**31, 2**31, 2**31, 2**31, 0], 14),  # bfloat16
    ([0, 2**62], 7),  # strings
])
def test_empty_tensor_with_huge_dimensions(tmp_path: Path, dims, dtype) -> None:
    """A tensor with a zero dimension holds no bytes whatever its other dimensions declare; the shape
    itself must still be one an array can take (the fuzzer found numpy's ValueError escaping read())."""
    prefix = fuzzing.write_v2_checkpoint(tmp_path / "model.ckpt", fuzzing.seed_tensors())
    _rewrite_entry(prefix, b"a/biases", _empty_with_dims(dims, dtype))
    with pytest.raises(ConversionError, match=r"model\.ckpt\.index: tensor 'a/biases' declares the shape .* more than "
                       r"576460752303423488 elements") as exc:
        with open_checkpoint(prefix) as ckpt:
            for n in ckpt.names():
                ckpt.read(n)
    assert "\n" not in str(exc.value)


def test_string_tensor_declaring_fewer_bytes_than_strings(tmp_path: Path) -> None:
    prefix = fuzzing.write_v2_checkpoint(tmp_path / "model.ckpt", fuzzing.seed_tensors())
    _rewrite_entry(prefix, b"a/biases", lambda e: (setattr(e, "dtype", 7), e.shape.dim[0].__setattr__("size", 2**40)))
    with pytest.raises(ConversionError, match=r"'a/biases': the index declares 32 bytes, too few for the "
                       r"1099511627776 strings"):
        open_checkpoint(prefix)


@pytest.mark.parametrize("dims", [[0, 2**62], [2**40, 0, 3, 2**40]])
def test_v1_empty_tensor_with_huge_dimensions(tmp_path: Path, dims) -> None:
    """The same in a V1 file: the table of contents declares ``dims`` and the record holds no values."""
    from converters.tf.reader import _table_entries

    path = fuzzing.write_v1_checkpoint(tmp_path / "v1.ckpt", fuzzing.seed_tensors())
    path.write_bytes(fuzzing._tf_v1_emptied(list(_table_entries(path.read_bytes())), "a/biases", dims))
    with pytest.raises(ConversionError, match=r"v1\.ckpt: tensor 'a/biases' declares the shape .* more than") as exc:
        with open_checkpoint(path) as ckpt:
            for n in ckpt.names():
                ckpt.read(n)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("block", [
    bytes([13, 0x0C]) + b"abcd" + bytes([0x11]),  # a copy whose offset byte is missing
    bytes([13, 0xF4]) + b"ab",  # a long literal whose length bytes are missing
    bytes([0xFF, 0xFF, 0xFF, 0xFF, 0x0F, 0x00]) + b"a",  # declares 4 GiB out of a few bytes
    bytes([5, 0x0C]) + b"abcd" + bytes([0x11, 0x04, 0x00]),  # writes past the declared length
])
def test_corrupt_snappy_blocks(block: bytes) -> None:
    from converters.tf.reader import _Corrupt

    with pytest.raises(_Corrupt):
        _snappy_decompress(block)


@pytest.mark.parametrize("text,match", [
    ("name: a\x0eb\n", r"not valid YAML \(unacceptable character #x000e"),  # PyYAML refuses it before parsing
    ('base: "other.yaml\\0"\n', r"base must be a file name"),  # a NUL in a path: os.path raises ValueError
    ("base: ''\n", r"base must be a file name"),
])
def test_config_reader_found(tmp_path: Path, text: str, match: str) -> None:
    from reproduce.training.config import ConfigError, load_config

    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"^{path}: {match}") as exc:
        load_config(path)
    assert "\n" not in str(exc.value)
