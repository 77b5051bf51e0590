"""One image decoder for predict, evaluation and training (reproduce.datasets.read_image): images as the user
sees them (EXIF orientation), 16-bit and float images scaled or refused in one line, other modes to RGB."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reproduce.datasets import DatasetError, read_image
from reproduce.datasets.base import SampleRef, SegmentationDataset

ORIENTATION = 0x0112


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return exif


def _stored() -> np.ndarray:
    """A 20x30 (HxW) image whose corners differ, so each turn and flip is told apart."""
    a = np.zeros((20, 30, 3), np.uint8)
    a[:10, :15] = (250, 0, 0)
    a[:10, 15:] = (0, 250, 0)
    a[10:, :15] = (0, 0, 250)
    a[10:, 15:] = (250, 250, 250)
    return a


# the stored pixels -> what a viewer shows, per EXIF orientation (TIFF/EXIF 2.3, table 4.6.4-A)
VIEWED = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: np.transpose(a, (1, 0, 2)),
    6: lambda a: np.rot90(a, -1),  # the phone was held upright: turn 90 degrees clockwise
    7: lambda a: np.transpose(a[::-1, ::-1], (1, 0, 2)),  # transverse: across the other diagonal
    8: lambda a: np.rot90(a, 1),
}


@pytest.mark.parametrize("orientation", sorted(VIEWED))
def test_exif_orientation_is_applied_as_viewers_do(tmp_path, orientation) -> None:
    path = tmp_path / "photo.png"  # lossless, so the pixels compare exactly
    Image.fromarray(_stored()).save(path, exif=_exif(orientation))
    np.testing.assert_array_equal(read_image(path), VIEWED[orientation](_stored()))
    np.testing.assert_array_equal(read_image(path, exif=False), _stored())


def test_a_portrait_phone_jpeg_is_upright_and_odd_orientations_are_ignored(tmp_path) -> None:
    path = tmp_path / "phone.jpg"
    Image.fromarray(_stored()).save(path, quality=95, exif=_exif(6))
    assert read_image(path).shape == (30, 20, 3) and read_image(path, exif=False).shape == (20, 30, 3)
    for value in (0, 9, 65535):  # not an orientation: the stored pixels, as viewers show them
        Image.fromarray(_stored()).save(path, quality=95, exif=_exif(value))
        assert read_image(path).shape == (20, 30, 3)


def test_16_bit_images_are_scaled_not_clipped(tmp_path) -> None:
    values = np.array([[0, 257, 32896, 65535]], np.uint16)
    for suffix in (".png", ".tif"):
        path = tmp_path / f"deep{suffix}"
        Image.fromarray(values).save(path)
        assert Image.open(path).mode.startswith("I;16")
        np.testing.assert_array_equal(read_image(path)[0, :, 0], [0, 1, 128, 255])
    ppm = tmp_path / "deep.pgm"  # Pillow opens 16-bit PGM as mode "I"
    Image.fromarray(values).save(ppm)
    assert Image.open(ppm).mode == "I"
    np.testing.assert_array_equal(read_image(ppm)[0, :, 1], [0, 1, 128, 255])


def test_32_bit_integers_beyond_16_bits_are_refused_in_one_line(tmp_path) -> None:
    path = tmp_path / "wide.tif"
    Image.fromarray(np.array([[0, 70000]], np.int32)).save(path)
    with pytest.raises(DatasetError, match=r"wide\.tif: I integer image with values in \[0, 70000\]") as e:
        read_image(path)
    assert "\n" not in str(e.value)


def test_float_images_in_0_1_are_scaled_others_refused(tmp_path) -> None:
    path = tmp_path / "f.tif"
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32)).save(path)
    assert Image.open(path).mode == "F"
    np.testing.assert_array_equal(read_image(path)[0, :, 2], [0, 128, 255])
    for bad, shown in (([0.0, 2.0], r"\[0, 2\]"), ([-1.0, 0.5], r"\[-1, 0\.5\]"), ([np.nan, 0.5], r"\[nan")):
        Image.fromarray(np.array([bad], np.float32)).save(path)
        with pytest.raises(DatasetError, match=rf"f\.tif: float image with values in {shown}"):
            read_image(path)


def test_palette_la_and_cmyk_become_rgb(tmp_path) -> None:
    pal = Image.fromarray(np.array([[0, 1]], np.uint8), mode="P")
    pal.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    pal.info["transparency"] = 1
    pal.save(tmp_path / "p.png", transparency=1)
    np.testing.assert_array_equal(read_image(tmp_path / "p.png")[0], [[10, 20, 30], [200, 100, 50]])
    Image.fromarray(np.array([[[40, 0], [90, 255]]], np.uint8), mode="LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(read_image(tmp_path / "la.png")[0], [[40] * 3, [90] * 3])
    Image.new("CMYK", (4, 3), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=100)
    rgb = read_image(tmp_path / "c.jpg")
    assert rgb.shape == (3, 4, 3) and rgb.dtype == np.uint8 and rgb[0, 0, 0] > 240 and rgb[0, 0, 1:].max() < 15


def test_a_dataset_image_turned_by_exif_with_an_unturned_label_is_a_size_mismatch(tmp_path) -> None:
    """Labels are index masks, never rotated: the mismatch the turn creates is one line, as any mismatch."""
    image, label = tmp_path / "a.jpg", tmp_path / "a.png"
    Image.fromarray(_stored()).save(image, exif=_exif(6))
    Image.fromarray(np.zeros((20, 30), np.uint8), mode="L").save(label)
    ds = SegmentationDataset([SampleRef("a", image, label)], split="x", num_classes=2)
    with pytest.raises(DatasetError, match=r"a\.png: label size 30x20 \(WxH\) != image size 20x30 of a\.jpg "
                       r"\(the image is turned upright by its EXIF orientation") as e:
        ds.load(0)
    assert "\n" not in str(e.value)
    Image.fromarray(np.zeros((30, 20), np.uint8), mode="L").save(label)  # drawn on the upright photo
    assert ds.load(0)[0].shape == (30, 20, 3)


def test_benchmark_readers_keep_the_stored_pixels_their_labels_were_drawn_on(tmp_path) -> None:
    """VOC, SBD, COCO-Stuff and DeepFashion2 labels (and the published numbers) are on the stored pixels."""
    from reproduce.datasets import CocoStuff10k, CocoStuff164k, DeepFashion2, SBDSegmentation, VOCSegmentation
    from reproduce.datasets.folder import FolderSegmentation

    assert not any(c.exif for c in (VOCSegmentation, SBDSegmentation, CocoStuff10k, CocoStuff164k, DeepFashion2))
    assert FolderSegmentation.exif and SegmentationDataset.exif
    image, label = tmp_path / "a.jpg", tmp_path / "a.png"
    Image.fromarray(_stored()).save(image, exif=_exif(6))
    Image.fromarray(np.zeros((20, 30), np.uint8), mode="L").save(label)

    class Stored(SegmentationDataset):
        exif = False

    assert Stored([SampleRef("a", image, label)], split="x", num_classes=2).load(0)[0].shape == (20, 30, 3)


def test_predict_masks_match_the_upright_photo(tmp_path) -> None:
    from reference_models.preprocessing import DEEPLAB_TF_UNIT_RANGE
    from reproduce import predict
    from tests.test_predict import _random_weights

    weights = _random_weights(tmp_path / "tiny.pth", "deeplabv3plus_tiny", DEEPLAB_TF_UNIT_RANGE, 2)
    photo = tmp_path / "in" / "phone.jpg"
    photo.parent.mkdir()
    Image.fromarray(_stored()).save(photo, exif=_exif(6))
    base = ["--weights", str(weights), "--crop-size", "65", "--precision", "fp32", "--quiet", str(photo)]
    assert predict.main([*base, "--out", str(tmp_path / "up")]) == 0
    assert Image.open(tmp_path / "up" / "phone.png").size == (20, 30)
    assert Image.open(tmp_path / "up" / "phone_overlay.jpg").size == (20, 30)
    assert predict.main([*base, "--out", str(tmp_path / "raw"), "--ignore-exif"]) == 0
    assert Image.open(tmp_path / "raw" / "phone.png").size == (30, 20)


def test_the_decompression_bomb_guard_is_kept(tmp_path, monkeypatch) -> None:
    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 pixels is more than twice the limit
    with pytest.raises(DatasetError, match=r"big\.png: cannot decode image \(DecompressionBombError"):
        read_image(Path(path))
