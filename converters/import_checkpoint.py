"""Import a checkpoint trained with another public DeepLab port into our models.

Examples (from the repository root):

  python converters/import_checkpoint.py --from kazuto --checkpoint deeplabv2_resnet101_msc-cocostuff164k-100000.pth \\
      --out weights/kazuto_cocostuff164k.pth
  python converters/import_checkpoint.py --from vainf --checkpoint best_deeplabv3plus_resnet101_voc_os16.pth \\
      --output-stride 16 --out weights/vainf_r101_voc.pth
  python converters/import_checkpoint.py --from torchvision --checkpoint deeplabv3_resnet101_coco-586e9e4e.pth \\
      --out weights/tv_r101.pth

The file is read with ``torch.load(weights_only=True)``; one that needs arbitrary Python objects
unpickled is refused. Architecture, backbone and class count come from the key names and shapes;
``--output-stride`` is for formats that do not record it (VainF, jfzhang95). Every key must be one
the peer's model code creates, with its shape, and every one is used. The output is a plain state
dict plus a provenance JSON whose ``load_with`` builds the model it loads into; in eval mode that
model returns what the peer's model returns (see ``converters/peers/<format>.py``).
Exit codes: 0 success, 1 bad input (one line on stderr), 2 usage error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a file: re-run as `python -m converters.<name>`
    import as_module
    as_module.rerun(__file__)

from converters import __version__
from converters.cli import run_main, write_weights
from converters.errors import ConversionError
from converters.io import WEIGHT_SUFFIXES, provenance_path, sha256_file
from converters.peers import available_formats, get_format


def build_parser() -> argparse.ArgumentParser:
    formats = "\n".join(f"  {name:<12} {get_format(name).DESCRIPTION}" for name in available_formats())
    parser = argparse.ArgumentParser(
        description="Import a checkpoint trained with another DeepLab port (weights only, never unpickled code).",
        epilog=f"formats (--from):\n{formats}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--from", dest="fmt", required=True, choices=available_formats(),
                        help="which project wrote the checkpoint")
    parser.add_argument("--checkpoint", type=Path, required=True, help="the peer's .pth / .pth.tar file")
    parser.add_argument("--out", type=Path, required=True,
                        help=f"output weights, one of {', '.join(WEIGHT_SUFFIXES)} (a provenance .json goes beside it)")
    parser.add_argument("--output-stride", type=int, choices=(8, 16),
                        help="the output stride the model was trained at, for formats that do not record it")
    parser.add_argument("--model", help="our registered model to import into (default: detected from the keys)")
    parser.add_argument("--quiet", action="store_true", help="print nothing on success")
    return parser


def run(args: argparse.Namespace) -> Path:
    """Import as ``args`` say; return the weights path. Raises ConversionError for bad input."""
    from converters.peers.common import STEPS, import_checkpoint

    out: Path = args.out
    if out.suffix not in WEIGHT_SUFFIXES:
        raise ConversionError(out, f"output must end in {' or '.join(WEIGHT_SUFFIXES)}")
    src: Path = args.checkpoint
    if out.exists() and src.exists() and out.resolve() == src.resolve():
        raise ConversionError(out, "output would overwrite the checkpoint being imported")
    fmt = get_format(args.fmt)
    imported = import_checkpoint(fmt, src, output_stride=args.output_stride, model=args.model)
    target = imported.target
    import torch

    record = {
        "format": "deeplab-repro provenance v1",
        "release": None,
        "architecture": target.arch,
        "num_classes": target.num_classes,
        "load_with": target.load_with(),
        "source": {
            "file": src.name,
            "sha256": sha256_file(src),
            "size_bytes": src.stat().st_size,
            "project": args.fmt,
            "peer_model": target.peer_model,
            "tensors": imported.source_tensors,
            "ignored_entries": imported.ignored_entries,
        },
        "converter": {
            "tool": "converters/import_checkpoint.py",
            "version": __version__,
            "steps": list(STEPS),
            "torch": torch.__version__,
        },
        "notes": target.notes,
        "preprocessing": target.preprocessing.to_dict() if target.preprocessing is not None else None,
        "weights": {"file": out.name, "tensors": len(imported.state_dict)},
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_weights(imported.state_dict, out, record)
    if not args.quiet:
        print(f"wrote {out} ({len(imported.state_dict)} tensors from {args.fmt} {target.peer_model}, "
              f"{target.num_classes} classes) and {provenance_path(out)}; load with {target.load_with()}")
    return out


def main(argv: list[str] | None = None) -> int:
    return run_main(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
