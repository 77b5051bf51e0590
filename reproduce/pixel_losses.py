"""Losses for imbalanced data: class weights, DeepLab-TF hard-pixel mining, focal loss, label smoothing.

The loss of a valid pixel with label ``y``, softmax probabilities ``p`` over ``C`` classes::

    ce  = -(1 - eps) log p_y - (eps / C) sum_c log p_c      label smoothing eps (0: plain -log p_y)
    l   = w_y * a_y * (1 - p_y) ** gamma * ce               w: class weights, a/gamma: focal (off: 1 / 0)

Ignored pixels contribute 0. The factors multiply the pixel's loss; the normaliser stays the
number of valid pixels (or images), as DeepLab-TF's ``weights * pixel_losses`` over
``sum(keep_mask)``. (``torch.nn.functional.cross_entropy(weight=)`` with ``reduction="mean"``
divides by the sum of the weights instead, and its ``label_smoothing`` weights the smoothing
term of class ``c`` by ``w_c``; here the target class's weight scales the whole pixel loss.)

Hard-pixel mining (``top_k_percent_pixels < 1``) is DeepLab-TF's
``train_utils.add_softmax_cross_entropy_loss_for_each_scale``: over the ``n = N*H*W`` pixels of one
forward pass (ignored pixels count in ``n``), keep the ``k`` largest pixel losses with
``k = int32(float32(r * top_k + (1 - r)) * n)``, ``r = min(1, step / hard_example_mining_step)``
(``r = 1`` when the mining step is 0), and return their sum over how many of them are non-zero.
``step`` is the number of solver steps done (TF's ``global_step``: 0 at the first step). As in
DeepLab-TF, where each clone (GPU) mines its own pixels and the clone losses are averaged, each
forward pass (micro-batch, process, Keras replica) is normalised by itself and the trainer averages
the forward passes.

``auto`` class weights: inverse square root of each class's share of the valid training pixels,
``w_c = f_c ** -0.5 / sum_k f_k ** 0.5`` (so ``sum_c f_c w_c = 1``: the expected loss, hence the
schedule's learning rate, stays that of plain cross-entropy). Why not median-frequency balancing
(``w_c ~ 1 / f_c``): a class at 1 % of the pixels next to one at 90 % gets 90x the weight, a handful
of rare pixels then dominate each batch's gradient and the rare class is over-predicted; the square
root gives ~9.5x, enough to stop it being drowned. Classes with no training pixel get weight 1
(they never weight a pixel).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .losses import Normalization, SegmentationLoss

__all__ = ["LossOptions", "ConfiguredLoss", "pixel_losses", "pixel_losses_tf", "mining_fraction", "top_k_count",
           "top_k_reduce", "auto_class_weights", "label_histogram", "AUTO_RULE"]

AUTO_RULE = "inverse square root of the class's share of the valid training pixels, normalised to mean 1 per pixel"
_FLOOR = 1e-12  # (1 - p)^gamma's base is floored here in both frameworks: a finite gradient at p == 1


@dataclass(frozen=True)
class LossOptions:
    """The per-pixel factors and the reduction; the defaults are plain cross-entropy."""

    class_weights: tuple[float, ...] | None = None
    top_k_percent_pixels: float = 1.0
    hard_example_mining_step: int = 0
    focal_gamma: float = 0.0
    focal_alpha: float | tuple[float, ...] | None = None
    label_smoothing: float = 0.0

    @property
    def mining(self) -> bool:
        return self.top_k_percent_pixels < 1.0

    @property
    def plain(self) -> bool:
        return self == LossOptions()

    def class_factor(self, num_classes: int) -> np.ndarray | None:
        """Per-class multiplier ``w_c * a_c`` (float64), or None when every factor is 1."""
        out = np.ones(num_classes)
        if self.class_weights is not None:
            out = out * np.asarray(self.class_weights, np.float64)
        if self.focal_alpha is not None:
            out = out * np.asarray(self.focal_alpha, np.float64)  # a scalar or one per class
        return None if np.all(out == 1.0) else out


# ============================================================================ mining schedule (shared)
def mining_fraction(options: LossOptions, step: int) -> np.float32:
    """``r * top_k + (1 - r)`` in float32, as DeepLab-TF computes it at ``global_step == step``."""
    one, top_k = np.float32(1.0), np.float32(options.top_k_percent_pixels)
    if options.hard_example_mining_step == 0:
        return top_k
    ratio = np.minimum(one, np.float32(step) / np.float32(options.hard_example_mining_step))
    return np.float32(ratio * top_k + (one - ratio))


def top_k_count(fraction: np.float32, num_pixels: int) -> int:
    """``tf.to_int32(fraction * tf.to_float(num_pixels))``: float32 product, truncated (at most ``num_pixels``:
    above 2**24 pixels float32 may round up, where DeepLab-TF's ``top_k`` would fail)."""
    return min(int(np.float32(fraction) * np.float32(num_pixels)), num_pixels)


# ============================================================================ PyTorch
def pixel_losses(logits: torch.Tensor, target: torch.Tensor, *, ignore_index: int, options: LossOptions,
                 factor: torch.Tensor | None = None) -> torch.Tensor:
    """(N, h, w) pixel losses ``l`` (module docstring) of (N, C, h, w) logits, in the logits' dtype; 0 where ignored.

    ``factor``: ``options.class_factor(C)`` as a tensor on the logits' device (None: all ones).
    """
    valid = target != ignore_index
    safe = torch.where(valid, target, torch.zeros_like(target))
    logp = F.log_softmax(logits, dim=1)
    logp_y = logp.gather(1, safe[:, None])[:, 0]
    eps = options.label_smoothing
    ce = -logp_y if not eps else -(1.0 - eps) * logp_y - (eps / logits.shape[1]) * logp.sum(dim=1)
    if options.focal_gamma:
        ce = ce * (1.0 - logp_y.exp()).clamp(min=_FLOOR) ** options.focal_gamma
    if factor is not None:
        ce = ce * factor.to(ce.dtype)[safe]
    return torch.where(valid, ce, torch.zeros_like(ce))


def top_k_reduce(losses: torch.Tensor, k: int) -> torch.Tensor:
    """DeepLab-TF's mined loss: the sum of the ``k`` largest of ``losses`` over how many of them are non-zero."""
    top = torch.topk(losses.reshape(-1), k, sorted=False).values if k > 0 else losses.new_zeros(0)
    present = (top != 0).sum()
    return top.sum() / present.clamp(min=1).to(top.dtype)  # 0 when none (TF: _div_maybe_zero)


class ConfiguredLoss(SegmentationLoss):
    """:class:`SegmentationLoss` with :class:`LossOptions`; plain options compute exactly as the parent.

    With mining, each term is one forward pass's normalised loss and :meth:`denominators` counts
    forward passes (1 each); call :meth:`set_iteration` before each solver step for the schedule.
    """

    def __init__(self, kind: Any, *, num_classes: int, ignore_index: int = 255,
                 normalization: Normalization = "per_image", shrink: Mapping[str, int] | None = None,
                 options: LossOptions | None = None) -> None:
        super().__init__(kind, num_classes=num_classes, ignore_index=ignore_index, normalization=normalization,
                         shrink=shrink)
        self.options = options or LossOptions()
        f = self.options.class_factor(num_classes)
        self.factor = None if f is None else torch.from_numpy(f)
        self.iteration = 0

    @property
    def per_forward(self) -> bool:
        """True when each term is normalised within its forward pass (hard-pixel mining)."""
        return self.options.mining

    def set_iteration(self, iteration: int) -> None:
        """The number of solver steps done (the mining schedule's ``global_step``)."""
        self.iteration = int(iteration)

    def mining_fraction(self) -> np.float32:
        return mining_fraction(self.options, self.iteration)

    def denominators(self, targets: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.per_forward:
            return {term: torch.tensor(1.0, dtype=torch.float64) for term in targets}
        return super().denominators(targets)

    def _term(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.options.plain:
            return super()._term(logits, target)
        logits = logits.float()
        if tuple(logits.shape[-2:]) != tuple(target.shape[-2:]):
            return super()._term(logits, target)  # raises the parent's size message
        factor = None if self.factor is None else self.factor.to(logits.device)
        losses = pixel_losses(logits, target, ignore_index=self.ignore_index, options=self.options, factor=factor)
        if self.per_forward:
            return top_k_reduce(losses, top_k_count(self.mining_fraction(), losses.numel()))
        if self.normalization == "pixels":
            return losses.sum()
        valid = (target != self.ignore_index).sum(dim=(1, 2)).clamp(min=1)
        return (losses.sum(dim=(1, 2)) / valid).sum()


# ============================================================================ TensorFlow (the Keras trainer)
def pixel_losses_tf(tf: Any, logits: Any, labels: Any, *, ignore_index: int, options: LossOptions,
                    factor: np.ndarray | None) -> Any:
    """The same pixel losses in TensorFlow: (N, h, w, C) logits, (N, h, w) int labels -> (N, h, w)."""
    valid = tf.not_equal(labels, ignore_index)
    safe = tf.where(valid, labels, tf.zeros_like(labels))
    logp = tf.nn.log_softmax(logits, axis=-1)
    logp_y = tf.gather(logp, safe, axis=-1, batch_dims=3)
    eps = options.label_smoothing
    if eps:
        num_classes = int(logits.shape[-1])
        ce = -(1.0 - eps) * logp_y - (eps / num_classes) * tf.reduce_sum(logp, axis=-1)
    else:
        ce = -logp_y
    if options.focal_gamma:
        ce = ce * tf.pow(tf.maximum(1.0 - tf.exp(logp_y), _FLOOR), options.focal_gamma)
    if factor is not None:
        ce = ce * tf.gather(tf.constant(factor, dtype=ce.dtype), safe)
    return tf.where(valid, ce, tf.zeros_like(ce))


def top_k_reduce_tf(tf: Any, losses: Any, fraction: Any) -> Any:
    """DeepLab-TF's mined loss of one forward pass; ``fraction`` a float32 tensor (:func:`mining_fraction`)."""
    flat = tf.reshape(losses, [-1])
    k = tf.minimum(tf.cast(fraction * tf.cast(tf.size(flat), tf.float32), tf.int32), tf.size(flat))
    top, _ = tf.nn.top_k(flat, k=k, sorted=False)
    present = tf.reduce_sum(tf.cast(tf.not_equal(top, 0.0), top.dtype))
    return tf.reduce_sum(top) / tf.maximum(present, 1.0)


# ============================================================================ class weights
def label_histogram(dataset: Any, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """Pixels per class over every label of ``dataset`` (int64, length ``num_classes``; ignored pixels left out).

    Reads only the label files of the readers that have them (``read_label``), else whole samples.
    """
    from .datasets.base import DatasetError, check_label

    counts = np.zeros(num_classes, np.int64)
    refs = getattr(dataset, "refs", None)
    read = getattr(dataset, "read_label", None)
    for i in range(len(dataset)):
        try:
            if refs is not None and read is not None:
                label = check_label(read(refs[i]), refs[i].label, num_classes, ignore_index)
            else:
                label = (dataset.load(i) if hasattr(dataset, "load") else dataset[i])[1]
        except DatasetError:
            if getattr(dataset, "on_error", "error") == "skip":
                continue  # counted by the training loop when it meets the sample
            raise
        values = np.asarray(label).reshape(-1)
        counts += np.bincount(values[values != ignore_index].astype(np.int64), minlength=num_classes)[:num_classes]
    return counts


def auto_class_weights(histogram: Sequence[int] | np.ndarray) -> list[float]:
    """The ``auto`` rule (module docstring) from pixels per class."""
    h = np.asarray(histogram, np.float64)
    if h.sum() <= 0:
        return [1.0] * len(h)
    f = h / h.sum()
    present = f > 0
    w = np.ones_like(f)
    w[present] = f[present] ** -0.5 / np.sum(np.sqrt(f[present]))
    return [float(x) for x in w]
