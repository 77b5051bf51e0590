"""The official DeepLab v2 network definitions, built as Caffe ``NetParameter`` messages.

These mirror the released prototxts layer for layer (names, types, bottoms,
tops and parameters; a test compares them with the public copies in
``../shared/fixtures/deeplab_v2``). They serve three purposes: writing
official-format caffemodels with random weights for tests, demos and smoke
runs (``converters.caffe.synth``); naming the Caffe layer a model parameter
should come from when a file lacks it; and sizing Caffe's ``Interp`` layers.

Architectures (``arch``):
- ``resnet101``: ResNet-101 + ASPP-L (``fc1_{exp}_c0..c3``, summed), one scale.
- ``resnet101_msc``: the same at scales 1, 0.75, 0.5 with shared weights,
  ``fc_fusion`` = element-wise MAX (the released VOC models).
- ``resnet101_init``: ResNet-101 + a 1x1 classifier ``fc1_{exp}`` (the COCO
  ``init.caffemodel`` as kazuto1011/deeplab-pytorch converts it, 91 classes).
- ``vgg16_aspp``: VGG-16 ASPP-L (``fc6_k``/``fc7_k``/``fc8_{exp}_k``, k = 1..4, summed).
- ``vgg16_largefov``: VGG-16 LargeFOV (one branch, rate 12: ``fc6``/``fc7``/``fc8_{exp}``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from converters.caffe.reader import caffe_pb
from reference_models.caffe_ops import interp_out

ARCHS = ("resnet101", "resnet101_msc", "resnet101_init", "vgg16_aspp", "vgg16_largefov")

RESNET101_BLOCKS = (3, 4, 23, 3)  # units in res2..res5
RESNET_WIDTHS = {2: (64, 256), 3: (128, 512), 4: (256, 1024), 5: (512, 2048)}  # (bottleneck, out)
RESNET_DILATION = {2: 1, 3: 1, 4: 2, 5: 4}
ASPP_RATES = (6, 12, 18, 24)
LARGEFOV_RATE = 12
MSC_SCALES = (("res075", 4, 3), ("res05", 2, 1))  # (suffix, shrink_factor, zoom_factor)


def unit_names(n_blocks: int) -> list[str]:
    """Caffe/MSRA unit suffixes: a, b, c for short stages; a, b1, b2, ... for long ones."""
    if n_blocks <= 3:
        return ["a", "b", "c"][:n_blocks]
    return ["a"] + [f"b{i}" for i in range(1, n_blocks)]


class _NetBuilder:
    """Appends layers to a NetParameter with Caffe's naming habits."""

    def __init__(self, name: str) -> None:
        self.pb = caffe_pb()
        self.net = self.pb.NetParameter(name=name)

    def layer(self, name: str, ltype: str, bottoms: list[str], tops: list[str]) -> Any:
        lp = self.net.layer.add(name=name, type=ltype)
        lp.bottom.extend(bottoms)
        lp.top.extend(tops)
        return lp

    def conv(self, name: str, bottom: str, num_output: int, kernel: int, *, stride: int = 1, pad: int = 0,
             dilation: int = 1, bias: bool, param_name: str | None = None, top: str | None = None) -> Any:
        lp = self.layer(name, "Convolution", [bottom], [top or name])
        if bias:
            lp.param.add(name=f"{param_name or name}_w", lr_mult=10, decay_mult=1)
            lp.param.add(name=f"{param_name or name}_b", lr_mult=20, decay_mult=0)
        else:
            lp.param.add(name=f"{param_name or name}_0", lr_mult=1, decay_mult=1)
        cp = lp.convolution_param
        cp.num_output = num_output
        cp.kernel_size.append(kernel)
        cp.pad.append(pad)
        if dilation != 1:
            cp.dilation.append(dilation)
        cp.stride.append(stride)
        cp.bias_term = bias
        return lp

    def bn_scale(self, bn: str, scale: str, blob: str, *, share: str = "") -> None:
        share_bn, share_sc = (bn, scale) if not share else (share.format("bn"), share.format("scale"))
        lp = self.layer(bn, "BatchNorm", [blob], [blob])
        lp.batch_norm_param.use_global_stats = True
        for i in range(3):
            lp.param.add(name=f"{share_bn}_{i}", lr_mult=0)
        lp = self.layer(scale, "Scale", [blob], [blob])
        lp.scale_param.bias_term = True
        for i in range(2):
            lp.param.add(name=f"{share_sc}_{i}", lr_mult=0)

    def relu(self, name: str, blob: str) -> None:
        self.layer(name, "ReLU", [blob], [blob])

    def pool(self, name: str, bottom: str, *, kernel: int, stride: int, pad: int) -> None:
        lp = self.layer(name, "Pooling", [bottom], [name])
        pp = lp.pooling_param
        pp.pool = pp.MAX
        pp.kernel_size, pp.stride, pp.pad = kernel, stride, pad

    def eltwise(self, name: str, bottoms: list[str], op: str) -> None:
        lp = self.layer(name, "Eltwise", bottoms, [name])
        lp.eltwise_param.operation = getattr(lp.eltwise_param, op)

    def interp(self, name: str, bottom: str, *, shrink: int = 1, zoom: int = 1) -> None:
        lp = self.layer(name, "Interp", [bottom], [name])
        ip = lp.interp_param
        if zoom != 1:
            ip.zoom_factor = zoom
        if shrink != 1:
            ip.shrink_factor = shrink
        ip.pad_beg = 0
        ip.pad_end = 0


def _resnet101_backbone(b: _NetBuilder, data: str, sfx: str = "") -> str:
    """Append the dilated ResNet-101 (output stride 8); return the top of ``res5c``."""

    def n(name: str) -> str:
        return name + sfx

    b.conv(n("conv1"), data, 64, 7, stride=2, pad=3, bias=False, param_name="conv1", top=n("conv1"))
    b.bn_scale(n("bn_conv1"), n("scale_conv1"), n("conv1"), share="{}_conv1" if sfx else "")
    b.relu(n("conv1_relu"), n("conv1"))
    b.pool(n("pool1"), n("conv1"), kernel=3, stride=2, pad=1)
    prev = n("pool1")
    for stage, n_blocks in zip(range(2, 6), RESNET101_BLOCKS):
        mid, out = RESNET_WIDTHS[stage]
        dil = RESNET_DILATION[stage]
        for unit in unit_names(n_blocks):
            u = f"{stage}{unit}"
            # Caffe/MSRA layout: the stride sits on the 1x1 convs, and only in res3a.
            stride = 2 if (stage == 3 and unit == "a") else 1
            if unit == "a":
                b.conv(n(f"res{u}_branch1"), prev, out, 1, stride=stride, bias=False, param_name=f"res{u}_branch1")
                b.bn_scale(n(f"bn{u}_branch1"), n(f"scale{u}_branch1"), n(f"res{u}_branch1"),
                           share=f"{{}}{u}_branch1" if sfx else "")
                shortcut = n(f"res{u}_branch1")
            else:
                shortcut = prev
            b.conv(n(f"res{u}_branch2a"), prev, mid, 1, stride=stride, bias=False, param_name=f"res{u}_branch2a")
            b.bn_scale(n(f"bn{u}_branch2a"), n(f"scale{u}_branch2a"), n(f"res{u}_branch2a"),
                       share=f"{{}}{u}_branch2a" if sfx else "")
            b.relu(f"res{u}_branch2a_relu{sfx}", n(f"res{u}_branch2a"))
            b.conv(n(f"res{u}_branch2b"), n(f"res{u}_branch2a"), mid, 3, pad=dil, dilation=dil, bias=False,
                   param_name=f"res{u}_branch2b")
            b.bn_scale(n(f"bn{u}_branch2b"), n(f"scale{u}_branch2b"), n(f"res{u}_branch2b"),
                       share=f"{{}}{u}_branch2b" if sfx else "")
            b.relu(f"res{u}_branch2b_relu{sfx}", n(f"res{u}_branch2b"))
            b.conv(n(f"res{u}_branch2c"), n(f"res{u}_branch2b"), out, 1, bias=False, param_name=f"res{u}_branch2c")
            b.bn_scale(n(f"bn{u}_branch2c"), n(f"scale{u}_branch2c"), n(f"res{u}_branch2c"),
                       share=f"{{}}{u}_branch2c" if sfx else "")
            b.eltwise(n(f"res{u}"), [shortcut, n(f"res{u}_branch2c")], "SUM")
            b.relu(f"res{u}_relu{sfx}", n(f"res{u}"))
            prev = n(f"res{u}")
    return prev


def _aspp_resnet(b: _NetBuilder, bottom: str, exp: str, num_classes: int, sfx: str = "") -> str:
    branches = []
    for k, rate in enumerate(ASPP_RATES):
        name = f"fc1_{exp}{sfx}_c{k}"
        b.conv(name, bottom, num_classes, 3, pad=rate, dilation=rate, bias=True, param_name=f"fc1_{exp}_c{k}")
        branches.append(name)
    b.eltwise(f"fc1_{exp}{sfx}", branches, "SUM")
    return f"fc1_{exp}{sfx}"


def _vgg16_backbone(b: _NetBuilder, data: str) -> str:
    prev = data
    for block, (n_convs, width) in enumerate(((2, 64), (2, 128), (3, 256), (3, 512), (3, 512)), start=1):
        dil = 2 if block == 5 else 1
        for i in range(1, n_convs + 1):
            name = f"conv{block}_{i}"
            lp = b.layer(name, "Convolution", [prev], [name])
            cp = lp.convolution_param
            cp.num_output = width
            cp.pad.append(dil)
            cp.kernel_size.append(3)
            if dil != 1:
                cp.dilation.append(dil)
            b.relu(f"relu{block}_{i}", name)
            prev = name
        # pool1-3 halve the resolution; pool4/pool5 keep it (output stride 8).
        b.pool(f"pool{block}", prev, kernel=3, stride=2 if block <= 3 else 1, pad=1)
        prev = f"pool{block}"
    return prev


def _vgg_branch(b: _NetBuilder, bottom: str, exp: str, num_classes: int, rate: int, k: str) -> str:
    fc6, fc7, fc8 = f"fc6{k}", f"fc7{k}", f"fc8_{exp}{k}"
    lp = b.layer(fc6, "Convolution", [bottom], [fc6])
    cp = lp.convolution_param
    cp.num_output = 1024
    cp.pad.append(rate)
    cp.kernel_size.append(3)
    cp.dilation.append(rate)
    b.relu(f"relu6{k}", fc6)
    lp = b.layer(f"drop6{k}", "Dropout", [fc6], [fc6])
    lp.dropout_param.dropout_ratio = 0.5
    lp = b.layer(fc7, "Convolution", [fc6], [fc7])
    lp.convolution_param.num_output = 1024
    lp.convolution_param.kernel_size.append(1)
    b.relu(f"relu7{k}", fc7)
    lp = b.layer(f"drop7{k}", "Dropout", [fc7], [fc7])
    lp.dropout_param.dropout_ratio = 0.5
    lp = b.layer(fc8, "Convolution", [fc7], [fc8])
    lp.convolution_param.num_output = num_classes
    lp.convolution_param.kernel_size.append(1)
    return fc8


def build_net(arch: str, *, num_classes: int, exp: str = "voc12", input_hw: tuple[int, int] = (321, 321)) -> Any:
    """Return the official test-time ``NetParameter`` of ``arch`` (no blobs).

    The net declares its input as ``input: "data"`` with shape 1x3xHxW and ends at
    the score map before the final 8x ``Interp`` (``fc_fusion`` for the 3-scale
    net, ``fc1_{exp}`` / ``fc8_{exp}`` otherwise). Interp layers keep Caffe's
    shrink/zoom factors as in the released prototxts.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown Caffe architecture '{arch}'; known: {', '.join(ARCHS)}")
    b = _NetBuilder(f"deeplabv2_{arch}")
    b.net.input.append("data")
    b.net.input_shape.add().dim.extend([1, 3, int(input_hw[0]), int(input_hw[1])])
    if arch in ("resnet101", "resnet101_init"):
        top = _resnet101_backbone(b, "data")
        if arch == "resnet101":
            _aspp_resnet(b, top, exp, num_classes)
        else:
            b.conv(f"fc1_{exp}", top, num_classes, 1, bias=True)
    elif arch == "resnet101_msc":
        for sfx, shrink, zoom in reversed(MSC_SCALES):  # the released net builds data_res05 first
            b.interp(f"data_{sfx}", "data", shrink=shrink, zoom=zoom)
        tops = {"": _resnet101_backbone(b, "data")}
        for sfx, _, _ in MSC_SCALES[::-1]:
            tops[sfx] = _resnet101_backbone(b, f"data_{sfx}", f"_{sfx}")
        _aspp_resnet(b, tops[""], exp, num_classes)
        for sfx, _, _ in MSC_SCALES[::-1]:
            _aspp_resnet(b, tops[sfx], exp, num_classes, f"_{sfx}")
        # Score maps of the smaller scales are brought back to the 1x size: the
        # inverse factor of the input shrink (0.5 -> zoom 2; 0.75 -> zoom 4, shrink 3).
        for sfx, shrink, zoom in MSC_SCALES[::-1]:
            b.interp(f"fc1_{exp}_{sfx}_interp", f"fc1_{exp}_{sfx}", shrink=zoom, zoom=shrink)
        b.eltwise("fc_fusion", [f"fc1_{exp}"] + [f"fc1_{exp}_{s}_interp" for s, _, _ in MSC_SCALES], "MAX")
    elif arch == "vgg16_aspp":
        top = _vgg16_backbone(b, "data")
        outs = [_vgg_branch(b, top, exp, num_classes, rate, f"_{k}") for k, rate in enumerate(ASPP_RATES, start=1)]
        b.eltwise(f"fc8_{exp}", outs, "SUM")
    else:  # vgg16_largefov
        top = _vgg16_backbone(b, "data")
        _vgg_branch(b, top, exp, num_classes, LARGEFOV_RATE, "")
    return b.net


def output_blob(arch: str, exp: str = "voc12") -> str:
    """Name of the score blob that corresponds to the model's eval output."""
    return {"resnet101_msc": "fc_fusion", "vgg16_aspp": f"fc8_{exp}", "vgg16_largefov": f"fc8_{exp}"}.get(
        arch, f"fc1_{exp}"
    )


# ---------------------------------------------------------------------------
# Caffe's size rules


def conv_out(n: int, kernel: int, stride: int, pad: int, dilation: int = 1) -> int:
    """Caffe convolution output size (floor)."""
    return (n + 2 * pad - (dilation * (kernel - 1) + 1)) // stride + 1


def pool_out(n: int, kernel: int, stride: int, pad: int) -> int:
    """Caffe pooling output size: rounds up, then drops a window that starts in the padding."""
    out = int(math.ceil((n + 2 * pad - kernel) / stride)) + 1
    if pad and (out - 1) * stride >= n + pad:
        out -= 1
    return out


def infer_sizes(net: Any, input_hw: tuple[int, int]) -> dict[str, tuple[int, int]]:
    """Spatial size of every blob of ``net`` for an ``input_hw`` input, by Caffe's rules."""
    sizes: dict[str, tuple[int, int]] = {name: tuple(input_hw) for name in net.input}
    rules: dict[str, Callable[[Any, tuple[int, int]], tuple[int, int]]] = {
        "Convolution": lambda lp, hw: tuple(
            conv_out(s, lp.convolution_param.kernel_size[0], _first(lp.convolution_param.stride, 1),
                     _first(lp.convolution_param.pad, 0), _first(lp.convolution_param.dilation, 1)) for s in hw),
        "Pooling": lambda lp, hw: tuple(
            pool_out(s, lp.pooling_param.kernel_size, lp.pooling_param.stride, lp.pooling_param.pad) for s in hw),
        "Interp": _interp_size,
    }
    for lp in net.layer:
        if lp.type == "Input":
            for top, shape in zip(lp.top, lp.input_param.shape):
                sizes[top] = (int(shape.dim[2]), int(shape.dim[3]))
            continue
        if not lp.bottom:
            continue
        hw = sizes[lp.bottom[0]]
        out = rules[lp.type](lp, hw) if lp.type in rules else hw
        for top in lp.top:
            sizes[top] = out
    return sizes


def _first(values: Any, default: int) -> int:
    return int(values[0]) if len(values) else default


def _interp_size(lp: Any, hw: tuple[int, int]) -> tuple[int, int]:
    ip = lp.interp_param
    if ip.height and ip.width:
        return (ip.height, ip.width)
    return tuple(interp_out(s, shrink=ip.shrink_factor, zoom=ip.zoom_factor, pad_beg=ip.pad_beg, pad_end=ip.pad_end)
                 for s in hw)


# Layers a deploy net needs no further: OpenCV does not know the DeepLab-only ones.
_DROP_FOR_OPENCV = {"SegAccuracy", "MatWrite", "SoftmaxWithLoss", "DenseCRF", "Silence", "ArgMax",
                    "ImageSegData", "Input", "Accuracy"}


def opencv_deploy(net: Any, input_hw: tuple[int, int]) -> Any:
    """A copy of ``net`` that OpenCV's Caffe importer runs as Caffe would.

    - data layers become an ``input`` declaration of 1x3xHxW;
    - every ``Interp`` gets explicit ``height``/``width`` computed by Caffe's rule
      (OpenCV sizes shrink+zoom Interps wrongly);
    - layers OpenCV does not know (accuracy, MatWrite, losses, CRF) are dropped.
    """
    pb = caffe_pb()
    sizes = infer_sizes(net, input_hw)
    out = pb.NetParameter(name=net.name)
    out.input.append("data")
    out.input_shape.add().dim.extend([1, 3, int(input_hw[0]), int(input_hw[1])])
    for lp in net.layer:
        if lp.type in _DROP_FOR_OPENCV:
            continue
        new = out.layer.add()
        new.CopyFrom(lp)
        del new.blobs[:]
        if lp.type == "Interp":
            h, w = sizes[lp.top[0]]
            new.ClearField("interp_param")
            new.interp_param.height = h
            new.interp_param.width = w
    return out


# --------------------------------------------------------------------------- comparing topologies
COMPARED_KINDS = ("Convolution", "BatchNorm", "Scale", "Pooling", "Eltwise", "Interp")  # weights or shapes


def layer_signature(lp: Any) -> list:
    """One layer as ``[type, bottoms, tops, sorted [parameter, value] pairs, shared parameter names]``: the
    record ``tests/data/official_topology.json`` holds per layer of the released prototxts (JSON-ready)."""
    params: dict[str, Any] = {}
    if lp.type == "Convolution":
        cp = lp.convolution_param
        params = dict(n=cp.num_output, k=list(cp.kernel_size), s=list(cp.stride) or [1], p=list(cp.pad) or [0],
                      d=list(cp.dilation) or [1], bias=cp.bias_term)
    elif lp.type == "Pooling":
        pp = lp.pooling_param
        params = dict(pool=pp.pool, k=pp.kernel_size, s=pp.stride, p=pp.pad)
    elif lp.type == "Eltwise":
        params = dict(op=lp.eltwise_param.operation)
    elif lp.type == "Interp":
        ip = lp.interp_param
        params = dict(shrink=ip.shrink_factor, zoom=ip.zoom_factor)
    elif lp.type == "BatchNorm":
        params = dict(eps=round(float(lp.batch_norm_param.eps), 9))
    elif lp.type == "Scale":
        params = dict(bias=lp.scale_param.bias_term)
    return [lp.type, list(lp.bottom), list(lp.top), [[k, v] for k, v in sorted(params.items())],
            [p.name for p in lp.param]]


def layer_signatures(net: Any, kinds: tuple[str, ...] = COMPARED_KINDS) -> dict[str, list]:
    """``{layer name: layer_signature}`` of ``net``'s layers of ``kinds``."""
    return {lp.name: layer_signature(lp) for lp in net.layer if lp.type in kinds}
