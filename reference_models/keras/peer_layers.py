"""Keras 3 layers for PyTorch's own resize, which the PyTorch ports (kazuto, VainF, torchvision) use.

:class:`TorchBilinear` computes ``F.interpolate(x, mode="bilinear", align_corners=False)`` exactly as
PyTorch's kernel does: source coordinate ``max((dst + 0.5) * r - 0.5, 0)``, the two neighbours
clamped to the image, linear weights. ``r`` is the size ratio ``in / out`` when resizing to a size,
but ``1 / scale_factor`` when resizing by a factor (PyTorch uses the factor it was given, and the
output size is ``floor(n * scale_factor)``): 321 at 0.75 samples on a 1/0.75 grid, not 321/240.
Keras' ``Resizing`` (TF2 half-pixel resize) agrees with the first case only.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from .layers import PACKAGE

__all__ = ["TorchBilinear"]


def _axis(n_in: tf.Tensor, n_out: tf.Tensor, ratio: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """(lower index, upper index, upper weight) of every output position along one axis."""
    src = (tf.cast(tf.range(n_out), tf.float32) + 0.5) * ratio - 0.5
    src = tf.maximum(src, 0.0)
    low = tf.minimum(tf.cast(tf.floor(src), tf.int32), n_in - 1)
    high = tf.minimum(low + 1, n_in - 1)
    return low, high, src - tf.cast(low, tf.float32)


def torch_bilinear(x: tf.Tensor, size: tf.Tensor | None = None, scale: float | None = None) -> tf.Tensor:
    """NHWC bilinear resize with PyTorch's ``align_corners=False`` arithmetic (``size`` or ``scale``)."""
    shape = tf.shape(x)
    h, w = shape[1], shape[2]
    if scale is not None:
        out_h = tf.cast(tf.floor(tf.cast(h, tf.float64) * scale), tf.int32)
        out_w = tf.cast(tf.floor(tf.cast(w, tf.float64) * scale), tf.int32)
        ratio_h = ratio_w = tf.constant(1.0 / scale, tf.float32)
    else:
        out_h, out_w = size[0], size[1]
        ratio_h = tf.cast(h, tf.float32) / tf.cast(out_h, tf.float32)
        ratio_w = tf.cast(w, tf.float32) / tf.cast(out_w, tf.float32)
    lo, hi, wy = _axis(h, out_h, ratio_h)
    x = tf.gather(x, lo, axis=1) * (1.0 - wy)[None, :, None, None] + tf.gather(x, hi, axis=1) * wy[None, :, None, None]
    lo, hi, wx = _axis(w, out_w, ratio_w)
    return tf.gather(x, lo, axis=2) * (1.0 - wx)[None, None, :, None] + tf.gather(x, hi, axis=2) * wx[None, None, :, None]


@keras.saving.register_keras_serializable(package=PACKAGE)
class TorchBilinear(keras.layers.Layer):
    """``call(x)`` with ``scale`` set: resize by the factor; ``call([x, reference])``: to ``reference``'s H, W.

    Both as PyTorch's ``F.interpolate(..., mode="bilinear", align_corners=False)`` (module docstring).
    """

    def __init__(self, scale: float | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.scale = None if scale is None else float(scale)

    def call(self, inputs):
        if self.scale is not None:
            return torch_bilinear(inputs, scale=self.scale)
        x, reference = inputs
        return torch_bilinear(x, size=tf.shape(reference)[1:3])

    def compute_output_shape(self, input_shape):
        if self.scale is not None:
            n, h, w, c = input_shape
            def f(v):
                return None if v is None else int(v * self.scale)
            return (n, f(h), f(w), c)
        x, reference = input_shape
        return (x[0], reference[1], reference[2], x[3])

    def get_config(self) -> dict:
        return {**super().get_config(), "scale": self.scale}
