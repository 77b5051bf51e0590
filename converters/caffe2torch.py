"""Convert the official DeepLab v2 caffemodels into PyTorch weights.

Examples (from the repository root):

  python converters/caffe2torch.py --dataset coco_init
  python converters/caffe2torch.py --dataset voc12 --out weights/deeplabv2_voc12.safetensors
  python converters/caffe2torch.py --caffemodel my.caffemodel --arch deeplabv2_resnet101 --num-classes 21 \\
      --out my.pth

The output is a plain state dict (``torch.load(path, weights_only=True)`` or
safetensors' ``load_file``) that loads strictly into
``reference_models.build_model(arch, num_classes=N)``, plus a provenance JSON
beside it (source sha256, release, architecture, preprocessing contract).
The conversion itself is ``converters.caffe.convert.convert_caffemodel`` (weights and provenance in
memory); this command adds the output path and the file write.
Exit codes: 0 success, 1 bad input (one line on stderr), 2 usage error, 130 interrupted.
"""

from __future__ import annotations

import sys

if __name__ == "__main__" and not __package__:  # run as a file: re-run as `python -m converters.<name>`
    import as_module
    as_module.rerun(__file__)

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from converters.cli import run_main, write_converted
from converters.errors import ConversionError
from converters.io import WEIGHT_SUFFIXES, WRONG_KIND_HINT, sniff_kind
from converters.releases import CAFFE_RELEASES

if TYPE_CHECKING:  # pragma: no cover
    from converters.caffe.convert import Converted


def build_parser() -> argparse.ArgumentParser:
    from converters.caffe.convert import SUPPORTED_ARCHS

    releases = "\n".join(f"  {r.name:<22} {r.file_name:<28} -> {r.arch} ({r.num_classes} classes)"
                         for r in CAFFE_RELEASES.values())
    parser = argparse.ArgumentParser(
        description="Convert an official DeepLab v2 caffemodel into PyTorch weights (no Caffe needed).",
        epilog=f"official releases (--dataset):\n{releases}\n\nDefault locations are data/models/<folder>/<file>; "
               "run with a missing file to be told where to download it.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dataset", choices=sorted(CAFFE_RELEASES), help="an official release by name")
    parser.add_argument("--caffemodel", type=Path, help="the .caffemodel to convert (default: the release's location)")
    parser.add_argument("--out", type=Path, help=f"output weights, one of {', '.join(WEIGHT_SUFFIXES)} "
                        "(default: beside the caffemodel)")
    parser.add_argument("--arch", choices=SUPPORTED_ARCHS, help="architecture, for files that are not a release")
    parser.add_argument("--num-classes", type=int, help="number of classes (default: the release's, or read "
                        "from the file's classifier)")
    parser.add_argument("--quiet", action="store_true", help="print nothing on success")
    return parser


def convert(args: argparse.Namespace, *, tool: str = "converters/caffe2torch.py") -> Converted:
    """The conversion ``args`` ask for, in memory: weights and provenance (shared with caffe2tf.py)."""
    from converters.caffe.convert import convert_caffemodel

    release = CAFFE_RELEASES.get(args.dataset) if args.dataset else None
    num_classes = args.num_classes if args.num_classes is not None else (release.num_classes if release else None)
    return convert_caffemodel(source_path(args), arch=args.arch or release.arch, num_classes=num_classes,
                              progress=not args.quiet, release=release, tool=tool)


def source_path(args: argparse.Namespace) -> Path:
    """``--caffemodel``, else the release's default location; ConversionError (saying where to get it) if absent."""
    release = CAFFE_RELEASES.get(args.dataset) if args.dataset else None
    src = args.caffemodel or release.default_path
    if not src.is_file():
        if release is not None and args.caffemodel is None:
            raise ConversionError(src, release.missing_message())
        raise ConversionError(src, "file not found")
    check_kind(src)
    return src


def check_kind(src: Path) -> None:
    """A file of another kind (a TF checkpoint, converted weights) is named as such, with the right command."""
    kind = sniff_kind(src)
    if kind is not None:
        raise ConversionError(src, f"not a caffemodel: this is {WRONG_KIND_HINT[kind]}")


def default_output(args: argparse.Namespace, suffix: str = ".pth") -> Path:
    """``--out``, else the release's converted path, else beside the caffemodel (with ``suffix``)."""
    if args.out is not None:
        return args.out
    release = CAFFE_RELEASES.get(args.dataset) if args.dataset else None
    return (release.default_output if release else source_path(args)).with_suffix(suffix)


def inputs(args: argparse.Namespace) -> list[Path]:
    """The files the conversion reads (an output must not overwrite them)."""
    return [source_path(args)]


def run(args: argparse.Namespace) -> Path:
    """Convert as ``args`` say; return the weights path. Raises ConversionError for bad input."""
    source_path(args)  # a missing file or one of another kind is reported before anything else
    return write_converted(args, out=default_output(args), inputs=inputs, convert=convert)


def check_usage(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage rules (exit 2 through ``parser.error``); shared with caffe2tf.py."""
    if args.dataset is None and (args.caffemodel is None or args.arch is None):
        parser.error("give --dataset NAME, or --caffemodel PATH with --arch NAME")


def main(argv: list[str] | None = None) -> int:
    return run_main(build_parser(), run, argv, check=check_usage)


if __name__ == "__main__":
    sys.exit(main())
