"""Segmentation metrics from one dataset-level confusion matrix.

Scores are computed once from a confusion matrix accumulated over the whole dataset, never by
averaging per-image scores (that answers a different question and gives different numbers; see
``tests/test_metrics.py``).

Which classes enter the means is a convention that changes mIoU, so it is an explicit argument:

- ``"present_in_gt"`` (default): classes with at least one ground-truth pixel. This is the
  COCO-Stuff evaluation (``cocostuffeval``: ``valid = posGt > 0``) and kazuto1011's ``scores()``;
  it drops the 11 COCO-Stuff classes that have no annotations. A class that is predicted but
  absent from the ground truth is not penalised.
- ``"present_in_union"``: classes present in the ground truth *or* the prediction, i.e. NaN-mean
  over classes with a non-zero union. This is mmsegmentation's ``IoUMetric``, TF DeepLab's
  ``tf.metrics.mean_iou``, torchmetrics >= 1.x macro Jaccard, VainF and jfzhang95.
- ``"all"``: every class, absent ones counting as IoU 0 (old torchmetrics; rarely wanted).

On VOC val every class is present in the ground truth, so the first two agree there.

Ground-truth values outside ``[0, num_classes)`` other than ``ignore_index`` are an error by
default (``out_of_range="error"``), because on the datasets we reproduce they mean a wrong label
mapping. ``out_of_range="ignore"`` drops those pixels instead, as the official COCO-Stuff
evaluation does (it ignores every gt not in ``[0, 181]``). Predictions outside ``[0, num_classes)``
are always an error: they can only come from a bug.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

import numpy as np
import torch

__all__ = ["ConfusionMatrix", "ClassSelection", "CLASS_SELECTIONS", "scores_from_matrix", "percent"]

ClassSelection = Literal["present_in_gt", "present_in_union", "all"]
CLASS_SELECTIONS: tuple[str, ...] = ("present_in_gt", "present_in_union", "all")


def _as_tensor(x: Any, name: str) -> torch.Tensor:
    """Integer tensor view of a numpy array or tensor (no copy where possible)."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    elif not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x))
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer class indices, got dtype {x.dtype} (take argmax of logits first)")
    return x


def _collective_device(group: Any = None) -> torch.device:
    """Where ``group``'s backend reduces: the current GPU for NCCL (it cannot reduce CPU tensors), else the CPU."""
    import torch.distributed as dist

    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _offenders(values: torch.Tensor, bad: torch.Tensor | None) -> torch.Tensor:
    """``[count, min, max]`` of ``values`` where ``bad`` (int64, on the device; no host read)."""
    if bad is None:  # filled on the device: a tensor built from a list would be copied from the host
        none = torch.zeros(3, dtype=torch.int64, device=values.device)
        none[1], none[2] = _NONE_MIN, _NONE_MAX
        return none
    return torch.stack([bad.sum(), torch.where(bad, values, _NONE_MIN).min(), torch.where(bad, values, _NONE_MAX).max()])


_NONE_MIN, _NONE_MAX = 2**62, -(2**62)  # the min / max of no offending value


class ConfusionMatrix:
    """A streaming ``(num_classes, num_classes)`` confusion matrix; rows = ground truth, columns = prediction.

    ``update`` runs a single bincount on the device of its inputs (numpy's on the CPU, torch's
    scatter-add elsewhere); the matrix lives on that device as int64 (no overflow before 2**63
    pixels) until ``compute``.

    On a GPU ``update`` never reads the device (a read waits for every queued kernel): labels and
    predictions outside ``[0, num_classes)`` are counted there, the update that holds them adds
    nothing, and the ``ValueError`` naming them is raised when the matrix is first read
    (``matrix``, ``compute``, ``all_reduce``) instead of by the ``update`` itself, as on the CPU.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = 255,
        *,
        out_of_range: Literal["error", "ignore"] = "error",
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if ignore_index is not None and 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index {ignore_index} is a valid class index for num_classes={num_classes}")
        if out_of_range not in ("error", "ignore"):
            raise ValueError(f"out_of_range must be 'error' or 'ignore', got {out_of_range!r}")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.out_of_range = out_of_range
        self._mat: torch.Tensor | None = None  # allocated on the first update's device
        self._torch_bincount_on_cpu = False  # torch's bincount on the CPU, checks at once (tests)
        self._device_path_on_cpu = False  # the GPU code path (no host reads, checks deferred) on the CPU (tests)
        # [[count, min, max] of bad labels, [count, min, max] of bad predictions], on the device; None: none seen
        self._problems: torch.Tensor | None = None

    # ------------------------------------------------------------------ accumulation
    def update(self, pred: Any, label: Any) -> None:
        """Add one image or a batch. ``pred`` and ``label`` are integer arrays of the same shape.

        Accepts numpy arrays or torch tensors of any integer dtype and any shape ((H, W),
        (N, H, W), ...). Pixels whose label equals ``ignore_index`` are skipped whatever the
        prediction. Raises ``ValueError`` naming the offending value for out-of-range labels
        (unless ``out_of_range="ignore"``) and for out-of-range predictions.
        """
        pred_t = _as_tensor(pred, "pred")
        label_t = _as_tensor(label, "label")
        if pred_t.shape != label_t.shape:
            raise ValueError(f"pred shape {tuple(pred_t.shape)} != label shape {tuple(label_t.shape)}")
        if pred_t.device != label_t.device:
            pred_t = pred_t.to(label_t.device)
        if label_t.device.type != "cpu" or self._device_path_on_cpu:
            self._update_on_device(pred_t, label_t)
            return
        c = self.num_classes
        # Ignored (and, with out_of_range="ignore", out-of-range) pixels go to one extra bin that is
        # dropped afterwards: cheaper than gathering the kept pixels. On the CPU numpy's bincount is
        # ~10x faster than torch's; tensors there are viewed as numpy arrays without a copy.
        xp_is_np = label_t.device.type == "cpu" and not self._torch_bincount_on_cpu
        lab = label_t.reshape(-1).numpy() if xp_is_np else label_t.reshape(-1)
        prd = pred_t.reshape(-1).numpy() if xp_is_np else pred_t.reshape(-1)
        ignored = (lab == self.ignore_index) if self.ignore_index is not None else None
        bad_label = (lab >= c) | (lab < 0)
        if ignored is not None:
            bad_label &= ~ignored
        if bool(bad_label.any()):
            if self.out_of_range == "error":
                values = sorted({int(v) for v in (lab[bad_label][:100000]).tolist()})[:5]
                raise ValueError(
                    f"label value(s) {values} outside [0, {c}) and not ignore_index={self.ignore_index} "
                    "(pass out_of_range='ignore' to drop such pixels, as the COCO-Stuff evaluation does)"
                )
            ignored = bad_label if ignored is None else (ignored | bad_label)
        if prd.shape[0] and (int(prd.min()) < 0 or int(prd.max()) >= c):
            bad_pred = (prd < 0) | (prd >= c)
            if ignored is not None:
                bad_pred &= ~ignored
            if bool(bad_pred.any()):
                values = sorted({int(v) for v in prd[bad_pred][:100000].tolist()})[:5]
                raise ValueError(f"prediction value(s) {values} outside [0, {c})")
        # int64 before arithmetic: uint8 would wrap in label * C + pred.
        if xp_is_np:
            idx = lab.astype(np.int64) * c + prd
            if ignored is not None:
                idx[ignored] = c * c
            counts = torch.from_numpy(np.bincount(idx, minlength=c * c + 1)[: c * c].reshape(c, c))
        else:
            idx = lab.long() * c + prd.long()
            if ignored is not None:
                idx = idx.masked_fill(ignored, c * c)
            counts = torch.bincount(idx, minlength=c * c + 1)[: c * c].reshape(c, c)
        if self._mat is None:
            self._mat = counts
        else:
            self._mat += counts.to(self._mat.device)

    def _update_on_device(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        """:meth:`update` without a read of the device: the checks' findings wait in ``_problems``."""
        c = self.num_classes
        lab, prd = label.reshape(-1).long(), pred.reshape(-1).long()
        if lab.numel() == 0:
            return
        ignored = lab == self.ignore_index if self.ignore_index is not None else torch.zeros_like(lab, dtype=torch.bool)
        bad_label: torch.Tensor | None = ((lab < 0) | (lab >= c)) & ~ignored
        if self.out_of_range == "ignore":
            ignored, bad_label = ignored | bad_label, None
        bad_pred = ((prd < 0) | (prd >= c)) & ~ignored
        drop = ignored | bad_pred if bad_label is None else ignored | bad_pred | bad_label
        idx = (lab * c + prd).masked_fill(drop, c * c)
        # scatter-add, not bincount: torch's bincount reads the largest index back to size its output
        counts = torch.zeros(c * c + 1, dtype=torch.int64, device=lab.device)
        counts.scatter_add_(0, idx, torch.ones_like(idx))
        problems = torch.stack([_offenders(lab, bad_label), _offenders(prd, bad_pred)])
        counts = counts[: c * c].reshape(c, c) * (problems[:, 0].sum() == 0)  # a rejected update adds nothing
        self._add_problems(problems)
        if self._mat is None:
            self._mat = counts
        else:
            self._mat += counts.to(self._mat.device)

    def _add_problems(self, problems: torch.Tensor | None) -> None:
        if problems is None:
            return
        if self._problems is None:
            self._problems = problems.clone()
            return
        mine = self._problems
        problems = problems.to(mine.device)
        self._problems = torch.stack([mine[:, 0] + problems[:, 0], torch.minimum(mine[:, 1], problems[:, 1]),
                                      torch.maximum(mine[:, 2], problems[:, 2])], dim=1)

    def _raise_problems(self, counts: list[int] | None = None) -> None:
        """The ``ValueError`` :meth:`update` would have raised on the CPU (``counts``: all-reduced bad counts)."""
        if self._problems is None and counts is None:
            return
        found = self._problems.tolist() if self._problems is not None else [[0, _NONE_MIN, _NONE_MAX]] * 2
        for (n, low, high), total, what in zip(found, counts or [row[0] for row in found], ("label", "prediction")):
            if not total:
                continue
            values = sorted({low, high}) if n else "(on another process)"
            if what == "label":
                raise ValueError(
                    f"label value(s) {values} outside [0, {self.num_classes}) and not ignore_index={self.ignore_index} "
                    f"in {total} pixel(s) (pass out_of_range='ignore' to drop such pixels, as the COCO-Stuff "
                    "evaluation does)")
            raise ValueError(f"prediction value(s) {values} outside [0, {self.num_classes}) in {total} pixel(s)")

    def merge(self, other: ConfusionMatrix | np.ndarray | torch.Tensor) -> ConfusionMatrix:
        """Add another matrix (from another worker, process or shard) into this one; returns ``self``."""
        if isinstance(other, ConfusionMatrix):
            if other.num_classes != self.num_classes or other.ignore_index != self.ignore_index:
                raise ValueError(
                    f"cannot merge ConfusionMatrix(num_classes={other.num_classes}, ignore_index={other.ignore_index}) "
                    f"into ConfusionMatrix(num_classes={self.num_classes}, ignore_index={self.ignore_index})"
                )
            self._add_problems(other._problems)
            if other._mat is None:
                return self
            counts = other._mat
        else:
            counts = _as_tensor(other, "matrix").long()
            if tuple(counts.shape) != (self.num_classes, self.num_classes):
                raise ValueError(f"matrix shape {tuple(counts.shape)} != ({self.num_classes}, {self.num_classes})")
        if self._mat is None:
            self._mat = counts.clone()
        else:
            self._mat += counts.to(self._mat.device)
        return self

    def __iadd__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        return self.merge(other)

    @classmethod
    def sum(cls, matrices: Iterable[ConfusionMatrix]) -> ConfusionMatrix:
        """Merge several matrices (e.g. one per DataLoader worker) into a new one."""
        matrices = list(matrices)
        if not matrices:
            raise ValueError("ConfusionMatrix.sum needs at least one matrix")
        first = matrices[0]
        total = cls(first.num_classes, first.ignore_index, out_of_range=first.out_of_range)
        for m in matrices:
            total.merge(m)
        return total

    def all_reduce(self, group: Any = None) -> ConfusionMatrix:
        """Sum the matrix over all ``torch.distributed`` ranks in place (no-op when not initialised).

        Every rank must call this. A rank that saw no data contributes zeros.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        device = _collective_device(group)
        c = self.num_classes
        mat = self._mat if self._mat is not None else torch.zeros(c, c, dtype=torch.long, device=device)
        bad = self._problems[:, 0] if self._problems is not None else torch.zeros(2, dtype=torch.long, device=device)
        # one collective for the counts and the findings, so that every rank raises alike (none is left waiting)
        packed = torch.cat([mat.reshape(-1).to(device), bad.to(device)])
        dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=group)
        self._mat = packed[: c * c].reshape(c, c).to(mat.device)
        self._raise_problems(packed[c * c:].tolist())
        return self

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self._mat = None
        self._problems = None

    @property
    def matrix(self) -> np.ndarray:
        """The accumulated counts as a CPU ``(C, C)`` int64 numpy array (rows gt, columns pred).

        Raises the ``ValueError`` of out-of-range values that a GPU update found (see the class docstring).
        """
        self._raise_problems()
        if self._mat is None:
            return np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        return self._mat.detach().cpu().numpy().astype(np.int64, copy=True)

    @classmethod
    def from_matrix(cls, matrix: np.ndarray | torch.Tensor, ignore_index: int | None = 255) -> ConfusionMatrix:
        """Rebuild from saved counts, e.g. ``np.save``'d ``cm.matrix`` from another process."""
        matrix = np.asarray(matrix)
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"expected a square matrix, got shape {matrix.shape}")
        cm = cls(matrix.shape[0], ignore_index)
        cm.merge(matrix.astype(np.int64))
        return cm

    # ------------------------------------------------------------------ scores
    def compute(self, classes: ClassSelection = "present_in_gt") -> dict[str, Any]:
        """Scores as fractions in [0, 1]; see :func:`scores_from_matrix`."""
        return scores_from_matrix(self.matrix, classes=classes)

    def __repr__(self) -> str:
        total = 0 if self._mat is None else int(self._mat.sum())
        return f"ConfusionMatrix(num_classes={self.num_classes}, ignore_index={self.ignore_index}, pixels={total})"


def scores_from_matrix(matrix: np.ndarray, classes: ClassSelection = "present_in_gt") -> dict[str, Any]:
    """Pixel accuracy, mean accuracy, mIoU, FWIoU and per-class IoU/accuracy from a confusion matrix.

    All values are fractions in [0, 1] (multiply by 100 for the papers' percentages). Returns::

        pixel_acc   trace / total pixels
        mean_acc    mean over the selected classes that have gt pixels of TP / gt
        miou        mean over the selected classes of TP / (gt + pred - TP)
        fwiou       sum over classes with gt of (gt / total) * IoU (independent of ``classes``)
        iou, acc    per-class lists; NaN where undefined (IoU: union 0; acc: no gt pixels)
        classes     the convention used; ``num_classes_used``: how many classes entered miou
        num_pixels  pixels counted (ignored pixels excluded)

    Empty matrices give NaN scores rather than an exception, so an empty shard is harmless.
    """
    if classes not in CLASS_SELECTIONS:
        raise ValueError(f"classes must be one of {CLASS_SELECTIONS}, got {classes!r}")
    mat = np.asarray(matrix, dtype=np.float64)
    tp = np.diag(mat)
    gt = mat.sum(axis=1)
    pred = mat.sum(axis=0)
    union = gt + pred - tp
    total = mat.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(gt > 0, tp / gt, np.nan)
        pixel_acc = tp.sum() / total if total > 0 else np.nan
        fwiou = float(np.nansum((gt / total) * iou)) if total > 0 else np.nan

    if classes == "present_in_gt":
        selected = gt > 0
        iou_sel = iou[selected]
    elif classes == "present_in_union":
        selected = union > 0
        iou_sel = iou[selected]
    else:
        selected = np.ones_like(gt, dtype=bool)
        iou_sel = np.nan_to_num(iou, nan=0.0)
    # Accuracy is undefined for classes without gt, so those never enter mean_acc.
    acc_sel = acc[selected & (gt > 0)]
    miou = float(iou_sel.mean()) if iou_sel.size else float("nan")
    mean_acc = float(acc_sel.mean()) if acc_sel.size else float("nan")
    return {
        "pixel_acc": float(pixel_acc),
        "mean_acc": mean_acc,
        "miou": miou,
        "fwiou": float(fwiou),
        "iou": iou.tolist(),
        "acc": acc.tolist(),
        "classes": classes,
        "num_classes_used": int(selected.sum()),
        "num_pixels": int(total),
    }


def percent(
    scores: Mapping[str, Any], keys: Iterable[str] = ("pixel_acc", "mean_acc", "miou", "fwiou")
) -> dict[str, float]:
    """The summary scores of :func:`scores_from_matrix` in percent, as the papers print them."""
    return {k: 100.0 * float(scores[k]) for k in keys}
