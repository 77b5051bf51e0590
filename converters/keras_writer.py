"""Writer for Keras: the canonical PyTorch-named state dict -> the Keras twins' weights.

The readers (Caffe, TF checkpoints) and their rename tables produce ONE intermediate, the state
dict of the PyTorch reference model. This writer needs no second rename table: every Keras layer
of ``reference_models.keras`` that holds weights is named by the PyTorch module path it mirrors,
so a tensor's key is ``f"{layer.name}.{PARAM[variable]}"`` and only the layout changes:

============================  ==============  ==================================================
Keras variable                state-dict key  layout
============================  ==============  ==================================================
``Conv2D.kernel``             ``.weight``     OIHW -> HWIO (``transpose(2, 3, 1, 0)``)
``DepthwiseConv2D.kernel``    ``.weight``     (C*M, 1, H, W) -> (H, W, C, M)
``*.bias``                    ``.bias``       as is
``BatchNormalization``        ``.weight``,    as is; ``num_batches_tracked`` has no Keras twin
gamma/beta/moving_mean/       ``.bias``,      (dropped). Epsilon is not a tensor: the Keras layer
moving_variance               ``.running_*``  takes it from the same PyTorch module.
============================  ==============  ==================================================

Checks (as for PyTorch): every Keras variable filled, shapes equal, nothing left over; failures
raise :class:`ConversionError` naming the state-dict key (and, given a reverse map, the source layer).
Output: ``.weights.h5`` (``model.load_weights`` into ``build_keras_model(...)``) or ``.keras`` (whole
model, ``reference_models.keras.load_keras_model``), written atomically.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from converters.cli import native_stderr_silenced
from converters.errors import ConversionError, DeeplabError
from converters.io import check_outputs_spare_inputs

if TYPE_CHECKING:  # pragma: no cover
    import keras

__all__ = [
    "KERAS_SUFFIXES",
    "PARAM",
    "import_tensorflow",
    "kernel_layout",
    "keras_arrays",
    "keras_parser",
    "keras_provenance_path",
    "keras_record",
    "keras_suffix",
    "load_state_dict_into_keras",
    "run_keras_command",
    "save_keras",
    "to_keras",
    "write_keras",
]

KERAS_SUFFIXES = (".weights.h5", ".keras")

# Keras variable name -> PyTorch parameter / buffer name (the module path is the layer name).
PARAM = {
    "kernel": "weight",
    "depthwise_kernel": "weight",
    "bias": "bias",
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
}
_UNMIRRORED = ("num_batches_tracked",)  # PyTorch-only bookkeeping


def oihw_to_hwio(array: np.ndarray) -> np.ndarray:
    """Conv kernel: PyTorch (out, in, H, W) -> Keras/TF (H, W, in, out)."""
    return np.transpose(array, (2, 3, 1, 0))


def depthwise_to_hwcm(array: np.ndarray, channels: int) -> np.ndarray:
    """Depthwise kernel: PyTorch grouped (C*M, 1, H, W) -> Keras (H, W, C, M) (output channel c*M + m)."""
    cm, _, h, w = array.shape
    return np.transpose(array.reshape(channels, cm // channels, h, w), (2, 3, 0, 1))


def kernel_layout(layer: Any, variable: Any) -> tuple[str, int]:
    """How a Keras ``variable`` of ``layer`` lays out its state-dict array: ``("hwio", 0)`` for a conv
    kernel, ``("hwcm", C)`` for a depthwise kernel (Keras 3 names it "kernel" too: the layer type decides),
    ``("", 0)`` as is (biases, BatchNorm)."""
    if _variable_name(variable) not in ("kernel", "depthwise_kernel"):
        return "", 0
    if type(layer).__name__ == "DepthwiseConv2D":
        return "hwcm", int(variable.shape[2])
    return "hwio", 0


def to_keras(array: np.ndarray, layout: str, channels: int) -> np.ndarray:
    """A state-dict array in the ``layout`` of :func:`kernel_layout` (a view where the layout is a transpose)."""
    if layout == "hwio":
        return oihw_to_hwio(array)
    if layout == "hwcm":
        return depthwise_to_hwcm(array, channels)
    return array


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # torch.Tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _variable_name(variable: Any) -> str:
    return variable.path.rsplit("/", 1)[-1]


def keras_arrays(
    model: keras.Model,
    state_dict: Mapping[str, Any],
    *,
    path: str | os.PathLike | None = None,
    source_layer: Mapping[str, str] | None = None,
) -> dict[str, list[np.ndarray]]:
    """``{keras layer name: [arrays in layer.weights order]}`` from a PyTorch-named state dict.

    Raises :class:`ConversionError` for a missing tensor, a shape mismatch, or a state-dict entry no
    Keras layer consumes (``source_layer[key]``, e.g. the Caffe layer, is named when given).
    """
    source_layer = source_layer or {}
    used: set[str] = set()
    out: dict[str, list[np.ndarray]] = {}
    for layer in model.layers:
        if not layer.weights:
            continue
        arrays = []
        for variable in layer.weights:
            var = _variable_name(variable)
            if var not in PARAM:
                raise ConversionError(path, f"Keras layer '{layer.name}' has variable '{var}', which has no "
                                      "PyTorch counterpart rule")
            key = f"{layer.name}.{PARAM[var]}"
            if key not in state_dict:
                raise ConversionError(path, f"missing: nothing fills '{key}' (Keras {layer.name}/{var})")
            array = to_keras(_numpy(state_dict[key]).astype(np.float32, copy=False), *kernel_layout(layer, variable))
            if tuple(array.shape) != tuple(variable.shape):
                raise ConversionError(path, f"'{key}' has shape {list(_numpy(state_dict[key]).shape)}, Keras "
                                      f"{layer.name}/{var} expects {list(variable.shape)} after layout",
                                      layer=source_layer.get(key))
            arrays.append(np.ascontiguousarray(array))
            used.add(key)
        out[layer.name] = arrays
    leftover = [k for k in state_dict if k not in used and not k.endswith(_UNMIRRORED)]
    if leftover:
        more = f" (and {len(leftover) - 1} more)" if len(leftover) > 1 else ""
        raise ConversionError(path, f"'{leftover[0]}'{more} has no Keras layer in {model.name} (unconverted)",
                              layer=source_layer.get(leftover[0]))
    return out


def load_state_dict_into_keras(
    model: keras.Model,
    state_dict: Mapping[str, Any],
    *,
    path: str | os.PathLike | None = None,
    source_layer: Mapping[str, str] | None = None,
) -> keras.Model:
    """Fill ``model`` (from ``reference_models.keras``) with a PyTorch state dict (tensors or arrays); returns it.

    A ``.pth`` / ``.safetensors`` from ``caffe2torch.py`` or ``tf2torch.py`` loads with
    ``load_state_dict_into_keras(model, converters.io.load_state_dict(path))``.
    """
    arrays = keras_arrays(model, state_dict, path=path, source_layer=source_layer)
    for layer in model.layers:
        if layer.name in arrays:
            layer.set_weights(arrays[layer.name])
    return model


def keras_suffix(path: str | os.PathLike) -> str | None:
    """The Keras suffix ``path`` ends in (``.weights.h5`` or ``.keras``), else None."""
    name = Path(path).name
    return next((s for s in KERAS_SUFFIXES if name.endswith(s) and len(name) > len(s)), None)


def keras_provenance_path(weights: str | os.PathLike) -> Path:
    """The sidecar JSON: ``model.weights.h5`` -> ``model.weights.json``, ``model.keras`` -> ``model.keras.json``.

    Its own name, not the PyTorch writers' ``model.json``: the Keras and PyTorch outputs of one
    release sit side by side by default, each with its own provenance.
    """
    weights = Path(weights)
    suffix = keras_suffix(weights)
    if suffix == ".weights.h5":
        return weights.with_name(weights.name[: -len(suffix)] + ".weights.json")
    return weights.with_name(weights.name + ".json")


def save_keras(model: keras.Model, target: str | os.PathLike) -> Path:
    """Write ``model``'s weights (``.weights.h5``) or the whole model (``.keras``) atomically and checked
    (:mod:`converters.io`: the temporary keeps the suffix Keras insists on, and is read back before it is
    renamed over ``target``)."""
    from converters.io import atomic_path

    target = Path(target)
    suffix = keras_suffix(target)
    if suffix is None:
        raise ValueError(f"{target}: output must end in one of {', '.join(KERAS_SUFFIXES)}")
    with atomic_path(target, suffix=suffix, check=check_keras_file) as tmp:
        if suffix == ".weights.h5":
            model.save_weights(tmp)
        else:
            model.save(tmp)
    return target


def check_keras_file(path: Path) -> None:
    """The written file reads back: an HDF5 file that opens (HDF5 checks its end-of-file address), or a
    ``.keras`` zip whose central directory reads."""
    if path.name.endswith(".keras"):
        import zipfile

        try:
            with zipfile.ZipFile(path) as zf:
                zf.namelist()
        except (zipfile.BadZipFile, ValueError) as exc:
            raise OSError(f"the written archive does not read back ({exc})") from None
        return
    import h5py

    with h5py.File(path, "r"):
        pass


# --------------------------------------------------------------------------- the Keras command lines
def set_help(parser: argparse.ArgumentParser, dest: str, text: str) -> None:
    """Reword one option's help (the Keras CLIs reuse the PyTorch CLIs' parsers: same releases and flags)."""
    for action in parser._actions:
        if action.dest == dest:
            action.help = text
            return
    raise KeyError(dest)


def check_keras_output(out: Path) -> None:
    if keras_suffix(out) is None:
        raise ConversionError(out, f"output must end in {' or '.join(KERAS_SUFFIXES)}")


def keras_parser(parser: argparse.ArgumentParser, description: str, out_default: str) -> argparse.ArgumentParser:
    """A PyTorch converter's ``parser`` reworded for its Keras twin (same releases, flags and usage rules)."""
    parser.description = description
    set_help(parser, "out", f"output, one of {', '.join(KERAS_SUFFIXES)} (weights, or the whole model) "
             f"(default: {out_default})")
    return parser


def run_keras_command(args: argparse.Namespace, *, out: Path,
                      inputs: Callable[[argparse.Namespace], Sequence[Path]],
                      convert: Callable[[argparse.Namespace], Any]) -> Path:
    """The Keras converters' ``run``: check ``out`` (a Keras file sparing ``inputs(args)``, the source files),
    then TensorFlow, then ``write_keras(convert(args), out)``; return ``out``. The PyTorch twin's
    ``convert`` gives the in-memory weights and provenance."""
    check_keras_output(out)
    check_outputs_spare_inputs([out, keras_provenance_path(out)], inputs(args))
    import_tensorflow()  # fails fast, in one line, without TensorFlow
    return write_keras(convert(args), out, quiet=args.quiet)


def import_tensorflow() -> tuple[Any, Any]:
    """``(tensorflow, keras)``, imported quietly; a one-line :class:`DeeplabError` when not installed.

    TensorFlow's log level defaults to errors only (``TF_CPP_MIN_LOG_LEVEL=2``, set before the import);
    its native start-up lines are silenced unless the user set ``TF_CPP_MIN_LOG_LEVEL`` to 0 or 1.
    """
    import importlib.util

    if "tensorflow" not in sys.modules:
        missing = [m for m in ("tensorflow", "keras") if importlib.util.find_spec(m) is None]
        if missing:
            raise DeeplabError(f"the Keras converters need TensorFlow and Keras ({' and '.join(missing)} not "
                               "installed): pip install '.[tf]' (or: pip install 'deeplab-repro[tf]')")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    quiet = os.environ["TF_CPP_MIN_LOG_LEVEL"] not in ("0", "1") and "tensorflow" not in sys.modules
    with native_stderr_silenced() if quiet else contextlib.nullcontext():
        import keras
        import tensorflow as tf

        tf.get_logger().setLevel("ERROR")
        tf.config.list_physical_devices()  # device discovery (and its CUDA probe) happens here, silenced
    return tf, keras


def build_from_record(record: Mapping[str, Any]) -> keras.Model:
    """The Keras twin a provenance record describes (backbone or model, classes, output stride)."""
    import_tensorflow()
    from reference_models.keras import build_keras_backbone, build_keras_model

    arch = record["architecture"]
    if record.get("kind") == "backbone":
        return build_keras_backbone(arch, output_stride=record["output_stride"])
    kwargs = {"output_stride": record["output_stride"]} if record.get("output_stride") else {}
    return build_keras_model(arch, num_classes=record["num_classes"], **kwargs)


def _load_with(record: Mapping[str, Any], out: Path) -> str:
    if keras_suffix(out) == ".keras":
        return f"reference_models.keras.load_keras_model({out.name!r})"
    arch = record["architecture"]
    if record.get("kind") == "backbone":
        build = f"build_keras_backbone({arch!r}, output_stride={record['output_stride']})"
    else:
        stride = f", output_stride={record['output_stride']}" if record.get("output_stride") else ""
        build = f"build_keras_model({arch!r}, num_classes={record['num_classes']}{stride})"
    return f"reference_models.keras.{build}.load_weights({out.name!r})"


def keras_record(record: Mapping[str, Any], out: Path, *, variables: int, tensors: int,
                 versions: Mapping[str, str | None], written: str) -> dict[str, Any]:
    """The Keras output's provenance: the PyTorch record (``converters.provenance``) of the same conversion,
    with the Keras ``load_with``, the ``keras_layout`` step, the TensorFlow/Keras ``versions``, how the file
    was ``written`` and the output file."""
    converter = dict(record["converter"])
    converter.update(steps=[*converter.get("steps", []), "keras_layout"], **versions, keras_writer=written,
                     canonical_state_dict={"tensors": tensors})
    return {**record, "load_with": _load_with(record, out), "converter": converter,
            "weights": {"file": out.name, "format": keras_suffix(out), "variables": variables,
                        "layout": "NHWC; kernels HWIO, depthwise (H, W, C, M)"}}


def finish_keras_output(out: Path, record: dict[str, Any], *, quiet: bool) -> Path:
    """The sha256 of the written ``out`` into ``record``, the provenance JSON beside it (the weights go if that
    fails), and the one line unless ``quiet``."""
    from converters.io import sha256_file, write_json_atomic

    try:
        record["weights"]["sha256"] = sha256_file(out)
        write_json_atomic(keras_provenance_path(out), record)
    except BaseException:
        out.unlink(missing_ok=True)  # never leave weights without their provenance
        raise
    if not quiet:
        print(f"wrote {out} ({record['weights']['variables']} Keras variables, {record['architecture']}) and "
              f"{keras_provenance_path(out)}")
    return out


def write_keras(converted: Any, out: str | os.PathLike, *, quiet: bool = False) -> Path:
    """Write an in-memory conversion (``state_dict``, ``provenance``, ``source_layer``, as returned by
    ``convert_caffemodel`` / ``convert_tf_checkpoint``) as Keras weights at ``out`` plus a provenance JSON
    beside it. Nothing is left at ``out`` on failure."""
    out = Path(out)
    check_keras_output(out)
    model = build_from_record(converted.provenance)
    load_state_dict_into_keras(model, converted.state_dict, path=converted.provenance["source"].get("file") or converted.provenance["source"].get("checkpoint"),
                               source_layer=converted.source_layer)
    tf, keras = import_tensorflow()
    record = keras_record(converted.provenance, out, variables=len(model.weights), tensors=len(converted.state_dict),
                          versions={"tensorflow": tf.__version__, "keras": keras.__version__},
                          written="Keras save_weights / save of the built model")
    save_keras(model, out)
    return finish_keras_output(out, record, quiet=quiet)
