"""Keras 3 (TensorFlow backend) twins of every registered reference model, NHWC.

``build_keras_model(name, *, num_classes, **kw)`` builds the Keras model of the registered PyTorch
model ``name`` (same keyword arguments, e.g. ``output_stride=8``, plus ``input_shape=(H, W, 3)`` to
fix the input size; the default accepts any size). ``build_keras_backbone(name, *, output_stride)``
does the same for a backbone (outputs ``{"out", "low_level"}``). ``list_keras_models()`` /
``list_keras_backbones()`` name them; ``load_keras_model(path)`` reloads a saved ``.keras`` file.

The Keras models are derived from the PyTorch ones (see :mod:`reference_models.keras.mirror`):
same widths, strides, rates, epsilons, and one Keras layer per PyTorch module, named by its
state-dict module path. So a weight set converted once (the PyTorch state dict, e.g. from
``converters/caffe2torch.py``) loads into either framework: ``converters.keras_writer``.

Input/output contract: a preprocessed NHWC float32 image (the weights' ``Preprocessing``, e.g.
BGR minus the Caffe mean for the v2 releases, [-1, 1] RGB for DeepLab-TF), output the score map
NHWC at the PyTorch model's resolution (not upsampled). The 3-scale DeepLab v2 returns the fused
(max) scores only. TensorFlow is imported only when a model is built: ``import reference_models``
and ``list_keras_models()`` never need it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import keras

__all__ = ["build_keras_backbone", "build_keras_model", "custom_objects", "list_keras_backbones",
           "list_keras_models", "load_keras_model"]


def list_keras_models() -> list[str]:
    """Every registered reference model has a Keras twin (an unknown module class raises at build time)."""
    import reference_models

    return reference_models.list_models()


def list_keras_backbones() -> list[str]:
    import reference_models

    return reference_models.list_backbones()


def build_keras_model(name: str, *, num_classes: int,
                      input_shape: tuple[int | None, int | None, int] | None = None, **kwargs: Any) -> keras.Model:
    """Keras twin of ``reference_models.build_model(name, num_classes=..., **kwargs)`` (weights uninitialised:
    load them with ``converters.keras_writer`` or ``model.load_weights(path.weights.h5)``)."""
    from reference_models import build_model

    from .mirror import meta_build, mirror_model

    torch_model = meta_build(build_model, name, num_classes=num_classes, **kwargs)
    return mirror_model(torch_model, name=name, input_shape=input_shape)


def build_keras_backbone(name: str, *, output_stride: int,
                         input_shape: tuple[int | None, int | None, int] | None = None, **kwargs: Any) -> keras.Model:
    """Keras twin of ``reference_models.build_backbone(name, output_stride=..., **kwargs)``."""
    from reference_models import build_backbone

    from .mirror import meta_build, mirror_backbone

    torch_backbone = meta_build(build_backbone, name, output_stride=output_stride, **kwargs)
    return mirror_backbone(torch_backbone, name=name, input_shape=input_shape)


def custom_objects() -> dict[str, type]:
    """The custom layers, for ``keras.models.load_model`` (importing this package's ``layers`` registers them too)."""
    from .layers import CaffeInterp, CaffeMaxPool, ResizeLike
    from .leimao_mirror import TF1LegacyBilinear
    from .peer_layers import TorchBilinear

    return {"CaffeInterp": CaffeInterp, "CaffeMaxPool": CaffeMaxPool, "ResizeLike": ResizeLike,
            "TorchBilinear": TorchBilinear, "TF1LegacyBilinear": TF1LegacyBilinear}


def load_keras_model(path: str | os.PathLike) -> keras.Model:
    """``keras.models.load_model(path)`` for a ``.keras`` file of these models (registers the custom layers first)."""
    import keras

    return keras.models.load_model(path, custom_objects=custom_objects())
