"""TF(-slim) checkpoint -> PyTorch conversion as a library call (the CLI is ``converters/tf2torch.py``).

Pipeline: open the checkpoint (``reader``) -> check the architecture's scope and, for a release,
its manifest -> ignore non-model variables and rename (``rules``) -> layouts -> checks (nothing
left over, nothing missing, shapes equal) -> strict ``load_state_dict``.

Memory: the whole state dict is planned and checked from the checkpoint's index (names, shapes,
dtypes) against the target's state-dict signature before any value is read (:func:`open_tf_conversion`).
Writing a file (:func:`write_tf_checkpoint`, what ``tf2torch.py`` runs) plans against the stored
signature (``converters/tf/signatures.json``, checked against the models by the tests), so it
imports neither torch nor the models, then reads one tensor, lays it out, writes it into the output
and drops it (``converters.streaming``): peak memory is the interpreter, numpy and one tensor plus
buffers, never the checkpoint. The in-memory result (:func:`convert_tf_checkpoint`, for the Keras
writers and the Python API) builds the reference model on the ``meta`` device, plans against its own
signature, loads the plan strictly into it before reading, and holds the converted weights once,
which the model takes over (``load_state_dict(..., assign=True)``).
"""

from __future__ import annotations

import contextlib
import json
import numbers
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from converters.errors import ConversionError
from converters.releases import TF_RELEASES, TFRelease
from converters.tf.signatures import preprocessing_contract, signature_of, stored, tf_archs

TOOL = "converters/tf2torch.py"

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
# The streaming conversion (tf2torch.py) builds no model: its last check is against the architecture's stored
# signature (converters/tf/signatures.json, which tests/test_tf_signatures.py keeps equal to the model's).
STREAMED_STEPS = (*STEPS[:-1], "match_stored_signature")
_SHARD = re.compile(r"\.data-\d{5}-of-\d{5}$")
__all__ = ["STEPS", "STREAMED_STEPS", "Converted", "TFConversion", "convert_tf_checkpoint", "find_checkpoint",
           "open_tf_conversion", "source_files", "tf_archs", "write_tf_checkpoint"]


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


def check_complete(ckpt, signature, arch: str, path: str) -> None:
    """Every parameter of the target (its ``Signature``) has a TF variable, before any data is read; names
    the TF variable (from a release manifest of ``arch`` where one exists) that would provide a missing one."""
    from converters.tf.rules import map_tf_names

    forward, _ = map_tf_names(ckpt.names(), signature, path=path)
    produced = set(forward.values())
    missing = [k for k, _, _ in signature.entries if k not in produced and not k.endswith("num_batches_tracked")]
    if not missing:
        return
    tf_name = None
    for release in TF_RELEASES.values():
        if release.arch == arch and release.manifest_path.is_file():
            names = list(load_manifest(release)["variables"])
            tf_name = map_tf_names(names, signature)[1].get(missing[0])
            break
    more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
    what = f"missing variable{more}: {arch} needs it for '{missing[0]}'" if tf_name else \
        f"missing: no variable maps to '{missing[0]}' of {arch}{more}"
    raise ConversionError(path, what, layer=tf_name)




@dataclass
class Converted:
    """The result, in memory: a strict-loadable state dict, the reference model holding it, the
    provenance record (without the output file's entry) and where each key came from."""

    state_dict: dict[str, Any]
    model: Any
    provenance: dict[str, Any]
    source_layer: dict[str, str] = field(default_factory=dict)
    prefix: Path | None = None

    @property
    def num_classes(self) -> int | None:
        return self.provenance["num_classes"]


class TFConversion:
    """An open checkpoint whose conversion is planned and checked: :attr:`plan` lists every state-dict
    entry (key, TF variable, shape, dtype) in the model's order; :meth:`tensor` reads and lays out one.
    :attr:`model` is the meta-device reference model, or None when planned from the stored signature.

    Made by :func:`open_tf_conversion`; valid while its ``with`` block is open (the files are open).
    """

    def __init__(self, ckpt, plan: list, model: Any, provenance: dict[str, Any], source_layer: dict[str, str],
                 prefix: Path) -> None:
        self._ckpt = ckpt
        self.plan = plan
        self._by_key = {entry.key: entry for entry in plan}
        self.model = model
        self.provenance = provenance
        self.source_layer = source_layer
        self.prefix = prefix

    @property
    def num_classes(self) -> int | None:
        return self.provenance["num_classes"]

    def specs(self) -> list:
        """The plan as ``converters.streaming.TensorSpec`` (what the streaming writers take)."""
        from converters.streaming import TensorSpec

        return [TensorSpec(e.key, e.shape, e.dtype) for e in self.plan]

    def tensor(self, key: str):
        """State-dict entry ``key`` as a new contiguous torch tensor, read from the checkpoint now (its
        CRC-32C checked unless verification is off); nothing is cached."""
        from converters.tf.rules import planned_tensor

        entry = self._by_key[key]
        return planned_tensor(entry, self._ckpt.read(entry.tf_name) if entry.tf_name else None)

    def array(self, key: str):
        """State-dict entry ``key`` as a numpy array read now, laid out as a view where the layout is a
        transpose (what the streaming writers take: they copy it to the file in chunks)."""
        from converters.tf.rules import planned_array

        entry = self._by_key[key]
        return planned_array(entry, self._ckpt.read(entry.tf_name) if entry.tf_name else None)

    def tensors(self) -> Iterator[tuple[str, Any]]:
        """``(key, tensor)`` for every entry, in the plan's order, one read at a time."""
        for entry in self.plan:
            yield entry.key, self.tensor(entry.key)


def find_checkpoint(checkpoint: str | os.PathLike | None, release: TFRelease | None) -> Path:
    """The checkpoint prefix to open: ``checkpoint`` (prefix, V1 file, ``*.index`` or a folder with one
    checkpoint), else the release's default location; ConversionError (saying how to get it) if absent."""
    if checkpoint is None and release is None:
        raise ValueError("give a checkpoint or a release")
    from converters.io import WRONG_KIND_HINT, sniff_kind

    given = Path(checkpoint) if checkpoint is not None else release.default_path
    if given.is_file():
        file_kind = "caffe" if given.suffix in (".caffemodel", ".prototxt") else sniff_kind(given)
        if file_kind is not None and file_kind != "tf":
            raise ConversionError(given, f"not a TensorFlow checkpoint: this is {WRONG_KIND_HINT[file_kind]}")
    prefix = resolve_prefix(given)
    if prefix is None and checkpoint is None:
        prefix = resolve_prefix(given.parent)  # e.g. a differently numbered model.ckpt-NNNN in the release folder
        if prefix is None:
            raise ConversionError(given, release.missing_message())
    if prefix is None:
        raise ConversionError(given, "checkpoint not found (no PREFIX.index of a V2 checkpoint, no V1 file)")
    return prefix


def load_with(arch: str, kind: str, num_classes: int | None, output_stride: int) -> str:
    """The call that builds the model these weights load into (recorded in the provenance)."""
    if kind == "backbone":
        return f"reference_models.build_backbone({arch!r}, output_stride={output_stride})"
    return f"reference_models.build_model({arch!r}, num_classes={num_classes}, output_stride={output_stride})"


@contextlib.contextmanager
def open_tf_conversion(
    checkpoint: str | os.PathLike | None = None,
    *,
    release: str | TFRelease | None = None,
    arch: str | None = None,
    num_classes: int | None = None,
    output_stride: int | None = None,
    verify: bool = True,
    tool: str = TOOL,
    build_model: bool = True,
) -> Iterator[TFConversion]:
    """Open a TF(-slim) / DeepLab-TF checkpoint and check and plan its conversion into the weights of a
    reference model, reading no tensor value; yields a :class:`TFConversion` (closed on exit).

    ``release``: an official release (name or record): its default location, architecture, class
    count and output stride, and its manifest is checked. ``checkpoint``: a checkpoint prefix (or V1
    file, ``*.index``, or a folder with one checkpoint), required without ``release``; ``arch``: a
    TF-ported backbone or DeepLab v3/v3+ model, required without ``release``. ``num_classes``
    defaults to the release's or the checkpoint's ``logits/semantic``; ``output_stride`` to the
    release's (else 16). ``verify``: check every tensor's CRC-32C as it is read (as TensorFlow does
    on restore). ``build_model``: build the reference model on the ``meta`` device, plan against its
    signature and load the plan strictly into it (imports torch); else plan against the stored
    signature (no torch). Bad input raises :class:`ConversionError` naming the file and, where one
    exists, the TF variable; every check but the CRC-32C ones happens before the ``with`` body runs.
    """
    from converters.io import sha256_file
    from converters.provenance import provenance_record
    from converters.tf.reader import open_checkpoint
    from converters.tf.rules import ignore_reason, map_tf_names, plan_state_dict

    if isinstance(release, str):
        if release not in TF_RELEASES:
            raise ValueError(f"unknown TF release '{release}'; known: {', '.join(sorted(TF_RELEASES))}")
        release = TF_RELEASES[release]
    arch = arch or (release.arch if release else None)
    if arch is None:
        raise ValueError("give an architecture (arch=...) or a release")
    target = stored(arch)  # ValueError naming the known architectures
    kind = target.kind
    prefix = find_checkpoint(checkpoint, release)

    with open_checkpoint(prefix, verify=verify) as ckpt:
        path = str(ckpt.index_path if ckpt.format_version == 1 else prefix)
        if kind == "model" and num_classes is None:
            if release is not None and release.arch == arch:
                num_classes = release.num_classes
            elif "logits/semantic/biases" not in ckpt:
                raise ConversionError(path, "no 'logits/semantic/biases' to read the class count from; "
                                      "pass --num-classes")
            else:
                bias_shape = list(ckpt.shape("logits/semantic/biases"))
                if len(bias_shape) != 1 or bias_shape[0] < 1:
                    raise ConversionError(path, f"shape {bias_shape} holds no class count (one bias per class "
                                          "expected); pass --num-classes", layer="logits/semantic/biases")
                num_classes = int(bias_shape[0])
        if kind == "backbone":
            num_classes = None
        elif isinstance(num_classes, numbers.Integral) and not isinstance(num_classes, bool):
            num_classes = int(num_classes)  # e.g. numpy's: both paths check and record a plain int
        output_stride = output_stride or (release.output_stride if release else 16)
        model = _meta_model(arch, kind, num_classes, output_stride) if build_model else None
        signature = _planning_signature(target, model, num_classes, output_stride)
        check_scope(ckpt, signature.tf_scope, arch, path)
        manifest = None
        if release is not None and release.arch == arch:
            manifest = load_manifest(release)
            check_manifest(ckpt, manifest, path)
        check_complete(ckpt, signature, arch, path)
        names = ckpt.names()
        ignored = Counter(ignore_reason(n) for n in names if ignore_reason(n) is not None)
        wanted = [n for n in names if ignore_reason(n) is None]
        plan = plan_state_dict({n: ckpt.shape(n) for n in wanted}, signature, path=path)
        if model is not None:  # load_state_dict_strict, on the meta model: keys, shapes and dtypes, before any read
            import torch

            model.load_state_dict({e.key: torch.empty(e.shape, dtype=getattr(torch, e.dtype), device="meta")
                                   for e in plan}, strict=True, assign=True)
        _, source_layer = map_tf_names(wanted, signature, path=path)
        files = source_files(prefix)
        source = {
            "checkpoint": prefix.name,
            "format": f"V{ckpt.format_version}",
            "files": [{"file": f.name, "sha256": sha256_file(f), "size_bytes": f.stat().st_size} for f in files],
            "official_url": release.url if release else None,
            "published_sha256": release.sha256 if release else None,
            "tf_variables": len(names),
            "crc32c_verified": verify,
            "ignored": dict(sorted(ignored.items())),
            "manifest": f"converters/manifests/{release.name}.json" if manifest else None,
        }
        preprocessing = release.preprocessing_name if release else target.preprocessing
        deeplab = release.deeplab_preprocessing_name if release else None
        record = provenance_record(
            tool=tool,
            steps=[s for s in (STEPS if model is not None else STREAMED_STEPS) if manifest or s != "check_manifest"],
            architecture=arch,
            num_classes=num_classes,
            load_with=load_with(arch, kind, num_classes, output_stride),
            source=source,
            release=release.name if release else None,
            model={"kind": kind, "output_stride": output_stride},
            preprocessing=preprocessing_contract(preprocessing),
            extra={"deeplab_preprocessing": preprocessing_contract(deeplab) if deeplab else None},
        )
        yield TFConversion(ckpt, plan, model, record, source_layer, prefix)


def _meta_model(arch: str, kind: str, num_classes: int | None, output_stride: int):
    """The reference model on the ``meta`` device (the architecture only: the weights come from the checkpoint)."""
    import torch

    from reference_models import build_backbone, build_model

    try:
        with torch.device("meta"):
            if kind == "backbone":
                return build_backbone(arch, output_stride=output_stride)
            return build_model(arch, num_classes=num_classes, output_stride=output_stride)
    except ValueError as exc:
        raise ConversionError(None, f"--arch {arch}: {exc}") from None


def _planning_signature(target, model, num_classes: int | None, output_stride: int):
    """The signature to plan against: the built model's, else the stored one at ``num_classes``; the
    stored record's strides and class count are checked as the model builders check them."""
    if model is not None:
        return signature_of(model)
    if output_stride not in target.output_strides:
        raise ConversionError(None, f"--arch {target.arch}: output_stride must be one of {target.output_strides}, "
                              f"got {output_stride!r}")
    try:
        return target.signature.resolve(num_classes)
    except ValueError as exc:
        raise ConversionError(None, f"--arch {target.arch}: {exc}") from None


def convert_tf_checkpoint(checkpoint: str | os.PathLike | None = None, **kwargs: Any) -> Converted:
    """Convert a TF(-slim) / DeepLab-TF checkpoint into the weights of a reference model, in memory (the
    arguments of :func:`open_tf_conversion`): the state dict holds the converted weights once, and the
    returned model holds the same tensors. To write a file, :func:`write_tf_checkpoint` streams instead."""
    with open_tf_conversion(checkpoint, **kwargs) as conversion:
        state_dict = dict(conversion.tensors())
    model = conversion.model
    model.load_state_dict(state_dict, strict=True, assign=True)  # the model takes these tensors, no copy
    return Converted(state_dict=state_dict, model=model, provenance=conversion.provenance,
                     source_layer=conversion.source_layer, prefix=conversion.prefix)


def write_tf_checkpoint(out: str | os.PathLike, checkpoint: str | os.PathLike | None = None, **kwargs: Any
                        ) -> dict[str, Any]:
    """Convert (the arguments of :func:`open_tf_conversion`) straight into the weights file ``out``
    (``.pth`` or ``.safetensors``) and its provenance JSON beside it; returns the provenance record.

    Planned against the stored signature (no torch, no reference model is imported); tensors are read,
    laid out and written one at a time (``converters.streaming``), so the checkpoint is never held in
    memory. The write is atomic: on a bad tensor (CRC-32C mismatch, named in the
    error), an error or Ctrl-C, neither the weights nor the provenance file is left behind.
    """
    from converters.cli import write_weights_streamed

    out = Path(out)
    with open_tf_conversion(checkpoint, build_model=False, **kwargs) as conversion:
        record = {**conversion.provenance, "weights": {"file": out.name, "tensors": len(conversion.plan)}}
        write_weights_streamed(conversion.specs(), conversion.array, out, record)
    return record
