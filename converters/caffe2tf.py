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
Exit codes: 0 success, 1 bad input (one line on stderr), 2 usage error.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from converters import caffe2torch  # noqa: E402
from converters.cli import run_main  # noqa: E402
from converters.io import check_outputs_spare_inputs  # noqa: E402
from converters.keras_writer import (  # noqa: E402
    KERAS_SUFFIXES,
    check_keras_output,
    convert_via_state_dict,
    keras_provenance_path,
    set_help,
)
from converters.releases import CAFFE_RELEASES  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = caffe2torch.build_parser()
    parser.prog = "caffe2tf.py"
    parser.description = ("Convert an official DeepLab v2 caffemodel into Keras 3 weights for "
                          "reference_models.keras (no Caffe needed).")
    set_help(parser, "out", f"output, one of {', '.join(KERAS_SUFFIXES)} (weights, or the whole model) "
             "(default: <release folder>/<arch>_<release>.weights.h5, or beside the caffemodel)")
    return parser


def default_output(args: argparse.Namespace) -> Path:
    release = CAFFE_RELEASES.get(args.dataset) if args.dataset else None
    if args.out is not None:
        return args.out
    # caffe2torch's defaults with the Keras suffix
    return (release.default_output if release else args.caffemodel).with_suffix(".weights.h5")


def run(args: argparse.Namespace) -> Path:
    """Convert as ``args`` say; return the Keras output path. Raises ConversionError for bad input."""
    out = default_output(args)
    check_keras_output(out)
    src = args.caffemodel or CAFFE_RELEASES[args.dataset].default_path
    check_outputs_spare_inputs([out, keras_provenance_path(out)], [src])
    return convert_via_state_dict(caffe2torch.run, args, out, tool="converters/caffe2tf.py")


def main(argv: list[str] | None = None) -> int:
    return run_main(build_parser(), run, argv, check=caffe2torch.check_usage)


if __name__ == "__main__":
    sys.exit(main())
