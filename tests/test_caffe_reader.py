"""The Caffe reader: both layer formats, both blob encodings, prototxt text, bad files."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from converters.caffe import reader, synth, topology
from converters.caffe.reader import caffe_pb, iter_layers
from converters.errors import ConversionError
from tests.conftest import REPO


def _small_net():
    """conv(bias) -> BatchNorm -> Scale: small, every kind of blob."""
    return synth.small_net(conv="conv", bn="bn", scale="scale")


@pytest.mark.parametrize("legacy_shape,double", [(False, False), (True, False), (False, True), (True, True)])
def test_blob_encodings_read_back_equal(tmp_path, legacy_shape, double):
    net = _small_net()
    a = tmp_path / "a.caffemodel"
    b = tmp_path / "b.caffemodel"
    synth.write_caffemodel(net, a, seed=1)
    synth.write_caffemodel(net, b, seed=1, legacy_shape=legacy_shape, double=double)
    la, lb = list(iter_layers(a)), list(iter_layers(b))
    assert [x.name for x in la] == [x.name for x in lb] == ["conv", "bn", "scale"]
    for x, y in zip(la, lb):
        for u, v in zip(x.blobs, y.blobs):
            assert u.dtype == v.dtype == np.float32
            # legacy 4-D shapes pad leading ones, as Caffe does
            np.testing.assert_array_equal(u.reshape(-1), v.reshape(-1))
            assert v.shape == (u.shape if not legacy_shape else (1,) * (4 - u.ndim) + u.shape)


def test_v1_layers_are_read(tmp_path):
    net = topology.build_net("vgg16_largefov", num_classes=5)
    path = tmp_path / "v1.caffemodel"
    synth.write_caffemodel(net, path, v1=True)
    layers = list(iter_layers(path))
    assert {la.type for la in layers} >= {"Convolution", "ReLU", "Pooling", "Dropout"}
    conv = next(la for la in layers if la.name == "conv5_3")
    assert conv.blobs[0].shape == (512, 512, 3, 3) and conv.param.convolution_param.dilation[0] == 2
    # and a V1 file converts like a V2 one
    from converters.caffe.convert import convert_caffemodel

    v2 = tmp_path / "v2.caffemodel"
    synth.write_caffemodel(net, v2)
    s1 = convert_caffemodel(path, arch="deeplabv2_vgg16_largefov").state_dict
    s2 = convert_caffemodel(v2, arch="deeplabv2_vgg16_largefov").state_dict
    assert all(np.array_equal(s1[k].numpy(), s2[k].numpy()) for k in s2)


def test_reader_matches_protobuf_whole_file_parse(caffemodels):
    """The streaming walk agrees with protobuf parsing the file in one piece."""
    _, path = caffemodels("vgg16_largefov")
    whole = caffe_pb().NetParameter.FromString(path.read_bytes())
    streamed = list(iter_layers(path))
    assert [la.name for la in whole.layer] == [la.name for la in streamed]
    for lp, la in zip(whole.layer, streamed):
        for bp, arr in zip(lp.blobs, la.blobs):
            np.testing.assert_array_equal(np.array(bp.data, np.float32), arr.reshape(-1))
            assert list(bp.shape.dim) == list(arr.shape)


def test_descriptor_is_compiled_from_the_proto():
    pytest.importorskip("grpc_tools", reason="grpcio-tools (the test extra) provides protoc")
    rc = subprocess.run([sys.executable, str(REPO / "tools" / "compile_protos.py"), "--check"], capture_output=True,
                        text=True)
    assert rc.returncode == 0, rc.stderr


@pytest.mark.parametrize("content,message", [
    (b"", "empty"),
    (b"\x00\x01\x02garbage" * 10, "not a caffemodel"),
    (b"this is a text file, not a caffemodel\n" * 4, "not a caffemodel|truncated"),
])
def test_foreign_files_are_rejected(tmp_path, content, message):
    path = tmp_path / "bad.caffemodel"
    path.write_bytes(content)
    with pytest.raises(ConversionError, match=message) as exc:
        list(iter_layers(path))
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


def test_truncated_file_is_rejected(caffemodels, tmp_path):
    _, path = caffemodels("vgg16_largefov")
    cut = tmp_path / "cut.caffemodel"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    with pytest.raises(ConversionError, match="truncated"):
        list(iter_layers(cut))


def test_blob_size_disagreeing_with_shape_is_rejected(tmp_path):
    pb = caffe_pb()
    blob = pb.BlobProto()
    blob.shape.dim.extend([2, 3])
    blob.data.extend([1.0, 2.0])
    with pytest.raises(ConversionError, match="holds 2 values but its shape"):
        reader.blob_to_array(blob, path=tmp_path / "f", layer="conv", index=0)
