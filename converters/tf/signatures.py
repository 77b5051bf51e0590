"""The state dicts the TF conversion produces, stored as data: planning a conversion needs no torch.

A :class:`Signature` is what planning needs from the target model (``converters.tf.rules``): the
TF scope of its backbone (the checkpoint's variables live under it), the key prefix of the backbone's
entries (``"backbone."`` in a full model) and the ordered ``state_dict()`` entries (key, shape, dtype
name). :func:`signature_of` derives it from a built model (the in-memory conversion, which builds the
model anyway); ``signatures.json`` beside this module stores one per architecture of :func:`tf_archs`
(the streaming conversion, ``tf2torch.py``, which never imports torch), with the class-count
dimension of the logits written as ``"num_classes"``, the output strides the architecture allows
(the state dict does not depend on the stride) and the name of its preprocessing contract.
The contracts themselves (``reference_models.preprocessing``, which imports torch) are stored too.

The file is generated from the registry: ``python -m converters.tf.signatures --write``;
``tests/test_tf_signatures.py`` rebuilds every signature from the meta-device models (several class
counts, every allowed stride) and fails on drift.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

SIGNATURES_PATH = Path(__file__).with_name("signatures.json")
FORMAT = "deeplab-repro TF state-dict signatures v1"
COMMAND = "python -m converters.tf.signatures --write"
CLASSES = "num_classes"  # the symbolic class-count dimension of a stored shape
STRIDES = (8, 16, 32)  # the output strides tried when generating
_GENERATING_CLASSES = (7, 11)  # two class counts: the dimensions that differ are the class count
_BACKBONE_PREFIXES = ("resnet_v", "xception_", "mobilenet_v")

Entry = tuple[str, tuple[Any, ...], str]  # (key, shape, dtype name); a stored shape may hold CLASSES


@dataclass(frozen=True)
class Signature:
    """The state dict a conversion must produce: ``entries`` in ``state_dict()`` order; ``name`` is the
    model's class name (for messages)."""

    name: str
    tf_scope: str
    prefix: str
    entries: tuple[Entry, ...]

    def resolve(self, num_classes: int | None) -> Signature:
        """This signature with ``"num_classes"`` replaced by ``num_classes`` (concrete shapes)."""
        if any(CLASSES in shape for _, shape, _ in self.entries):
            if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
                raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        entries = tuple((key, tuple(num_classes if d == CLASSES else d for d in shape), dtype)
                        for key, shape, dtype in self.entries)
        return Signature(self.name, self.tf_scope, self.prefix, entries)


@dataclass(frozen=True)
class StoredArch:
    """One architecture of ``signatures.json``."""

    arch: str
    kind: str  # "backbone" or "model"
    output_strides: tuple[int, ...]
    preprocessing: str  # a contract name of reference_models.preprocessing
    signature: Signature  # symbolic in the class count for a model


def scope_and_prefix(model: Any) -> tuple[str, str]:
    """(``tf_scope`` of the model's backbone, the key prefix of the backbone's entries) of a built model."""
    backbone = getattr(model, "backbone", model)
    tf_scope = getattr(backbone, "tf_scope", None)
    if not isinstance(tf_scope, str):
        raise TypeError(f"{type(backbone).__name__} has no 'tf_scope': not a TF-ported reference backbone")
    return tf_scope, ("backbone." if backbone is not model else "")


def signature_of(model: Any) -> Signature:
    """The concrete signature of a built reference backbone or DeepLab model (any device, ``meta`` too)."""
    entries = tuple((key, tuple(int(d) for d in value.shape), str(value.dtype).removeprefix("torch."))
                    for key, value in model.state_dict().items())
    return Signature(type(model).__name__, *scope_and_prefix(model), entries)


# --------------------------------------------------------------------------- the stored file
@cache
def _load() -> dict[str, Any]:
    from converters.io import load_generated_json

    return load_generated_json(SIGNATURES_PATH, FORMAT, COMMAND)


def _from_json(arch: str, item: dict[str, Any]) -> StoredArch:
    entries = tuple((key, tuple(shape), dtype) for key, shape, dtype in
                    ([*e, "float32"] if len(e) == 2 else e for e in item["state_dict"]))
    if "backbone" in item:  # a model stored as its registered backbone's entries under the prefix, then its own
        base = stored(item["backbone"]).signature
        entries = tuple((item["prefix"] + key, shape, dtype) for key, shape, dtype in base.entries) + entries
    return StoredArch(arch, item["kind"], tuple(item["output_strides"]), item["preprocessing"],
                      Signature(item["class"], item["tf_scope"], item["prefix"], entries))


@cache
def stored(arch: str) -> StoredArch:
    """The stored record of ``arch``; ValueError if it has no TF conversion."""
    archs = _load()["archs"]
    if arch not in archs:
        backbones, models = tf_archs()
        raise ValueError(f"no TF conversion for '{arch}'; backbones: {', '.join(backbones)}; "
                         f"models: {', '.join(models)}")
    try:
        return _from_json(arch, archs[arch])
    except (KeyError, TypeError, ValueError) as exc:
        from converters.errors import ConversionError

        raise ConversionError(SIGNATURES_PATH, f"entry '{arch}' is malformed ({type(exc).__name__}: {exc}); "
                              f"reinstall, or regenerate it with {COMMAND}") from None


def tf_archs() -> tuple[list[str], list[str]]:
    """(TF-ported backbones, TF-ported DeepLab v3/v3+ models), as stored."""
    archs = _load()["archs"]
    return ([a for a, item in archs.items() if item["kind"] == "backbone"],
            [a for a, item in archs.items() if item["kind"] == "model"])


def preprocessing_contract(name: str) -> dict[str, Any]:
    """The stored ``Preprocessing.to_dict()`` of the contract ``name`` (JSON types: lists for tuples)."""
    return dict(_load()["preprocessing"][name])


# --------------------------------------------------------------------------- generating it (imports torch)
def registry_tf_archs() -> tuple[list[str], list[str]]:
    """(TF-ported backbones, TF-ported DeepLab v3/v3+ models) of the model registry: the DeepLab v3/v3+
    models whose backbone carries a ``tf_scope`` (DeepLab-TF's; not e.g. the DRN ones, which have no
    TF checkpoint)."""
    from reference_models import list_backbones, list_models

    backbones = [b for b in list_backbones() if b.startswith(_BACKBONE_PREFIXES)]
    models = [m for m in list_models() if m.startswith("deeplabv3") and "tiny" not in m]
    models = [m for m in models if isinstance(getattr(
        build_meta(m, "model", output_stride=16, num_classes=_GENERATING_CLASSES[0]).backbone, "tf_scope", None), str)]
    return backbones, models


def build_meta(arch: str, kind: str, *, output_stride: int, num_classes: int | None = None) -> Any:
    """``arch`` built on the ``meta`` device (no weights allocated)."""
    import torch

    from reference_models import build_backbone, build_model

    with torch.device("meta"):
        if kind == "backbone":
            return build_backbone(arch, output_stride=output_stride)
        return build_model(arch, num_classes=num_classes, output_stride=output_stride)


def allowed_strides(arch: str, kind: str) -> tuple[int, ...]:
    """The output strides of :data:`STRIDES` ``arch`` builds at."""
    allowed = []
    for stride in STRIDES:
        try:
            build_meta(arch, kind, output_stride=stride, num_classes=_GENERATING_CLASSES[0])
        except ValueError:
            continue
        allowed.append(stride)
    return tuple(allowed)


def _symbolic(arch: str, a: Signature, b: Signature) -> Signature:
    """One signature from two builds with the class counts :data:`_GENERATING_CLASSES`."""
    ca, cb = _GENERATING_CLASSES
    if (a.tf_scope, a.prefix, [(k, d) for k, _, d in a.entries]) != (b.tf_scope, b.prefix,
                                                                     [(k, d) for k, _, d in b.entries]):
        raise RuntimeError(f"{arch}: the state-dict keys depend on the class count")
    entries = []
    for (key, sa, dtype), (_, sb, _) in zip(a.entries, b.entries):
        if len(sa) != len(sb) or any(x != y and (x, y) != (ca, cb) for x, y in zip(sa, sb)):
            raise RuntimeError(f"{arch}: '{key}' changes with the class count other than as the class count")
        entries.append((key, tuple(x if x == y else CLASSES for x, y in zip(sa, sb)), dtype))
    return Signature(a.name, a.tf_scope, a.prefix, tuple(entries))


def build_stored(arch: str, kind: str) -> StoredArch:
    """``arch``'s record from the registry: built at every allowed stride, which must not change it."""
    from reference_models.preprocessing import preprocessing_for

    strides = allowed_strides(arch, kind)
    found = set()
    for stride in strides:
        builds = [signature_of(build_meta(arch, kind, output_stride=stride, num_classes=n))
                  for n in (_GENERATING_CLASSES if kind == "model" else (None,))]
        found.add(_symbolic(arch, *builds) if kind == "model" else builds[0])
    if len(found) != 1:
        raise RuntimeError(f"{arch}: the state dict depends on the output stride; store one per stride")
    return StoredArch(arch, kind, strides, _contract_name(preprocessing_for(arch)), found.pop())


def _contract_name(contract: Any) -> str:
    from reference_models import preprocessing

    return next(name for name, value in vars(preprocessing).items() if value is contract)


def _compact(entry: Entry) -> list[Any]:
    key, shape, dtype = entry
    return [key, list(shape)] if dtype == "float32" else [key, list(shape), dtype]


def render() -> str:
    """The text of ``signatures.json`` for the registry as it is now (deterministic: registry order,
    one state-dict entry per line; a model whose entries start with a stored backbone's under its
    prefix refers to it)."""
    from reference_models import preprocessing

    backbones, models = registry_tf_archs()
    records = {a: build_stored(a, "backbone") for a in backbones}
    records.update({m: build_stored(m, "model") for m in models})
    contracts = {name: value.to_dict() for name, value in vars(preprocessing).items()
                 if isinstance(value, preprocessing.Preprocessing)}

    def arch_text(record: StoredArch) -> str:
        sig, head = record.signature, {}
        entries = list(sig.entries)
        for name in backbones:
            base = records[name].signature
            if sig.prefix and base.tf_scope == sig.tf_scope and \
                    entries[:len(base.entries)] == [(sig.prefix + k, s, d) for k, s, d in base.entries]:
                head, entries = {"backbone": name}, entries[len(base.entries):]
                break
        fields = {"kind": record.kind, "class": sig.name, "tf_scope": sig.tf_scope, "prefix": sig.prefix,
                  "output_strides": list(record.output_strides), "preprocessing": record.preprocessing, **head}
        lines = [f'    {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)},' for k, v in fields.items()]
        rows = ",\n".join(f"      {json.dumps(_compact(e), separators=(',', ':'))}" for e in entries)
        return "{\n" + "\n".join(lines) + '\n    "state_dict": [\n' + rows + "\n    ]\n  }"

    archs = ",\n".join(f"  {json.dumps(a)}: {arch_text(r)}" for a, r in records.items())
    header = {"format": FORMAT, "generated_by": COMMAND,
              "note": "shapes and dtypes of state_dict() per TF-convertible architecture; "
                      "a 2-item entry is float32; a model with 'backbone' starts with that backbone's "
                      "entries under 'prefix'"}
    head_text = "".join(f" {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)},\n" for k, v in header.items())
    table = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in contracts.items())
    return "{\n" + head_text + ' "preprocessing": {\n' + table + '\n },\n "archs": {\n' + archs + "\n }\n}\n"


def main(argv: list[str] | None = None) -> int:
    from converters.cli import generated_file_command

    return generated_file_command(
        argv, prog="python -m converters.tf.signatures", path=SIGNATURES_PATH, render=render, command=COMMAND,
        source="the registry", description="Regenerate (--write) or check (--check) converters/tf/signatures.json "
        "from the model registry: the state dicts the TF conversion plans against without importing torch.")


if __name__ == "__main__":
    sys.exit(main())
