"""Write ``converters/manifests/<release>.json``: every variable name and shape of each official TF release.

Usage (from the repository root; needs tensorflow, tf_keras and tf_slim, about a minute on CPU)::

    python -m tools.make_tf_manifests            # all releases in converters.releases.TF_RELEASES
    python -m tools.make_tf_manifests --check    # exit 1 if a stored manifest differs from a fresh one

Each net is built in a TF1 graph the way its official code names variables, and the manifest is the
graph's ``global_variables()`` (name -> shape, BatchNorm moving statistics included):

* slim ImageNet ResNets: ``tf_slim.nets.resnet_v1`` / ``resnet_v2`` with their ImageNet classifier
  (``logits``: 1000 classes for v1, 1001 for v2) -- the official slim model definitions;
* ``resnet_v1_101_beta``: slim's ``resnet_v1`` blocks with DeepLab's three 3x3 root convs
  (``core/resnet_v1_beta.py``) and a 1001-class ``logits`` (inferred);
* Xception-65 and the DeepLab v3+ head: the slim wiring of ``core/xception.py`` / ``model.py`` in
  ``tests/test_tf_parity.py`` (imported, not copied);
* MobileNet-v1: the official ``mobilenet_v1`` naming rebuilt from tf_slim layers in
  ``tests/test_mobilenet_v1.py`` (tf_slim's ``nets`` has no MobileNet) with the 1001-class classifier;
* MobileNet-v2: ``tf_keras.applications.MobileNetV2`` renamed to slim's ``MobilenetV2/...`` scopes
  with the mapping in ``tests/test_tf_parity.py``, cut at DeepLab's ``layer_18`` end point, plus the
  zoo head (``image_pooling``, ``aspp0``, ``concat_projection``, ``logits/semantic``) from slim layers.

The real checkpoints may also hold ``global_step`` and optimizer slots; the converter ignores those.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

if __name__ == "__main__" and not __package__:  # a file run has tools/, not the repository, on sys.path
    sys.exit(f"run it from the repository root as: python -m tools.{Path(__file__).stem}")

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from converters.releases import MANIFESTS_DIR, TF_RELEASES, TFRelease  # noqa: E402
from converters.tf.rules import ignore_reason  # noqa: E402

FORMAT = "deeplab-repro tf manifest v1"
_SIZE = 65  # static input size for graph building; variables do not depend on it


def _tf():
    # tests/test_tf_parity.py sets up tf_slim under TF 2.x (the tf_keras.legacy_tf_layers alias).
    from tests import test_tf_parity as parity

    return parity


def _variables(build: Callable[[object], None]) -> dict[str, list[int]]:
    parity = _tf()
    graph = parity.tf.Graph()
    with graph.as_default():
        x = parity.tf1.placeholder(parity.tf.float32, [1, _SIZE, _SIZE, 3])
        build(x)
        return {v.op.name: v.shape.as_list() for v in parity.tf1.global_variables()}


def _slim_resnet(depth: int, version: int, num_classes: int) -> dict[str, list[int]]:
    parity = _tf()
    nets = {1: parity.resnet_v1, 2: parity.resnet_v2}[version]
    builder = getattr(nets, f"resnet_v{version}_{depth}")

    def build(x) -> None:
        with parity.slim.arg_scope(parity.resnet_utils.resnet_arg_scope()):
            builder(x, num_classes=num_classes, is_training=False)

    return _variables(build)


def _resnet_v1_beta(depth: int, num_classes: int) -> dict[str, list[int]]:
    """DeepLab ``resnet_v1_beta``: slim resnet_v1 blocks; root = conv1_1 (64, s2), conv1_2 (64), conv1_3 (128)."""
    parity = _tf()
    slim, resnet_utils, resnet_v1, tf1 = parity.slim, parity.resnet_utils, parity.resnet_v1, parity.tf1
    units = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth]

    def build(x) -> None:
        blocks = [
            resnet_v1.resnet_v1_block(f"block{i + 1}", base_depth=base, num_units=n, stride=stride)
            for i, (base, n, stride) in enumerate(zip((64, 128, 256, 512), units, (2, 2, 2, 1)))
        ]
        with slim.arg_scope(resnet_utils.resnet_arg_scope()), tf1.variable_scope(f"resnet_v1_{depth}"):
            with slim.arg_scope([slim.batch_norm], is_training=False):
                net = resnet_utils.conv2d_same(x, 64, 3, stride=2, scope="conv1_1")
                net = slim.conv2d(net, 64, 3, scope="conv1_2")
                net = slim.conv2d(net, 128, 3, scope="conv1_3")
                net = slim.max_pool2d(net, 3, stride=2, padding="SAME", scope="pool1")
                net = resnet_utils.stack_blocks_dense(net, blocks)
                net = tf1.reduce_mean(net, [1, 2], keepdims=True)
                slim.conv2d(net, num_classes, 1, activation_fn=None, normalizer_fn=None, scope="logits")

    return _variables(build)


def _xception_65(num_classes: int | None = None, head: bool = False) -> dict[str, list[int]]:
    parity = _tf()
    slim, tf1 = parity.slim, parity.tf1

    def build(x) -> None:
        features, low_level = parity._slim_xception_65(x, 16)
        if num_classes and not head:  # ImageNet classifier inside the xception_65 scope (core/xception.py)
            with tf1.variable_scope("xception_65"):
                pooled = tf1.reduce_mean(features, [1, 2], keepdims=True)
                slim.conv2d(pooled, num_classes, 1, activation_fn=None, normalizer_fn=None, scope="logits")
        if head:
            parity._slim_deeplab_head(
                features,
                low_level,
                rates=(6, 12, 18),
                separable=True,
                num_classes=num_classes,
                decoder_size=[math.ceil(_SIZE / 4)] * 2,
            )

    return _variables(build)


def _mobilenet_v2_deeplab(num_classes: int) -> dict[str, list[int]]:
    parity = _tf()
    tf_keras, slim, tf, tf1 = parity.tf_keras, parity.slim, parity.tf, parity.tf1
    tf_keras.backend.clear_session()
    keras_model = tf_keras.applications.MobileNetV2(weights=None, include_top=False, input_shape=(_SIZE, _SIZE, 3))
    names: dict[str, list[int]] = {}
    for layer in keras_model.layers:
        scope = parity._keras_to_slim(layer.name)
        for weight in layer.weights:
            param = weight.name.split("/")[-1].split(":")[0]
            if scope is None or param not in parity._KERAS_PARAM:
                raise RuntimeError(f"unmapped tf_keras weight {weight.name}")
            if scope == "MobilenetV2/Conv_1":  # layer_19: past DeepLab's final_endpoint='layer_18'
                continue
            names[f"{scope}/{parity._KERAS_PARAM[param]}"] = list(weight.shape)

    def head(x) -> None:  # model.py with model_variant=mobilenet_v2 and no atrous_rates / decoder
        features = tf.zeros([1, 5, 5, 320])
        with (
            slim.arg_scope([slim.conv2d], activation_fn=tf.nn.relu, normalizer_fn=slim.batch_norm),
            slim.arg_scope([slim.batch_norm], is_training=False, epsilon=1e-5, scale=True),
        ):
            pooled = slim.conv2d(tf.reduce_mean(features, [1, 2], keepdims=True), 256, 1, scope="image_pooling")
            branches = [tf1.image.resize_bilinear(pooled, [5, 5], align_corners=True)]
            branches.append(slim.conv2d(features, 256, 1, scope="aspp0"))
            net = slim.conv2d(tf.concat(branches, 3), 256, 1, scope="concat_projection")
        slim.conv2d(net, num_classes, 1, activation_fn=None, normalizer_fn=None, scope="logits/semantic")

    names.update(_variables(head))
    return names


def _mobilenet_v1(num_classes: int) -> dict[str, list[int]]:
    """slim ``mobilenet_v1`` (base + ``Logits/Conv2d_1c_1x1``) as written with tf_slim layers in
    ``tests/test_mobilenet_v1.py`` (tf_slim's ``nets`` has no MobileNet)."""
    from tests import test_mobilenet_v1 as mnv1

    return _variables(lambda x: mnv1.slim_mobilenet_v1_classifier(x, num_classes))


# release -> (builder, what is official, what is inferred)
_SLIM = "variable names and shapes from the official slim model definition (tf_slim.nets)"
_DEEPLAB_WIRING = ("names follow DeepLab-TF core/xception.py and model.py as read (facts section 7), rebuilt from "
                   "slim layers in tests/test_tf_parity.py; no TF package ships these nets")
BUILDERS: dict[str, tuple[Callable[[], dict[str, list[int]]], str, str]] = {
    "resnet_v1_50_2016_08_28": (lambda: _slim_resnet(50, 1, 1000), _SLIM + ", 1000-class logits (slim README)",
                                "that the file holds nothing but these (no global_step)"),
    "resnet_v1_101_2016_08_28": (lambda: _slim_resnet(101, 1, 1000), _SLIM + ", 1000-class logits (slim README)",
                                 "that the file holds nothing but these (no global_step)"),
    "resnet_v2_50_2017_04_14": (lambda: _slim_resnet(50, 2, 1001), _SLIM + ", 1001-class logits (slim README)",
                                "that the file holds nothing but these (global_step would be ignored)"),
    "resnet_v2_101_2017_04_14": (lambda: _slim_resnet(101, 2, 1001), _SLIM + ", 1001-class logits (slim README)",
                                 "that the file holds nothing but these (global_step would be ignored)"),
    "mobilenet_v1_1.0_224_2017_06_14": (
        lambda: _mobilenet_v1(1001),
        "scope and variable names of research/slim/nets/mobilenet_v1.py (Conv2d_0, Conv2d_<i>_depthwise/"
        "depthwise_weights, Conv2d_<i>_pointwise, BatchNorm with gamma: mobilenet_v1_arg_scope scale=True), "
        "1001-class Logits/Conv2d_1c_1x1 (slim README)",
        "that the file holds nothing but these (global_step would be ignored)",
    ),
    "deeplabv3_pascal_train_aug_2018_01_04": (
        lambda: _xception_65(21, head=True),
        _DEEPLAB_WIRING + "; separable ASPP and decoder, logits/semantic 21 classes (model_zoo.md, common.py)",
        "exact variable set of the tarball's model.ckpt (it may add global_step, which is ignored)",
    ),
    "deeplabv3_mnv2_pascal_train_aug_2018_01_29": (
        lambda: _mobilenet_v2_deeplab(21),
        "MobilenetV2 scope names of slim nets/mobilenet (via tf_keras with the mapping checked in "
        "tests/test_tf_parity.py), cut at layer_18 as feature_extractor does; head scopes of model.py",
        "no ASPP 3x3 branches and no decoder (model_zoo.md: 'no ASPP, no decoder'); exact variable set",
    ),
    "deeplabv3_xception_2018_01_04": (
        lambda: _xception_65(1001),
        _DEEPLAB_WIRING,
        "the 1001-class xception_65/logits classifier and the exact variable set",
    ),
    "resnet_v1_101_2018_05_04": (
        lambda: _resnet_v1_beta(101, 1001),
        "slim resnet_v1 block naming; beta root conv1_1/conv1_2/conv1_3 (core/resnet_v1_beta.py, facts section 6)",
        "the 1001-class resnet_v1_101/logits classifier and the exact variable set",
    ),
}


def manifest(release: TFRelease) -> dict:
    """The manifest record of ``release`` (built fresh in TensorFlow)."""
    from importlib.metadata import version

    build, official, inferred = BUILDERS[release.name]
    variables = dict(sorted(build().items()))
    ignored = {name: ignore_reason(name) for name in variables if ignore_reason(name)}
    return {
        "format": FORMAT,
        "release": release.name,
        "checkpoint": {"format": release.checkpoint_format},  # URL, folder and prefix: converters/releases.py
        "architecture": release.arch,
        "kind": release.kind,
        "dtype": "float32",
        "official": official,
        "inferred": inferred,
        "generated_by": "tools/make_tf_manifests.py",
        "generated_with": {"tensorflow": version("tensorflow-cpu"), "tf_slim": version("tf-slim")},
        "num_variables": len(variables),
        "num_values": sum(math.prod(shape) for shape in variables.values()),
        "ignored_by_converter": ignored,
        "variables": variables,
    }


def dumps(record: dict) -> str:
    """Indented JSON with one variable per line (readable diffs, ~40 KB for ResNet-101)."""
    head = {k: v for k, v in record.items() if k != "variables"}
    text = json.dumps(head, indent=2)[:-2]
    lines = [f"    {json.dumps(name)}: {json.dumps(shape)}" for name, shape in record["variables"].items()]
    return text + ',\n  "variables": {\n' + ",\n".join(lines) + "\n  }\n}\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--release", choices=sorted(TF_RELEASES), action="append", help="only these (repeatable)")
    parser.add_argument("--check", action="store_true", help="compare with the stored manifests, write nothing")
    args = parser.parse_args(argv)
    stale = []
    for name in args.release or list(TF_RELEASES):
        release = TF_RELEASES[name]
        record = manifest(release)
        path = MANIFESTS_DIR / f"{name}.json"
        if args.check:
            stored = json.loads(path.read_text()) if path.is_file() else {}
            if stored.get("variables") != record["variables"]:
                stale.append(name)
            continue
        from converters.io import write_text_atomic

        text = dumps(record)
        write_text_atomic(path, text)
        print(f"wrote {path.relative_to(REPO)} ({record['num_variables']} variables, {record['num_values']:,} values)")
    if stale:
        print(f"stale manifests: {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
