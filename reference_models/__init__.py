"""Reference DeepLab models (v2, v3, v3+) with the source frameworks' exact semantics.

``build_model(name, *, num_classes, ...)`` and ``build_backbone(name, *, output_stride)``
construct registered architectures; ``list_models()`` / ``list_backbones()`` name them.
"""

from .registry import (
    build_backbone,
    build_model,
    list_backbones,
    list_models,
    register_backbone,
    register_model,
)

# Importing a model module registers its builders.
from . import deeplab_v2  # noqa: E402,F401

__all__ = [
    "build_backbone",
    "build_model",
    "list_backbones",
    "list_models",
    "register_backbone",
    "register_model",
]
from . import tf_ops, resnet_tf, xception, mobilenet_v2, deeplab_v3  # noqa: E402,F401  (TF-ported v3/v3+)
