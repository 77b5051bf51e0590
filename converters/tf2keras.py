"""Convert official TensorFlow (TF-slim / DeepLab-TF) checkpoints into Keras 3 weights for ``reference_models.keras``.

Examples (from the repository root):

  python converters/tf2keras.py --dataset deeplabv3_pascal_train_aug_2018_01_04
  python converters/tf2keras.py --dataset resnet_v1_101_2016_08_28 --out weights/r101.weights.h5
  python converters/tf2keras.py --checkpoint my/model.ckpt --arch deeplabv3plus_xception65 --out my.keras

Same releases, flags and checks as ``tf2torch.py`` (the same pipeline: checkpoint -> named arrays
-> the canonical PyTorch-named state dict, release manifests checked). A ``.weights.h5`` is streamed like
``tf2torch.py``'s output, one tensor at a time, into the file layout Keras writes for the architecture
(``converters/tf/keras_layouts.py``, stored as data): no TensorFlow or Keras is imported, and the peak memory
is a fraction of the checkpoint. A ``.keras`` is the Keras writer's (``converters/keras_writer.py``: layouts
only, no second rename table) on the model built in memory. Output:

* ``.weights.h5``: ``reference_models.keras.build_keras_model(arch, num_classes=N, output_stride=S)``
  (a DeepLab release) or ``build_keras_backbone(arch, output_stride=S)`` (an ImageNet release), then
  ``.load_weights(path)``; the weights load at any output stride the architecture allows;
* ``.keras``: the whole model at ``--output-stride``, ``reference_models.keras.load_keras_model(path)``;

plus a provenance JSON beside it (``x.weights.h5`` -> ``x.weights.json``, ``x.keras`` -> ``x.keras.json``: never
the PyTorch weights' ``x.json``). Why not read the checkpoint
with TensorFlow into a Keras model directly: the TF-free reader and the rename table are the ones
the PyTorch weights are proven with, so both frameworks get identical numbers from one path.
A ``.keras`` needs TensorFlow and Keras (``pip install '.[tf]'``); TensorFlow's start-up log lines are silenced.
Exit codes: 0 success, 1 bad input (one line on stderr), 2 usage error, 130 interrupted.
"""

from __future__ import annotations

import sys

if __name__ == "__main__" and not __package__:  # run as a file: re-run as `python -m converters.<name>`
    import as_module
    as_module.rerun(__file__)

import argparse
import importlib.metadata
import importlib.util
from functools import partial
from pathlib import Path

from converters import tf2torch
from converters.cli import run_main
from converters.errors import DeeplabError
from converters.io import check_outputs_spare_inputs
from converters.keras_writer import (
    check_keras_output,
    finish_keras_output,
    keras_parser,
    keras_provenance_path,
    keras_record,
    keras_suffix,
    run_keras_command,
    set_help,
)
from converters.releases import TF_RELEASES
from converters.tf.keras_layouts import KerasLayout, stored_layout, write_weights_h5

TOOL = "converters/tf2keras.py"


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
    """Convert as ``args`` say; return the Keras output path. Raises DeeplabError for bad input.

    A ``.weights.h5`` of an architecture whose Keras layout is stored (``converters/tf/keras_layouts.py``: all
    of them) is streamed from the checkpoint, without TensorFlow or Keras; a ``.keras`` (the whole model)
    is written by Keras from the model built in memory."""
    out = default_output(args)
    arch = args.arch or (TF_RELEASES[args.dataset].arch if args.dataset else None)
    layout = stored_layout(arch) if arch and keras_suffix(out) == ".weights.h5" else None
    if layout is None:
        return run_keras_command(args, out=out, inputs=tf2torch.inputs,
                                 convert=partial(tf2torch.convert, tool=TOOL))
    return write_streamed(args, out, layout)


def write_streamed(args: argparse.Namespace, out: Path, layout: KerasLayout) -> Path:
    """The ``.weights.h5`` streamed: planned against the stored signature, each tensor read, laid out and
    written before the next (``converters.tf.keras_layouts.write_weights_h5``); atomic, like ``tf2torch.py``."""
    from converters.streaming import return_freed_buffers_to_the_os
    from converters.tf.convert import open_tf_conversion

    check_keras_output(out)
    check_outputs_spare_inputs([out, keras_provenance_path(out)], tf2torch.inputs(args))
    if importlib.util.find_spec("h5py") is None:
        raise DeeplabError("writing .weights.h5 needs h5py, a dependency of deeplab-repro that is not installed: "
                           "pip install h5py")
    return_freed_buffers_to_the_os()  # this process only streams tensors from here on: keep the peak at one
    with open_tf_conversion(args.checkpoint, build_model=False, **tf2torch.conversion_options(args, tool=TOOL)) as conv:
        record = conv.provenance
        variables = write_weights_h5(out, layout, record["output_stride"], conv.specs(), conv.array)
    versions = {name: _installed(name) for name in ("tensorflow", "keras")}
    record = keras_record(record, out, variables=variables, tensors=len(conv.plan), versions=versions,
                          written=f"streamed from the checkpoint into the stored layout of Keras {layout.keras} "
                          "(converters/tf/keras_layouts.json)")
    return finish_keras_output(out, record, quiet=args.quiet)


def _installed(name: str) -> str | None:
    """The installed distribution's version, without importing it (None if not installed)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    return run_main(build_parser, run, argv, check=tf2torch.check_usage)


if __name__ == "__main__":
    sys.exit(main())
