"""The losses for imbalanced data (reproduce/pixel_losses.py), each against an independent implementation.

* class weights and label smoothing: ``torch.nn.functional.cross_entropy(weight=, label_smoothing=)``;
* focal loss (and everything combined): a numpy formula;
* hard-pixel mining and its schedule: TensorFlow running DeepLab-TF's
  ``add_softmax_cross_entropy_loss_for_each_scale`` formula (loss and gradient);
* ``auto`` class weights: the documented rule; the config keys: unknown or mistyped values refused.
The one-step PyTorch/Keras equivalence of these losses is in tests/test_train_keras.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reproduce.pixel_losses import (
    ConfiguredLoss,
    LossOptions,
    auto_class_weights,
    label_histogram,
    mining_fraction,
    top_k_count,
)
from reproduce.training import ConfigError, apply_overrides, build_criterion, load_config
from tests.test_train import REPO

TINY = REPO / "reproduce" / "configs" / "deeplabv3plus_tiny-shapes-64.yaml"
C = 5


def _batch(seed: int = 0, n: int = 2, h: int = 9, w: int = 11):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, C, h, w, generator=g) * 3
    labels = torch.randint(0, C, (n, h, w), generator=g)
    labels[:, :2, :3] = 255
    return logits, labels


def _loss(options: LossOptions, normalization: str = "pixels") -> ConfiguredLoss:
    return ConfiguredLoss("upsample", num_classes=C, normalization=normalization, options=options)


def _value(loss: ConfiguredLoss, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    t = loss.targets(labels)
    return loss(logits, t)["out"] / loss.denominators(t)["out"]


def _numpy_loss(logits, labels, *, weights=None, alpha=None, gamma=0.0, eps=0.0, ignore=255) -> float:
    """Mean over valid pixels of w_y * a_y * (1 - p_y)^gamma * CE(smoothed target, p), in float64."""
    z = logits.double().numpy().transpose(0, 2, 3, 1).reshape(-1, C)
    y = labels.numpy().reshape(-1)
    keep = y != ignore
    z, y = z[keep], y[keep]
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    q = np.full_like(logp, eps / C)
    q[np.arange(len(y)), y] += 1 - eps
    ce = -(q * logp).sum(axis=1)
    p_y = np.exp(logp[np.arange(len(y)), y])
    factor = np.ones(C) if weights is None else np.asarray(weights, float)
    if alpha is not None:
        factor = factor * np.asarray(alpha, float)
    return float((factor[y] * (1 - p_y) ** gamma * ce).sum() / len(y))


def test_plain_options_compute_exactly_the_existing_loss():
    from reproduce.losses import SegmentationLoss

    logits, labels = _batch()
    for norm in ("pixels", "per_image"):
        ref = SegmentationLoss("upsample", num_classes=C, normalization=norm)
        ours = _loss(LossOptions(), norm)
        assert torch.equal(ours(logits, ours.targets(labels))["out"], ref(logits, ref.targets(labels))["out"])


def test_class_weights_match_torch_cross_entropy_weight():
    logits, labels = _batch(1)
    w = [0.5, 2.0, 1.0, 3.0, 0.25]
    got = _value(_loss(LossOptions(class_weights=tuple(w))), logits, labels)
    valid = int((labels != 255).sum())
    ref = F.cross_entropy(logits, labels, weight=torch.tensor(w), ignore_index=255, reduction="sum") / valid
    torch.testing.assert_close(got.float(), ref, rtol=1e-5, atol=1e-6)
    # per_image: each image's weighted sum over its own valid pixels
    got = _value(_loss(LossOptions(class_weights=tuple(w)), "per_image"), logits, labels)
    ref = sum(F.cross_entropy(logits[i:i + 1], labels[i:i + 1], weight=torch.tensor(w), ignore_index=255,
                              reduction="sum") / int((labels[i] != 255).sum()) for i in range(2)) / 2
    torch.testing.assert_close(got.float(), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_label_smoothing_matches_torch(eps):
    logits, labels = _batch(2)
    got = _value(_loss(LossOptions(label_smoothing=eps)), logits, labels)
    ref = F.cross_entropy(logits, labels, ignore_index=255, label_smoothing=eps)
    torch.testing.assert_close(got.float(), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("gamma,alpha", [(2.0, None), (0.5, 0.25), (1.0, (0.1, 0.2, 0.3, 0.4, 0.5))])
def test_focal_loss_matches_numpy_formula(gamma, alpha):
    logits, labels = _batch(3)
    got = _value(_loss(LossOptions(focal_gamma=gamma, focal_alpha=alpha)), logits, labels)
    assert abs(float(got) - _numpy_loss(logits, labels, gamma=gamma, alpha=alpha)) < 1e-5 * abs(float(got))
    # gamma 0, no alpha: plain cross-entropy; the focal factor down-weights easy pixels
    plain = F.cross_entropy(logits, labels, ignore_index=255)
    assert float(got) < float(plain)


def test_all_options_together_match_numpy_formula_and_gradients_are_finite():
    logits, labels = _batch(4)
    logits.requires_grad_(True)
    opts = LossOptions(class_weights=(1.0, 2.0, 0.5, 1.5, 3.0), focal_gamma=2.0, focal_alpha=0.5, label_smoothing=0.1)
    got = _value(_loss(opts), logits, labels)
    ref = _numpy_loss(logits.detach(), labels, weights=opts.class_weights, alpha=0.5, gamma=2.0, eps=0.1)
    assert abs(float(got.detach()) - ref) < 1e-5 * ref
    got.backward()
    assert torch.isfinite(logits.grad).all()
    # a saturated pixel (p_y == 1 in float32) keeps a finite gradient with gamma < 1
    sat = torch.tensor([[[[200.0]], [[0.0]]]], requires_grad=True)
    loss = ConfiguredLoss("upsample", num_classes=2, normalization="pixels", options=LossOptions(focal_gamma=0.5))
    _value(loss, sat, torch.zeros(1, 1, 1, dtype=torch.int64)).backward()
    assert torch.isfinite(sat.grad).all()


# ============================================================================ hard-pixel mining vs DeepLab-TF
def _deeplab_tf_loss(tf, logits_nchw, labels, *, num_classes, top_k, mining_step, global_step, loss_weight=1.0):
    """DeepLab-TF's formula (research/deeplab/utils/train_utils.py, upsample_logits with logits already at label
    size), written with TF ops in TF2 eager mode; returns (loss, d loss / d logits in NCHW)."""
    logits = tf.Variable(np.ascontiguousarray(logits_nchw.numpy().transpose(0, 2, 3, 1)))
    scaled = tf.reshape(tf.constant(labels.numpy()), [-1])
    # utils.get_label_weight_mask: 0 for the ignore label, the class's weight otherwise
    if isinstance(loss_weight, float):
        weights = tf.cast(tf.not_equal(scaled, 255), tf.float32) * loss_weight
    else:
        table = tf.constant(list(loss_weight) + [0.0] * (256 - num_classes), tf.float32)
        weights = tf.gather(table, scaled) * tf.cast(tf.not_equal(scaled, 255), tf.float32)
    keep_mask = tf.cast(tf.not_equal(scaled, 255), tf.float32)
    train_labels = tf.one_hot(scaled, num_classes, on_value=1.0, off_value=0.0)
    with tf.GradientTape() as tape:
        flat = tf.reshape(logits, [-1, num_classes])
        pixel_losses = tf.nn.softmax_cross_entropy_with_logits(labels=tf.stop_gradient(train_labels), logits=flat)
        weighted = tf.multiply(pixel_losses, weights)

        def div_maybe_zero(total, num):
            return tf.cast(num > 0, tf.float32) * tf.math.divide(total, tf.maximum(1e-5, num))

        if top_k == 1.0:
            loss = div_maybe_zero(tf.reduce_sum(weighted), tf.reduce_sum(keep_mask))
        else:
            num_pixels = tf.cast(tf.shape(flat)[0], tf.float32)
            if mining_step == 0:
                k = tf.cast(top_k * num_pixels, tf.int32)
            else:
                step = tf.cast(tf.constant(global_step, tf.int64), tf.float32)
                ratio = tf.minimum(1.0, step / mining_step)
                k = tf.cast((ratio * top_k + (1.0 - ratio)) * num_pixels, tf.int32)
            top, _ = tf.nn.top_k(weighted, k=k, sorted=True)
            loss = div_maybe_zero(tf.reduce_sum(top), tf.reduce_sum(tf.cast(tf.not_equal(top, 0.0), tf.float32)))
    grad = tape.gradient(loss, logits)
    return float(loss), torch.from_numpy(grad.numpy().transpose(0, 3, 1, 2))


@pytest.mark.parametrize("top_k,mining_step,steps,weights", [
    (0.25, 100, (0, 1, 37, 50, 99, 100, 5000), None),
    (0.2, 0, (0, 7), None),
    (0.3, 10, (3, 20), (0.5, 2.0, 1.0, 0.0, 4.0)),   # a zero weight: its pixels are "not present"
])
def test_hard_pixel_mining_matches_deeplab_tf(top_k, mining_step, steps, weights):
    tf = pytest.importorskip("tensorflow")
    logits, labels = _batch(5, n=2, h=17, w=13)
    opts = LossOptions(top_k_percent_pixels=top_k, hard_example_mining_step=mining_step, class_weights=weights)
    loss = _loss(opts)
    assert loss.per_forward and float(loss.denominators(loss.targets(labels))["out"]) == 1.0
    for step in steps:
        x = logits.clone().requires_grad_(True)
        loss.set_iteration(step)
        ours = _value(loss, x, labels)
        ours.backward()
        ref, ref_grad = _deeplab_tf_loss(tf, logits, labels, num_classes=C, top_k=top_k, mining_step=mining_step,
                                         global_step=step, loss_weight=1.0 if weights is None else weights)
        assert abs(float(ours) - ref) <= 1e-5 * ref, (step, float(ours), ref)
        torch.testing.assert_close(x.grad, ref_grad, rtol=1e-4, atol=1e-7)


def test_mining_schedule_anneals_linearly_from_all_pixels():
    opts = LossOptions(top_k_percent_pixels=0.25, hard_example_mining_step=100)
    n = 1000
    assert top_k_count(mining_fraction(opts, 0), n) == n            # step 0: every pixel
    assert top_k_count(mining_fraction(opts, 50), n) == 625         # halfway: (1 + 0.25) / 2
    assert top_k_count(mining_fraction(opts, 100), n) == 250
    assert top_k_count(mining_fraction(opts, 10 ** 6), n) == 250    # stays at top_k afterwards
    assert top_k_count(mining_fraction(LossOptions(top_k_percent_pixels=0.25), 0), n) == 250  # no schedule


def test_mining_ignores_padding_in_normaliser():
    """Ignored pixels count in n but have zero loss: the normaliser counts only non-zero losses."""
    logits = torch.randn(1, C, 4, 4)
    labels = torch.full((1, 4, 4), 255)
    labels[0, 0, :2] = 1
    loss = _loss(LossOptions(top_k_percent_pixels=0.5))  # k = 8 of 16, only 2 valid
    ce = F.cross_entropy(logits, labels, ignore_index=255)
    torch.testing.assert_close(_value(loss, logits, labels).float(), ce)
    empty = torch.full((1, 4, 4), 255)
    assert float(_value(loss, logits, empty)) == 0.0


# ============================================================================ auto weights and the config
def test_auto_weights_rule():
    hist = np.array([900_000, 85_000, 15_000, 0])
    w = np.array(auto_class_weights(hist))
    f = hist / hist.sum()
    assert abs(float((f * w).sum()) - 1.0) < 1e-12                  # mean weight per pixel 1
    np.testing.assert_allclose(w[:3] * np.sqrt(f[:3]), w[0] * np.sqrt(f[0]))   # w ~ f^-1/2
    assert w[2] > w[1] > w[0] and w[3] == 1.0
    assert auto_class_weights([0, 0]) == [1.0, 1.0]


def test_auto_weights_come_from_the_training_labels(tmp_path):
    from reproduce.shapes import ShapesDataset

    cfg = apply_overrides(load_config(TINY), {"data.kwargs.length": 6, "loss.class_weights": "auto"})
    ds = ShapesDataset(length=6, seed=0, size=64, num_classes=4)
    hist = label_histogram(ds, 4)
    assert hist.sum() == sum(int((ds[i][1] != 255).sum()) for i in range(6))
    crit = build_criterion(cfg)
    assert crit.options.class_weights == tuple(auto_class_weights(hist))


@pytest.mark.parametrize("override,message", [
    ({"loss.top_k": 0.2}, "unknown config key loss.top_k; known keys:"),
    ({"loss.focal": {"gama": 2}}, "unknown config key loss.focal.gama; did you mean loss.focal.gamma"),
    ({"loss.class_weights": "balanced"}, "'balanced' is not auto, a list of numbers"),
    ({"loss.class_weights": [1, 2]}, "loss.class_weights has 2 values for 4 classes"),
    ({"loss.class_weights": [1, -2, 1, 1]}, "finite and >= 0"),
    ({"loss.label_smoothing": "yes"}, "loss.label_smoothing: expected a number"),
    ({"loss.label_smoothing": 1.0}, "not in [0, 1)"),
    ({"loss.hard_example_mining_step": 1.5}, "loss.hard_example_mining_step: expected an integer"),
    ({"loss.top_k_percent_pixels": 0.0}, "not in (0, 1]"),
    ({"loss.top_k_percent_pixels": 0.2, "loss.normalization": "per_image"}, "set loss.normalization: pixels"),
    ({"loss.focal": {"gamma": -1}}, "loss.focal.gamma: -1.0 is < 0"),
    ({"loss.focal": {"alpha": [0.5]}}, "loss.focal.alpha has 1 values for 4 classes"),
])
def test_loss_config_keys_are_checked(override, message):
    with pytest.raises(ConfigError, match=__import__("re").escape(message)):
        apply_overrides(load_config(TINY), override)
