"""torch.hub entry points: one per registered model of ``reference_models``.

    model = torch.hub.load("path/to/deeplab-repro", "deeplabv2_resnet101_msc", source="local", weights="voc12")
    model = torch.hub.load(".", "deeplabv3plus_xception65", source="local", weights="w.safetensors")
    model = torch.hub.load(".", "deeplabv3_resnet101", source="local", num_classes=21)   # random weights

``weights``: a file (``.pth`` read with ``torch.load(weights_only=True)``, or ``.safetensors``), or an
official release name (``converters.releases``), which resolves to the converted file in the
models folder (``models_dir``, else ``$DEEPLAB_MODELS_DIR``, else ``data/models``); when that file
is missing the error says which download and convert commands produce it. ``num_classes`` comes
from the release, the provenance JSON beside the file, or the argument (default 21 without weights).
Other keyword arguments (``output_stride=...``) go to ``reference_models.build_model``. The model is
returned in eval mode; its preprocessing contract is ``model.preprocessing`` when known.

The entry points are generated from the model registry, so a newly registered model is listed by
``torch.hub.list`` without editing this file.
"""

from __future__ import annotations

import os
import pathlib
import typing

# torch.hub.list() lists every public callable of this module: helpers are private, imports are modules.

dependencies = ["torch", "numpy", "safetensors", "scipy", "yaml"]


class _HubError(ValueError):
    """A weights argument that cannot be resolved or loaded: a one-line message."""


def _models_dir(models_dir: str | os.PathLike | None) -> pathlib.Path:
    from converters.releases import MODELS_DIR

    if models_dir is not None:
        return pathlib.Path(models_dir)
    env = os.environ.get("DEEPLAB_MODELS_DIR")
    return pathlib.Path(env) if env else MODELS_DIR


def _read_state_dict(path: pathlib.Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling refusal or corrupt file becomes one line
        raise _HubError(f"{path}: cannot read weights ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None


def _resolve(model_name: str, weights: str | os.PathLike, models_dir: pathlib.Path) -> tuple[pathlib.Path, typing.Any]:
    """(weights file, release or None) for a path or a release name."""
    from converters.releases import RELEASES

    name = str(weights)
    if name in RELEASES and not pathlib.Path(name).exists():
        release = RELEASES[name]
        if release.arch != model_name:
            raise _HubError(f"release '{name}' holds {release.arch} weights, not {model_name}: "
                           f"torch.hub.load(..., '{release.arch}', weights='{name}')"
                           if release.kind == "model" else
                           f"release '{name}' is the {release.arch} backbone (ImageNet), not a {model_name} model")
        path = release.converted_path(models_dir)
        if not path.is_file():
            raise _HubError(f"{path} not found: release '{name}' is not converted yet; run from the repository root: "
                           f"{release.how_to_get(models_dir)}")
        return path, release
    path = pathlib.Path(weights)
    if not path.is_file():
        raise _HubError(f"{path}: no such weights file, and not a release name (known: {', '.join(RELEASES)})")
    return path, None


def _load(model_name: str, *, weights: str | os.PathLike | None = None, num_classes: int | None = None,
         models_dir: str | os.PathLike | None = None, **kwargs: typing.Any):
    """Build the registered ``model_name`` and load ``weights`` strictly (see the module docstring)."""
    from reference_models import build_model

    release = None
    provenance: dict = {}
    state = None
    if weights is not None:
        path, release = _resolve(model_name, weights, _models_dir(models_dir))
        side = path.with_suffix(".json")
        if side.is_file():
            from converters.errors import ConversionError
            from converters.provenance import read_provenance

            try:
                provenance = read_provenance(side)
            except ConversionError as e:
                raise _HubError(str(e)) from None
            arch = provenance.get("architecture")
            if arch and arch != model_name:
                raise _HubError(f"{path}: its provenance says {arch}, not {model_name}")
        state = _read_state_dict(path)
    if num_classes is None:
        num_classes = (release.num_classes if release is not None else provenance.get("num_classes")) or 21
    model = build_model(model_name, num_classes=num_classes, **kwargs)
    if state is not None:
        own = model.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
        if missing or unexpected or wrong:
            what = (f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}" if unexpected else
                    f"{wrong[0]!r} is {tuple(state[wrong[0]].shape)} in the file, {tuple(own[wrong[0]].shape)} here")
            raise _HubError(f"{weights}: does not fit {model_name} with {num_classes} classes ({what}; "
                            f"{len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} shapes differ)")
        model.load_state_dict(state, strict=True)
    preprocessing = release.preprocessing if release is not None else None
    if preprocessing is None and provenance.get("preprocessing"):
        from reference_models.preprocessing import Preprocessing

        fields = Preprocessing.__dataclass_fields__
        pp = {k: tuple(v) if isinstance(v, list) else v for k, v in provenance["preprocessing"].items() if k in fields}
        try:
            preprocessing = Preprocessing(**pp)
        except TypeError as e:  # a required field (channel_order, mean) missing
            raise _HubError(f"{side}: bad preprocessing record ({e})") from None
    if preprocessing is not None:
        model.preprocessing = preprocessing
    return model.eval()


def _entry(model_name: str):
    def entry(*, weights: str | os.PathLike | None = None, num_classes: int | None = None,
              models_dir: str | os.PathLike | None = None, **kwargs: typing.Any):
        return _load(model_name, weights=weights, num_classes=num_classes, models_dir=models_dir, **kwargs)

    entry.__name__ = entry.__qualname__ = model_name
    entry.__doc__ = (f"{model_name} from reference_models; weights: a .pth/.safetensors file or a release name "
                     "(see hubconf.py).")
    return entry


def _register_entry_points() -> list[str]:
    from reference_models import list_models

    names = list_models()
    for name in names:
        globals()[name] = _entry(name)
    return names


_ENTRY_POINTS = _register_entry_points()
