"""Corrupt dataset files end in one DatasetError naming the file: no crash, hang or memory blow-up."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from reproduce import prepare, synthetic
from reproduce.datasets import matfile
from reproduce.datasets.base import DatasetError, read_image, read_index_png
from reproduce.datasets.cocostuff import read_cocostuff10k_mat
from reproduce.datasets.deepfashion2 import load_annotation, rasterize_annotation
from reproduce.datasets.voc import read_sbd_mat


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], 8
    while pos < len(data):
        n = int.from_bytes(data[pos:pos + 4], "big")
        out.append((data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]))
        pos += 12 + n
    return out


def _png(chunks: list[tuple[bytes, bytes]]) -> bytes:
    body = b"".join(len(d).to_bytes(4, "big") + t + d + zlib.crc32(t + d).to_bytes(4, "big") for t, d in chunks)
    return b"\x89PNG\r\n\x1a\n" + body


def test_palette_png_without_plte(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    synthetic.save_palette_png(path, np.arange(12, dtype=np.uint8).reshape(3, 4))
    chunks = _chunks(path.read_bytes())
    assert b"PLTE" in [t for t, _ in chunks]
    path.write_bytes(_png([(t, d) for t, d in chunks if t != b"PLTE"]))
    # the indices are the label; the palette only colours them
    np.testing.assert_array_equal(read_index_png(path), np.arange(12).reshape(3, 4))
    path.write_bytes(_png([(t, d[:5] if t == b"IDAT" else d) for t, d in chunks if t != b"PLTE"]))
    with pytest.raises(DatasetError, match=r"a\.png: cannot decode label") as exc:
        read_index_png(path)
    assert "\n" not in str(exc.value)


def test_deeply_nested_json(tmp_path: Path) -> None:
    path = tmp_path / "000001.json"
    path.write_text('{"item1": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(DatasetError, match=r"000001\.json: JSON nested 100001 levels deep"):
        load_annotation(path)
    path.write_text(json.dumps({"item1": {"category_id": 1, "segmentation": [[0, 0, 4, 0, 4, 4]]},
                                "note": "[[[[" * 50}))  # brackets inside strings do not count
    assert load_annotation(path)["item1"]["category_id"] == 1


@pytest.mark.parametrize("value", [-1e308, 1e308, 3e9, -2**31])
def test_far_out_polygon_coordinates_are_refused_fast(value: float) -> None:
    anno = {"item1": {"category_id": 2, "segmentation": [[0, 0, value, 5, 5, 9]]}}
    start = time.monotonic()
    with pytest.raises(DatasetError, match=r"a\.json: item1: polygon 0 has the point .* far outside the 12x10 image"):
        rasterize_annotation(anno, 10, 12, path="a.json")
    assert time.monotonic() - start < 1.0
    # points a little outside the image are clipped by the fill, as before
    anno = {"item1": {"category_id": 2, "segmentation": [[-3, -3, 14, -3, 14, 12, -3, 12]]}}
    assert (rasterize_annotation(anno, 10, 12) == 2).all()


def _good_sbd(path: Path) -> np.ndarray:
    seg = np.arange(20, dtype=np.uint8).reshape(4, 5)
    scipy.io.savemat(path, {"GTcls": {"Segmentation": seg}}, do_compression=True)
    return seg


@pytest.mark.parametrize("mutate,match", [
    (lambda b: b[: len(b) * 2 // 3], "cannot read MATLAB file"),
    (lambda b: b[:140] + bytes(x ^ 0x5A for x in b[140:]), "cannot read MATLAB file"),
])
def test_corrupt_mat_files(tmp_path: Path, mutate, match) -> None:
    path = tmp_path / "x.mat"
    _good_sbd(path)
    path.write_bytes(mutate(path.read_bytes()))
    for contained in (True, False):
        with pytest.raises(DatasetError, match=rf"x\.mat: {match}"):
            read_sbd_mat(path, contained=contained)
    with pytest.raises(DatasetError, match=rf"x\.mat: {match}|no variable 'S'"):
        read_cocostuff10k_mat(path)


def test_a_crash_of_the_mat_reader_is_reported_naming_the_file(tmp_path: Path) -> None:
    """The helper process dies (here: SIGSEGV while it waits on a FIFO); the caller gets one error, then goes on."""
    good = tmp_path / "good.mat"
    seg = _good_sbd(good)
    np.testing.assert_array_equal(read_sbd_mat(good), seg)  # starts the helper
    helper = matfile._HELPER.proc
    fifo = tmp_path / "stuck.mat"
    os.mkfifo(fifo)
    threading.Timer(1.0, lambda: helper.send_signal(signal.SIGSEGV)).start()
    with pytest.raises(DatasetError, match=r"stuck\.mat: scipy's MATLAB reader crashed on this file \(signal SIGSEGV\)"):
        read_sbd_mat(fifo)
    np.testing.assert_array_equal(read_sbd_mat(good), seg)  # a new helper takes over
    assert matfile._HELPER.proc is not helper


def test_a_hang_of_the_mat_reader_is_reported(tmp_path: Path) -> None:
    fifo = tmp_path / "hang.mat"
    os.mkfifo(fifo)
    with pytest.raises(matfile.MatProblem, match="did not finish within 1 s"):
        matfile.read_label("sbd", fifo, timeout=1.0)


def test_prepare_goes_on_past_bad_files_and_names_each(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tree = synthetic.write_voc_aug_sources(tmp_path)
    sbd_only = [i for i in tree.train_aug if i not in tree.voc_train][:2]
    bad = [tree.sbd_root / "dataset" / "cls" / f"{i}.mat" for i in sbd_only]
    bad[0].write_bytes(bad[0].read_bytes()[:150])
    bad[1].write_bytes(b"MATLAB 5.0" + b"\xff" * 200)
    args = ["voc_aug", "--voc-root", str(tree.voc_root), "--sbd-root", str(tree.sbd_root), "--no-progress"]
    assert prepare.main(args) == 1
    out = capsys.readouterr()
    errors = out.err.strip().splitlines()
    assert len(errors) == 2 and all(e.startswith("error: ") for e in errors)
    assert str(bad[0]) in errors[0] and str(bad[1]) in errors[1]
    masks = tree.voc_root / "SegmentationClassAug"
    assert sorted(p.stem for p in masks.glob("*.png")) == sorted(set(tree.train_aug) - set(sbd_only))
    assert not (tree.voc_root / "ImageSets" / "SegmentationAug" / "train_aug.txt").exists()
    assert f"wrote {len(tree.train_aug) - 2}, kept 0" in out.out


def test_png_chunk_declaring_more_than_the_file_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    synthetic.save_palette_png(path, np.arange(12, dtype=np.uint8).reshape(3, 4))
    data = bytearray(path.read_bytes())
    idat = data.index(b"IDAT") - 4
    data[idat : idat + 4] = (2**31 - 1).to_bytes(4, "big")  # PIL would read 2 GiB in one piece
    path.write_bytes(bytes(data))
    for read in (read_index_png, read_image):
        with pytest.raises(DatasetError, match=r"a\.png: PNG chunk 'IDAT' at byte \d+ declares 2147483647 bytes"):
            read(path)
