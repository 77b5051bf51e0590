"""The Keras 3 ``.weights.h5`` files of the TF-convertible architectures, stored as data: ``tf2keras.py``
writes a release's Keras weights straight from the checkpoint, without TensorFlow or Keras, one tensor
in memory at a time (as ``tf2torch.py`` writes ``.pth`` / ``.safetensors``).

What ``model.save_weights(path)`` writes for a Keras twin of ``reference_models.keras`` is a tree of
HDF5 groups and nothing else: a ``vars`` group per saveable object (the model's own, at the root, then
``layers/<group>/vars`` per layer), each with a ``name`` attribute (the object's name), holding the
object's variables as float32 datasets ``"0"``, ``"1"``, ... in the order Keras saves them. The group names
(``conv2d_17``, ``batch_normalization_3``) are Keras's, counted per layer class in saving order. Every
Keras layer that holds weights is named by the PyTorch module path it mirrors (``converters.keras_writer``),
so each dataset is one state-dict entry, ``f"{name}.{PARAM[variable]}"``, in one of three layouts: as is,
``hwio`` (a conv kernel, OIHW -> HWIO) or ``hwcm`` (a depthwise kernel, with its channel count).

A :class:`KerasLayout` stores exactly that per architecture (``keras_layouts.json`` beside this module).
It is generated from the Keras twins themselves: ``python -m converters.tf.keras_layouts --write`` (needs
TensorFlow and Keras) builds each at two class counts and every allowed output stride (the layout must not
depend on either), gives every variable a distinct value, saves it with Keras and reads the file back, so
which variable each dataset holds is read from the file Keras wrote, not assumed.
``tests/test_keras_layouts.py`` rebuilds them and fails on drift, and checks that a streamed file has the
tree, attributes and values of Keras's own ``save_weights`` of the in-memory conversion and loads with
``load_weights``.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

LAYOUTS_PATH = Path(__file__).with_name("keras_layouts.json")
FORMAT = "deeplab-repro Keras weights layouts v1"
COMMAND = "python -m converters.tf.keras_layouts --write"
_GENERATING_CLASSES = (7, 11)

Var = tuple[str, str, int]  # (state-dict parameter name, layout "" | "hwio" | "hwcm", channels of a hwcm kernel)


@dataclass(frozen=True)
class KerasLayout:
    """One architecture's ``.weights.h5``: the name of the model's own (empty) root ``vars`` group and, per
    layer group, ``(group path, name attribute, variables)``; ``keras`` is the version that generated it.
    The weightless layers' groups (ReLU, Add, padding, ...) depend on the output stride, the rest does not;
    each is written with its own name as the ``name`` attribute (what Keras writes in a fresh process: a
    weightless layer's name is Keras's session counter, and Keras reads weights by path, never by name)."""

    arch: str
    model_name: str
    groups: tuple[tuple[str, str, tuple[Var, ...]], ...]
    keras: str
    weightless: tuple[tuple[int, tuple[str, ...]], ...] = ()  # (output stride, group paths) pairs

    def weightless_at(self, output_stride: int) -> tuple[str, ...]:
        """The weightless layers' group paths of the model built at ``output_stride``."""
        for stride, paths in self.weightless:
            if stride == output_stride:
                return paths
        from converters.errors import ConversionError

        raise ConversionError(LAYOUTS_PATH, f"{self.arch}: no layout stored for output stride {output_stride} "
                              f"(stored: {', '.join(str(s) for s, _ in self.weightless)})")

    def keys(self) -> list[str]:
        """The state-dict keys the datasets hold, in writing order."""
        return [f"{name}.{param}" for _, name, variables in self.groups for param, _, _ in variables]


# --------------------------------------------------------------------------------------------- stored
def _load() -> dict[str, Any]:
    from converters.io import load_generated_json

    return load_generated_json(LAYOUTS_PATH, FORMAT, COMMAND)


@cache
def stored_layout(arch: str) -> KerasLayout | None:
    """``arch``'s stored layout, or None if none is stored (that architecture is written in memory)."""
    data = _load()
    item = data["archs"].get(arch)
    if item is None:
        return None
    try:
        groups = tuple((path, name, tuple((v[0], v[1] if len(v) > 1 else "", v[2] if len(v) > 2 else 0)
                                          for v in variables)) for path, name, variables in item["groups"])
        weightless = tuple((int(stride), tuple(paths)) for stride, paths in item["weightless"].items())
        return KerasLayout(arch, item["model_name"], groups, data["keras"], weightless)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        from converters.errors import ConversionError

        raise ConversionError(LAYOUTS_PATH, f"entry '{arch}' is malformed ({type(exc).__name__}: {exc}); "
                              f"reinstall, or regenerate it with {COMMAND}") from None


# ---------------------------------------------------------------------------------------------- writing
def check_plan(layout: KerasLayout, shapes: dict[str, tuple[int, ...]]) -> None:
    """Every planned state-dict entry (``{key: shape}``) has its dataset and every dataset its entry, with a
    shape its layout takes; else :class:`ConversionError` naming the stored layouts (they disagree with the
    stored signatures: regenerate both)."""
    from converters.errors import ConversionError

    keys = layout.keys()
    held = set(keys)
    missing = [k for k in keys if k not in shapes]
    left = [k for k in shapes if k not in held and not k.endswith("num_batches_tracked")]
    twice = [k for k in held if keys.count(k) > 1] if len(held) != len(keys) else []
    if missing or left or twice:
        what = (f"no planned entry for dataset '{missing[0]}'" if missing else
                f"no dataset for '{left[0]}'" if left else f"'{twice[0]}' in two datasets")
        raise ConversionError(LAYOUTS_PATH, f"{layout.arch}: {what}; regenerate it with {COMMAND}")
    for _, name, variables in layout.groups:
        for param, lay, channels in variables:
            shape = tuple(shapes[f"{name}.{param}"])
            if (lay and len(shape) != 4) or (lay == "hwcm" and (shape[1] != 1 or shape[0] % max(channels, 1))):
                raise ConversionError(LAYOUTS_PATH, f"{layout.arch}: '{name}.{param}' of shape {list(shape)} "
                                      f"cannot take layout {lay}; regenerate it with {COMMAND}")


def write_weights_h5(out: str | Path, layout: KerasLayout, output_stride: int, specs: Any, produce: Any) -> int:
    """Write ``out`` (``.weights.h5``) as Keras's ``save_weights`` would for ``layout``'s model built at
    ``output_stride`` (the weights load at any stride the architecture allows), calling
    ``produce(key)`` for one state-dict array at a time (``specs``: the planned ``TensorSpec`` list); each
    is laid out, written and dropped before the next. Atomic: on an error (a bad tensor's checksum) or
    Ctrl-C nothing is left at ``out``. Returns the number of datasets. Needs ``h5py`` only."""
    import h5py

    from converters.io import atomic_path
    from converters.keras_writer import check_keras_file, to_keras

    check_plan(layout, {spec.key: tuple(spec.shape) for spec in specs})
    weightless = layout.weightless_at(output_stride)
    written = 0
    with atomic_path(out, check=check_keras_file) as tmp, h5py.File(tmp, "w") as f:
        f.create_group("vars").attrs["name"] = layout.model_name
        for path, name, variables in layout.groups:
            group = f.create_group(path).create_group("vars")
            group.attrs["name"] = name
            for i, (param, lay, channels) in enumerate(variables):
                array = np.asarray(produce(f"{name}.{param}"))
                group[str(i)] = np.ascontiguousarray(to_keras(array, lay, channels), dtype=np.float32)
                written += 1
                del array
        for path in weightless:
            f.create_group(path).create_group("vars").attrs["name"] = path.rsplit("/", 1)[-1]
    return written


# ------------------------------------------------------------------------------------------ generating
def layout_of(model: Any, arch: str) -> KerasLayout:
    """The layout of a built Keras twin, read from the file Keras's ``save_weights`` writes for it (every
    variable first set to a distinct value, so each dataset names its variable). Needs Keras."""
    import h5py
    import keras

    from converters.keras_writer import PARAM, kernel_layout

    variables = list(model.weights)
    for i, v in enumerate(variables):
        v.assign(np.full(tuple(v.shape), i + 1, dtype=np.float32))
    layers = {layer.name: layer for layer in model.layers}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.weights.h5"
        model.save_weights(path)
        seen: list[str] = []
        with h5py.File(path, "r") as f:
            if dict(f.attrs):
                raise RuntimeError(f"{arch}: the file has root attributes {dict(f.attrs)}: unknown layout")
            f.visit(seen.append)
            groups: list[tuple[str, str, tuple[Var, ...]]] = []
            weightless: list[str] = []
            for name in seen:
                obj = f[name]
                if isinstance(obj, h5py.Dataset):
                    if name.rsplit("/", 2)[-2] != "vars":
                        raise RuntimeError(f"{arch}: dataset {name} outside a vars group: unknown layout")
                    continue
                if name.split("/")[-1] != "vars":
                    if dict(obj.attrs) or not any(s.startswith(name + "/") and s.endswith("/vars") for s in seen):
                        raise RuntimeError(f"{arch}: group {name} is neither a vars group nor holds one")
                    continue
                attrs = dict(obj.attrs)
                if set(attrs) != {"name"}:
                    raise RuntimeError(f"{arch}: {name} has attributes {sorted(attrs)}, expected only 'name'")
                owner = str(attrs["name"])
                if name == "vars":
                    if owner != model.name or len(obj):
                        raise RuntimeError(f"{arch}: the root vars group is not the model's own, empty one")
                    continue
                keys = sorted(obj.keys(), key=int)
                if keys != [str(i) for i in range(len(keys))]:
                    raise RuntimeError(f"{arch}: {name} holds {keys}, not datasets 0..n-1")
                found: list[Var] = []
                for key in keys:
                    data = obj[key][()]
                    v = variables[int(data.flat[0]) - 1]
                    if data.dtype != np.float32 or data.shape != tuple(v.shape) or not np.all(data == data.flat[0]):
                        raise RuntimeError(f"{arch}: {name}/{key} is not one float32 variable")
                    var = v.path.rsplit("/", 1)[-1]
                    if var not in PARAM or owner not in layers:
                        raise RuntimeError(f"{arch}: {name}/{key} is {owner}/{var}, which has no state-dict rule")
                    found.append((PARAM[var], *kernel_layout(layers[owner], v)))
                if found:
                    groups.append((name[: -len("/vars")], owner, tuple(found)))
                else:
                    weightless.append(name[: -len("/vars")])
    written = sum(len(g[2]) for g in groups)
    if written != len(variables):
        raise RuntimeError(f"{arch}: the file holds {written} datasets for {len(variables)} variables")
    return KerasLayout(arch, model.name, tuple(groups), keras.__version__, ((0, tuple(weightless)),))


def build_layout(arch: str, kind: str) -> KerasLayout:
    """``arch``'s layout from its Keras twin, built at the generating class counts and every allowed output
    stride (which must all give the same one), checked against the stored state-dict signature."""
    from converters.errors import ConversionError
    from converters.keras_writer import import_tensorflow
    from converters.tf.signatures import CLASSES, stored

    import_tensorflow()
    from reference_models.keras import build_keras_backbone, build_keras_model

    record = stored(arch)
    found: set[tuple[str, tuple]] = set()
    weightless: dict[int, set[tuple[str, ...]]] = {}
    for stride in record.output_strides:
        for classes in (_GENERATING_CLASSES if kind == "model" else (None,)):
            model = (build_keras_backbone(arch, output_stride=stride) if kind == "backbone"
                     else build_keras_model(arch, num_classes=classes, output_stride=stride))
            built = layout_of(model, arch)
            found.add((built.model_name, built.groups))
            weightless.setdefault(stride, set()).add(built.weightless[0][1])
    if len(found) != 1:
        raise RuntimeError(f"{arch}: the Keras weight groups depend on the class count or output stride")
    if any(len(v) != 1 for v in weightless.values()):
        raise RuntimeError(f"{arch}: the weightless Keras groups depend on the class count")
    model_name, groups = found.pop()
    layout = KerasLayout(arch, model_name, groups, built.keras,
                         tuple((stride, v.pop()) for stride, v in sorted(weightless.items())))
    shapes = {key: tuple(_GENERATING_CLASSES[0] if d == CLASSES else d for d in shape)
              for key, shape, _ in record.signature.entries}
    try:
        check_plan(layout, shapes)  # what a conversion checks against its plan, here against the signature
    except ConversionError as exc:
        raise RuntimeError(f"{arch}: the Keras twin and the stored state-dict signature differ: {exc}") from None
    return layout


def render() -> str:
    """The text of ``keras_layouts.json`` for every TF-convertible architecture with a Keras twin (one
    group per line; a variable as ``[param]``, ``[param, layout]`` or ``[param, "hwcm", channels]``)."""
    from converters.keras_writer import import_tensorflow
    from converters.tf.signatures import tf_archs

    _, keras = import_tensorflow()
    from reference_models.keras import list_keras_backbones, list_keras_models

    backbones, models = tf_archs()
    archs = [(a, "backbone") for a in backbones if a in list_keras_backbones()]
    archs += [(a, "model") for a in models if a in list_keras_models()]

    def var_json(v: Var) -> list[Any]:
        param, lay, channels = v
        return [param] if not lay else [param, lay] if lay != "hwcm" else [param, lay, channels]

    parts = []
    for arch, kind in archs:
        layout = build_layout(arch, kind)
        rows = ",\n".join(f"      {json.dumps([p, n, [var_json(v) for v in vs]], separators=(',', ':'))}"
                          for p, n, vs in layout.groups)
        free = ",\n".join(f"      {json.dumps(str(stride))}: {json.dumps(list(paths), separators=(',', ':'))}"
                          for stride, paths in layout.weightless)
        parts.append(f"  {json.dumps(arch)}: {{\n    \"kind\": {json.dumps(kind)},\n    \"model_name\": "
                     f"{json.dumps(layout.model_name)},\n    \"groups\": [\n{rows}\n    ],\n"
                     f"    \"weightless\": {{\n{free}\n    }}\n  }}")
    header = {"format": FORMAT, "generated_by": COMMAND, "keras": keras.__version__,
              "note": "per architecture: the .weights.h5 groups Keras writes for the layers with weights: "
                      "[path, name attribute, variables]; a variable's dataset holds state-dict entry "
                      "'<name>.<param>', laid out as is, hwio (conv kernel) or hwcm (depthwise kernel, with "
                      "its channels); then per output stride the groups of the weightless layers"}
    head = "".join(f" {json.dumps(k)}: {json.dumps(v)},\n" for k, v in header.items())
    return "{\n" + head + ' "archs": {\n' + ",\n".join(parts) + "\n }\n}\n"


def main(argv: list[str] | None = None) -> int:
    from converters.cli import generated_file_command

    return generated_file_command(
        argv, prog="python -m converters.tf.keras_layouts", path=LAYOUTS_PATH, render=render, command=COMMAND,
        source="the Keras twins", description="Regenerate (--write) or check (--check) "
        "converters/tf/keras_layouts.json from the Keras twins (needs TensorFlow and Keras): the .weights.h5 "
        "files tf2keras.py writes without them.")


if __name__ == "__main__":
    raise SystemExit(main())
