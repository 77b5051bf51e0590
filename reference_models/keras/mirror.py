"""Build a Keras 3 functional model that mirrors a PyTorch reference model, module by module.

One source of truth: the PyTorch model (built on the ``meta`` device, so no memory and no
initialisation) supplies every width, kernel, stride, dilation, padding mode, BatchNorm epsilon,
ASPP rate, MSC scale and output-stride schedule. This module only knows how each PyTorch module
class *computes* (its ``forward``), written once more in Keras ops, NHWC.

Naming contract (what makes one converted weight set load into either framework): every Keras
layer that holds weights is named by the PyTorch module path it mirrors (``backbone.layer1.0.conv1``,
``backbone.layer1.0.conv1`` 's BatchNorm child ``...conv1.bn``, ``aspp.branches.2`` ...), and its
weights are that module's parameters in Keras layout. ``converters/keras_writer.py`` maps a
PyTorch state dict onto the layers by that name and a fixed layout rule per layer type; no rename
table. Weightless layers (padding, ReLU, Add, ...) get Keras' automatic names.

Layers with weights are created once per module and reused, so the 3-scale DeepLab v2 calls the
same layers at every scale (shared weights, as Caffe's MSC net and the PyTorch model do).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import torch
from torch import nn

from reference_models.deeplab_v2 import (
    VGGASPP,
    ASPPv2,
    CaffeBottleneck,
    CaffeResNet,
    CaffeVGG16,
    DeepLabV2,
    VGGBranch,
)
from reference_models.deeplab_v3 import ASPP, Decoder, DeepLabV3
from reference_models.drn import DRN, DRNBottleneck
from reference_models.mobilenet_v1 import LOW_LEVEL_LAYER, MobileNetV1TF
from reference_models.mobilenet_v2 import ExpandedConv, MobileNetV2TF
from reference_models.resnet_tf import BottleneckV1, BottleneckV2, ResNetTF
from reference_models.tf_ops import BatchNormAct, Conv2dTF, fixed_pad_amounts
from reference_models.tiny import TinyBackbone
from reference_models.xception import XceptionModule, XceptionTF

from . import jfzhang95_mirror, leimao_mirror, peer_mirror
from .layers import CaffeInterp, CaffeMaxPool, ResizeLike

L = keras.layers
Tensor = Any  # a KerasTensor while the graph is built

__all__ = ["KerasMirror", "mirror_backbone", "mirror_model"]


def _square(value: int | tuple[int, ...], what: str) -> int:
    values = (value,) if isinstance(value, int) else tuple(value)
    if len(set(values)) != 1:
        raise NotImplementedError(f"non-square {what} {values} has no Keras mirror")
    return int(values[0])


class KerasMirror:
    """Translate the modules of one PyTorch model into Keras layers named by their module paths."""

    def __init__(self, torch_model: nn.Module) -> None:
        self.paths = {id(m): name for name, m in torch_model.named_modules()}
        self.layers: dict[str, keras.layers.Layer] = {}

    # ------------------------------------------------------------------ leaves (layers with weights)

    def _layer(self, module: nn.Module, factory: Callable[[str], keras.layers.Layer]) -> keras.layers.Layer:
        """The one Keras layer of ``module`` (created on first use, shared afterwards)."""
        path = self.paths[id(module)]
        if path not in self.layers:
            self.layers[path] = factory(path)
        return self.layers[path]

    def conv(self, m: nn.Conv2d, x: Tensor) -> Tensor:
        """``nn.Conv2d`` (Caffe / PyTorch semantics: symmetric zero padding) or :class:`Conv2dTF` (TF semantics)."""
        if isinstance(m, Conv2dTF):
            return self.conv_tf(m, x)
        k, s = _square(m.kernel_size, "kernel"), _square(m.stride, "stride")
        d, p = _square(m.dilation, "dilation"), _square(m.padding, "padding")
        if m.groups != 1 and m.groups != m.in_channels:
            raise NotImplementedError("grouped (non-depthwise) nn.Conv2d has no Keras mirror")
        same = s == 1 and 2 * p == d * (k - 1)  # symmetric padding that TF's SAME reproduces exactly
        if p and not same:
            x = L.ZeroPadding2D(p)(x)
        padding = "same" if same else "valid"
        if m.groups == 1:
            layer = self._layer(m, lambda name: L.Conv2D(
                m.out_channels, k, strides=s, dilation_rate=d, padding=padding, use_bias=m.bias is not None,
                name=name))  # fmt: skip
        else:
            layer = self._layer(m, lambda name: L.DepthwiseConv2D(
                k, strides=s, dilation_rate=d, padding=padding, depth_multiplier=m.out_channels // m.in_channels,
                use_bias=m.bias is not None, name=name))  # fmt: skip
        return layer(x)

    def conv_tf(self, m: Conv2dTF, x: Tensor) -> Tensor:
        """slim conv / depthwise conv: TF ``SAME``, or fixed padding + ``VALID`` when strided and explicit."""
        k, s, d = _square(m.kernel_size, "kernel"), _square(m.stride, "stride"), _square(m.dilation, "dilation")
        explicit = m.tf_padding == "explicit" and s > 1
        if explicit:
            beg, end = fixed_pad_amounts(k, d)
            x = L.ZeroPadding2D(((beg, end), (beg, end)))(x)
        padding = "valid" if explicit else "same"
        use_bias = m.bias is not None
        if m.groups == 1:
            layer = self._layer(m, lambda name: L.Conv2D(
                m.out_channels, k, strides=s, dilation_rate=d, padding=padding, use_bias=use_bias, name=name))  # fmt: skip
        elif m.groups == m.in_channels:
            layer = self._layer(m, lambda name: L.DepthwiseConv2D(
                k, strides=s, dilation_rate=d, padding=padding, depth_multiplier=m.out_channels // m.in_channels,
                use_bias=use_bias, name=name))  # fmt: skip
        else:
            raise NotImplementedError("grouped (non-depthwise) Conv2dTF has no Keras mirror")
        x = layer(x)
        if m.bn is not None:
            x = self.bn(m.bn, x)
        return self.act(m.activation, x)

    def bn(self, m: nn.BatchNorm2d, x: Tensor) -> Tensor:
        """BatchNorm with the module's epsilon; frozen (``trainable=False``: inference statistics) if the
        PyTorch module is (DeepLab v2's ``use_global_stats``)."""

        def make(name: str) -> keras.layers.Layer:
            momentum = 1.0 - (m.momentum if m.momentum is not None else 0.1)  # torch: new-value weight
            layer = L.BatchNormalization(axis=-1, epsilon=m.eps, momentum=momentum, center=m.affine,
                                         scale=m.affine, name=name)
            layer.trainable = any(p.requires_grad for p in m.parameters()) or not m.affine
            return layer

        x = self._layer(m, make)(x)
        if isinstance(m, BatchNormAct):
            x = self.act(m.activation, x)
        return x

    @staticmethod
    def act(activation: str | None, x: Tensor) -> Tensor:
        if activation is None:
            return x
        if activation == "relu":
            return L.ReLU()(x)
        if activation == "relu6":
            return L.ReLU(max_value=6.0)(x)
        raise NotImplementedError(f"activation {activation!r}")

    def module(self, m: nn.Module, x: Tensor) -> Tensor:
        """A leaf or a ``Sequential`` of leaves."""
        if isinstance(m, nn.Sequential):
            for child in m:
                x = self.module(child, x)
            return x
        if isinstance(m, nn.Conv2d):
            return self.conv(m, x)
        if isinstance(m, nn.BatchNorm2d):
            return self.bn(m, x)
        if isinstance(m, nn.ReLU):
            return L.ReLU()(x)
        if isinstance(m, nn.ReLU6):
            return L.ReLU(max_value=6.0)(x)
        if isinstance(m, nn.Dropout):
            return L.Dropout(m.p)(x)
        if isinstance(m, nn.Identity):
            return x
        raise NotImplementedError(f"{type(m).__name__} has no Keras mirror")

    # ------------------------------------------------------------------ DeepLab v2 (Caffe semantics)

    def caffe_resnet(self, m: CaffeResNet, x: Tensor) -> dict[str, Tensor]:
        x = L.ReLU()(self.bn(m.bn1, self.conv(m.conv1, x)))
        x = self.max_pool(m.maxpool, x)
        low = x = self.module_seq(m.layer1, x)
        for layer in (m.layer2, m.layer3, m.layer4):
            x = self.module_seq(layer, x)
        return {"low_level": low, "out": x}

    def module_seq(self, seq: nn.Sequential, x: Tensor) -> Tensor:
        for unit in seq:
            x = self.block(unit, x)
        return x

    def max_pool(self, m: nn.MaxPool2d, x: Tensor) -> Tensor:
        k, s, p = _square(m.kernel_size, "kernel"), _square(m.stride, "stride"), _square(m.padding, "padding")
        if not m.ceil_mode or _square(m.dilation, "dilation") != 1:
            raise NotImplementedError("only Caffe-style (ceil_mode=True) max pooling is mirrored")
        return CaffeMaxPool(k, s, p)(x)

    def caffe_bottleneck(self, m: CaffeBottleneck | DRNBottleneck, x: Tensor) -> Tensor:
        """A post-activation bottleneck of ``nn.Conv2d``s (each conv carries its own stride and padding)."""
        identity = x if m.downsample is None else self.module(m.downsample, x)
        y = L.ReLU()(self.bn(m.bn1, self.conv(m.conv1, x)))
        y = L.ReLU()(self.bn(m.bn2, self.conv(m.conv2, y)))
        y = self.bn(m.bn3, self.conv(m.conv3, y))
        return L.ReLU()(L.Add()([y, identity]))

    def caffe_vgg(self, m: CaffeVGG16, x: Tensor) -> dict[str, Tensor]:
        for name in m._order:
            child = getattr(m, name)
            x = self.max_pool(child, x) if isinstance(child, nn.MaxPool2d) else L.ReLU()(self.conv(child, x))
        return {"out": x}

    def head_v2(self, m: nn.Module, x: Tensor) -> Tensor:
        if isinstance(m, ASPPv2):
            outs = [self.conv(branch, x) for branch in m.branches]
        elif isinstance(m, VGGASPP):
            outs = [self.vgg_branch(branch, x) for branch in m.branches]
        else:  # deeplabv1_resnet101's 1x1 classifier
            return self.module(m, x)
        return outs[0] if len(outs) == 1 else L.Add()(outs)

    def vgg_branch(self, m: VGGBranch, x: Tensor) -> Tensor:
        x = L.Dropout(m.drop.p)(L.ReLU()(self.conv(m.fc6, x)))
        x = L.Dropout(m.drop.p)(L.ReLU()(self.conv(m.fc7, x)))
        return self.conv(m.fc8, x)

    def deeplab_v2(self, m: DeepLabV2, x: Tensor) -> Tensor:
        head = getattr(m, m.head_name)

        def single(inp: Tensor) -> Tensor:
            return self.head_v2(head, self.backbone(m.backbone, inp)["out"])

        full = single(x)
        fused = full
        for scale in m.scales[1:]:
            native = single(CaffeInterp(scale)(x))
            fused = L.Maximum()([fused, ResizeLike()([native, full])])  # Caffe's fc_fusion (Eltwise MAX)
        return fused

    # ------------------------------------------------------------------ TF-ported backbones and heads

    def resnet_tf(self, m: ResNetTF, x: Tensor) -> dict[str, Tensor]:
        if m.beta:
            x = self.conv(m.conv1_3, self.conv(m.conv1_2, self.conv(m.conv1_1, x)))
        else:
            x = self.conv(m.conv1, x)
        x = L.MaxPooling2D(3, 2, padding="same")(x)  # pool1: TF SAME, padding never wins the max
        low = x
        for block_name in m._block_names:
            for unit_name, unit in getattr(m, block_name).items():
                x, tap = self.bottleneck_tf(unit, x)
                if block_name == "block1" and unit_name == "unit_2":
                    low = tap
        if m.version == 2:
            x = self.bn(m.postnorm, x)
        return {"out": x, "low_level": low}

    @staticmethod
    def subsample(x: Tensor, stride: int) -> Tensor:
        """slim ``resnet_utils.subsample``: a 1x1 max-pool with stride (every ``stride``-th pixel)."""
        return x if stride == 1 else L.MaxPooling2D(1, stride, padding="valid")(x)

    def bottleneck_tf(self, m: BottleneckV1 | BottleneckV2, x: Tensor) -> tuple[Tensor, Tensor]:
        """(unit output, decoder tap) as the PyTorch ``forward_with_tap``."""
        if isinstance(m, BottleneckV1):
            shortcut = self.conv(m.shortcut, x) if m.shortcut is not None else self.subsample(x, m.stride)
            residual = self.conv(m.conv3, self.conv(m.conv2, self.conv(m.conv1, x)))
            return L.ReLU()(L.Add()([shortcut, residual])), residual
        preact = self.bn(m.preact, x)
        shortcut = self.conv(m.shortcut, preact) if m.shortcut is not None else self.subsample(x, m.stride)
        out = L.Add()([shortcut, self.conv(m.conv3, self.conv(m.conv2, self.conv(m.conv1, preact)))])
        return out, out

    def xception(self, m: XceptionTF, x: Tensor) -> dict[str, Tensor]:
        x = self.conv(m.entry_flow.conv1_2, self.conv(m.entry_flow.conv1_1, x))
        low = x
        for flow, block, unit_name in m._units:
            unit = getattr(getattr(m, flow), block)[unit_name]
            x, taps = self.xception_module(unit, x)
            if (flow, block, unit_name) == ("entry_flow", "block2", "unit_1"):
                low = taps[1]
        return {"out": x, "low_level": low}

    def xception_module(self, m: XceptionModule, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        residual, taps = x, []
        for i in range(1, 4):
            if not m.activation_inside:
                residual = L.ReLU()(residual)  # "original design": ReLU before each separable conv
            residual = self.conv(getattr(m, f"separable_conv{i}_depthwise"), residual)
            residual = self.conv(getattr(m, f"separable_conv{i}_pointwise"), residual)
            taps.append(residual)
        if m.skip == "conv":
            return L.Add()([residual, self.conv(m.shortcut, x)]), taps
        if m.skip == "sum":
            return L.Add()([residual, x]), taps
        return residual, taps

    def mobilenet_v2(self, m: MobileNetV2TF, x: Tensor) -> dict[str, Tensor]:
        x = low = self.conv(m.Conv, x)
        for name in m._names:
            x, tap = self.expanded_conv(getattr(m, name), x)
            if name == "expanded_conv_2":  # layer_4/depthwise_output
                low = tap
        return {"out": x, "low_level": low}

    def mobilenet_v1(self, m: MobileNetV1TF, x: Tensor) -> dict[str, Tensor]:
        x = low = self.conv(m.Conv2d_0, x)
        for name in m._layers:
            x = self.conv(getattr(m, name), x)
            if name == f"Conv2d_{LOW_LEVEL_LAYER}_pointwise":
                low = x
        return {"out": x, "low_level": low}

    def expanded_conv(self, m: ExpandedConv, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.conv(m.expand, x) if m.expand is not None else x
        depthwise = self.conv(m.depthwise, h)
        out = self.conv(m.project, depthwise)
        return (L.Add()([out, x]) if m.residual else out), depthwise

    def aspp(self, m: ASPP, x: Tensor) -> Tensor:
        branches = []
        if m.image_pooling is not None:
            pooled = self.conv(m.image_pooling, L.GlobalAveragePooling2D(keepdims=True)(x))
            branches.append(ResizeLike()([pooled, x]))
        branches.append(self.conv(m.aspp0, x))
        for i in range(1, len(m.atrous_rates) + 1):
            if m.separable:
                y = self.conv(getattr(m, f"aspp{i}_depthwise"), x)
                branches.append(self.conv(getattr(m, f"aspp{i}_pointwise"), y))
            else:
                branches.append(self.conv(getattr(m, f"aspp{i}"), x))
        y = self.conv(m.concat_projection, L.Concatenate(axis=-1)(branches))
        return L.Dropout(m.dropout.p)(y)

    def decoder(self, m: Decoder, encoder: Tensor, low_level: Tensor) -> Tensor:
        projection = ResizeLike()([self.conv(m.feature_projection0, low_level), low_level])
        x = L.Concatenate(axis=-1)([ResizeLike()([encoder, low_level]), projection])
        if m.separable:
            x = self.conv(m.decoder_conv0_pointwise, self.conv(m.decoder_conv0_depthwise, x))
            return self.conv(m.decoder_conv1_pointwise, self.conv(m.decoder_conv1_depthwise, x))
        return self.module(m.decoder_conv0, x)

    def deeplab_v3(self, m: DeepLabV3, x: Tensor) -> Tensor:
        features = self.backbone(m.backbone, x)
        y = self.aspp(m.aspp, features["out"])
        if m.decoder is not None:
            y = self.decoder(m.decoder, y, features["low_level"])
        return self.conv(m.logits["semantic"], y)

    def drn(self, m: DRN, x: Tensor) -> dict[str, Tensor]:
        x = self.module(m.layer2, self.module(m.layer1, self.module(m.layer0, x)))
        low = x = self.module_seq(m.layer3, x)
        for layer in (m.layer4, m.layer5, m.layer6):
            x = self.module_seq(layer, x)
        return {"out": self.module(m.layer8, self.module(m.layer7, x)), "low_level": low}

    def tiny(self, m: nn.Module, x: Tensor) -> dict[str, Tensor]:
        low = self.module(m.stage2, self.module(m.stage1, x))
        return {"low_level": low, "out": self.module(m.stage4, self.module(m.stage3, low))}

    # ------------------------------------------------------------------ dispatch

    def block(self, m: nn.Module, x: Tensor) -> Tensor:
        if isinstance(m, (CaffeBottleneck, DRNBottleneck)):
            return self.caffe_bottleneck(m, x)
        return self.module(m, x)

    def backbone(self, m: nn.Module, x: Tensor) -> dict[str, Tensor]:
        for peer in (peer_mirror, jfzhang95_mirror, leimao_mirror):  # the peers' flavours first
            if (out := peer.backbone(self, m, x)) is not None:
                return out
        for cls, fn in ((CaffeResNet, self.caffe_resnet), (CaffeVGG16, self.caffe_vgg), (ResNetTF, self.resnet_tf),
                        (XceptionTF, self.xception), (MobileNetV2TF, self.mobilenet_v2),
                        (MobileNetV1TF, self.mobilenet_v1), (DRN, self.drn), (TinyBackbone, self.tiny)):
            if cls is not None and isinstance(m, cls):
                return fn(m, x)
        raise NotImplementedError(f"backbone {type(m).__name__} has no Keras mirror")

    def model(self, m: nn.Module, x: Tensor) -> Tensor:
        for peer in (peer_mirror, jfzhang95_mirror, leimao_mirror):  # the peers' flavours (some subclass ours) first
            if (out := peer.model(self, m, x)) is not None:
                return out
        if isinstance(m, DeepLabV2):
            return self.deeplab_v2(m, x)
        if isinstance(m, DeepLabV3):
            return self.deeplab_v3(m, x)
        raise NotImplementedError(f"model {type(m).__name__} has no Keras mirror")


def _input(input_shape: tuple[int | None, int | None, int] | None) -> Tensor:
    return keras.Input(shape=tuple(input_shape) if input_shape else (None, None, 3), name="image")


def mirror_model(torch_model: nn.Module, *, name: str,
                 input_shape: tuple[int | None, int | None, int] | None = None) -> keras.Model:
    """A Keras model computing ``torch_model``'s eval-mode forward on NHWC input (weights uninitialised)."""
    x = _input(input_shape)
    return keras.Model(x, KerasMirror(torch_model).model(torch_model, x), name=name)


def mirror_backbone(torch_backbone: nn.Module, *, name: str,
                    input_shape: tuple[int | None, int | None, int] | None = None) -> keras.Model:
    """A Keras backbone returning ``{"out", "low_level"}`` (``low_level`` only where the PyTorch one has it)."""
    x = _input(input_shape)
    return keras.Model(x, KerasMirror(torch_backbone).backbone(torch_backbone, x), name=name)


def meta_build(builder: Callable[..., nn.Module], *args: Any, **kwargs: Any) -> nn.Module:
    """Build a PyTorch reference model on the ``meta`` device: the architecture without allocating weights."""
    with torch.device("meta"):
        return builder(*args, **kwargs)
