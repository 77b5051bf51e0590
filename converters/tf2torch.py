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
import json
import re
import sys
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from converters import __version__  # noqa: E402
from converters.cli import run_cli, write_weights  # noqa: E402
from converters.errors import ConversionError  # noqa: E402
from converters.io import WEIGHT_SUFFIXES, provenance_path, sha256_file  # noqa: E402
from converters.releases import TF_RELEASES, TFRelease  # noqa: E402

# The named conversion steps, in order (recorded in every provenance file).
STEPS = (
    "check_manifest",  # release only: names and shapes equal the official variable list
    "ignore_non_model_variables",  # global_step, optimizer slots, EMA, ImageNet classifier (tf_rules.IGNORE_RULES)
    "rename_rules",  # TF scope names -> state-dict keys (tf_rules.rename_rules), reverse map kept for errors
    "hwio_to_oihw",  # conv kernels (H, W, in, out) -> (out, in, H, W)
    "depthwise_to_oihw",  # depthwise (H, W, C, M) -> (C*M, 1, H, W)
    "check_complete_and_shapes",  # no leftovers, nothing missing, equal shapes
    "load_state_dict_strict",  # the result loads with strict=True into the reference model
)
_BACKBONE_PREFIXES = ("resnet_v", "xception_", "mobilenet_v")
_SHARD = re.compile(r"\.data-\d{5}-of-\d{5}$")


def tf_archs() -> tuple[list[str], list[str]]:
    """(TF-ported backbones, TF-ported DeepLab v3/v3+ models) of the registry."""
    from reference_models import list_backbones, list_models

    backbones = [b for b in list_backbones() if b.startswith(_BACKBONE_PREFIXES)]
    models = [m for m in list_models() if m.startswith("deeplabv3") and "tiny" not in m]
    return backbones, models


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
        "Each is http://download.tensorflow.org/models/<release>.tar.gz; run with a missing file to be told "
        "how to download and extract it.",
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
    parser.add_argument("--quiet", action="store_true", help="print nothing on success")
    return parser


# --------------------------------------------------------------------------- locating the checkpoint
def resolve_prefix(path: Path) -> Path | None:
    """The checkpoint prefix ``path`` names (V2 prefix, V1 file, ``*.index`` file, a folder with one
    checkpoint, or a sharded-V1 glob pattern), or None if there is no checkpoint there."""
    text = str(path)
    if text.endswith(".index") and path.is_file():
        return Path(text.removesuffix(".index"))
    if Path(text + ".index").is_file() or path.is_file() or any(c in text for c in "*?["):
        return path
    if path.is_dir():
        found = sorted(path.glob("*.index"))
        if not found:
            found = [p for p in sorted(path.glob("*.ckpt")) if p.is_file()]  # a V1 file
            return found[0] if len(found) == 1 else None
        return Path(str(found[0]).removesuffix(".index")) if len(found) == 1 else None
    if list(path.parent.glob(f"{path.name}-[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9]")):
        return path  # sharded V1
    return None


def source_files(prefix: Path) -> list[Path]:
    """Every file of the checkpoint, for the provenance record."""
    index = Path(str(prefix) + ".index")
    if index.is_file():
        shards = sorted(p for p in prefix.parent.glob(prefix.name + ".data-*") if _SHARD.search(p.name))
        return [index, *shards]
    if prefix.is_file():
        return [prefix]
    # a sharded V1 checkpoint: the glob pattern itself, or PREFIX-SSSSS-of-NNNNN
    pattern = prefix.name if any(c in prefix.name for c in "*?[") else f"{prefix.name}-[0-9]*-of-[0-9]*"
    return sorted(p for p in prefix.parent.glob(pattern) if p.is_file())


def load_manifest(release: TFRelease) -> dict:
    return json.loads(release.manifest_path.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- checks with named variables
def check_scope(ckpt, scope: str, arch: str, path: str) -> None:
    """A checkpoint with no variable under the architecture's scope is the wrong architecture."""
    if any(name.startswith(scope + "/") for name in ckpt.names()):
        return
    tops = Counter(name.split("/", 1)[0] for name in ckpt.names())
    found = ", ".join(f"'{s}/' ({n})" for s, n in tops.most_common(4)) or "no variables"
    raise ConversionError(path, f"no variable under '{scope}/' as {arch} needs; the checkpoint has {found} "
                          "(wrong --arch or --dataset?)")


def check_manifest(ckpt, manifest: dict, path: str) -> None:
    """Names and shapes equal the release's manifest, ignorable variables aside; errors name the variable."""
    from converters.tf_rules import ignore_reason

    expected: dict[str, list[int]] = manifest["variables"]
    release = manifest["release"]
    extra = [n for n in ckpt.names() if n not in expected and ignore_reason(n) is None]
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise ConversionError(path, f"unexpected variable{more}: not in release {release}'s manifest "
                              "(a different model or release?)", layer=extra[0])
    missing = [n for n in expected if n not in ckpt and ignore_reason(n) is None]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ConversionError(path, f"missing variable{more}: release {release} has it, the checkpoint does not",
                              layer=missing[0])
    for name, shape in expected.items():
        if name in ckpt and list(ckpt.shape(name)) != shape:
            raise ConversionError(path, f"shape {list(ckpt.shape(name))} in the file, release {release} has {shape}",
                                  layer=name)


def check_complete(ckpt, model, arch: str, path: str) -> None:
    """Every parameter of ``model`` has a TF variable, before any data is read; names the TF variable
    (from a release manifest of ``arch`` where one exists) that would provide a missing parameter."""
    from converters.tf_rules import map_tf_names

    forward, _ = map_tf_names(ckpt.names(), model, path=path)
    produced = set(forward.values())
    missing = [k for k in model.state_dict() if k not in produced and not k.endswith("num_batches_tracked")]
    if not missing:
        return
    tf_name = None
    for release in TF_RELEASES.values():
        if release.arch == arch and release.manifest_path.is_file():
            names = list(load_manifest(release)["variables"])
            tf_name = map_tf_names(names, model)[1].get(missing[0])
            break
    more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
    what = f"missing variable{more}: {arch} needs it for '{missing[0]}'" if tf_name else \
        f"missing: no variable maps to '{missing[0]}' of {arch}{more}"
    raise ConversionError(path, what, layer=tf_name)


def default_preprocessing(arch: str):
    """The DeepLab-TF contract for ``arch`` when the checkpoint is not a release (feature_extractor.py):
    ``[-1, 1]`` for xception / mobilenet_v2 / resnet beta (the default backbone of the ResNet DeepLab models),
    ImageNet-mean subtraction for resnet_v1_50/101, inception's ``[-1, 1]`` for resnet_v2."""
    from reference_models.preprocessing import DEEPLAB_TF_RESNET_V1_MEAN, DEEPLAB_TF_UNIT_RANGE, TF_SLIM_INCEPTION

    if arch.startswith("resnet_v2"):
        return TF_SLIM_INCEPTION
    if arch in ("resnet_v1_50", "resnet_v1_101"):
        return DEEPLAB_TF_RESNET_V1_MEAN
    return DEEPLAB_TF_UNIT_RANGE


# --------------------------------------------------------------------------- conversion
def run(args: argparse.Namespace) -> Path:
    """Convert as ``args`` say; return the weights path. Raises ConversionError for bad input."""
    from converters.tf_checkpoint import open_checkpoint
    from converters.tf_rules import ignore_reason, tf_arrays_to_state_dict
    from reference_models import build_backbone, build_model

    release: TFRelease | None = TF_RELEASES.get(args.dataset) if args.dataset else None
    arch = args.arch or release.arch
    backbones, _ = tf_archs()
    kind = "backbone" if arch in backbones else "model"

    given = args.checkpoint or release.default_path
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

    with open_checkpoint(prefix) as ckpt:
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
    parser = build_parser()
    args = parser.parse_args(argv)
    check_usage(parser, args)
    return run_cli(run, args)


if __name__ == "__main__":
    sys.exit(main())
