"""reproduce.predict: palette PNG masks + overlays, folders and files, CRF, palettes, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reproduce import predict
from reproduce.inference import InferenceConfig, load_model, run_image
from reproduce.palette import voc_palette
from reproduce.synthetic import image_from_label, random_label, save_jpeg


def _random_weights(path: Path, arch: str, preprocessing, seed: int) -> Path:
    """Random 21-class ``arch`` weights at ``path`` with a provenance JSON naming the architecture."""
    import json

    from converters.io import save_state_dict
    from reference_models import build_model

    torch.manual_seed(seed)
    save_state_dict(build_model(arch, num_classes=21).state_dict(), path)
    path.with_suffix(".json").write_text(json.dumps({"architecture": arch, "num_classes": 21,
                                                     "preprocessing": preprocessing.to_dict()}))
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """Random DeepLab v2 ResNet-101 weights with a provenance JSON naming the architecture."""
    from reference_models.preprocessing import CAFFE_DEEPLAB_V2

    return _random_weights(tmp_path_factory.mktemp("w") / "v2.pth", "deeplabv2_resnet101", CAFFE_DEEPLAB_V2, 1)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for name, size in (("a", (30, 44)), ("b", (41, 27))):
        save_jpeg(root / "folder" / f"{name}.jpg", image_from_label(rng, random_label(rng, *size, classes=[0, 8, 15])))
    Image.fromarray(rng.integers(0, 256, (25, 33, 3), dtype=np.uint8)).save(root / "c.png")
    (root / "folder" / "notes.txt").write_text("not an image")
    return root


def _args(weights: Path, out: Path, *extra: str) -> list[str]:
    # fp32 on the CPU: the masks are compared with plain fp32 CPU inference (auto picks bf16 on an AMX CPU, and
    # CUDA where there is one)
    return ["--weights", str(weights), "--out", str(out), "--crop-size", "65", "--precision", "fp32", "--device", "cpu",
            "--quiet", *extra]


def test_masks_and_overlays_for_a_folder_and_a_file(weights, images, tmp_path) -> None:
    out = tmp_path / "out"
    assert predict.main(_args(weights, out, str(images / "folder"), str(images / "c.png"))) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "a_overlay.jpg", "b.png", "b_overlay.jpg", "c.png",
                                                     "c_overlay.jpg"]
    lm = load_model(None, weights)
    for name, src in (("a", images / "folder" / "a.jpg"), ("c", images / "c.png")):
        mask = Image.open(out / f"{name}.png")
        assert mask.mode == "P"
        assert np.array_equal(np.asarray(mask.getpalette(), np.uint8).reshape(-1, 3)[:21], voc_palette()[:21])
        source = np.asarray(Image.open(src).convert("RGB"))
        expected = run_image(lm, source, InferenceConfig(protocol="pad", crop_size=65)).argmax(0).numpy()
        np.testing.assert_array_equal(np.asarray(mask), expected)  # index values, same inference as evaluate
        ov = Image.open(out / f"{name}_overlay.jpg")
        assert ov.size == mask.size == (source.shape[1], source.shape[0]) and ov.format == "JPEG"


def test_palettes_and_png_overlay(weights, images, tmp_path) -> None:
    out = tmp_path / "out"
    assert predict.main(_args(weights, out, str(images / "c.png"), "--palette", "cocostuff",
                              "--overlay-format", "png")) == 0
    assert (out / "c_overlay.png").is_file()
    pal = predict.palette("cocostuff")
    assert pal.shape == (256, 3) and len({tuple(c) for c in pal[:182]}) == 182
    assert np.array_equal(predict.palette("gray")[7], [7, 7, 7])


def test_overlay_blends() -> None:
    image = np.full((2, 2, 3), 100, np.uint8)
    label = np.array([[0, 1], [1, 0]])
    blend = predict.overlay(image, label, voc_palette(), alpha=0.5)
    assert blend[0, 0].tolist() == [50, 50, 50] and blend[0, 1].tolist() == [114, 50, 50]


def test_crf_option(weights, images, tmp_path) -> None:
    pytest.importorskip("pydensecrf.densecrf", reason="pydensecrf2 not installed (pip install -e .[crf])")
    from reproduce.crf import dense_crf

    out = tmp_path / "out"
    assert predict.main(_args(weights, out, str(images / "folder"), "--crf", "--crf-workers", "1")) == 0
    lm = load_model(None, weights)
    source = np.asarray(Image.open(images / "folder" / "b.jpg").convert("RGB"))
    probs = run_image(lm, source, InferenceConfig(protocol="pad", crop_size=65)).numpy()
    np.testing.assert_array_equal(np.asarray(Image.open(out / "b.png")), dense_crf(source, probs).argmax(0))


@pytest.mark.parametrize("what, message", [("missing", "no such image or folder"), ("empty", "no images"),
                                           ("weights", "weights file not found")])
def test_errors_are_one_line(weights, tmp_path, capsys, what, message) -> None:
    (tmp_path / "empty").mkdir()
    target = {"missing": tmp_path / "nope.jpg", "empty": tmp_path / "empty", "weights": tmp_path / "empty"}[what]
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "x.png")
    if what == "weights":
        weights, target = tmp_path / "none.pth", tmp_path / "x.png"
    assert predict.main(_args(weights, tmp_path / "out", str(target))) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


# ------------------------------------------------------------------------------ nothing lost, bad files, video
@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    """Random tiny DeepLab v3+ weights with a provenance JSON (fast enough for video tests)."""
    from reference_models.preprocessing import DEEPLAB_TF_UNIT_RANGE

    return _random_weights(tmp_path_factory.mktemp("tw") / "tiny.pth", "deeplabv3plus_tiny", DEEPLAB_TF_UNIT_RANGE, 2)


def _folder_with_truncated_jpeg(root: Path) -> Path:
    rng = np.random.default_rng(4)
    folder = root / "photos"
    for name in ("a", "c"):
        save_jpeg(folder / f"{name}.jpg", rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
    save_jpeg(folder / "b.jpg", rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
    data = (folder / "b.jpg").read_bytes()
    (folder / "b.jpg").write_bytes(data[: len(data) // 2])  # truncated
    return folder


def test_out_into_the_input_folder_is_refused_and_nothing_is_overwritten(tiny_weights, tmp_path, capsys) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.full((20, 20, 3), 7, np.uint8)).save(folder / "a.png")
    before = (folder / "a.png").read_bytes()
    assert predict.main(_args(tiny_weights, folder, str(folder))) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "input folder" in err
    # a file input whose mask would land on itself
    assert predict.main(_args(tiny_weights, folder, str(folder / "a.png"))) == 1
    err = capsys.readouterr().err
    assert "would overwrite the input" in err and err.count("\n") == 1
    # the same folder through another spelling (symlink / ..) is the same folder
    (tmp_path / "link").symlink_to(folder)
    assert predict.main(_args(tiny_weights, tmp_path / "link" / ".." / "in", str(tmp_path / "link"))) == 1
    assert (folder / "a.png").read_bytes() == before and sorted(p.name for p in folder.iterdir()) == ["a.png"]


def test_truncated_jpeg_is_a_one_line_error_or_skipped_and_counted(tiny_weights, tmp_path, capsys) -> None:
    folder = _folder_with_truncated_jpeg(tmp_path)
    out = tmp_path / "out"
    assert predict.main(_args(tiny_weights, out, str(folder))) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "b.jpg" in err and "decode" in err
    assert not (out / "b.png").exists()
    out2 = tmp_path / "out2"
    assert predict.main(_args(tiny_weights, out2, str(folder), "--on-error", "skip")) == 0
    err = capsys.readouterr().err
    assert "skipped 1 unreadable input" in err and "b.jpg" in err
    assert sorted(p.name for p in out2.iterdir()) == ["a.png", "a_overlay.jpg", "c.png", "c_overlay.jpg"]


def test_keras_weights_give_a_one_line_error_with_the_right_command(tmp_path, capsys) -> None:
    h5py = pytest.importorskip("h5py")
    weights = tmp_path / "deeplabv2_resnet101_msc_voc12.weights.h5"
    with h5py.File(weights, "w") as fh:
        fh["layers/conv/vars/0"] = np.zeros(3, np.float32)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "x.png")
    assert predict.main(["--weights", str(weights), "--model", "deeplabv2_resnet101", "--out",
                         str(tmp_path / "o"), "--quiet", str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Keras/HDF5 weights file" in err and "caffe2torch" in err
    assert "weights_only" not in err


def _write_video(path: Path, frames: int, fps: float, size: tuple[int, int]) -> None:
    import cv2

    w, h = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert writer.isOpened()
    for i in range(frames):
        frame = np.zeros((h, w, 3), np.uint8)
        frame[:, : (i * w) // frames + 1] = (40, 160, 220)  # a moving edge
        writer.write(frame)
    writer.release()


def _read_video(path: Path) -> tuple[int, float, tuple[int, int]]:
    import cv2

    cap = cv2.VideoCapture(str(path))
    fps, size = cap.get(cv2.CAP_PROP_FPS), (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                                             int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n, fps, size


def test_video_gives_an_overlay_video_with_every_frame(tiny_weights, tmp_path, capsys) -> None:
    pytest.importorskip("cv2")
    video = tmp_path / "clip.avi"
    _write_video(video, frames=24, fps=12.0, size=(64, 48))  # 2 seconds
    out = tmp_path / "out"
    assert predict.main(_args(tiny_weights, out, str(video), "--frame-masks")) == 0
    frames, fps, size = _read_video(out / "clip_overlay.mp4")
    assert (frames, fps, size) == (24, 12.0, (64, 48))
    masks = sorted((out / "clip").iterdir())
    assert len(masks) == 24 and masks[0].name == "frame_000000.png"
    assert Image.open(masks[5]).mode == "P" and Image.open(masks[5]).size == (64, 48)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_ctrl_c_keeps_a_finalized_video_of_the_frames_done(tiny_weights, tmp_path, monkeypatch, capsys) -> None:
    pytest.importorskip("cv2")
    from reproduce.inference import Segmenter

    video = tmp_path / "clip.avi"
    _write_video(video, frames=24, fps=12.0, size=(64, 48))
    real = Segmenter.predict
    calls = {"n": 0}

    def interrupted(self, image, config=None):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return real(self, image, config)

    monkeypatch.setattr(Segmenter, "predict", interrupted)
    out = tmp_path / "out"
    assert predict.main(_args(tiny_weights, out, str(video))) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and err.count("\n") == 1
    frames, fps, size = _read_video(out / "clip_overlay.mp4")
    assert (frames, fps, size) == (5, 12.0, (64, 48))


def test_camera_that_does_not_open_is_a_one_line_error(tiny_weights, tmp_path, capsys) -> None:
    pytest.importorskip("cv2")
    assert predict.main(_args(tiny_weights, tmp_path / "o", "--camera", "97")) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: camera 97") and err.count("\n") == 1


def test_help_works_without_docstrings() -> None:
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parent.parent
    for module in ("reproduce.predict", "reproduce.evaluate"):
        done = subprocess.run([sys.executable, "-OO", "-m", module, "--help"], capture_output=True, text=True,
                              cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)}, timeout=300)
        assert done.returncode == 0, done.stderr
        assert "--device" in done.stdout and "--models-dir" in done.stdout and "exit codes" in done.stdout
