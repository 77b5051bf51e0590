"""Reference DeepLab models (v2, v3, v3+) with the source frameworks' exact semantics.

``build_model(name, *, num_classes, ...)`` and ``build_backbone(name, *, output_stride)``
construct registered architectures; ``list_models()`` / ``list_backbones()`` name them.
"""

# Importing a model module registers its builders.
from . import deeplab_v2  # noqa: E402,F401
from .registry import (
    build_backbone,
    build_model,
    list_backbones,
    list_models,
    register_backbone,
    register_model,
)

__all__ = [
    "build_backbone",
    "build_model",
    "list_backbones",
    "list_models",
    "register_backbone",
    "register_model",
]
from . import (  # noqa: E402,F401  (TF-ported v3/v3+)
    deeplab_v3,
    drn,
    jfzhang95_style,
    kazuto_style,  # noqa: E402,F401  (a peer's flavour: kazuto1011's MSC fusion, for converters/peers)
    leimao_style,  # noqa: E402,F401  (seed leimao/DeepLab-V3's v3: resnet_v2 / MobileNet-v2 + linear ASPP)
    mobilenet_v1,
    mobilenet_v2,
    resnet_tf,
    tf_ops,
    tiny,  # noqa: E402,F401  (tiny models for tests and smoke runs)
    torchvision_style,  # noqa: E402,F401  (the torchvision / VainF flavours, for converters/peers)
    xception,
)
