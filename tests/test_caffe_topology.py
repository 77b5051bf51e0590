"""Our official-topology generator against the public copies of the released prototxts.

Every layer that carries weights or shapes the network (convolutions, BatchNorm,
Scale, pooling, element-wise ops, Interp) must agree in name, type, bottoms, tops
and parameters; so must the parameter-sharing names of the 3-scale net.
"""

from __future__ import annotations

import pytest

from converters.caffe import topology
from converters.caffe.reader import read_prototxt

SUBS = {"EXP": "voc12", "NUM_LABELS": "21", "NET_ID": "deeplab"}
KINDS = ("Convolution", "BatchNorm", "Scale", "Pooling", "Eltwise", "Interp")


def signature(lp):
    params = {}
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
        params = dict(eps=lp.batch_norm_param.eps)
    elif lp.type == "Scale":
        params = dict(bias=lp.scale_param.bias_term)
    shared = tuple(p.name for p in lp.param)
    return (lp.type, tuple(lp.bottom), tuple(lp.top), tuple(sorted(params.items())), shared)


def layers_of(net, drop=()):
    return {lp.name: signature(lp) for lp in net.layer if lp.type in KINDS and lp.name not in drop}


@pytest.mark.parametrize("fixture,arch", [
    ("resnet101_deploy.prototxt", "resnet101"),
    ("resnet101_msc_test.prototxt", "resnet101_msc"),
    ("vgg16_aspp_test.prototxt", "vgg16_aspp"),
])
def test_generated_topology_equals_official(shared_fixtures, fixture, arch):
    official = read_prototxt(shared_fixtures / fixture, SUBS)
    ours = topology.build_net(arch, num_classes=21)
    # the test nets' final 8x upsampling (fc1_interp / fc8_interp) precedes the argmax we do not model
    want = layers_of(official, drop=("fc1_interp", "fc8_interp"))
    got = layers_of(ours)
    assert sorted(want) == sorted(got)
    diff = {name: (want[name], got[name]) for name in want if want[name] != got[name]}
    assert not diff, list(diff.items())[:3]


def test_every_arch_builds_and_sizes():
    for arch in topology.ARCHS:
        net = topology.build_net(arch, num_classes=21)
        sizes = topology.infer_sizes(net, (513, 513))
        assert sizes[topology.output_blob(arch)] == (65, 65), arch
