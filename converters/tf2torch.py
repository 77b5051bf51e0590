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
Exit codes: 0 success, 1 bad input (one line on stderr), 2 usage error.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
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
from converters.releases import TF_MODELS_URL, TF_RELEASES, TFRelease  # noqa: E402
from converters.tf.convert import (  # noqa: E402
    STEPS,
    check_complete,
    check_manifest,
    check_scope,
    default_preprocessing,
    load_manifest,
    resolve_prefix,
    source_files,
    tf_archs,
)


def build_parser() -> argparse.ArgumentParser:
    backbones, models = tf_archs()
    releases = "\n".join(
        f"  {r.name:<43} {r.folder + '/' + r.file_name:<44} -> {r.arch}" for r in TF_RELEASES.values()
    )
    parser = argparse.ArgumentParser(
        prog="tf2torch.py",
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
def run(args: argparse.Namespace) -> Path:
    """Convert as ``args`` say; return the weights path. Raises ConversionError for bad input."""
    from converters.tf.reader import open_checkpoint
    from converters.tf.rules import ignore_reason, tf_arrays_to_state_dict
    from reference_models import build_backbone, build_model

    release: TFRelease | None = TF_RELEASES.get(args.dataset) if args.dataset else None
    arch = args.arch or release.arch
    backbones, _ = tf_archs()
    kind = "backbone" if arch in backbones else "model"

    given = args.checkpoint or release.default_path
    if given.is_file():
        file_kind = "caffe" if given.suffix in (".caffemodel", ".prototxt") else sniff_kind(given)
        if file_kind is not None and file_kind != "tf":
            raise ConversionError(given, f"not a TensorFlow checkpoint: this is {WRONG_KIND_HINT[file_kind]}")
    prefix = resolve_prefix(given)
    if prefix is None and args.checkpoint is None:
        prefix = resolve_prefix(given.parent)  # e.g. a differently numbered model.ckpt-NNNN in the release folder
        if prefix is None:
            raise ConversionError(given, release.missing_message())
    if prefix is None:
        raise ConversionError(given, "checkpoint not found (no PREFIX.index of a V2 checkpoint, no V1 file)")
    out = args.out or (release.default_output if release else prefix.with_name(f"{prefix.name}_{arch}.pth"))
    if out.suffix not in WEIGHT_SUFFIXES:
        raise ConversionError(out, f"output must end in {' or '.join(WEIGHT_SUFFIXES)}")
    check_outputs_spare_inputs([out, provenance_path(out)], source_files(prefix))

    verify = not getattr(args, "no_verify", False)
    with open_checkpoint(prefix, verify=verify) as ckpt:
        path = str(ckpt.index_path if ckpt.format_version == 1 else prefix)
        num_classes = None
        if kind == "model":
            num_classes = args.num_classes
            if num_classes is None and release is not None and release.arch == arch:
                num_classes = release.num_classes
            if num_classes is None:
                if "logits/semantic/biases" not in ckpt:
                    raise ConversionError(path, "no 'logits/semantic/biases' to read the class count from; "
                                          "pass --num-classes")
                num_classes = int(ckpt.shape("logits/semantic/biases")[0])
        output_stride = args.output_stride or (release.output_stride if release else 16)
        try:
            if kind == "backbone":
                model = build_backbone(arch, output_stride=output_stride)
            else:
                model = build_model(arch, num_classes=num_classes, output_stride=output_stride)
        except ValueError as exc:
            raise ConversionError(None, f"--arch {arch}: {exc}") from None
        scope = getattr(model, "backbone", model).tf_scope
        check_scope(ckpt, scope, arch, path)
        manifest = None
        if release is not None and release.arch == arch:
            manifest = load_manifest(release)
            check_manifest(ckpt, manifest, path)
        check_complete(ckpt, model, arch, path)
        names = ckpt.names()
        ignored = Counter(ignore_reason(n) for n in names if ignore_reason(n) is not None)
        arrays = {n: ckpt.read(n) for n in names if ignore_reason(n) is None}
        state_dict = tf_arrays_to_state_dict(arrays, model, path=path)
        del arrays
        model.load_state_dict(state_dict, strict=True)
        format_version = ckpt.format_version
        num_variables = len(names)

    files = source_files(prefix)
    sources = [{"file": f.name, "sha256": sha256_file(f), "size_bytes": f.stat().st_size} for f in files]
    import torch

    load_with = (f"reference_models.build_backbone({arch!r}, output_stride={output_stride})" if kind == "backbone"
                 else f"reference_models.build_model({arch!r}, num_classes={num_classes}, "
                 f"output_stride={output_stride})")
    preprocessing = release.preprocessing if release else default_preprocessing(arch)
    record = {
        "format": "deeplab-repro provenance v1",
        "release": release.name if release else None,
        "architecture": arch,
        "kind": kind,
        "num_classes": num_classes,
        "output_stride": output_stride,
        "load_with": load_with,
        "source": {
            "checkpoint": prefix.name,
            "format": f"V{format_version}",
            "files": sources,
            "official_url": release.url if release else None,
            "published_sha256": release.sha256 if release else None,
            "tf_variables": num_variables,
            "crc32c_verified": verify,
            "ignored": dict(sorted(ignored.items())),
            "manifest": f"converters/manifests/{release.name}.json" if manifest else None,
        },
        "converter": {
            "tool": "converters/tf2torch.py",
            "version": __version__,
            "steps": [s for s in STEPS if manifest or s != "check_manifest"],
            "torch": torch.__version__,
        },
        "preprocessing": preprocessing.to_dict() if preprocessing else None,
        "deeplab_preprocessing": (release.deeplab_preprocessing.to_dict()
                                  if release and release.deeplab_preprocessing else None),
        "weights": {"file": out.name, "tensors": len(state_dict)},
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_weights(state_dict, out, record)
    if not args.quiet:
        classes = f", {num_classes} classes" if num_classes else ""
        print(f"wrote {out} ({len(state_dict)} tensors, {arch}{classes}) and {provenance_path(out)}")
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
    return run_main(build_parser(), run, argv, check=check_usage)


if __name__ == "__main__":
    sys.exit(main())
