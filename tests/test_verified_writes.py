"""Writes that are verified before they are named (converters/io.py): unique temporaries, a read-back check,
and on a full disk exit 1 with one line naming the file, nothing under its name and no temporary left.

The full disk is a file-size limit (``RLIMIT_FSIZE``) in a subprocess with ``SIGXFSZ`` ignored, so a write
past the limit fails with EFBIG the way a write to a full disk fails with ENOSPC; Pillow's JPEG encoder and
``cv2.VideoWriter`` report neither (they leave a truncated file), which is what the read-back catches.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from converters.errors import OutputError
from converters.io import StagedFile, atomic_path, save_image, save_state_dict, write_json_atomic
from tests.conftest import REPO

_LIMITED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing the process
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
import importlib
main = getattr(importlib.import_module(sys.argv[2]), sys.argv[3])
sys.exit(main(sys.argv[4:]))
"""


def run_limited(limit: int, module: str, func: str, *args: str | Path, tmp: Path) -> subprocess.CompletedProcess:
    """``module.func(args)`` in a fresh interpreter whose files may not grow beyond ``limit`` bytes."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1",
           "DEEPLAB_PROBE_CACHE": str(tmp / "probe-cache")}
    return subprocess.run([sys.executable, "-c", _LIMITED, str(limit), module, func, *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=600)


def assert_failed_write(done: subprocess.CompletedProcess, target: Path) -> None:
    """Exit 1, one ``error:`` line naming ``target``, nothing under its name, no temporary beside it."""
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr[-2000:]
    assert str(target) in done.stderr and "could not be written" in done.stderr, done.stderr
    assert not target.exists()
    assert not [p.name for p in target.parent.iterdir() if p.name.startswith(f".{target.name}.")]


# ------------------------------------------------------------------------------ predict: JPEG, PNG, mp4
@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    from reference_models.preprocessing import DEEPLAB_TF_UNIT_RANGE
    from tests.test_predict import _random_weights

    return _random_weights(tmp_path_factory.mktemp("tw") / "tiny.pth", "deeplabv3plus_tiny", DEEPLAB_TF_UNIT_RANGE, 2)


def _predict_args(weights: Path, out: Path, *inputs: Path | str) -> list[str]:
    return ["--weights", str(weights), "--out", str(out), "--crop-size", "65", "--precision", "fp32", "--quiet",
            *map(str, inputs)]


def test_full_disk_during_the_jpeg_overlay(tiny_weights, tmp_path) -> None:
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(photo)
    out = tmp_path / "out"
    done = run_limited(6000, "reproduce.predict", "main", *_predict_args(tiny_weights, out, photo), tmp=tmp_path)
    # the mask (a few hundred bytes) fits; the noise JPEG (~20 KB) is cut short and Pillow says nothing
    assert_failed_write(done, out / "photo_overlay.jpg")


def test_full_disk_during_the_png_mask(tiny_weights, tmp_path) -> None:
    photo = tmp_path / "photo.png"
    Image.fromarray(np.full((40, 50, 3), 90, np.uint8)).save(photo)
    out = tmp_path / "out"
    done = run_limited(300, "reproduce.predict", "main", *_predict_args(tiny_weights, out, photo), tmp=tmp_path)
    assert_failed_write(done, out / "photo.png")  # a palette PNG holds 768 bytes of palette alone


def test_full_disk_during_the_video(tiny_weights, tmp_path) -> None:
    cv2 = pytest.importorskip("cv2")
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 12.0, (64, 48))
    rng = np.random.default_rng(2)
    for _ in range(24):  # noise: the overlay video is far beyond the limit
        writer.write(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    writer.release()
    out = tmp_path / "out"
    done = run_limited(4000, "reproduce.predict", "main", *_predict_args(tiny_weights, out, video), tmp=tmp_path)
    assert_failed_write(done, out / "clip_overlay.mp4")  # cv2.VideoWriter wrote 4000 bytes and said nothing


# ------------------------------------------------------------------------------ a conversion, a JSON write
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_full_disk_during_a_weights_conversion(caffemodels, tmp_path, suffix) -> None:
    _, caffemodel = caffemodels("vgg16_largefov")
    out = tmp_path / "conv" / f"w{suffix}"
    out.parent.mkdir()
    done = run_limited(1 << 20, "converters.caffe2torch", "main", "--caffemodel", caffemodel,
                       "--arch", "deeplabv2_vgg16_largefov", "--out", out, "--quiet", tmp=tmp_path)
    assert_failed_write(done, out)
    assert sorted(out.parent.iterdir()) == []  # no provenance JSON either


def _write_big_json(argv: list[str]) -> int:
    """A command that writes one JSON file (no checkpoint involved), through the CLI contract."""
    import argparse

    from converters.cli import run_main

    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    return run_main(parser, lambda a: write_json_atomic(a.out, {"rows": list(range(5000))}), argv)


def test_full_disk_during_a_json_write(tmp_path) -> None:
    out = tmp_path / "result.json"
    done = run_limited(4096, "tests.test_verified_writes", "_write_big_json", out, tmp=tmp_path)
    assert_failed_write(done, out)
    done = run_limited(1 << 20, "tests.test_verified_writes", "_write_big_json", out, tmp=tmp_path)
    assert done.returncode == 0 and json.loads(out.read_text())["rows"][-1] == 4999


# ------------------------------------------------------------------------------ the mechanism, in process
def test_temporaries_are_unique_and_keep_a_suffix(tmp_path) -> None:
    target = tmp_path / "clip_overlay.mp4"
    a, b = StagedFile(target, suffix=".tmp.mp4"), StagedFile(target, suffix=".tmp.mp4")
    assert a.path != b.path and a.path.name.endswith(".tmp.mp4") and a.path.name.startswith(".clip_overlay.mp4.")
    a.path.write_bytes(b"first")
    b.path.write_bytes(b"second")
    a.commit()
    assert target.read_bytes() == b"first" and b.path.read_bytes() == b"second"  # the second run's file is intact
    b.commit()
    assert target.read_bytes() == b"second" and sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_a_short_or_empty_write_is_refused(tmp_path) -> None:
    target = tmp_path / "x.txt"
    with pytest.raises(OutputError, match="3 of 5 bytes"), atomic_path(target, size=5) as tmp:
        tmp.write_bytes(b"abc")
    with pytest.raises(OutputError, match="empty"), atomic_path(target):
        pass
    with pytest.raises(OutputError, match=r"x\.txt: could not be written \(File too large\)$"), \
            atomic_path(target) as tmp:
        raise OSError(27, "File too large", str(tmp))  # the temporary's name is not shown, the target's is
    with pytest.raises(OutputError, match=r"x\.txt: could not be written \(.*Input/output error: '/src/a.bin'\)"), \
            atomic_path(target):
        raise OSError(5, "Input/output error", "/src/a.bin")  # another file's error keeps its name
    assert list(tmp_path.iterdir()) == []


def test_a_jpeg_cut_short_without_an_error_is_caught_by_the_decode(tmp_path, monkeypatch) -> None:
    """What Pillow does on a full disk: its JPEG encoder ignores the short write and returns normally."""
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    real_save = Image.Image.save

    def short_save(self, fp, format=None, **params):
        real_save(self, fp, format=format, **params)
        data = Path(fp).read_bytes()
        Path(fp).write_bytes(data[: len(data) // 3])

    monkeypatch.setattr(Image.Image, "save", short_save)
    with pytest.raises(OutputError, match="does not decode back"):
        save_image(tmp_path / "o.jpg", image, "JPEG")
    assert list(tmp_path.iterdir()) == []


def test_a_png_decoding_to_other_pixels_is_refused(tmp_path, monkeypatch) -> None:
    image = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8), mode="L")
    real_save = Image.Image.save
    monkeypatch.setattr(Image.Image, "save", lambda self, fp, format=None, **kw: real_save(
        Image.fromarray(np.zeros((8, 8), np.uint8), mode="L"), fp, format=format))
    with pytest.raises(OutputError, match="another image"):
        save_image(tmp_path / "m.png", image, "PNG")
    monkeypatch.setattr(Image.Image, "save", real_save)
    save_image(tmp_path / "m.png", image, "PNG")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "m.png")), np.asarray(image))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_truncated_weights_file_is_refused_before_it_is_named(tmp_path, monkeypatch, suffix) -> None:
    """A writer that returned normally but left a short file (what a silent short write looks like)."""
    import torch

    import converters.io

    name = "check_pth_file" if suffix == ".pth" else "check_safetensors_file"
    check = getattr(converters.io, name)

    def cut_then_check(p: Path) -> None:
        p.write_bytes(p.read_bytes()[:-10])
        check(p)

    monkeypatch.setattr(converters.io, name, cut_then_check)
    with pytest.raises(OutputError, match="could not be written"):
        save_state_dict({"a": torch.arange(100.0)}, tmp_path / f"w{suffix}")
    assert list(tmp_path.iterdir()) == []
