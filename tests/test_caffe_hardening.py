"""Malformed caffemodels end in one ConversionError naming the file and layer; weights-only files convert."""

from __future__ import annotations

import json

import numpy as np
import pytest

from converters import caffe2torch
from converters.caffe import passes, synth
from converters.caffe.convert import convert_caffemodel, scale_to_batchnorm
from converters.caffe.reader import caffe_pb, iter_layers
from converters.errors import ConversionError


def _small_net(with_scale: bool = True):
    return synth.small_net(scale="scale_conv1" if with_scale else None)


def _layer_record(lp, blobs) -> bytes:
    body = lp.SerializeToString() + b"".join(synth._field(7, b) for b in blobs)
    return synth._field(100, body)


def _raises(path, match, **kw):
    with pytest.raises(ConversionError, match=match) as exc:
        passes.layer_arrays(passes.drop_msc_copies(iter_layers(path), path), path, **kw)
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)
    return exc.value


def test_empty_batchnorm_factor_blob(tmp_path):
    def mutate(lp, blobs):
        if lp.type == "BatchNorm":
            blobs[2] = np.zeros(0, np.float32)
        return blobs

    path = tmp_path / "m.caffemodel"
    synth.write_caffemodel(_small_net(), path, mutate=mutate)
    assert _raises(path, "factor .blob 2. holds 0 values").layer == "bn_conv1"


def test_non_utf8_layer_name(tmp_path):
    pb = caffe_pb()
    lp = pb.LayerParameter(name="XXXX", type="ReLU")
    path = tmp_path / "m.caffemodel"
    path.write_bytes(_layer_record(lp, []).replace(b"XXXX", b"\xff\xfe\x80X"))
    _raises(path, "layer record 0: layer name is not valid UTF-8")


@pytest.mark.parametrize("dims,match", [
    ([1] * 65, "declares 65 axes, Caffe allows at most 32"),
    ([2**40, 2**40, 2**40, 0, 2**30], "holds 1 values but its shape"),
    ([2**32, 2**32], "holds 1 values but its shape"),  # 2**64 overflows int64 to 0 if computed in numpy
    ([-1, -1], "negative size"),
])
def test_declared_blob_shapes_are_checked_before_reshaping(tmp_path, dims, match):
    pb = caffe_pb()
    blob = pb.BlobProto()
    blob.shape.dim.extend(dims)
    blob.data.append(1.0)
    lp = pb.LayerParameter(name="conv1", type="Convolution")
    path = tmp_path / "m.caffemodel"
    path.write_bytes(_layer_record(lp, [blob.SerializeToString()]))
    assert _raises(path, match).layer == "conv1"


@pytest.mark.parametrize("dims", [[0, 2**62], [0, 2**40, 2**40], [2**31, 0], [0, 3, 2**31]])
def test_empty_blob_with_a_huge_declared_axis(tmp_path, dims):
    """Zero values "match" a shape with a zero axis, but numpy cannot shape even those (found by the fuzzer)."""
    pb = caffe_pb()
    blob = pb.BlobProto()
    blob.shape.dim.extend(dims)
    lp = pb.LayerParameter(name="conv1", type="Convolution")
    path = tmp_path / "m.caffemodel"
    path.write_bytes(_layer_record(lp, [blob.SerializeToString()]))
    assert _raises(path, "beyond Caffe's limit of 2147483647 values per blob").layer == "conv1"


def test_empty_blob_with_a_huge_axis_is_one_line_from_caffe2torch(tmp_path, capsys):
    pb = caffe_pb()
    blob = pb.BlobProto()
    blob.shape.dim.extend([0, 2**62])
    path = tmp_path / "m.caffemodel"
    path.write_bytes(_layer_record(pb.LayerParameter(name="conv1", type="Convolution"), [blob.SerializeToString()]))
    out = tmp_path / "out.pth"
    assert caffe2torch.main(["--caffemodel", str(path), "--arch", "deeplabv2_resnet101", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and str(path) in err and "Traceback" not in err
    assert not out.exists()


def test_swapped_convolution_blobs(tmp_path):
    net = _small_net()
    net.layer[0].convolution_param.bias_term = True

    def swap(lp, blobs):
        return blobs[::-1] if lp.type == "Convolution" else blobs

    path = tmp_path / "m.caffemodel"
    synth.write_caffemodel(net, path, mutate=swap)
    assert _raises(path, "Convolution has 2 blobs of shapes \\[\\[4\\], \\[4, 3, 3, 3\\]\\]").layer == "conv1"


@pytest.mark.parametrize("new_type,match", [
    ("InnerProduct", r"InnerProduct has 2 blobs of shapes \[\[4\], \[4\]\]"),
    ("Scale", "Scale layer does not follow a BatchNorm"),
    ("BatchNorm", "BatchNorm has 2 blobs"),
    ("Deconvolution", "unsupported type 'Deconvolution'"),
])
def test_changed_layer_types(tmp_path, new_type, match):
    path = tmp_path / "m.caffemodel"
    synth.write_caffemodel(_small_net(), path)
    net = caffe_pb().NetParameter.FromString(path.read_bytes())
    net.layer[0].type = new_type
    if new_type == "InnerProduct":
        del net.layer[0].blobs[0].shape.dim[1:]
        del net.layer[0].blobs[0].data[4:]
    path.write_bytes(net.SerializeToString())
    assert _raises(path, match).layer == "conv1"


def _strip_bottoms_tops(src, dst):
    """Rewrite ``src`` with every layer record's bottom and top removed (what weights-only tools write)."""
    pb = caffe_pb()
    net = pb.NetParameter.FromString(src.read_bytes())
    for lp in net.layer:
        del lp.bottom[:]
        del lp.top[:]
    dst.write_bytes(net.SerializeToString())


def test_weights_only_scale_paired_by_names_without_topology(tmp_path):
    full, stripped = tmp_path / "full.caffemodel", tmp_path / "stripped.caffemodel"
    synth.write_caffemodel(_small_net(), full, seed=3)
    _strip_bottoms_tops(full, stripped)
    a = passes.layer_arrays(iter_layers(full), full)
    b = passes.layer_arrays(iter_layers(stripped), stripped)
    assert a.arrays.keys() == b.arrays.keys()
    assert all(np.array_equal(a.arrays[k], b.arrays[k]) for k in a.arrays)
    assert a.scale_pairing == {"scale_conv1": ("bn_conv1", "bottom/top")}
    assert b.scale_pairing == {"scale_conv1": ("bn_conv1", "layer names")}
    # a topology naming another BatchNorm is followed, and refused when that one is not in the file
    _raises(stripped, "its BatchNorm 'bn_other' .official topology.", scale_to_bn={"scale_conv1": "bn_other"})
    net = _small_net()
    net.layer[2].name = "scale_x"
    synth.write_caffemodel(net, full, seed=3)
    _strip_bottoms_tops(full, stripped)
    _raises(stripped, "its BatchNorm 'bn_x' .layer names. does not come before it")


def test_official_topology_pairs_every_scale():
    pairs = scale_to_batchnorm("deeplabv2_resnet101")
    assert len(pairs) == 104
    assert pairs["scale_conv1"] == "bn_conv1" and pairs["scale4b22_branch2c"] == "bn4b22_branch2c"
    assert scale_to_batchnorm("deeplabv2_vgg16") == {}


@pytest.mark.slow  # a full ResNet-101 caffemodel, converted twice
def test_weights_only_caffemodel_converts_to_the_same_weights(caffemodels, tmp_path):
    _, full = caffemodels("resnet101")
    stripped = tmp_path / "weights_only.caffemodel"
    _strip_bottoms_tops(full, stripped)
    assert not any(la.bottoms or la.tops for la in iter_layers(stripped))
    a = convert_caffemodel(full, arch="deeplabv2_resnet101")
    b = convert_caffemodel(stripped, arch="deeplabv2_resnet101")
    assert a.state_dict.keys() == b.state_dict.keys()
    assert all(np.array_equal(a.state_dict[k].numpy(), b.state_dict[k].numpy()) for k in a.state_dict)
    assert a.scale_pairing == {"bottom/top": 104} and b.scale_pairing == {"official topology": 104}
    out = tmp_path / "w.pth"
    assert caffe2torch.main(["--caffemodel", str(stripped), "--arch", "deeplabv2_resnet101", "--out", str(out),
                             "--quiet"]) == 0
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["source"]["scale_layers_paired_by"] == {"official topology": 104}
