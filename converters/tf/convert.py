"""TF(-slim) checkpoint -> PyTorch conversion as a library call (the CLI is ``converters/tf2torch.py``).

Pipeline: open the checkpoint (``reader``) -> check the architecture's scope and, for a release,
its manifest -> ignore non-model variables and rename (``rules``) -> layouts -> checks (nothing
left over, nothing missing, shapes equal) -> strict ``load_state_dict``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from converters.errors import ConversionError
from converters.releases import TF_RELEASES, TFRelease

# The named conversion steps, in order (recorded in every provenance file).
STEPS = (
    "check_manifest",  # release only: names and shapes equal the official variable list
    "ignore_non_model_variables",  # global_step, optimizer slots, EMA, ImageNet classifier (rules.IGNORE_RULES)
    "rename_rules",  # TF scope names -> state-dict keys (rules.rename_rules), reverse map kept for errors
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
    from converters.tf.rules import ignore_reason

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
    from converters.tf.rules import map_tf_names

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
