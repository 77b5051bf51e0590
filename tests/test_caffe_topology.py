"""Our official-topology generator against the released DeepLab v2 prototxts.

Every layer that carries weights or shapes the network (convolutions, BatchNorm,
Scale, pooling, element-wise ops, Interp) must agree in name, type, bottoms, tops
and parameters; so must the parameter-sharing names of the 3-scale net. The official
side is ``tests/data/official_topology.json``, derived from the public prototxts by
``python -m tools.make_test_data`` with the same per-layer record as
:func:`converters.caffe.topology.layer_signature` (so a fresh clone runs these tests without them).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.protobuf import text_format

from converters.caffe import topology
from converters.caffe.reader import parse_prototxt_text

TABLE = json.loads((Path(__file__).parent / "data" / "official_topology.json").read_text(encoding="utf-8"))
KINDS = tuple(TABLE["kinds"])


@pytest.mark.parametrize("fixture,arch", [
    ("resnet101_deploy.prototxt", "resnet101"),
    ("resnet101_msc_test.prototxt", "resnet101_msc"),
    ("vgg16_aspp_test.prototxt", "vgg16_aspp"),
])
def test_generated_topology_equals_official(fixture, arch):
    official = TABLE["nets"][fixture]["signatures"]
    ours = topology.build_net(arch, num_classes=21)
    # the test nets' final 8x upsampling (fc1_interp / fc8_interp) precedes the argmax we do not model
    want = {name: sig for name, sig in official.items() if name not in ("fc1_interp", "fc8_interp")}
    got = topology.layer_signatures(ours, KINDS)
    assert sorted(want) == sorted(got)
    diff = {name: (want[name], got[name]) for name in want if want[name] != got[name]}
    assert not diff, list(diff.items())[:3]


def test_table_facts() -> None:
    """Whole-file facts of the released prototxts that the converters and recipes rely on."""
    deploy = TABLE["nets"]["resnet101_deploy.prototxt"]
    assert deploy["layers"] == 451 and deploy["layer_types"]["BatchNorm"] == 104
    msc = TABLE["nets"]["resnet101_msc_test.prototxt"]["signatures"]
    assert msc["data_res075"][0] == "Interp" and dict(map(tuple, msc["data_res075"][3])) == {"shrink": 4, "zoom": 3}
    assert TABLE["train"]["crop_size"] == 321 and TABLE["train"]["scale_factors"] == [0.5, 0.75, 1, 1.25, 1.5]


def test_prototxt_text_round_trip() -> None:
    """The prototxt parser reads a whole 3-scale net in text form back to the official layer table."""
    text = text_format.MessageToString(topology.build_net("resnet101_msc", num_classes=21))
    net = parse_prototxt_text(text)
    official = TABLE["nets"]["resnet101_msc_test.prototxt"]["signatures"]
    got = topology.layer_signatures(net, KINDS)
    assert {n: s for n, s in official.items() if n != "fc1_interp"} == got


def test_every_arch_builds_and_sizes():
    for arch in topology.ARCHS:
        net = topology.build_net(arch, num_classes=21)
        sizes = topology.infer_sizes(net, (513, 513))
        assert sizes[topology.output_blob(arch)] == (65, 65), arch
