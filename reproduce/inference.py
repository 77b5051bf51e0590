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

import contextlib
import copy
import dataclasses
import math
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from converters.errors import DeeplabError
from reference_models.preprocessing import CAFFE_DEEPLAB_V2, Preprocessing
from reproduce import user_cache_dir
from reproduce.atrous_gemm import fuse_atrous_sums, gemm_where_faster
from reproduce.depthwise_layout import nchw_where_faster
from reproduce.kernel_probe import probe_cache_file

__all__ = [
    "InferenceError",
    "InferenceConfig",
    "LoadedModel",
    "TF_ZERO_MEAN_UNIT_RANGE",
    "TF_RESNET_V1_MEAN",
    "PROTOCOLS",
    "default_preprocessing",
    "load_model",
    "MAX_SCALES",
    "EVAL_PRECISION",
    "PRECISIONS",
    "float32_math",
    "float32_math_state",
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


class InferenceError(DeeplabError, ValueError):
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
        if not self.scales or not all(math.isfinite(s) and s > 0 for s in self.scales):
            raise InferenceError(f"scales must be finite positive numbers, got {self.scales}")


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
    # The engine's forward (fused, channels_last, autocast, compiled) on a :class:`Segmenter`'s own copy
    # (``Segmenter.lm``); None = the plain model, eager fp32.
    runner: Any = None

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


MAX_SCALES = 32  # more scales than any published protocol uses (6); a typo must not allocate millions


def parse_scales(text: str | Sequence[float]) -> tuple[float, ...]:
    """``"0.5:0.25:1.75"`` (start:step:stop, inclusive, as the TF zoo writes it), ``"0.5,1,1.5"`` or a list.

    A range never goes past its stop (``"1:0.3:1.5"`` is 1, 1.3). Every scale must be a finite positive
    number and there are at most :data:`MAX_SCALES`; anything else is an :class:`InferenceError`.
    """
    usage = "use START:STEP:STOP (e.g. 0.5:0.25:1.75) or 0.5,1,1.5"
    shown = text if isinstance(text, str) else list(text)
    bounds: tuple[float, float, float] | None = None
    try:
        if not isinstance(text, str):
            scales: tuple[float, ...] = tuple(float(s) for s in text)
        elif ":" in text:
            start, step, stop = (float(p) for p in text.strip().split(":"))
            bounds, scales = (start, step, stop), ()
        else:
            scales = tuple(float(p) for p in text.strip().replace(" ", ",").split(",") if p)
    except (ValueError, TypeError):
        raise InferenceError(f"cannot parse scales {shown!r}; {usage}") from None
    if bounds is not None:
        start, step, stop = bounds
        if not all(math.isfinite(v) and v > 0 for v in bounds):
            raise InferenceError(f"scales {shown!r}: start, step and stop must be finite positive numbers")
        if stop < start:
            raise InferenceError(f"scales {shown!r}: stop is below start; {usage}")
        # floor, not round: the stop is never exceeded; the epsilon keeps an exact stop (1:0.25:2 has 2)
        steps = (stop - start) / step
        if not steps < MAX_SCALES:  # also inf, from a step too small to divide by
            raise InferenceError(f"scales {shown!r}: more than {MAX_SCALES} scales")
        count = math.floor(steps + 1e-9) + 1
        scales = tuple(round(start + i * step, 6) for i in range(count))
    if not scales:
        raise InferenceError(f"no scales in {shown!r}; {usage}")
    if not all(math.isfinite(s) and s > 0 for s in scales):
        raise InferenceError(f"scales must be finite positive numbers, got {shown!r}")
    if len(scales) > MAX_SCALES:
        raise InferenceError(f"scales {shown!r}: {len(scales)} scales, more than {MAX_SCALES}")
    return scales


def _family(model: nn.Module) -> Literal["deeplab_v2", "deeplab_v3"]:
    from reference_models.deeplab_v2 import DeepLabV2
    from reference_models.deeplab_v3 import DeepLabV3

    if isinstance(model, DeepLabV2):
        return "deeplab_v2"
    if isinstance(model, DeepLabV3) or hasattr(model, "logits_stride"):
        # The peers' flavours (torchvision / VainF / seed-v3 style) are single-scale logit models as v3 is:
        # multi-scale and flip are done by the engine, at the model's logits stride.
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
    from converters.errors import ConversionError
    from converters.io import load_state_dict, provenance_path, refused_pickle_message
    from converters.provenance import read_provenance
    from reference_models import build_model, list_models

    weights = Path(weights)
    if not weights.is_file():
        raise InferenceError(f"{weights}: weights file not found (convert an official release first, see README)")
    record: dict[str, Any] | None = None
    prov = provenance_path(weights)
    if prov.is_file() and prov != weights:
        try:
            record = read_provenance(prov)
        except ConversionError as e:
            raise InferenceError(str(e)) from None
    name = name or (record or {}).get("architecture")
    if not name:
        raise InferenceError(f"{weights}: no provenance JSON beside the weights; pass --model NAME")
    if name not in list_models():
        raise InferenceError(f"unknown model {name!r}; known: {', '.join(list_models())}")
    _refuse_foreign_weights(weights)
    try:
        state = load_state_dict(weights)
    except Exception as e:  # noqa: BLE001 - any unreadable file is one user-facing line
        refused = refused_pickle_message(weights, e, _TORCH_COMMANDS)
        if refused:
            raise InferenceError(refused) from None
        lines = str(e).splitlines() or [""]
        raise InferenceError(f"{weights}: cannot load weights ({type(e).__name__}: {lines[0]})") from None
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


_TORCH_COMMANDS = ("convert the original release with converters/caffe2torch.py (Caffe, DeepLab v2) or "
                   "converters/tf2torch.py (TF, DeepLab v3/v3+), same --dataset, and pass the .pth it writes")


def _refuse_foreign_weights(path: Path) -> None:
    """A one-line error for a file of another framework (named by its kind, with the right command).

    Checked from the first bytes and the name before ``torch.load`` is tried, so the user never sees
    torch's unpickling advice (which suggests ``weights_only=False``: never unpickle a foreign file).
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as e:
        raise InferenceError(f"{path}: cannot read weights ({e.strerror or e})") from None
    name = path.name.lower()
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        raise InferenceError(f"{path}: is a Keras/HDF5 weights file (.weights.h5), not PyTorch weights; "
                             f"load it with reference_models.keras, or {_TORCH_COMMANDS}")
    if head.startswith(b"PK\x03\x04") and name.endswith(".keras"):
        raise InferenceError(f"{path}: is a whole Keras model (.keras), not PyTorch weights; load it with "
                             f"reference_models.keras.load_keras_model, or {_TORCH_COMMANDS}")
    if name.endswith(".caffemodel"):
        raise InferenceError(f"{path}: is a Caffe model, not PyTorch weights; convert it with "
                             "converters/caffe2torch.py and pass the .pth it writes")
    if name.endswith(".index") or ".data-" in name or name.endswith(".ckpt"):
        raise InferenceError(f"{path}: is part of a TensorFlow checkpoint, not PyTorch weights; convert it with "
                             "converters/tf2torch.py and pass the .pth it writes")


def scale_dimension(dim: int, scale: float) -> int:
    """TF DeepLab's ``scale_dimension``: ``int((dim - 1) * scale + 1)``."""
    return int((float(dim) - 1.0) * scale + 1.0)


def _resize_ac(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


def _window_1d(n_in: int, n_out: int, start: int, stop: int) -> tuple[int, int, int, int] | None:
    """Outputs ``[start, stop)`` of an align_corners resize ``n_in -> n_out`` as a resize of inputs ``[i0, i1)`` to
    ``m`` outputs, of which they are ``[offset, offset + stop - start)``: ``(i0, i1, m, offset)``. Only where the
    two sample the same source coordinates exactly: the same size, or ``n_out - 1`` a power-of-two multiple ``f``
    of ``n_in - 1`` (513 from 33, 65 or 129; 321 from 41), where every coordinate ``j / f`` is exact in float;
    else ``None``."""
    if n_in == n_out:
        return start, stop, stop - start, 0
    if n_in < 2 or n_out <= n_in or (n_out - 1) % (n_in - 1):
        return None
    f = (n_out - 1) // (n_in - 1)
    if f & (f - 1):
        return None
    i0, i1 = start // f, min(n_in - 1, -(-(stop - 1) // f))
    if i1 == i0:  # at least two source points: torch takes another path for a 1 -> 1 resize
        i0, i1 = (i0, i0 + 1) if i0 + 1 < n_in else (i0 - 1, i0)
    return i0, i1 + 1, f * (i1 - i0) + 1, start - f * i0


def _resize_window_ac(x: torch.Tensor, size: Sequence[int], rows: tuple[int, int],
                      cols: tuple[int, int]) -> torch.Tensor:
    """``_resize_ac(x, size)[..., r0:r1, c0:c1]``, computing only the window where it samples the same source
    coordinates with the same weights (:func:`_window_1d`; an NCHW-contiguous ``x``, as :meth:`Segmenter.forward`
    returns). The labels of a VOC image padded to 513 need ~70 % of the map. The values equal the full resize's
    to the last bit or two: torch's kernel vectorises along the width, so the rounding of an element can depend
    on where it falls in a row (measured: <= 2e-6 of the largest value, tests/test_evaluate_pipeline.py)."""
    wr = _window_1d(x.shape[-2], size[0], *rows)
    wc = _window_1d(x.shape[-1], size[1], *cols)
    if wr is None or wc is None or not x.is_contiguous():
        return _resize_ac(x, size)[..., rows[0]:rows[1], cols[0]:cols[1]]
    (r0, r1, m, dr), (c0, c1, n, dc) = wr, wc
    out = _resize_ac(x[..., r0:r1, c0:c1], (m, n))
    return out[..., dr:dr + rows[1] - rows[0], dc:dc + cols[1] - cols[0]]


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
    pad_to = (config.crop_size, config.crop_size) if config.protocol == "pad" else None
    return preprocessing.apply(image_rgb, pad_to=pad_to)  # padded as it is written: no second copy


def _forward(lm: LoadedModel, x: torch.Tensor, amp: bool) -> torch.Tensor:
    if lm.runner is not None:
        return lm.runner(x)
    if amp and x.device.type == "cuda":
        with torch.autocast(device_type="cuda", dtype=torch.float16):
            out = lm.model(x)
    else:
        with float32_math("fp32"):  # the plain model is fp32: TF32 off (a GPU's cuDNN default is on)
            out = lm.model(x)
    return out.float()


def _forward_flips(lm: LoadedModel, x: torch.Tensor, flip: bool, amp: bool) -> list[torch.Tensor]:
    """The output for ``x`` and, with ``flip``, for its mirror image (not flipped back), run as ONE batch.

    The same numbers as two calls (each image's output depends on that image only), and faster:
    benchmarks/reports/msc-compile-2026-12-01 measured the 3-scale v2 ResNet-101 both ways.
    """
    if not flip:
        return [_forward(lm, x, amp)]
    return list(_forward(lm, torch.cat([x, x.flip(-1)]), amp).split(x.shape[0]))


def _passes(lm: LoadedModel, config: InferenceConfig) -> int:
    """How many forwards :func:`predict_probs` averages: the flips times (DeepLab v3/v3+) the scales."""
    return (2 if config.flip else 1) * (1 if lm.family == "deeplab_v2" else len(config.scales))


def _pass_logits(lm: LoadedModel, x: torch.Tensor, config: InferenceConfig,
                 crop: tuple[int, int] | None = None) -> Iterator[torch.Tensor]:
    """Each forward's logits ``(N, C, H, W)`` at the size of ``x``, a flipped pass's flipped back; with ``crop``
    ``(h, w)``, their top-left ``h x w`` only, resized for that window only (:func:`_resize_window_ac`)."""
    x = x.to(lm.device)
    H, W = x.shape[-2:]
    flips = (False, True) if config.flip else (False,)
    h, w = crop if crop is not None else (H, W)

    def resized(out: torch.Tensor, flipped: bool) -> torch.Tensor:
        if not flipped:
            return _resize_window_ac(out, (H, W), (0, h), (0, w))
        return _resize_window_ac(out, (H, W), (0, h), (W - w, W)).flip(-1)  # the mirror's right-hand w columns
    if lm.family == "deeplab_v2":
        if tuple(config.scales) != (1.0,):
            raise InferenceError(
                "DeepLab v2 fuses its scales (1, 0.75, 0.5, max) inside the model: use deeplabv2_resnet101_msc "
                f"for multi-scale, not scales {config.scales}"
            )
        for flipped, out in zip(flips, _forward_flips(lm, x, config.flip, config.amp)):
            yield resized(out, flipped)
        return
    stride = lm.logits_stride
    for s in config.scales:
        xs = x if s == 1.0 else _resize_ac(x, (scale_dimension(H, s), scale_dimension(W, s)))
        grid = (scale_dimension(H, max(1.0, s) / stride), scale_dimension(W, max(1.0, s) / stride))
        for flipped, out in zip(flips, _forward_flips(lm, xs, config.flip, config.amp)):
            yield resized(_resize_ac(out, grid), flipped)


@torch.no_grad()
def predict_probs(lm: LoadedModel, x: torch.Tensor, config: InferenceConfig, out_size: tuple[int, int]) -> torch.Tensor:
    """Class probabilities ``(N, C, h, w)`` float32 for a prepared input, cropped to ``out_size``.

    ``x`` is what :func:`prepare_input` returns (possibly padded); ``out_size`` is the label size
    ``(h, w)``, the top-left corner of ``x``. Several forwards (scales, flips) average their softmax.
    """
    total = None
    for logits in _pass_logits(lm, x, config, crop=out_size):
        probs = torch.softmax(logits, dim=1)  # per pixel over the classes: commutes with the flip back
        total = probs if total is None else total + probs
    n = _passes(lm, config)
    probs = total / n if n > 1 else total  # x / 1 == x: no pass over C x H x W for one forward
    return probs.contiguous()


def labels_of(scores: torch.Tensor) -> torch.Tensor:
    """``scores.argmax(0)`` of ``(C, H, W)`` scores as uint8 (the first maximum on ties, as argmax), the cheap way.

    On the CPU torch's argmax over the leading dim of a ``(C, H, W)`` tensor is a strided reduction, ~3x slower
    than numpy's single-threaded one, which is ~2x slower than a running maximum over the classes on torch's
    threads (a VOC label map, 21 classes, 2 threads: 40, 13 and 7 ms). The running maximum takes a class only
    where it is strictly greater, so the first maximum wins, as in argmax; where a score is NaN (argmax takes
    the first NaN) numpy's argmax answers instead.
    """
    if scores.shape[0] > 256:
        raise InferenceError(f"{scores.shape[0]} classes do not fit a uint8 label map")
    if scores.device.type != "cpu":
        return scores.argmax(0).to(torch.uint8)
    best = scores[0].clone(memory_format=torch.contiguous_format)
    labels = torch.zeros(scores.shape[1:], dtype=torch.uint8)
    better = torch.empty(scores.shape[1:], dtype=torch.bool)
    for c in range(1, scores.shape[0]):
        torch.gt(scores[c], best, out=better)
        torch.maximum(best, scores[c], out=best)
        labels.masked_fill_(better, c)
    if best.isnan().any():  # maximum propagates NaN
        return torch.from_numpy(scores.numpy().argmax(0).astype(np.uint8))
    return labels


@torch.no_grad()
def predict_labels(lm: LoadedModel, x: torch.Tensor, config: InferenceConfig, out_size: tuple[int, int]) -> torch.Tensor:
    """The ``(h, w)`` uint8 label map of the first image of a prepared input: the argmax of its class scores.

    One forward (one scale, no flip): the argmax of the resized logits, which is what the official evaluations
    take (TF DeepLab's single-scale ``predict_labels``, Caffe's argmax of the interpolated ``fc8``). The softmax
    is monotonic per pixel, so it does not change the argmax, and skipping it saves a pass over ``C x H x W``
    (~20-70 ms per 513 x 513 image on a 2-core CPU). Several forwards: the argmax of :func:`predict_probs`'s
    average (TF's multi-scale inference).
    """
    h, w = out_size
    x = x[:1]
    if _passes(lm, config) > 1:
        return labels_of(predict_probs(lm, x, config, out_size)[0])
    (logits,) = _pass_logits(lm, x, config, crop=(h, w))
    return labels_of(logits[0])


def run_image(lm: LoadedModel, image_rgb: np.ndarray, config: InferenceConfig) -> torch.Tensor:
    """Convenience: one RGB uint8 image -> ``(C, H, W)`` probabilities on the CPU."""
    x = prepare_input(image_rgb, lm.preprocessing, config)
    return predict_probs(lm, x, config, image_rgb.shape[:2])[0].cpu()


def image_labels(lm: LoadedModel, image_rgb: np.ndarray, config: InferenceConfig) -> np.ndarray:
    """Convenience: one RGB uint8 image -> its ``(H, W)`` uint8 label map (:func:`predict_labels`)."""
    x = prepare_input(image_rgb, lm.preprocessing, config)
    return predict_labels(lm, x, config, image_rgb.shape[:2]).cpu().numpy()


# ---------------------------------------------------------------------------------------------- the engine
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "tf32", "bf16", "fp16")
# What reproduce.evaluate, the recipes, eval_every and the report run unless asked otherwise: the reference
# implementations' precision (Caffe and TF evaluate in IEEE fp32), so published numbers are reproduced on every
# machine. predict, export and the Python API keep "auto" (speed first).
EVAL_PRECISION = "fp32"
PRECISION_HELP = ("auto: bf16 where native and faster (AMX CPUs; CUDA sm80+, else fp16 on CUDA), else fp32; fp32: "
                  "IEEE fp32 (TF32 off on CUDA); tf32: fp32 with TF32 tensor-core convolutions and matmuls (CUDA "
                  "sm80+; elsewhere plain fp32); bf16; fp16 (CUDA)")  # the CLIs' --help
MEMORY_FORMATS: tuple[str, ...] = ("auto", "contiguous", "channels_last")
MEMORY_FORMAT_HELP = "auto: channels_last on a CPU and at fp16/bf16 on CUDA, NCHW for fp32 on CUDA"  # the CLIs' --help
# compile="auto" pays back from here: a compile costs ~5-90 s on a CPU; the frozen graph saves ~0.01-0.7 s per image
# on the ResNet-101 models at 513 (benchmarks/reports/cpu-2026-12-02-full)
COMPILE_MIN_IMAGES = 300
COMPILE_MAX_SHAPES = 8  # torch._dynamo.config.recompile_limit's default: dynamo runs eager past it anyway
CACHE_DIR_ENV = "DEEPLAB_INDUCTOR_CACHE_DIR"
# Inductor settings of ``Segmenter(compile=True)``: freezing (weights become constants, folded and laid out once
# for inference) with oneDNN weight prepacking on a CPU. They are set in ``torch._inductor.config`` around every
# compiled call (:meth:`Segmenter._compile_settings`), not passed as ``torch.compile(options=...)``: dynamo itself
# asks ``torch._inductor.config.freezing`` while it traces, and with the options alone it lifts the weights as
# graph inputs, so inductor's freezing found no weight to freeze and the convolutions ran unpacked and unfused.
# torch 2.13's FX graph cache cannot pickle prepacked (mkldnn) weights, so on a CPU a new process compiles the graph again (the C++ kernels it builds are reused from
# the cache folder); with "cpp.weight_prepack": False a second process loads the whole graph from the cache
# (benchmarks/reports/msc-compile-2026-12-01 has the start-up times). Compile is for long runs, where the
# per-image speed counts, and the compiled speed-ups measured so far are with prepacking: it stays on.
COMPILE_OPTIONS: dict[str, Any] = {"freezing": True}
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


# ---------------------------------------------------------------------------------------------- fp32 math
# torch 2.13's per-backend fp32 precision settings (``torch.backends.<backend>.<op>.fp32_precision``: "ieee",
# "tf32", or "none" = the parent's setting). The legacy ``allow_tf32`` flags are to be deprecated and may not be
# mixed with these (torch raises when they disagree), so they are never used. Matmuls go through
# ``torch.set_float32_matmul_precision`` ("highest" / "high"), which sets the CUDA and oneDNN matmul leaves and the
# value ``torch.get_float32_matmul_precision()`` answers together (inductor reads it: leaves that disagree with it
# make it raise); convolutions through their leaves. cuDNN's convolutions default to TF32 on Ampere and newer.
_FLOAT32_LEAVES: dict[str, tuple[str, str]] = {
    "cudnn_conv": ("cudnn", "conv"), "cuda_matmul": ("cuda", "matmul"),
    "mkldnn_conv": ("mkldnn", "conv"), "mkldnn_matmul": ("mkldnn", "matmul"),
}
_FLOAT32_MODES: dict[str, dict[str, str]] = {
    "fp32": {"matmul": "highest", "cudnn_conv": "ieee", "mkldnn_conv": "ieee"},
    "tf32": {"matmul": "high", "cudnn_conv": "tf32"},
}
_MATH_LOCK = threading.Lock()
_MATH_STACK: list[list[Any]] = []  # [mode, users, saved settings]: the modes in force, innermost last


def _leaf(name: str) -> Any:
    backend, op = _FLOAT32_LEAVES[name]
    return getattr(getattr(torch.backends, backend), op)


def _read_settings() -> dict[str, str | None]:
    """Every leaf, and ``matmul``: ``torch.get_float32_matmul_precision()`` (None where torch finds the settings
    mixed up by someone else and refuses to answer)."""
    try:
        matmul: str | None = torch.get_float32_matmul_precision()
    except RuntimeError:
        matmul = None
    return {"matmul": matmul, **{name: str(_leaf(name).fp32_precision) for name in _FLOAT32_LEAVES}}


def _write_settings(values: dict[str, str | None]) -> None:
    if values.get("matmul"):  # first: it sets the matmul leaves, which a restore then sets as they were
        torch.set_float32_matmul_precision(values["matmul"])
    for name in _FLOAT32_LEAVES:
        if values.get(name):
            _leaf(name).fp32_precision = values[name]


@contextlib.contextmanager
def float32_math(precision: str | None) -> Iterator[None]:
    """fp32 convolutions and matmuls as ``precision`` says, for the block; the previous settings restored after.

    ``"fp32"``: IEEE fp32 (TF32 off for cuDNN convolutions and CUDA matmuls; oneDNN's reduced-precision fp32 off);
    ``"tf32"``: TF32 allowed for them; anything else (``None``, ``"bf16"``, ``"fp16"``: autocast precisions) leaves
    the settings alone. The settings are process-wide: blocks nest, and blocks of the same mode entered from several
    threads share one setting (the first saves, the last restores); blocks of different modes in concurrent threads
    would see each other's (not a use of this project: the forwards run in one thread).
    """
    mode = _FLOAT32_MODES.get(precision or "")
    if mode is None:
        yield
        return
    with _MATH_LOCK:
        if _MATH_STACK and _MATH_STACK[-1][0] == precision:
            entry = _MATH_STACK[-1]
            entry[1] += 1
        else:
            entry = [precision, 1, _read_settings()]
            _write_settings(mode)
            _MATH_STACK.append(entry)
    try:
        yield
    finally:
        with _MATH_LOCK:
            entry[1] -= 1
            while _MATH_STACK and _MATH_STACK[-1][1] == 0:
                _write_settings(_MATH_STACK.pop()[2])


def float32_math_state() -> dict[str, Any]:
    """The fp32 math settings in force: each leaf's ``fp32_precision`` and ``tf32``, whether cuDNN convolutions or
    CUDA matmuls may use TF32 (a leaf at ``"none"`` follows ``torch.backends.cudnn.fp32_precision`` (cuda),
    then ``torch.backends.fp32_precision``; all ``"none"`` is IEEE)."""
    leaves = {name: str(_leaf(name).fp32_precision) for name in _FLOAT32_LEAVES}

    def resolved(value: str) -> str:
        for parent in (torch.backends.cudnn.fp32_precision, torch.backends.fp32_precision):
            if value != "none":
                break
            value = str(parent)
        return "ieee" if value == "none" else value

    tf32 = resolved(leaves["cudnn_conv"]) == "tf32" or resolved(leaves["cuda_matmul"]) == "tf32"
    return {"tf32": tf32, **leaves}


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; ``cuda`` without one is an :class:`InferenceError`."""
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InferenceError(f"--device {name}: no CUDA device is available to torch (use --device cpu or auto)")
    try:
        return torch.device(name)
    except RuntimeError:
        raise InferenceError(f"--device {name!r}: use auto, cpu, cuda or cuda:N") from None


def inductor_cache_dir() -> Path:
    """Where compiled graphs and kernels are kept across runs (per user, survives a reboot).

    ``$DEEPLAB_INDUCTOR_CACHE_DIR``; else ``$TORCHINDUCTOR_CACHE_DIR`` when the user set it (torch's own
    default, a folder in the temporary directory, does not count); else
    ``$XDG_CACHE_HOME/deeplab-repro/inductor`` (``~/.cache/deeplab-repro/inductor``).
    """
    ours = os.environ.get(CACHE_DIR_ENV)
    if ours:
        return Path(ours).expanduser()
    theirs = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if theirs:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        if os.path.abspath(theirs) != os.path.abspath(default_cache_dir()):
            return Path(theirs).expanduser()
    return user_cache_dir("inductor")


def use_inductor_cache_dir() -> Path:
    """Point inductor's on-disk cache at :func:`inductor_cache_dir` (created); returns the folder."""
    folder = inductor_cache_dir().resolve()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InferenceError(f"{folder}: cannot create the compile cache folder ({e.strerror or e}); "
                             f"set {CACHE_DIR_ENV} to a writable folder") from None
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR") != str(folder):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
        from torch._inductor.utils import clear_caches

        clear_caches()  # inductor memoises paths under the previous folder
    return folder


def cpu_flags() -> set[str]:
    """The CPU feature flags of ``/proc/cpuinfo`` (empty off Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


_BF16_PROBE: dict[str, Any] = {}


def _probe_cpu_bf16() -> dict[str, Any]:
    """Time one DeepLab-sized conv (256->256 3x3, rate 2, 33x33, channels_last) in fp32 and under bf16 autocast.

    A CPU can list ``avx512_bf16`` and still run bf16 convolutions slower than fp32 (a virtual
    machine that hides AMX does: measured 2x slower here); the flag alone is not proof.
    Median of 5 after 2 warm-ups each, interleaved; cached for the process.
    """
    if _BF16_PROBE:
        return _BF16_PROBE
    import time

    gen = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(256, 256, 3, padding=2, dilation=2, bias=False).eval().to(memory_format=torch.channels_last)
    x = torch.randn(1, 256, 33, 33, generator=gen).contiguous(memory_format=torch.channels_last)
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    with torch.inference_mode():
        for i in range(7):
            for kind in ("fp32", "bf16"):
                t0 = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=kind == "bf16"):
                    conv(x)
                if i >= 2:
                    times[kind].append(time.perf_counter() - t0)
    fp32, bf16 = (sorted(times[k])[len(times[k]) // 2] for k in ("fp32", "bf16"))
    _BF16_PROBE.update(fp32_ms=fp32 * 1e3, bf16_ms=bf16 * 1e3, speedup=fp32 / bf16)
    return _BF16_PROBE


def cuda_native_bf16(device: torch.device) -> tuple[bool, tuple[int, int]]:
    """``(native, capability)``: whether CUDA ``device`` has native bf16 (Ampere, sm80, and newer).

    Not ``torch.cuda.is_bf16_supported()``: it counts emulation (True on a V100/T4, where bf16 is slow) and
    asks the current device, not ``device``.
    """
    major, minor = torch.cuda.get_device_capability(device)
    return (major, minor) >= (8, 0), (major, minor)


def choose_precision(requested: str, device: torch.device) -> tuple[str, str]:
    """``(precision, why)``: what ``requested`` (``auto|fp32|tf32|bf16|fp16``) means on ``device``.

    ``fp32`` runs IEEE fp32 (TF32 off) and ``tf32`` fp32 with TF32 convolutions and matmuls (:func:`float32_math`;
    TF32 is a CUDA sm80+ format: on a CPU it computes as fp32).

    ``auto``: on CUDA bf16 autocast where ``device`` has native bf16 (compute capability 8.0+), else fp16; on a CPU bf16 only where it is
    native and faster: AMX (``amx_bf16``), or ``avx512_bf16`` confirmed by a 1-conv probe that runs at
    least 1.3x faster than fp32; fp32 everywhere else (a CPU without native bf16 runs it 2-5x slower).
    """
    if requested not in PRECISIONS:
        raise InferenceError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested == "fp16" and device.type != "cuda":
        raise InferenceError("precision fp16 is for CUDA; on a CPU use fp32 or bf16")
    if requested == "tf32" and device.type != "cuda":
        return requested, "asked for (TF32 is a CUDA tensor-core format: on a CPU it computes as fp32)"
    if requested != "auto":
        return requested, "asked for"
    if device.type == "cuda":
        native, (major, minor) = cuda_native_bf16(device)
        if native:
            return "bf16", f"auto: CUDA device {device} (sm{major}{minor}) has native bf16"
        return "fp16", f"auto: CUDA device {device} (sm{major}{minor}) has no native bf16 (needs sm80+)"
    if device.type != "cpu":
        return "fp32", f"auto: {device.type} device"
    flags = cpu_flags()
    if "amx_bf16" in flags:
        return "bf16", "auto: CPU has AMX (amx_bf16)"
    if "avx512_bf16" in flags:
        probe = _probe_cpu_bf16()
        verdict = "faster" if probe["speedup"] >= 1.3 else "not faster"
        why = (f"auto: CPU lists avx512_bf16 but no AMX; probe conv {probe['bf16_ms']:.1f} ms bf16 vs "
               f"{probe['fp32_ms']:.1f} ms fp32 ({verdict})")
        return ("bf16" if probe["speedup"] >= 1.3 else "fp32"), why
    return "fp32", f"auto: CPU without native bf16 (no amx_bf16/avx512_bf16; torch capability " \
                   f"{torch.backends.cpu.get_cpu_capability()})"


def choose_memory_format(requested: str, device: torch.device, precision: str) -> tuple[str, str]:
    """``(memory_format, why)``: what ``requested`` (``auto|contiguous|channels_last``) means on ``device`` at
    ``precision``.

    ``auto``: channels_last on a CPU (oneDNN's NHWC convolutions: 0.62-0.93x the NCHW engine's time on every
    registered model at 321 and 513 on an AVX-512 Xeon, ``benchmarks/reports/memory-format-2026-12-02``; on an
    AVX2 EPYC the exception is dilated depthwise convolutions, which the engine then keeps in NCHW by a probe:
    :mod:`reproduce.depthwise_layout`, ``memory-format-2026-12-02-epyc``) and on CUDA at
    fp16/bf16 (tensor-core convolutions are NHWC); NCHW on CUDA at fp32, where cuDNN's NHWC kernels bring no speed-up (PyTorch's
    channels_last guidance: the gain comes with reduced precision on tensor cores), and on other devices.
    """
    if requested not in MEMORY_FORMATS:
        raise InferenceError(f"memory format must be one of {', '.join(MEMORY_FORMATS)}, got {requested!r}")
    if requested != "auto":
        return requested, "asked for"
    if device.type == "cpu":
        return "channels_last", "auto: oneDNN runs NHWC convolutions faster on a CPU"
    if device.type == "cuda" and precision in ("fp16", "bf16"):
        return "channels_last", f"auto: {precision} convolutions on tensor cores are NHWC"
    if device.type == "cuda":
        return "contiguous", "auto: fp32 on CUDA (cuDNN's NHWC kernels pay off with fp16/bf16 only)"
    return "contiguous", f"auto: {device.type} device"


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold eval-mode ``bn`` into ``conv``'s weight and bias (``torch.nn.utils.fusion``), in place."""
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    w, b = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
    conv.weight, conv.bias = w, b


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every BatchNorm that follows a convolution folded into it.

    ``model`` itself (and so the state-dict layout that is saved and loaded) is not touched. Folded:
    :class:`~reference_models.tf_ops.Conv2dTF` with its ``bn``, ``Sequential(conv, bn)`` and the
    ``conv_bn_pairs`` a module declares (DeepLab v2's Caffe ResNet). BatchNorms that follow no conv
    (ResNet v2's pre-activations) stay.
    """
    from reference_models.tf_ops import Conv2dTF

    fused = copy.deepcopy(model).eval()
    with torch.no_grad():
        for module in list(fused.modules()):
            if isinstance(module, Conv2dTF) and isinstance(module.bn, nn.BatchNorm2d):
                _fold(module, module.bn)
                module.bn = None
            for conv_name, bn_name in getattr(module, "conv_bn_pairs", ()):
                conv, bn = getattr(module, conv_name), getattr(module, bn_name)
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                    _fold(conv, bn)
                    setattr(module, bn_name, nn.Identity())
            if isinstance(module, nn.Sequential):
                items = list(module._modules.items())
                for (_, conv), (bn_name, bn) in zip(items, items[1:]):
                    if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                        _fold(conv, bn)
                        module._modules[bn_name] = nn.Identity()
    return fused.requires_grad_(False)


class Segmenter:
    """The inference engine: what ``reproduce.evaluate``, ``reproduce.predict`` and Python users run.

    ``Segmenter("weights/model.pth")`` loads converted weights (architecture from the provenance JSON)
    and prepares the fast forward once:

    * BatchNorm folded into the convolutions (:func:`fuse_for_inference`, a copy: the weights file and
      the model's state-dict layout are unchanged); on a CPU, DeepLab v2's ASPP (four summed 3x3 atrous
      convolutions to the classes) runs as one matrix product (:mod:`reproduce.atrous_gemm`);
    * ``memory_format="auto"``: see :func:`choose_memory_format` (channels_last on a CPU and at fp16/bf16
      on CUDA, NCHW for fp32 on CUDA; the choice and the reason in :meth:`describe`); in a channels_last
      engine on a CPU, dilated depthwise convolutions that a probe on this machine measures faster in NCHW
      run in NCHW (:mod:`reproduce.depthwise_layout`; the probes in :meth:`describe`), and atrous 3x3
      convolutions that a probe at the engine's precision measures faster as one GEMM plus shifted adds run
      that way (:func:`reproduce.atrous_gemm.gemm_where_faster`: the ASPP branches in bf16 on an AMX CPU);
      the verdicts are kept on disk per machine kind (:mod:`reproduce.kernel_probe`, ``probe_cache`` in
      :meth:`describe`), so only the first engine built on a machine times them;
    * ``precision="auto"``: see :func:`choose_precision` (the choice and the reason are in
      :attr:`precision` / :attr:`precision_reason` and :meth:`describe`); at ``fp32`` every forward runs with
      TF32 off (IEEE fp32 on any GPU), at ``tf32`` with TF32 on (:func:`float32_math`; the settings in force
      during the forwards are ``float32_math`` in :meth:`describe`). ``reproduce.evaluate`` asks for
      :data:`EVAL_PRECISION` (fp32); the Python API and ``reproduce.predict`` default to ``auto``;
    * ``compile=True``: ``torch.compile`` (inductor, with weight freezing) of the fused model, for the
      input shapes of the first image only (one shape per scale): an input of any other shape runs the
      same fused module eagerly instead of compiling again (a compile costs 30-90 s on a CPU, and
      dynamo would fall back to eager by itself after its recompile limit anyway). :meth:`describe` counts
      the forwards run each way. Inductor's on-disk cache keeps compiled kernels across runs where torch
      allows. ``"auto"`` leaves the choice to the caller's :meth:`want_compile` (long evaluations at a
      fixed size).

    A :class:`LoadedModel` given as ``weights`` is not modified (its model is copied before folding or
    moving); the engine's own :attr:`lm` holds the prepared network and its runner.

    ``predict(image)`` -> ``(H, W)`` uint8 label map; ``scores(image)`` -> ``(C, H, W)`` float32
    probabilities; both take an RGB uint8 ``(H, W, 3)`` array and follow :class:`InferenceConfig`
    (protocol, crop size, scales, flips), exactly as :func:`run_image` on the plain model.
    """

    def __init__(
        self,
        weights: str | os.PathLike | LoadedModel,
        *,
        model: str | None = None,
        num_classes: int | None = None,
        output_stride: int | None = None,
        device: str | torch.device = "auto",
        precision: str = "auto",
        memory_format: str = "auto",
        compile: bool | str = False,  # noqa: A002 - the public keyword is the torch name
        fuse: bool = True,
        config: InferenceConfig | None = None,
    ) -> None:
        dev = resolve_device(device)
        if compile not in (True, False, "auto"):
            raise InferenceError(f"compile must be true, false or auto, got {compile!r}")
        self.device = dev
        self.config = config or InferenceConfig()
        self.precision, self.precision_reason = choose_precision(precision, dev)
        # checked (a bad name refused) before any weights are read
        self.memory_format, self.memory_format_reason = choose_memory_format(memory_format, dev, self.precision)
        if isinstance(weights, LoadedModel):
            source, owned = weights, False  # the caller's: never modified
        else:
            source = load_model(model, weights, num_classes=num_classes, output_stride=output_stride, device=dev)
            owned = True
        self.fused = fuse
        self.atrous_gemm = 0  # DeepLab v2 ASPP heads run as one GEMM (reproduce.atrous_gemm; CPU only)
        if fuse:
            net = fuse_for_inference(source.model)  # a copy; an owned unfused model is freed with ``source``
            if dev.type == "cpu":  # measured on oneDNN only (benchmarks/reports/cpu-2026-12-02-full)
                self.atrous_gemm = fuse_atrous_sums(net)
        else:
            net = source.model if owned else copy.deepcopy(source.model)
        self._format = torch.channels_last if self.memory_format == "channels_last" else torch.contiguous_format
        self.net = net.eval().to(dev, memory_format=self._format)
        # dilated depthwise convs oneDNN runs slower in NHWC on this CPU (measured per shape) stay NCHW
        self.depthwise_probes: list[dict[str, Any]] = []
        # and atrous convs it runs slower than their GEMM form (bf16 ASPP branches on AMX: measured per shape)
        self.atrous_probes: list[dict[str, Any]] = []
        self.probe_cache: Path | None = None  # where the probes' verdicts are kept for this machine
        if fuse and dev.type == "cpu" and self._format == torch.channels_last:
            self.depthwise_probes = nchw_where_faster(self.net)
            self.atrous_probes = gemm_where_faster(self.net, _AUTOCAST_DTYPES.get(self.precision))
            self.probe_cache = probe_cache_file()
        self.lm = dataclasses.replace(source, model=self.net, device=dev, runner=self.forward)
        self._compile_request = compile
        self.compiled = False
        self.cache_dir: Path | None = None  # inductor's on-disk cache, once compiled
        self._compiled_fn: Any = None
        self.compile_shapes = 0  # how many input shapes get a compiled graph (the first ones seen)
        self.compiled_shapes: list[tuple[int, ...]] = []
        self.forwards = {"compiled": 0, "eager": 0}
        if compile is True:
            self.enable_compile()

    # ---- construction helpers
    @classmethod
    def from_module(cls, model: nn.Module, *, preprocessing: Preprocessing | None = None, **kwargs: Any) -> Segmenter:
        """An engine around an in-memory DeepLab ``model`` (random weights in the benchmarks, tests)."""
        family = _family(model)
        pre = preprocessing or default_preprocessing(model)
        num_classes = _num_classes_of(model)
        lm = LoadedModel(model, type(model).__name__, family, num_classes, pre, "given", Path("<in memory>"))
        return cls(lm, **kwargs)

    def want_compile(self, images: int, fixed_shape: bool) -> bool:
        """Whether ``compile="auto"`` compiles for a run of ``images`` inputs (all one shape if ``fixed_shape``)."""
        return self._compile_request is True or (
            self._compile_request == "auto" and fixed_shape and images >= COMPILE_MIN_IMAGES)

    def enable_compile(self, shapes: int | None = None) -> None:
        """Compile the fused model with inductor and weight freezing (idempotent).

        Graphs are made for the first ``shapes`` distinct input shapes the engine sees (default: one per
        scale of :attr:`config`, the shapes of one image); inputs of other shapes run eagerly.
        """
        if shapes is None:
            shapes = len(self.config.scales)
        self.compile_shapes = max(self.compile_shapes, min(max(int(shapes), 1), COMPILE_MAX_SHAPES))
        if self.compiled:
            return
        self.cache_dir = use_inductor_cache_dir()
        self._compiled_fn = torch.compile(self.net, backend="inductor", dynamic=False)
        self.compiled = True

    @staticmethod
    def _compile_settings() -> Any:
        """:data:`COMPILE_OPTIONS` set in inductor's config for a compiled call (dynamo traces inside it)."""
        from torch._inductor import config as inductor_config

        return inductor_config.patch(dict(COMPILE_OPTIONS))

    # ---- running
    def _module_for(self, x: torch.Tensor) -> Any:
        """The compiled graph for a shape it has (or may still take), else the eager fused module."""
        if self._compiled_fn is not None:
            shape = tuple(x.shape)
            if shape in self.compiled_shapes or len(self.compiled_shapes) < self.compile_shapes:
                if shape not in self.compiled_shapes:
                    self.compiled_shapes.append(shape)
                self.forwards["compiled"] += 1
                return self._compiled_fn
        self.forwards["eager"] += 1
        return self.net

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network's raw output (logits / score map), float32 and NCHW-contiguous, for a preprocessed NCHW batch.

        NCHW whatever layout the network ran in: the logits are small (C x H/s x W/s), and what follows
        them is not. PyTorch keeps channels_last through the bilinear resize to the input's size, and on
        a CPU ``softmax`` over the channels of a channels_last ``21x513x513`` map takes ~3x as long as over
        NCHW (70 vs 23 ms on a 2-core AVX2 EPYC), an evaluation's largest cost after the forward.
        """
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=self._format)
        dtype = _AUTOCAST_DTYPES.get(self.precision)
        fn = self._module_for(x)
        settings = self._compile_settings() if fn is self._compiled_fn else contextlib.nullcontext()
        with settings, float32_math(self.precision), torch.autocast(self.device.type, dtype=dtype or torch.float32,
                                                                     enabled=dtype is not None):
            out = fn(x)
        return out.float().contiguous()

    def scores(self, image_rgb: np.ndarray, config: InferenceConfig | None = None) -> torch.Tensor:
        """``(C, H, W)`` float32 probabilities on the CPU for an RGB uint8 image."""
        return run_image(self.lm, image_rgb, config or self.config)

    def predict(self, image_rgb: np.ndarray, config: InferenceConfig | None = None) -> np.ndarray:
        """``(H, W)`` uint8 label map for an RGB uint8 image (:func:`predict_labels`: no softmax after one forward)."""
        return image_labels(self.lm, image_rgb, config or self.config)

    @property
    def num_classes(self) -> int:
        return self.lm.num_classes

    def describe(self) -> dict[str, Any]:
        """The engine's settings, for result files and logs."""
        return {"device": str(self.device), "precision": self.precision, "precision_reason": self.precision_reason,
                "float32_math": self.float32_math(),
                "memory_format": self.memory_format, "memory_format_reason": self.memory_format_reason,
                "batchnorm_folded": self.fused, "aspp_as_gemm": self.atrous_gemm,
                "depthwise_nchw": self.depthwise_nchw,
                "depthwise_probes": [dict(p) for p in self.depthwise_probes],
                "atrous_convs_as_gemm": self.atrous_convs_as_gemm,
                "atrous_probes": [dict(p) for p in self.atrous_probes],
                "probe_cache": None if self.probe_cache is None else str(self.probe_cache), "compiled": self.compiled,
                "compile_cache": None if self.cache_dir is None else str(self.cache_dir),
                "compiled_shapes": [list(shape) for shape in self.compiled_shapes],
                "forwards": dict(self.forwards),
                "torch_threads": torch.get_num_threads()}

    def float32_math(self) -> dict[str, Any]:
        """The fp32 math settings the forwards run under (:func:`float32_math_state`): set by the engine at fp32 and
        tf32 (``"set_by": "engine"``), the process's own under bf16/fp16 autocast (``"set_by": "process"``)."""
        with float32_math(self.precision):
            state = float32_math_state()
        return {**state, "set_by": "engine" if self.precision in _FLOAT32_MODES else "process"}

    @property
    def depthwise_nchw(self) -> int:
        """How many dilated depthwise convolutions run in NCHW (:mod:`reproduce.depthwise_layout`)."""
        return sum(p["modules"] for p in self.depthwise_probes)

    @property
    def atrous_convs_as_gemm(self) -> int:
        """How many single atrous convolutions run as a GEMM (:func:`reproduce.atrous_gemm.gemm_where_faster`)."""
        return sum(p["modules"] for p in self.atrous_probes)

    def summary(self) -> str:
        """One line: what the engine chose."""
        islands = self.depthwise_nchw
        layout = self.memory_format + (f" ({islands} dilated depthwise convs in NCHW: measured faster here)"
                                       if islands else "")
        if self.atrous_convs_as_gemm:
            layout += f", {self.atrous_convs_as_gemm} atrous convs as GEMM (measured faster here)"
        tf32 = f" TF32 {'on' if self.float32_math()['tf32'] else 'off'}" if self.precision in _FLOAT32_MODES else ""
        return (f"engine: {self.device}, {self.precision}{tf32} ({self.precision_reason}), {layout}, "
                f"BatchNorm {'folded' if self.fused else 'separate'}, {'compiled' if self.compiled else 'eager'}")


def _num_classes_of(model: nn.Module) -> int:
    last = None
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            last = m
    if last is None:
        raise InferenceError(f"{type(model).__name__} has no convolution")
    return int(last.out_channels)
