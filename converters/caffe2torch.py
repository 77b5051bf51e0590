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
Exit codes: 0 success, 1 bad input (one line on stderr), 2 usage error.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from converters import __version__  # noqa: E402
from converters.cli import run_main, write_weights  # noqa: E402
from converters.errors import ConversionError  # noqa: E402
from converters.io import (  # noqa: E402
    WEIGHT_SUFFIXES,
    WRONG_KIND_HINT,
    check_outputs_spare_inputs,
    provenance_path,
    sha256_file,
    sniff_kind,
)
from converters.releases import CAFFE_RELEASES, Release  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    from converters.caffe.convert import SUPPORTED_ARCHS

    releases = "\n".join(f"  {r.name:<22} {r.file_name:<28} -> {r.arch} ({r.num_classes} classes)"
                         for r in CAFFE_RELEASES.values())
    parser = argparse.ArgumentParser(
        prog="caffe2torch.py",
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


def run(args: argparse.Namespace) -> Path:
    """Convert as ``args`` say; return the weights path. Raises ConversionError for bad input."""
    from converters.caffe.convert import convert_caffemodel
    from converters.caffe.passes import STEPS

    release: Release | None = CAFFE_RELEASES.get(args.dataset) if args.dataset else None
    arch = args.arch or (release.arch if release else None)
    num_classes = args.num_classes if args.num_classes is not None else (release.num_classes if release else None)
    src = args.caffemodel or release.default_path
    if not src.is_file():
        if release is not None and args.caffemodel is None:
            raise ConversionError(src, release.missing_message())
        raise ConversionError(src, "file not found")
    check_kind(src)
    out = args.out or (release.default_output if release else src.with_suffix(".pth"))
    if out.suffix not in WEIGHT_SUFFIXES:
        raise ConversionError(out, f"output must end in {' or '.join(WEIGHT_SUFFIXES)}")
    check_outputs_spare_inputs([out, provenance_path(out)], [src])

    converted = convert_caffemodel(src, arch=arch, num_classes=num_classes, progress=not args.quiet)
    from reference_models.preprocessing import CAFFE_DEEPLAB_V2

    preprocessing = release.preprocessing if release else CAFFE_DEEPLAB_V2
    source_sha = sha256_file(src)
    if release is not None and release.sha256 and release.sha256 != source_sha:
        raise ConversionError(src, f"sha256 {source_sha} does not match the release's {release.sha256}")
    import google.protobuf
    import torch

    record = {
        "format": "deeplab-repro provenance v1",
        "release": release.name if release else None,
        "architecture": arch,
        "num_classes": converted.num_classes,
        "load_with": f"reference_models.build_model({arch!r}, num_classes={converted.num_classes})",
        "source": {
            "file": src.name,
            "sha256": source_sha,
            "size_bytes": src.stat().st_size,
            "official_url": release.url if release else None,
            "published_sha256": release.sha256 if release else None,
            "caffe_layers": converted.caffe_layers,
            # how each Scale layer found its BatchNorm: "bottom/top" (the file's own wiring), or, for
            # weights-only files whose records carry no bottom/top, "official topology" / "layer names"
            "scale_layers_paired_by": converted.scale_pairing,
        },
        "converter": {
            "tool": "converters/caffe2torch.py",
            "version": __version__,
            "steps": list(STEPS),
            "torch": torch.__version__,
            "protobuf": google.protobuf.__version__,
        },
        "preprocessing": preprocessing.to_dict(),
        "weights": {"file": out.name, "tensors": len(converted.state_dict)},
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_weights(converted.state_dict, out, record)
    if not args.quiet:
        print(f"wrote {out} ({len(converted.state_dict)} tensors, {arch}, {converted.num_classes} classes) "
              f"and {provenance_path(out)}")
    return out


def check_kind(src: Path) -> None:
    """A file of another kind (a TF checkpoint, converted weights) is named as such, with the right command."""
    kind = sniff_kind(src)
    if kind is not None:
        raise ConversionError(src, f"not a caffemodel: this is {WRONG_KIND_HINT[kind]}")


def check_usage(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage rules (exit 2 through ``parser.error``); shared with caffe2tf.py."""
    if args.dataset is None and (args.caffemodel is None or args.arch is None):
        parser.error("give --dataset NAME, or --caffemodel PATH with --arch NAME")


def main(argv: list[str] | None = None) -> int:
    return run_main(build_parser(), run, argv, check=check_usage)


if __name__ == "__main__":
    sys.exit(main())
