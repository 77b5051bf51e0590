"""Convert official TensorFlow (TF-slim / DeepLab-TF) checkpoints into PyTorch weights, without TensorFlow.

Examples (from the repository root):

  python converters/tf2torch.py --dataset deeplabv3_pascal_train_aug_2018_01_04
  python converters/tf2torch.py --dataset resnet_v1_101_2016_08_28 --out weights/r101.safetensors
  python converters/tf2torch.py --checkpoint my/model.ckpt --arch deeplabv3plus_xception65 --out my.pth

``--checkpoint`` is the checkpoint PREFIX: ``model.ckpt`` for a V2 checkpoint (the files
``model.ckpt.index`` and ``model.ckpt.data-00000-of-00001``), the file itself for a V1 checkpoint
(``resnet_v1_50.ckpt``), or a folder holding exactly one ``*.index``.

The output is a plain state dict (``torch.load(path, weights_only=True)`` or safetensors'
``load_file``) that loads strictly into ``reference_models.build_backbone(arch, output_stride=...)``
(ImageNet releases; the ImageNet classifier is dropped) or ``build_model(arch, num_classes=N,
output_stride=...)`` (DeepLab releases), plus a provenance JSON beside it (source files with sha256
and sizes, release, architecture, conversion steps, preprocessing contract). Optimizer slots,
``global_step`` and EMA copies are ignored. For a release, the checkpoint must hold exactly the
variables of ``converters/manifests/<release>.json`` (plus ignorable ones).
The conversion itself is ``converters.tf.convert.write_tf_checkpoint``: every check runs on the
checkpoint's index first, against the architecture's stored state-dict signature
(``converters/tf/signatures.json``), then each tensor is read, laid out and written into the output in
turn, so the checkpoint is never held in memory, and neither torch nor TensorFlow is imported; this
command adds the output path.
Exit codes: 0 success, 1 bad input (one line on stderr), 2 usage error, 130 interrupted.
"""

from __future__ import annotations

import sys

if __name__ == "__main__" and not __package__:  # run as a file: re-run as `python -m converters.<name>`
    import as_module
    as_module.rerun(__file__)

import argparse
from pathlib import Path

from converters.cli import check_weights_output, print_written, run_main
from converters.io import WEIGHT_SUFFIXES
from converters.releases import TF_MODELS_URL, TF_RELEASES, TFRelease
from converters.tf.convert import (
    STEPS,
    STREAMED_STEPS,
    Converted,
    convert_tf_checkpoint,
    find_checkpoint,
    source_files,
    tf_archs,
    write_tf_checkpoint,
)

__all__ = ["STEPS", "STREAMED_STEPS", "build_parser", "check_usage", "convert", "default_output", "inputs", "main", "run"]


def build_parser() -> argparse.ArgumentParser:
    backbones, models = tf_archs()
    releases = "\n".join(
        f"  {r.name:<43} {r.folder + '/' + r.file_name:<44} -> {r.arch}" for r in TF_RELEASES.values()
    )
    parser = argparse.ArgumentParser(
        description="Convert an official TensorFlow DeepLab / TF-slim checkpoint into PyTorch weights "
        "(no TensorFlow needed).",
        epilog=f"official releases (--dataset), default checkpoint under data/models/:\n{releases}\n\n"
        f"Each is {TF_MODELS_URL}/<release>.tar.gz: 'python -m reproduce.download RELEASE' fetches and unpacks it; "
        "run with a missing file to be told how to do it by hand.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dataset", choices=sorted(TF_RELEASES), metavar="RELEASE",
                        help="an official release by name (see below)")
    parser.add_argument("--checkpoint", type=Path, metavar="PREFIX",
                        help="checkpoint prefix (V2 'model.ckpt', V1 file, or a folder with one *.index); "
                        "default: the release's location")
    parser.add_argument("--out", type=Path, help=f"output weights, one of {', '.join(WEIGHT_SUFFIXES)} "
                        "(default: data/models/<folder>/<arch>_<release>.pth, or beside the checkpoint)")
    parser.add_argument("--arch", choices=backbones + models, metavar="NAME",
                        help=f"architecture, for checkpoints that are not a release: a backbone "
                        f"({', '.join(backbones)}) or a model ({', '.join(models)})")
    parser.add_argument("--num-classes", type=int, help="classes of a model --arch (default: the release's, or "
                        "read from the checkpoint's logits/semantic)")
    parser.add_argument("--output-stride", type=int, choices=(8, 16, 32),
                        help="output stride the weights are checked and recorded at (default 16; the weights "
                        "load at any stride the architecture allows)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the CRC-32C check of every tensor (on by default, as TensorFlow checks on restore)")
    parser.add_argument("--quiet", action="store_true", help="print nothing on success")
    return parser


# --------------------------------------------------------------------------- conversion
def conversion_options(args: argparse.Namespace, *, tool: str = "converters/tf2torch.py") -> dict:
    """The keyword arguments of ``converters.tf.convert.open_tf_conversion`` that ``args`` ask for."""
    return {"release": args.dataset, "arch": args.arch, "num_classes": args.num_classes,
            "output_stride": args.output_stride, "verify": not args.no_verify, "tool": tool}


def convert(args: argparse.Namespace, *, tool: str = "converters/tf2torch.py") -> Converted:
    """The conversion ``args`` ask for, in memory."""
    return convert_tf_checkpoint(args.checkpoint, **conversion_options(args, tool=tool))


def _release(args: argparse.Namespace) -> TFRelease | None:
    return TF_RELEASES[args.dataset] if args.dataset else None


def default_output(args: argparse.Namespace, suffix: str = ".pth") -> Path:
    """``--out``, else ``data/models/<folder>/<arch>_<release><suffix>``, else beside the checkpoint."""
    if args.out is not None:
        return args.out
    prefix = find_checkpoint(args.checkpoint, _release(args))  # not found: says how to get it; wrong kind: says so
    if args.dataset:
        return TF_RELEASES[args.dataset].default_output.with_suffix(suffix)
    return prefix.with_name(f"{prefix.name}_{args.arch}{suffix}")


def inputs(args: argparse.Namespace) -> list[Path]:
    """The files the conversion reads (an output must not overwrite them)."""
    return source_files(find_checkpoint(args.checkpoint, _release(args)))


def run(args: argparse.Namespace) -> Path:
    """Convert as ``args`` say; return the weights path. Raises ConversionError for bad input."""
    out = default_output(args)
    check_weights_output(out, inputs(args))
    from converters.streaming import return_freed_buffers_to_the_os

    return_freed_buffers_to_the_os()  # this process only streams tensors from here on: keep the peak at one
    record = write_tf_checkpoint(out, args.checkpoint, **conversion_options(args))
    if not args.quiet:
        print_written(out, record, record["num_classes"])
    return out


def check_usage(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage rules (exit 2 through ``parser.error``); shared with tf2keras.py."""
    if args.dataset is None and (args.checkpoint is None or args.arch is None):
        parser.error("give --dataset NAME, or --checkpoint PREFIX with --arch NAME")
    if args.num_classes is not None and args.num_classes < 1:
        parser.error("--num-classes must be positive")
    arch = args.arch or TF_RELEASES[args.dataset].arch
    backbones, _ = tf_archs()
    if arch in backbones and args.num_classes is not None:
        parser.error(f"--num-classes applies to models, not to the backbone {arch}")
    if arch not in backbones and args.output_stride == 32:
        parser.error(f"{arch} supports --output-stride 8 or 16")


def main(argv: list[str] | None = None) -> int:
    return run_main(build_parser, run, argv, check=check_usage)


if __name__ == "__main__":
    sys.exit(main())
