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

from converters import tf2torch  # noqa: E402
from converters.cli import run_main  # noqa: E402
from converters.io import check_outputs_spare_inputs  # noqa: E402
from converters.keras_writer import (  # noqa: E402
    KERAS_SUFFIXES,
    check_keras_output,
    convert_via_state_dict,
    keras_provenance_path,
    set_help,
)
from converters.releases import TF_RELEASES  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = tf2torch.build_parser()
    parser.prog = "tf2keras.py"
    parser.description = ("Convert an official TensorFlow DeepLab / TF-slim checkpoint into Keras 3 weights "
                          "for reference_models.keras.")
    set_help(parser, "out", f"output, one of {', '.join(KERAS_SUFFIXES)} (weights, or the whole model) "
             "(default: data/models/<folder>/<arch>_<release>.weights.h5, or beside the checkpoint)")
    set_help(parser, "output_stride", "output stride of the checked model and of a .keras output (default 16; "
             ".weights.h5 files load at any stride the architecture allows)")
    return parser


def default_output(args: argparse.Namespace) -> Path:
    if args.out is not None:
        return args.out
    release = TF_RELEASES.get(args.dataset) if args.dataset else None
    if release is not None:
        return release.default_output.with_suffix(".weights.h5")
    prefix = tf2torch.resolve_prefix(args.checkpoint) or args.checkpoint
    return prefix.with_name(f"{prefix.name}_{args.arch}.weights.h5")  # tf2torch's default, Keras suffix


def run(args: argparse.Namespace) -> Path:
    """Convert as ``args`` say; return the Keras output path. Raises ConversionError for bad input."""
    out = default_output(args)
    check_keras_output(out)
    prefix = tf2torch.resolve_prefix(args.checkpoint or TF_RELEASES[args.dataset].default_path)
    if prefix is not None:
        check_outputs_spare_inputs([out, keras_provenance_path(out)], tf2torch.source_files(prefix))
    return convert_via_state_dict(tf2torch.run, args, out, tool="converters/tf2keras.py")


def main(argv: list[str] | None = None) -> int:
    return run_main(build_parser(), run, argv, check=tf2torch.check_usage)


if __name__ == "__main__":
    sys.exit(main())
