"""Convert official TensorFlow (TF-slim / DeepLab-TF) checkpoints into Keras 3 weights for ``reference_models.keras``.

Examples (from the repository root):

  python converters/tf2keras.py --dataset deeplabv3_pascal_train_aug_2018_01_04
  python converters/tf2keras.py --dataset resnet_v1_101_2016_08_28 --out weights/r101.weights.h5
  python converters/tf2keras.py --checkpoint my/model.ckpt --arch deeplabv3plus_xception65 --out my.keras

Same releases, flags and checks as ``tf2torch.py`` (the same pipeline: checkpoint -> named arrays
-> the canonical PyTorch-named state dict, release manifests checked), then the Keras writer
(``converters/keras_writer.py``: layouts only, no second rename table). Output:

* ``.weights.h5``: ``reference_models.keras.build_keras_model(arch, num_classes=N, output_stride=S)``
  (a DeepLab release) or ``build_keras_backbone(arch, output_stride=S)`` (an ImageNet release), then
  ``.load_weights(path)``; the weights load at any output stride the architecture allows;
* ``.keras``: the whole model at ``--output-stride``, ``reference_models.keras.load_keras_model(path)``;

plus a provenance JSON beside it (``x.weights.h5`` -> ``x.weights.json``, ``x.keras`` -> ``x.keras.json``: never
the PyTorch weights' ``x.json``). Why not read the checkpoint
with TensorFlow into a Keras model directly: the TF-free reader and the rename table are the ones
the PyTorch weights are proven with, so both frameworks get identical numbers from one path.
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

from converters import tf2torch
from converters.cli import run_main
from converters.keras_writer import keras_parser, run_keras_command, set_help


def build_parser() -> argparse.ArgumentParser:
    parser = keras_parser(tf2torch.build_parser(), "Convert an official TensorFlow DeepLab / TF-slim checkpoint "
                          "into Keras 3 weights for reference_models.keras.",
                          "data/models/<folder>/<arch>_<release>.weights.h5, or beside the checkpoint")
    set_help(parser, "output_stride", "output stride of the checked model and of a .keras output (default 16; "
             ".weights.h5 files load at any stride the architecture allows)")
    return parser


def default_output(args: argparse.Namespace) -> Path:
    """``--out``, else tf2torch.py's default output with the ``.weights.h5`` suffix."""
    return tf2torch.default_output(args, suffix=".weights.h5")


def run(args: argparse.Namespace) -> Path:
    """Convert as ``args`` say; return the Keras output path. Raises DeeplabError for bad input."""
    return run_keras_command(args, out=default_output(args), inputs=tf2torch.inputs,
                             convert=partial(tf2torch.convert, tool="converters/tf2keras.py"))


def main(argv: list[str] | None = None) -> int:
    return run_main(build_parser, run, argv, check=tf2torch.check_usage)


if __name__ == "__main__":
    sys.exit(main())
