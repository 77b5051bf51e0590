"""Convert the official DeepLab v2 caffemodels into Keras 3 weights for ``reference_models.keras``.

Examples (from the repository root):

  python converters/caffe2tf.py --dataset coco_init
  python converters/caffe2tf.py --dataset voc12 --out weights/deeplabv2_voc12.weights.h5
  python converters/caffe2tf.py --dataset voc12 --out weights/deeplabv2_voc12.keras
  python converters/caffe2tf.py --caffemodel my.caffemodel --arch deeplabv2_resnet101 --num-classes 21 \\
      --out my.weights.h5

Same releases, flags and checks as ``caffe2torch.py`` (it is the same pipeline: caffemodel ->
named arrays -> the canonical PyTorch-named state dict), then the Keras writer
(``converters/keras_writer.py``: layouts only, no second rename table). Output:

* ``.weights.h5``: ``m = reference_models.keras.build_keras_model(arch, num_classes=N)``;
  ``m.load_weights(path)``;
* ``.keras``: the whole model, ``reference_models.keras.load_keras_model(path)``;

plus a provenance JSON beside it (``x.weights.h5`` -> ``x.weights.json``, ``x.keras`` -> ``x.keras.json``, never
the PyTorch weights' ``x.json``: source sha256, release,
architecture, steps, TensorFlow/Keras versions, preprocessing contract). The Keras models take NHWC
input preprocessed as the release says (BGR, mean 104.008/116.669/122.675 subtracted).
Needs TensorFlow and Keras (``pip install '.[tf]'``); TensorFlow's start-up log lines are silenced.
Exit codes: 0 success, 1 bad input (one line on stderr), 2 usage error, 130 interrupted.
"""

from __future__ import annotations

import sys

if __name__ == "__main__" and not __package__:  # run as a file: re-run as `python -m converters.<name>`
    import as_module
    as_module.rerun(__file__)

import argparse
from functools import partial
from pathlib import Path

from converters import caffe2torch
from converters.cli import run_main
from converters.keras_writer import keras_parser, run_keras_command


def build_parser() -> argparse.ArgumentParser:
    return keras_parser(caffe2torch.build_parser(), "Convert an official DeepLab v2 caffemodel into Keras 3 weights "
                        "for reference_models.keras (no Caffe needed).",
                        "<release folder>/<arch>_<release>.weights.h5, or beside the caffemodel")


def default_output(args: argparse.Namespace) -> Path:
    """``--out``, else caffe2torch.py's default output with the ``.weights.h5`` suffix."""
    return caffe2torch.default_output(args, suffix=".weights.h5")


def run(args: argparse.Namespace) -> Path:
    """Convert as ``args`` say; return the Keras output path. Raises DeeplabError for bad input."""
    return run_keras_command(args, out=default_output(args), inputs=caffe2torch.inputs,
                             convert=partial(caffe2torch.convert, tool="converters/caffe2tf.py"))


def main(argv: list[str] | None = None) -> int:
    return run_main(build_parser(), run, argv, check=caffe2torch.check_usage)


if __name__ == "__main__":
    sys.exit(main())
