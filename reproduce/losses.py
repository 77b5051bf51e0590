"""Training losses as the official train nets define them.

DeepLab v2 (Caffe ``train.prototxt``, "compute loss" section): four ``SoftmaxWithLoss`` terms,
summed with weight 1 each, all with ``ignore_label: 255`` and VALID normalization:

==============  ======================================  =====================================
term            scores                                   labels
==============  ======================================  =====================================
``fused``       ``fc_fusion`` (max of the 3 scales)       ``label_shrink``  = Interp(shrink 8)
``scale_1``     ``fc1_voc12``                             ``label_shrink``
``scale_0.75``  ``fc1_voc12_res075_interp`` (upsampled)   ``label_shrink``
``scale_0.5``   ``fc1_voc12_res05`` (native size)         ``label_shrink16`` = Interp(shrink 16)
==============  ======================================  =====================================

Labels are shrunk by Caffe's *bilinear* ``Interp`` layer (:func:`caffe_shrink_labels`), then
``SoftmaxWithLoss`` truncates each value to an int. On 321 crops the sample points fall on whole
pixels, so this equals ``label[::8, ::8]`` / ``label[::16, ::16]``; on other sizes it blends
neighbouring labels exactly as Caffe does.

DeepLab v3/v3+ (TF ``train_utils.add_softmax_cross_entropy_loss_for_each_scale`` with
``upsample_logits=True``): logits are resized bilinearly (``align_corners=True``) to the label
size, and the cross entropy is averaged over the non-ignored pixels of the batch.

Normalization, which decides how images in a batch are weighted:

- ``"per_image"``: each image's loss is the mean over its own valid pixels, and the batch loss
  the mean over images. This is Caffe's ``batch_size: 1`` + ``iter_size: 10`` (each forward is
  normalized by its own valid count, gradients are averaged over the 10 forwards).
- ``"pixels"``: the sum over every valid pixel of the (global) batch divided by their number (TF).

The loss returns per-term *sums* (of per-image means, or of pixel losses); the trainer divides
them by the global number of images or valid pixels (:meth:`SegmentationLoss.denominators`), so
the result does not depend on how the batch is split into accumulation steps or processes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
import torch.nn.functional as F

from reference_models.caffe_ops import interp_out

__all__ = ["caffe_interp_align_corners", "caffe_shrink_labels", "SegmentationLoss", "Normalization"]

Normalization = Literal["per_image", "pixels"]


def _axis_weights(n_in: int, n_out: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Caffe ``caffe_cpu_interp2`` along one axis, in float32 as Caffe computes it.

    ``r = (n_in-1)/(n_out-1)``; for output ``i``: ``src = r*i``, ``i0 = int(src)``, ``i1 = i0 + (i0 < n_in-1)``,
    ``lambda = src - i0``.
    """
    # Made on ``device``: a copy from the host would wait for the GPU. ``r`` stays a CPU scalar (no copy).
    r = torch.tensor((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0, dtype=torch.float32)
    src = r * torch.arange(n_out, dtype=torch.float32, device=device)
    i0 = src.to(torch.int64)  # truncation, as the C++ ``const int h1 = h1r``
    i1 = i0 + (i0 < n_in - 1).to(torch.int64)
    lam = src - i0.to(torch.float32)
    return i0, i1, lam


def caffe_interp_align_corners(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Caffe ``Interp`` (bilinear, align_corners semantics) of an (N, H, W) float32 tensor to ``size``."""
    n_h, n_w = x.shape[-2:]
    if (n_h, n_w) == tuple(size):
        return x.clone()
    h0, h1, lh = _axis_weights(n_h, size[0], x.device)
    w0, w1, lw = _axis_weights(n_w, size[1], x.device)
    rows0, rows1 = x[..., h0, :], x[..., h1, :]
    top = rows0[..., w0] * (1 - lw) + rows0[..., w1] * lw
    bottom = rows1[..., w0] * (1 - lw) + rows1[..., w1] * lw
    return top * (1 - lh)[:, None] + bottom * lh[:, None]


def caffe_shrink_labels(
    labels: torch.Tensor, shrink: int, *, num_classes: int | None = None, ignore_index: int = 255
) -> torch.Tensor:
    """Labels as Caffe's ``Interp(shrink_factor=shrink)`` + ``SoftmaxWithLoss`` see them: (N, H, W) -> int64.

    Output size ``(H-1)//shrink + 1``; values are bilinearly blended (align_corners) and truncated
    to int. A blend that is neither a class nor ``ignore_index`` (e.g. 255 mixed with 3) would read
    out of bounds in Caffe (undefined behaviour); here it becomes ``ignore_index``.
    """
    if labels.dim() != 3:
        raise ValueError(f"labels must be (N, H, W), got {tuple(labels.shape)}")
    h, w = labels.shape[-2:]
    size = (interp_out(h, shrink=shrink), interp_out(w, shrink=shrink))
    out = caffe_interp_align_corners(labels.to(torch.float32), size).to(torch.int64)
    if num_classes is not None:
        bad = (out < 0) | ((out >= num_classes) & (out != ignore_index))
        out = out.masked_fill(bad, ignore_index)
    return out


class SegmentationLoss:
    """The configured training loss. ``kind``:

    - ``"caffe_msc"``: one cross-entropy term per output of the v2 multi-scale model's train-mode
      dict, each against labels shrunk by ``shrink[term]`` (default: 8 for every output, 16 for
      ``scale_0.5``, the released train net).
    - ``"upsample"``: one term, logits resized to the label size (bilinear, align_corners=True).
    """

    DEFAULT_SHRINK = {"fused": 8, "scale_1": 8, "scale_0.75": 8, "scale_0.5": 16}

    def __init__(
        self,
        kind: Literal["caffe_msc", "upsample"],
        *,
        num_classes: int,
        ignore_index: int = 255,
        normalization: Normalization = "per_image",
        shrink: Mapping[str, int] | None = None,
    ) -> None:
        if kind not in ("caffe_msc", "upsample"):
            raise ValueError(f"loss kind must be 'caffe_msc' or 'upsample', got {kind!r}")
        if normalization not in ("per_image", "pixels"):
            raise ValueError(f"normalization must be 'per_image' or 'pixels', got {normalization!r}")
        self.kind = kind
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.normalization = normalization
        self.shrink = dict(shrink if shrink is not None else self.DEFAULT_SHRINK)

    # ------------------------------------------------------------------ targets and denominators
    def targets(self, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-term label maps for a (N, H, W) int64 label batch (computed before the forward pass)."""
        if self.kind == "upsample":
            return {"out": labels}
        cache: dict[int, torch.Tensor] = {}
        out = {}
        for term, s in self.shrink.items():
            if s not in cache:
                cache[s] = caffe_shrink_labels(labels, s, num_classes=self.num_classes, ignore_index=self.ignore_index)
            out[term] = cache[s]
        return out

    def denominators(self, targets: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This process's share of each term's normalizer: images (per_image) or valid pixels (pixels).

        float64 scalars on the targets' device: nothing is read back to the host (no GPU sync).
        """
        dens = {}
        for term, t in targets.items():
            if self.normalization == "per_image":
                dens[term] = torch.full((), float(t.shape[0]), dtype=torch.float64, device=t.device)
            else:
                dens[term] = (t != self.ignore_index).sum().to(torch.float64)
        return dens

    # ------------------------------------------------------------------ the loss
    def _term(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()  # the loss in float32, also under autocast
        if tuple(logits.shape[-2:]) != tuple(target.shape[-2:]):
            raise ValueError(
                f"scores {tuple(logits.shape[-2:])} and labels {tuple(target.shape[-2:])} differ in size; "
                "check the crop size and the loss's shrink factors"
            )
        ce = F.cross_entropy(logits, target, ignore_index=self.ignore_index, reduction="none")  # (N, h, w)
        if self.normalization == "pixels":
            return ce.sum()
        valid = (target != self.ignore_index).sum(dim=(1, 2)).clamp(min=1)  # Caffe: max(count, 1)
        return (ce.sum(dim=(1, 2)) / valid).sum()

    def __call__(
        self, outputs: torch.Tensor | Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Per-term sums (divide by the global :meth:`denominators` to get the loss)."""
        if self.kind == "upsample":
            if isinstance(outputs, Mapping):
                raise TypeError("loss kind 'upsample' expects a logits tensor, got a dict of outputs")
            label = targets["out"]
            logits = F.interpolate(outputs.float(), size=label.shape[-2:], mode="bilinear", align_corners=True)
            return {"out": self._term(logits, label)}
        if not isinstance(outputs, Mapping):
            raise TypeError("loss kind 'caffe_msc' expects the multi-scale model's train-mode dict of outputs")
        missing = set(self.shrink) - set(outputs)
        if missing:
            raise KeyError(f"model outputs {sorted(outputs)} lack loss terms {sorted(missing)}")
        return {term: self._term(outputs[term], targets[term]) for term in self.shrink}
