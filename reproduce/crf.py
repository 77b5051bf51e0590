"""Dense CRF post-processing (Krähenbühl & Koltun) as DeepLab v2 applies it, via ``pydensecrf``.

Install the optional extra: ``pip install -e .[crf]`` (``pydensecrf2``, a maintained fork that
builds on current Python and installs the ``pydensecrf`` module; the PyPI ``pydensecrf`` sdist
does not build on Python 3.11).

Settings (:data:`RESNET101`): DeepLab v2 ResNet-101, as kazuto1011's ``configs/voc12.yaml`` and
a third-party code comment give them (the official per-model pages are not available):
10 mean-field iterations; Gaussian (position) kernel weight 3, xy std 1; bilateral kernel weight
4, xy std 67, rgb std 3. The unary is ``-log(softmax)`` of the logits upsampled to the image size,
and the bilateral kernel sees the **raw RGB uint8 image**, never the mean-subtracted network input.

:class:`CRFPool` runs images in worker processes (``workers`` > 0) in chunks and yields the
results in submission order. Each image's CRF is a pure function of (image, probabilities,
settings), so the output does not depend on the number of workers or the chunk size.
"""

from __future__ import annotations

import collections
import multiprocessing
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from converters.errors import DeeplabError

__all__ = ["CRFParams", "RESNET101", "VGG16", "CRFUnavailable", "require_pydensecrf", "dense_crf", "CRFPool"]

INSTALL_HINT = "dense CRF needs pydensecrf: pip install pydensecrf2 (or pip install -e .[crf])"


class CRFUnavailable(DeeplabError, ImportError):
    """``pydensecrf`` is not installed; ``str(error)`` is a one-line install hint."""


@dataclass(frozen=True)
class CRFParams:
    """Dense CRF settings in DeepLab's vocabulary (``ITER_MAX``, ``POS_W``, ...)."""

    iterations: int = 10
    pos_w: float = 3.0
    pos_xy_std: float = 1.0
    bi_w: float = 4.0
    bi_xy_std: float = 67.0
    bi_rgb_std: float = 3.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


RESNET101 = CRFParams()  # DeepLab v2 ResNet-101 (kazuto1011 configs/*.yaml)
VGG16 = CRFParams(pos_w=2.0, pos_xy_std=2.0, bi_w=4.0, bi_xy_std=65.0, bi_rgb_std=3.0)  # UNCONFIRMED, third-party


def require_pydensecrf() -> Any:
    """Import ``pydensecrf.densecrf`` or raise :class:`CRFUnavailable` with the install hint."""
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError:
        raise CRFUnavailable(INSTALL_HINT) from None
    return dcrf


def dense_crf(image_rgb: np.ndarray, probs: np.ndarray, params: CRFParams = RESNET101) -> np.ndarray:
    """Refine ``probs`` ``(C, H, W)`` with the raw ``image_rgb`` ``(H, W, 3)`` uint8; return ``(C, H, W)`` float32.

    Raises ``ValueError`` for a non-uint8 image (a mean-subtracted float input is the classic
    mistake: the bilateral kernel's rgb std of 3 is in 0-255 intensity units).
    """
    dcrf = require_pydensecrf()
    from pydensecrf.utils import unary_from_softmax

    image_rgb = np.asarray(image_rgb)
    if image_rgb.dtype != np.uint8 or image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise ValueError(f"CRF needs the raw (H, W, 3) uint8 RGB image, got {image_rgb.dtype} {image_rgb.shape}")
    probs = np.asarray(probs, dtype=np.float32)
    c, h, w = probs.shape
    if image_rgb.shape[:2] != (h, w):
        raise ValueError(f"image size {image_rgb.shape[:2]} != probability map size {(h, w)}")
    unary = np.ascontiguousarray(unary_from_softmax(probs))
    crf = dcrf.DenseCRF2D(w, h, c)
    crf.setUnaryEnergy(unary)
    crf.addPairwiseGaussian(sxy=params.pos_xy_std, compat=params.pos_w)
    # a writable C-contiguous copy: pydensecrf's memoryview refuses read-only buffers (np.asarray(PIL image))
    rgb = np.array(image_rgb, dtype=np.uint8, order="C", copy=True)
    crf.addPairwiseBilateral(sxy=params.bi_xy_std, srgb=params.bi_rgb_std, rgbim=rgb, compat=params.bi_w)
    q = crf.inference(params.iterations)
    return np.asarray(q, dtype=np.float32).reshape(c, h, w)


def _crf_labels(image_rgb: np.ndarray, probs: np.ndarray, params: CRFParams) -> np.ndarray:
    return dense_crf(image_rgb, probs, params).argmax(axis=0).astype(np.uint8)


def _run_chunk(chunk: list[tuple[np.ndarray, np.ndarray]], params: CRFParams) -> list[np.ndarray]:
    return [_crf_labels(image, probs, params) for image, probs in chunk]


class CRFPool:
    """Label maps after the CRF, computed in ``workers`` processes (0 = in this process).

    ``submit(image, probs)`` queues one image (``probs`` as float32 ``(C, H, W)``); ``results()``
    yields finished ``(H, W)`` uint8 label maps in submission order, blocking only when more than
    ``max_pending`` chunks are in flight, so memory stays bounded on a whole dataset. Call
    ``drain()`` at the end for the rest. Use as a context manager.
    """

    def __init__(self, workers: int = 0, *, params: CRFParams = RESNET101, chunk_size: int = 2,
                 max_pending: int | None = None) -> None:
        require_pydensecrf()  # fail before any inference work
        if workers < 0 or chunk_size < 1:
            raise ValueError(f"need workers >= 0 and chunk_size >= 1, got {workers}, {chunk_size}")
        self.workers, self.params, self.chunk_size = workers, params, chunk_size
        self.max_pending = max_pending or max(2 * workers, 1)
        # spawn, not fork: forking a process that holds torch/OpenMP threads can deadlock.
        self._pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 0 else None
        self._chunk: list[tuple[np.ndarray, np.ndarray]] = []
        self._pending: collections.deque = collections.deque()
        self._done: collections.deque = collections.deque()

    def submit(self, image_rgb: np.ndarray, probs: np.ndarray) -> None:
        self._chunk.append((np.ascontiguousarray(image_rgb), np.ascontiguousarray(probs, dtype=np.float32)))
        if len(self._chunk) >= self.chunk_size:
            self._flush()

    def _flush(self) -> None:
        if not self._chunk:
            return
        chunk, self._chunk = self._chunk, []
        if self._pool is None:
            self._done.extend(_run_chunk(chunk, self.params))
            return
        self._pending.append(self._pool.apply_async(_run_chunk, (chunk, self.params)))
        while len(self._pending) > self.max_pending:
            self._done.extend(self._pending.popleft().get())

    def results(self) -> Iterator[np.ndarray]:
        """Label maps finished so far (in order), collecting ready chunks without blocking."""
        while self._pending and self._pending[0].ready():
            self._done.extend(self._pending.popleft().get())
        while self._done:
            yield self._done.popleft()

    def drain(self) -> Iterator[np.ndarray]:
        """Finish everything submitted and yield the remaining label maps in order."""
        self._flush()
        while self._pending:
            self._done.extend(self._pending.popleft().get())
        yield from self.results()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def __enter__(self) -> CRFPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
