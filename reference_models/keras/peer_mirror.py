"""Keras twins of the peer-flavoured models (``reference_models/kazuto_style.py``, ``torchvision_style.py``).

Called by :class:`reference_models.keras.mirror.KerasMirror` before its own dispatch, so a flavour
that subclasses one of our models (kazuto's MSC is a ``DeepLabV2``) is mirrored as the flavour.
Each function returns ``None`` for a module it does not know.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import keras

from reference_models.kazuto_style import KazutoMSC

from .peer_layers import TorchBilinear

if TYPE_CHECKING:  # pragma: no cover
    from .mirror import KerasMirror

L = keras.layers
Tensor = Any


def kazuto_msc(mirror: KerasMirror, m: KazutoMSC, x: Tensor) -> Tensor:
    head = getattr(m, m.head_name)

    def single(inp: Tensor) -> Tensor:
        return mirror.head_v2(head, mirror.backbone(m.backbone, inp)["out"])

    logits = single(x)
    fused = logits
    for scale in m.pyramid:
        native = single(TorchBilinear(scale)(x))
        fused = L.Maximum()([fused, TorchBilinear()([native, logits])])
    return fused


def model(mirror: KerasMirror, m: Any, x: Tensor) -> Tensor | None:
    """The Keras graph of a peer-flavoured model, or ``None`` if ``m`` is not one."""
    if isinstance(m, KazutoMSC):
        return kazuto_msc(mirror, m, x)
    return None


def backbone(mirror: KerasMirror, m: Any, x: Tensor) -> dict[str, Tensor] | None:
    """The Keras graph of a peer-flavoured backbone, or ``None``."""
    return None
