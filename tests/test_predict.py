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


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """Random DeepLab v2 ResNet-101 weights with a provenance JSON naming the architecture."""
    import json

    from converters.io import save_state_dict
    from reference_models import build_model
    from reference_models.preprocessing import CAFFE_DEEPLAB_V2

    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("w") / "v2.pth"
    save_state_dict(build_model("deeplabv2_resnet101", num_classes=21).state_dict(), path)
    path.with_suffix(".json").write_text(json.dumps({"architecture": "deeplabv2_resnet101", "num_classes": 21,
                                                     "preprocessing": CAFFE_DEEPLAB_V2.to_dict()}))
    return path


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
    return ["--weights", str(weights), "--out", str(out), "--crop-size", "65", "--quiet", *extra]


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
