"""Test-time inference shared by ``reproduce.evaluate`` and ``reproduce.predict``.

One image in, class probabilities at the label size out, following the official protocols:

* **Preprocessing** comes from the weights' contract: the provenance JSON beside the weights
  (``converters/*2torch.py`` write it) when present, else the model family's default
  (DeepLab v2 Caffe: BGR minus 104.008/116.669/122.675; DeepLab-TF: ``2x/255 - 1`` RGB, or RGB
  minus 123.15/115.90/103.06 for the non-beta ``resnet_v1_*`` trunks).
* **Protocols**: ``"whole"`` runs the image as it is. ``"pad"`` pads bottom/right to
  ``crop_size`` (513) with the mean (0 after preprocessing) as the Caffe data layer and TF's
  ``input_preprocess.py`` do, runs the padded image, resizes the logits to the padded size and
  crops the top-left ``H x W`` back (the padded label pixels are 255 = ignore in the official
  code, so cropping is the same thing). An image larger than the crop is padded to its own size
  (Caffe would centre-crop it; VOC images are at most 500 px, so this never happens there).
  COCO-Stuff 10k's 513x513 pre-warp is a dataset option (``CocoStuff10k(warp_size=513)``),
  after which ``"whole"`` applies.
* **Scales**: DeepLab v2's 1/0.75/0.5 max fusion lives inside ``deeplabv2_resnet101_msc``;
  other v2 scale lists are refused. DeepLab v3/v3+ take any list: each scaled input is made
  with ``align_corners=True`` bilinear resizing at TF's ``scale_dimension`` size
  ``int((n - 1) * s + 1)``, its logits go to the 1x logits grid and then to the image size
  (``multi_scale_logits`` then ``predict_labels_multi_scale``), and the **softmax probabilities
  are averaged** over scales and flips.
* **Logits to labels**: bilinear with ``align_corners=True`` (Caffe's ``Interp`` and TF's
  ``resize_bilinear(..., align_corners=True)``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reference_models.preprocessing import CAFFE_DEEPLAB_V2, Preprocessing

__all__ = [
    "InferenceError",
    "InferenceConfig",
    "LoadedModel",
    "TF_ZERO_MEAN_UNIT_RANGE",
    "TF_RESNET_V1_MEAN",
    "PROTOCOLS",
    "default_preprocessing",
    "load_model",
    "parse_scales",
    "pad_bottom_right",
    "prepare_input",
    "predict_probs",
    "scale_dimension",
]

Protocol = Literal["whole", "pad"]
PROTOCOLS: tuple[str, ...] = ("whole", "pad")

# DeepLab-TF feature_extractor.py: _preprocess_zero_mean_unit_range (2/255 x - 1) for xception_*,
# mobilenet_v2 and the resnet_v1_*_beta trunks; _preprocess_subtract_imagenet_mean (RGB minus _MEAN_RGB)
# for resnet_v1_50/101. Pad value mean_pixel() -> 0 after preprocessing. The contracts are defined once
# in reference_models.preprocessing; the fallback only covers a checkout that predates them.
try:
    from reference_models.preprocessing import DEEPLAB_TF_RESNET_V1_MEAN as TF_RESNET_V1_MEAN
    from reference_models.preprocessing import DEEPLAB_TF_UNIT_RANGE as TF_ZERO_MEAN_UNIT_RANGE
except ImportError:  # pragma: no cover
    TF_ZERO_MEAN_UNIT_RANGE = Preprocessing(
        channel_order="RGB", mean=(127.5, 127.5, 127.5), std=(127.5, 127.5, 127.5), train_crop=513, test_crop=513
    )
    TF_RESNET_V1_MEAN = Preprocessing(channel_order="RGB", mean=(123.15, 115.90, 103.06), train_crop=513,
                                      test_crop=513)


class InferenceError(ValueError):
    """Bad user input (missing weights, mismatched model, bad option): ``str(error)`` is one line."""


@dataclass(frozen=True)
class InferenceConfig:
    """How one image is run. ``scales`` apply to DeepLab v3/v3+ only (v2's MSC is inside the model)."""

    protocol: Protocol = "pad"
    crop_size: int = 513
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    amp: bool = False

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise InferenceError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if self.crop_size < 1:
            raise InferenceError(f"crop size must be positive, got {self.crop_size}")
        if not self.scales or any(not (s > 0) for s in self.scales):
            raise InferenceError(f"scales must be positive numbers, got {self.scales}")


@dataclass
class LoadedModel:
    """A model in eval mode with everything needed to feed it."""

    model: nn.Module
    name: str
    family: Literal["deeplab_v2", "deeplab_v3"]
    num_classes: int
    preprocessing: Preprocessing
    preprocessing_source: str  # "provenance <path>" or "default for <family>"
    weights: Path
    provenance: dict[str, Any] | None = None
    build_kwargs: dict[str, Any] = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def logits_stride(self) -> int:
        return int(getattr(self.model, "logits_stride", 8))

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "num_classes": self.num_classes,
            "build_kwargs": dict(self.build_kwargs),
            "weights": str(self.weights),
            "weights_release": (self.provenance or {}).get("release"),
            "source_sha256": ((self.provenance or {}).get("source") or {}).get("sha256"),
            "preprocessing": self.preprocessing.to_dict(),
            "preprocessing_source": self.preprocessing_source,
        }


def parse_scales(text: str | Sequence[float]) -> tuple[float, ...]:
    """``"0.5:0.25:1.75"`` (start:step:stop, inclusive, as the TF zoo writes it), ``"0.5,1,1.5"`` or a list."""
    if not isinstance(text, str):
        return tuple(float(s) for s in text)
    text = text.strip()
    try:
        if ":" in text:
            start, step, stop = (float(p) for p in text.split(":"))
            if step <= 0 or stop < start:
                raise ValueError
            n = int(round((stop - start) / step)) + 1
            return tuple(round(start + i * step, 6) for i in range(n))
        return tuple(float(p) for p in text.replace(" ", ",").split(",") if p)
    except ValueError:
        raise InferenceError(f"cannot parse scales {text!r}; use START:STEP:STOP (e.g. 0.5:0.25:1.75) or 0.5,1,1.5") from None


def _family(model: nn.Module) -> Literal["deeplab_v2", "deeplab_v3"]:
    from reference_models.deeplab_v2 import DeepLabV2
    from reference_models.deeplab_v3 import DeepLabV3

    if isinstance(model, DeepLabV2):
        return "deeplab_v2"
    if isinstance(model, DeepLabV3):
        return "deeplab_v3"
    raise InferenceError(f"{type(model).__name__} is neither a DeepLab v2 nor a v3/v3+ model")


def default_preprocessing(model: nn.Module) -> Preprocessing:
    """The family's preprocessing when the weights carry no provenance JSON."""
    if _family(model) == "deeplab_v2":
        return CAFFE_DEEPLAB_V2
    scope = getattr(getattr(model, "backbone", None), "tf_scope", "")
    if scope in ("resnet_v1_50", "resnet_v1_101") and not getattr(model.backbone, "beta", False):
        # The resnet backbones share a scope between the beta and plain variants; the beta flag tells.
        return TF_RESNET_V1_MEAN
    return TF_ZERO_MEAN_UNIT_RANGE


def _preprocessing_from_record(record: dict[str, Any], where: Path) -> Preprocessing:
    data = record.get("preprocessing")
    if not isinstance(data, dict):
        raise InferenceError(f"{where}: provenance has no 'preprocessing' record")
    fields = set(Preprocessing.__dataclass_fields__)
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in fields}
    try:
        return Preprocessing(**kwargs)
    except TypeError as e:
        raise InferenceError(f"{where}: bad preprocessing record ({e})") from None


def load_model(
    name: str | None,
    weights: str | os.PathLike,
    *,
    num_classes: int | None = None,
    output_stride: int | None = None,
    device: str | torch.device = "cpu",
) -> LoadedModel:
    """Build ``name`` (default: the provenance's architecture), load ``weights`` strictly, eval mode.

    ``num_classes`` defaults to the provenance's, else the classifier tensor's first dimension.
    ``output_stride`` is passed to v3/v3+ builders (the weights do not fix it). Raises
    :class:`InferenceError` with a one-line message for every user mistake.
    """
    from converters.io import load_state_dict, provenance_path
    from reference_models import build_model, list_models

    weights = Path(weights)
    if not weights.is_file():
        raise InferenceError(f"{weights}: weights file not found (convert an official release first, see README)")
    record: dict[str, Any] | None = None
    prov = provenance_path(weights)
    if prov.is_file() and prov != weights:
        try:
            record = json.loads(prov.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise InferenceError(f"{prov}: cannot read provenance JSON ({e})") from None
    name = name or (record or {}).get("architecture")
    if not name:
        raise InferenceError(f"{weights}: no provenance JSON beside the weights; pass --model NAME")
    if name not in list_models():
        raise InferenceError(f"unknown model {name!r}; known: {', '.join(list_models())}")
    try:
        state = load_state_dict(weights)
    except Exception as e:  # noqa: BLE001 - any unreadable file is one user-facing line
        raise InferenceError(f"{weights}: cannot load weights ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if num_classes is None:
        num_classes = (record or {}).get("num_classes")
    if num_classes is None:
        for key in ("logits.semantic.weight", "aspp.branches.0.weight", "aspp.branches.0.fc8.weight",
                    "classifier.weight"):
            if key in state:
                num_classes = int(state[key].shape[0])
                break
    if num_classes is None:
        raise InferenceError(f"{weights}: cannot tell the number of classes; pass --num-classes")
    kwargs: dict[str, Any] = {}
    if output_stride is not None:
        kwargs["output_stride"] = int(output_stride)
    try:
        model = build_model(name, num_classes=int(num_classes), **kwargs)
    except TypeError:
        raise InferenceError(f"model {name!r} takes no output stride (DeepLab v2 is fixed at 8)") from None
    except ValueError as e:
        raise InferenceError(str(e)) from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = " ".join(str(e).split())[:300]
        raise InferenceError(f"{weights}: does not load into {name} ({first})") from None
    family = _family(model)
    if record is not None:
        pre, source = _preprocessing_from_record(record, prov), f"provenance {prov.name}"
    else:
        pre, source = default_preprocessing(model), f"default for {family} (no provenance JSON beside the weights)"
    dev = torch.device(device)
    model.eval().to(dev)
    return LoadedModel(model, name, family, int(num_classes), pre, source, weights, record, kwargs, dev)


def scale_dimension(dim: int, scale: float) -> int:
    """TF DeepLab's ``scale_dimension``: ``int((dim - 1) * scale + 1)``."""
    return int((float(dim) - 1.0) * scale + 1.0)


def _resize_ac(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


def pad_bottom_right(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Pad an NCHW *preprocessed* tensor at the bottom/right to at least ``size`` with 0.

    0 after preprocessing is the mean before it: exactly the official pad value (Caffe pads with
    ``mean_value``, TF with ``mean_pixel``), so padding after preprocessing is the same thing.
    """
    h, w = x.shape[-2:]
    ph, pw = max(size[0] - h, 0), max(size[1] - w, 0)
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (0, pw, 0, ph), value=0.0)


def prepare_input(image_rgb: np.ndarray, preprocessing: Preprocessing, config: InferenceConfig) -> torch.Tensor:
    """RGB uint8 HWC -> 1x3xHxW float tensor, preprocessed and padded as ``config.protocol`` says."""
    x = preprocessing.apply(image_rgb)
    if config.protocol == "pad":
        x = pad_bottom_right(x, (config.crop_size, config.crop_size))
    return x


def _forward(lm: LoadedModel, x: torch.Tensor, amp: bool) -> torch.Tensor:
    if amp and x.device.type == "cuda":
        with torch.autocast(device_type="cuda", dtype=torch.float16):
            out = lm.model(x)
    else:
        out = lm.model(x)
    return out.float()


@torch.no_grad()
def predict_probs(lm: LoadedModel, x: torch.Tensor, config: InferenceConfig, out_size: tuple[int, int]) -> torch.Tensor:
    """Class probabilities ``(N, C, h, w)`` float32 for a prepared input, cropped to ``out_size``.

    ``x`` is what :func:`prepare_input` returns (possibly padded); ``out_size`` is the label size
    ``(h, w)``, the top-left corner of ``x``.
    """
    x = x.to(lm.device)
    H, W = x.shape[-2:]
    flips = (False, True) if config.flip else (False,)
    if lm.family == "deeplab_v2":
        if tuple(config.scales) != (1.0,):
            raise InferenceError(
                "DeepLab v2 fuses its scales (1, 0.75, 0.5, max) inside the model: use deeplabv2_resnet101_msc "
                f"for multi-scale, not scales {config.scales}"
            )
        total = None
        for flipped in flips:
            inp = x.flip(-1) if flipped else x
            probs = torch.softmax(_resize_ac(_forward(lm, inp, config.amp), (H, W)), dim=1)
            probs = probs.flip(-1) if flipped else probs
            total = probs if total is None else total + probs
    else:
        stride = lm.logits_stride
        total = None
        for s in config.scales:
            xs = x if s == 1.0 else _resize_ac(x, (scale_dimension(H, s), scale_dimension(W, s)))
            grid = (scale_dimension(H, max(1.0, s) / stride), scale_dimension(W, max(1.0, s) / stride))
            for flipped in flips:
                inp = xs.flip(-1) if flipped else xs
                logits = _resize_ac(_resize_ac(_forward(lm, inp, config.amp), grid), (H, W))
                probs = torch.softmax(logits, dim=1)
                probs = probs.flip(-1) if flipped else probs
                total = probs if total is None else total + probs
    n = len(flips) * (1 if lm.family == "deeplab_v2" else len(config.scales))
    probs = total / n
    h, w = out_size
    return probs[..., :h, :w].contiguous()


def run_image(lm: LoadedModel, image_rgb: np.ndarray, config: InferenceConfig) -> torch.Tensor:
    """Convenience: one RGB uint8 image -> ``(C, H, W)`` probabilities on the CPU."""
    x = prepare_input(image_rgb, lm.preprocessing, config)
    return predict_probs(lm, x, config, image_rgb.shape[:2])[0].cpu()
