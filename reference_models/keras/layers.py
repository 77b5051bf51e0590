"""Keras 3 layers for the framework quirks Keras has no built-in for (TensorFlow backend, NHWC).

Each layer is one named quirk, registered for ``.keras`` save/reload (package ``deeplab_repro``):

* :class:`CaffeMaxPool`: Caffe's max pooling with ``ceil`` output rounding and Caffe's rule that the
  last window must start inside the (left-)padded image -- what ``nn.MaxPool2d(ceil_mode=True)``
  computes. Padding never wins the max (-inf).
* :class:`CaffeInterp`: DeepLab v2's ``Interp`` resize to ``shrink``/``zoom`` sizes
  (321 at 0.75 -> 241), ``align_corners=True``.
* :class:`ResizeLike`: bilinear ``align_corners=True`` resize of ``x`` to the spatial size of a
  reference tensor (``tf.compat.v1.image.resize_bilinear(..., align_corners=True)``, which is what
  DeepLab-TF and Caffe's Interp compute; Keras' own ``Resizing`` has no ``align_corners``).

TF ``SAME`` padding, slim's fixed padding and ``max_pool2d(SAME)`` need no custom layer: Keras'
``padding="same"`` on the TensorFlow backend *is* TF's ``SAME`` (extra pixel bottom/right), and fixed
padding is ``ZeroPadding2D`` + ``VALID``. Sizes are computed per call from the input, so the models
accept any H, W (``Input(shape=(None, None, 3))``) and export with dynamic spatial sizes.
"""

from __future__ import annotations

from fractions import Fraction

import keras
import tensorflow as tf

PACKAGE = "deeplab_repro"

__all__ = ["CaffeInterp", "CaffeMaxPool", "ResizeLike", "resize_align_corners"]


def resize_align_corners(x: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
    """Bilinear resize with ``align_corners=True`` (identity when the size already matches)."""
    return tf.compat.v1.image.resize_bilinear(x, size, align_corners=True, half_pixel_centers=False)


@keras.saving.register_keras_serializable(package=PACKAGE)
class CaffeMaxPool(keras.layers.Layer):
    """Caffe ``Pooling`` MAX with ``kernel``, ``stride``, ``pad``: output ``ceil((n + 2p - k) / s) + 1``,
    minus one if that last window would start in the bottom/right padding (Caffe's clip rule)."""

    def __init__(self, kernel: int, stride: int, pad: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.kernel, self.stride, self.pad = int(kernel), int(stride), int(pad)

    def _pad_end(self, n: tf.Tensor) -> tf.Tensor:
        k, s, p = self.kernel, self.stride, self.pad
        out = (n + 2 * p - k + s - 1) // s + 1
        out = tf.where((out - 1) * s >= n + p, out - 1, out)
        return (out - 1) * s + k - n - p  # >= p: the bottom/right padding the last window reaches into

    def call(self, x: tf.Tensor) -> tf.Tensor:
        shape = tf.shape(x)
        p = self.pad
        paddings = [[0, 0], [p, self._pad_end(shape[1])], [p, self._pad_end(shape[2])], [0, 0]]
        x = tf.pad(x, paddings, constant_values=float("-inf"))
        return tf.nn.max_pool2d(x, self.kernel, self.stride, "VALID")

    def compute_output_shape(self, input_shape):
        def size(n):
            if n is None:
                return None
            k, s, p = self.kernel, self.stride, self.pad
            out = -(-(n + 2 * p - k) // s) + 1
            return out - 1 if (out - 1) * s >= n + p else out

        return (input_shape[0], size(input_shape[1]), size(input_shape[2]), input_shape[3])

    def get_config(self) -> dict:
        return {**super().get_config(), "kernel": self.kernel, "stride": self.stride, "pad": self.pad}


@keras.saving.register_keras_serializable(package=PACKAGE)
class CaffeInterp(keras.layers.Layer):
    """DeepLab v2 ``Interp`` by ``scale``: shrink ``(n - 1) // d + 1`` then zoom ``n + (n - 1)(z - 1)``
    with ``scale = z / d`` (``reference_models.caffe_ops.interp_out``), bilinear ``align_corners=True``."""

    def __init__(self, scale: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.scale = float(scale)
        frac = Fraction(self.scale).limit_denominator(64)  # the same rule as caffe_ops.scale_factors
        if frac <= 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.shrink, self.zoom = frac.denominator, frac.numerator

    def _size(self, n):
        if self.shrink != 1:
            n = (n - 1) // self.shrink + 1
        if self.zoom != 1:
            n = n + (n - 1) * (self.zoom - 1)
        return n

    def call(self, x: tf.Tensor) -> tf.Tensor:
        shape = tf.shape(x)
        return resize_align_corners(x, tf.stack([self._size(shape[1]), self._size(shape[2])]))

    def compute_output_shape(self, input_shape):
        h, w = input_shape[1], input_shape[2]
        return (input_shape[0], None if h is None else self._size(h), None if w is None else self._size(w),
                input_shape[3])

    def get_config(self) -> dict:
        return {**super().get_config(), "scale": self.scale}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ResizeLike(keras.layers.Layer):
    """``call([x, reference])``: resize ``x`` to ``reference``'s H, W, bilinear ``align_corners=True``."""

    def call(self, inputs):
        x, reference = inputs
        return resize_align_corners(x, tf.shape(reference)[1:3])

    def compute_output_shape(self, input_shapes):
        x, reference = input_shapes
        return (x[0], reference[1], reference[2], x[3])
