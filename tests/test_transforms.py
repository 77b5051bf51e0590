"""Training transforms: pad bottom/right with the mean, crops, scales, flips, determinism, preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reference_models.preprocessing import CAFFE_DEEPLAB_V2, Preprocessing
from reproduce.transforms import TrainTransform, pad_bottom_right, pad_pixel_rgb, resize_pair

TF_UNIT = Preprocessing(channel_order="RGB", mean=(127.5, 127.5, 127.5), std=(127.5, 127.5, 127.5))


def _sample(h: int = 50, w: int = 70, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8), rng.integers(0, 21, (h, w), dtype=np.uint8)


def test_pad_pixel_is_the_mean_in_rgb():
    assert pad_pixel_rgb(CAFFE_DEEPLAB_V2) == (122.675, 116.669, 104.008)
    assert pad_pixel_rgb(TF_UNIT) == (127.5, 127.5, 127.5)


def test_pad_bottom_right_only():
    image, label = _sample(10, 12)
    img, lab = pad_bottom_right(image, label, (16, 15), (1.0, 2.0, 3.0))
    assert img.shape == (16, 15, 3) and lab.shape == (16, 15)
    np.testing.assert_array_equal(img[:10, :12], image)
    np.testing.assert_array_equal(lab[:10, :12], label)
    assert (lab[10:] == 255).all() and (lab[:, 12:] == 255).all()
    assert (img[10:] == [1.0, 2.0, 3.0]).all() and (img[:, 12:] == [1.0, 2.0, 3.0]).all()


@pytest.mark.parametrize("pre,resize", [(CAFFE_DEEPLAB_V2, "caffe"), (TF_UNIT, "tf")])
def test_padded_pixels_are_zero_after_preprocessing(pre, resize):
    image, label = _sample(20, 20)
    t = TrainTransform(pre, crop_size=64, scales=[1.0], flip=False, resize=resize)
    x, y = t(image, label, np.random.default_rng(0))
    assert x.shape == (3, 64, 64) and y.shape == (64, 64) and y.dtype == torch.int64
    pad = x[:, 20:, :]
    # Caffe pads its uint8 Mat with the rounded mean (|error| <= 0.5); TF pads the exact mean.
    assert pad.abs().max() <= (0.5 if resize == "caffe" else 1e-6)
    assert (y[20:, :] == 255).all() and (y[:, 20:] == 255).all()


def test_unpadded_content_matches_contract():
    image, label = _sample(80, 90)
    t = TrainTransform(CAFFE_DEEPLAB_V2, crop_size=(80, 90), scales=[1.0], flip=False)
    x, y = t(image, label, np.random.default_rng(0))
    torch.testing.assert_close(x, CAFFE_DEEPLAB_V2.apply(image)[0])
    assert torch.equal(y, torch.from_numpy(label.astype(np.int64)))


def test_crop_flip_are_consistent_between_image_and_label():
    # Image channel 0 encodes the label, so any misalignment shows.
    rng = np.random.default_rng(3)
    label = rng.integers(0, 21, (60, 77), dtype=np.uint8)
    image = np.repeat(label[..., None] * 10, 3, axis=2).astype(np.uint8)
    pre = Preprocessing(channel_order="RGB", mean=(0.0, 0.0, 0.0))
    t = TrainTransform(pre, crop_size=41, scales=[1.0], flip=True)
    for seed in range(20):
        x, y = t(image, label, np.random.default_rng(seed))
        assert torch.equal((x[0] / 10).round().long(), y)
    assert t.geometry(image, label, np.random.default_rng(1))[1].shape == (41, 41)


def test_flip_happens_about_half_the_time():
    image, label = _sample(8, 8)
    t = TrainTransform(Preprocessing(channel_order="RGB", mean=(0, 0, 0)), crop_size=8, scales=[1.0])
    flipped = sum(np.array_equal(t.geometry(image, label, np.random.default_rng(s))[1], label[:, ::-1])
                  for s in range(200))
    assert 70 < flipped < 130


def test_scales_from_list_and_range():
    t = TrainTransform(CAFFE_DEEPLAB_V2, crop_size=321, scales=[0.5, 0.75, 1.0, 1.25, 1.5])
    drawn = {t.draw_scale(np.random.default_rng(s)) for s in range(100)}
    assert drawn == {0.5, 0.75, 1.0, 1.25, 1.5}
    u = TrainTransform(TF_UNIT, crop_size=513, scale_range=(0.5, 2.0))
    vals = [u.draw_scale(np.random.default_rng(s)) for s in range(100)]
    assert 0.5 <= min(vals) and max(vals) <= 2.0 and len(set(vals)) == 100
    with pytest.raises(ValueError):
        TrainTransform(TF_UNIT, crop_size=513)


def test_resize_rules():
    image, label = _sample(50, 70)
    img, lab = resize_pair(image, label, 0.75, "caffe")
    assert lab.shape == (38, 52)  # OpenCV: round(50 * .75) = 38 (37.5 rounds up), round(52.5) = 52
    img, lab = resize_pair(image, label, 0.75, "tf")
    assert lab.shape == (37, 52)  # TF DeepLab: int(50 * .75) = 37
    # align_corners nearest keeps the corners
    assert lab[0, 0] == label[0, 0] and lab[-1, -1] == label[-1, -1]
    assert set(np.unique(lab)) <= set(np.unique(label))


def test_deterministic_given_the_generator():
    image, label = _sample(100, 120)
    t = TrainTransform(CAFFE_DEEPLAB_V2, crop_size=65, scales=[0.5, 0.75, 1.0, 1.25, 1.5])
    a = t(image, label, np.random.default_rng(7))
    b = t(image, label, np.random.default_rng(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
