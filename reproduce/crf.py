"""Dense CRF post-processing (Krähenbühl & Koltun) as DeepLab v2 applies it, via ``pydensecrf``.

Install the optional extra: ``pip install -e .[crf]`` (``pydensecrf2``, a maintained fork that
builds on current Python and installs the ``pydensecrf`` module; the PyPI ``pydensecrf`` sdist
does not build on Python 3.11).

Settings (:data:`RESNET101`): DeepLab v2 ResNet-101, as kazuto1011's ``configs/voc12.yaml`` and
a third-party code comment give them (the official per-model pages are not available):
10 mean-field iterations; Gaussian (position) kernel weight 3, xy std 1; bilateral kernel weight
4, xy std 67, rgb std 3. The unary is ``-log(softmax)`` of the logits upsampled to the image size,
and the bilateral kernel sees the **raw RGB uint8 image**, never the mean-subtracted network input.

:class:`CRFPool` runs images in worker processes (``workers`` > 0; default one per core, fewer when
the images are large, see :func:`default_workers`) and yields the results in submission order. Each
image's CRF is a pure function of (image, probabilities, settings), so the output does not depend on
the number of workers or the chunk size.

Memory, per image of ``C`` classes at ``H x W`` (:func:`item_bytes`): the probabilities are
``C x H x W x 4`` bytes (float32) plus the ``H x W x 3`` image. VOC (21 classes, 500 x 375) is ~16 MB;
COCO-Stuff 164k (182 classes, 640 x 480) is ~224 MB. The parent holds every image in flight (queued
for or running in a worker) until its labels come back, plus one pickled copy on its way to a worker:
:class:`CRFPool` bounds that by bytes (``max_bytes``, default :data:`DEFAULT_MAX_BYTES`), never less
than one image per worker. A worker running one image holds its unpickled copy and, at the peak of
``pydensecrf``'s inference, ~20 more maps of that size (the unary and its temporaries, the mean-field
buffers, and the permutohedral lattice's blur buffers with up to ``(5 + 1) x H x W`` lattice points of
``C`` values: measured 19-26x at 240 x 320 for 21-182 classes), so :data:`WORKER_ITEM_COPIES` x item
bytes + :data:`WORKER_BASE_BYTES` each: ~0.6 GB for VOC, ~5 GB for COCO-Stuff 164k.
"""

from __future__ import annotations

import collections
import contextlib
import multiprocessing
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from converters.errors import DeeplabError

__all__ = ["CRFParams", "RESNET101", "VGG16", "CRFUnavailable", "require_pydensecrf", "dense_crf", "CRFPool",
           "CRFError", "default_workers", "usable_cores", "available_memory", "item_bytes", "worker_bytes",
           "DEFAULT_MAX_BYTES"]

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


MAX_DEFAULT_WORKERS = 16
DEFAULT_MAX_BYTES = 2 << 30  # images in flight held by the parent (at least one per worker, see CRFPool)
WORKER_ITEM_COPIES = 22  # a worker's peak, in item_bytes: its copy + ~20 in pydensecrf (module docstring) + slack
WORKER_BASE_BYTES = 256 << 20  # a spawned worker's interpreter, numpy, pydensecrf (and the parent's main module)
MEMORY_FRACTION = 0.75  # of the available memory, for the CRF (in-flight budget + workers); the rest: the forward


def item_bytes(probs_shape: tuple[int, ...]) -> int:
    """Bytes of one image in flight: the ``(C, H, W)`` float32 probabilities plus the ``(H, W, 3)`` uint8 image."""
    c, h, w = probs_shape
    return c * h * w * 4 + h * w * 3


def worker_bytes(item: int) -> int:
    """Peak memory of a worker running one image of ``item`` bytes (see the module docstring)."""
    return WORKER_BASE_BYTES + WORKER_ITEM_COPIES * item


def available_memory() -> int | None:
    """Bytes of memory available to new work, or ``None`` when the OS does not say.

    Linux's ``MemAvailable`` (free memory plus reclaimable cache); else ``os.sysconf``'s free pages.
    """
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        pages, size = os.sysconf("SC_AVPHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    return pages * size if pages > 0 and size > 0 else None


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def default_workers(item: int | None = None, *, max_bytes: int = DEFAULT_MAX_BYTES,
                    available: int | None = None) -> int:
    """CRF worker processes when none are asked for: one per usable core, at most 16, fewer for large images.

    The CRF of one VOC-sized image costs 1.5-3x a ResNet-101 forward at 513 on a CPU, so beside
    the forward it is the slowest stage and gets every core; the forward's intra-op threads
    still run in the gaps (and the CRF pool blocks the forward only when it is full).

    With ``item`` (:func:`item_bytes` of a typical image) the count also fits the memory: one image
    per worker within ``max_bytes`` (the parent's in-flight budget), and ``workers x``
    :func:`worker_bytes` within :data:`MEMORY_FRACTION` of ``available`` (default
    :func:`available_memory`) less ``max_bytes``; at least 1. VOC keeps every core; COCO-Stuff 164k
    (~224 MB an image, ~5 GB a worker) gets 9 within 2 GB, 3 with 24 GB available.
    """
    workers = min(usable_cores(), MAX_DEFAULT_WORKERS)
    if item:
        workers = min(workers, max(1, max_bytes // item))
        available = available_memory() if available is None else available
        if available:
            room = int(available * MEMORY_FRACTION) - max_bytes
            workers = min(workers, max(1, room // worker_bytes(item)))
    return workers


class CRFError(DeeplabError, RuntimeError):
    """The CRF worker pool failed (a worker process died); ``str(error)`` is one line."""


def _worker_init() -> None:
    # Ctrl-C in a terminal reaches the whole process group: the parent handles it (it stops the pool
    # and exits 130); a worker dying of it on its own would print a traceback and break the pool.
    # SIGINT is blocked from birth (see _no_sigint), so one that arrives while the worker starts is dropped here.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@contextlib.contextmanager
def _no_sigint() -> Iterator[None]:
    """Block SIGINT in this thread while worker processes may be spawned (they inherit the mask).

    As CPython's resource tracker does: a Ctrl-C that reaches a worker before its initializer runs
    would otherwise kill it with a traceback. A SIGINT for this process stays pending meanwhile and
    is raised as soon as the block ends (nothing is lost).
    """
    if not hasattr(signal, "pthread_sigmask"):  # pragma: no cover - not POSIX
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class CRFPool:
    """Label maps after the CRF, computed in ``workers`` processes (0 = in this process, None = default).

    ``submit(image, probs)`` queues one image (``probs`` as float32 ``(C, H, W)``); ``results()``
    yields finished ``(H, W)`` uint8 label maps in submission order without waiting; ``submit``
    blocks (collecting the oldest chunk) while the images in flight exceed ``max_bytes`` (default
    :data:`DEFAULT_MAX_BYTES`; never fewer than one chunk per worker, so every worker stays busy)
    or more than ``max_pending`` chunks (default ``2 x workers``) are in flight: memory stays
    bounded on a whole dataset of any image size and the producer runs at most that far ahead.
    ``workers=None`` is :func:`default_workers` for images of ``item_bytes`` (a hint, e.g. the
    first image's :func:`item_bytes`), or, without the hint, for the first image submitted (the
    workers then start on that first ``submit``). Call ``drain()`` at the end for the rest. ``close()`` (or leaving the ``with`` block) stops
    the workers: at once (terminated) when work is still in flight, e.g. after an error or Ctrl-C.
    The workers ignore SIGINT (the parent stops them); a worker that dies (killed, out of memory)
    raises :class:`CRFError` instead of a hang.

    Each image's CRF is a pure function of (image, probabilities, settings), so the labels do not
    depend on ``workers`` or ``chunk_size`` (bit for bit; ``tests/test_crf.py``).
    """

    def __init__(self, workers: int | None = None, *, params: CRFParams = RESNET101, chunk_size: int = 1,
                 max_pending: int | None = None, max_bytes: int | None = None, item_bytes: int | None = None) -> None:
        require_pydensecrf()  # fail before any inference work
        max_bytes = DEFAULT_MAX_BYTES if max_bytes is None else max_bytes
        if (workers is not None and workers < 0) or chunk_size < 1 or max_bytes < 0:
            raise ValueError(f"need workers >= 0, chunk_size >= 1 and max_bytes >= 0, got {workers}, {chunk_size}, "
                             f"{max_bytes}")
        self.params, self.chunk_size, self.max_bytes = params, chunk_size, max_bytes
        self._max_pending = max_pending
        self.workers: int | None = None
        self.max_pending = 0
        self._pool: ProcessPoolExecutor | None = None
        self._chunk: list[tuple[np.ndarray, np.ndarray]] = []
        self._pending: collections.deque[tuple[Future, int]] = collections.deque()  # (future, bytes of its chunk)
        self.pending_bytes = 0  # bytes of the images submitted to the workers and not collected yet
        self._done: collections.deque[np.ndarray] = collections.deque()
        if workers is not None or item_bytes:
            self._start(default_workers(item_bytes, max_bytes=max_bytes) if workers is None else workers)

    def _start(self, workers: int) -> None:
        self.workers = workers
        self.max_pending = self._max_pending or max(2 * workers, 1)
        if workers > 0:
            # spawn, not fork: forking a process that holds torch/OpenMP threads can deadlock. A spawned
            # worker imports the parent's main module (torch, for reproduce.evaluate): ~1 s of CPU per worker
            # once; warm() starts them beside the first forward.
            self._pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init)

    def warm(self) -> CRFPool:
        """Start the worker processes in the background (without waiting for them); returns ``self``.

        A pool still waiting for its first image to choose its size (``workers=None`` without
        ``item_bytes``) starts on that image instead.
        """
        if self._pool is not None and self.workers and not self.worker_pids():
            with _no_sigint():  # the pool spawns its workers on submit
                for _ in range(self.workers):
                    self._pool.submit(_noop)
        return self

    def start(self) -> CRFPool:
        """Start every worker process and wait until they run (they start on first use otherwise)."""
        for _ in range(3):  # workers spawn on demand: a round of short tasks brings them up, usually all at once
            if self._pool is None or not self.workers or len(self.worker_pids()) >= self.workers:
                break
            with _no_sigint():
                futures = [self._pool.submit(_noop) for _ in range(self.workers)]
            for future in futures:
                self._collect(future)
        return self

    def submit(self, image_rgb: np.ndarray, probs: np.ndarray) -> None:
        image_rgb, probs = np.ascontiguousarray(image_rgb), np.ascontiguousarray(probs, dtype=np.float32)
        if self.workers is None:
            self._start(default_workers(image_rgb.nbytes + probs.nbytes, max_bytes=self.max_bytes))
        self._chunk.append((image_rgb, probs))
        if len(self._chunk) >= self.chunk_size:
            self._flush()

    def _flush(self) -> None:
        if not self._chunk:
            return
        chunk, self._chunk = self._chunk, []
        if self._pool is None:
            self._done.extend(_run_chunk(chunk, self.params))
            return
        size = sum(image.nbytes + probs.nbytes for image, probs in chunk)
        try:
            with _no_sigint():
                self._pending.append((self._pool.submit(_run_chunk, chunk, self.params), size))
        except BrokenProcessPool:
            raise CRFError(_BROKEN) from None
        self.pending_bytes += size
        # over the budget: wait for the oldest chunk, but always leave one chunk per worker in flight
        while len(self._pending) > self.max_pending or (self.pending_bytes > self.max_bytes
                                                        and len(self._pending) > (self.workers or 1)):
            self._collect_oldest()

    def _collect_oldest(self) -> None:
        future, size = self._pending[0]
        labels = self._collect(future)
        self._pending.popleft()
        self.pending_bytes -= size
        self._done.extend(labels)

    @staticmethod
    def _collect(future: Future) -> Any:
        try:
            return future.result()
        except BrokenProcessPool:
            raise CRFError(_BROKEN) from None

    def results(self) -> Iterator[np.ndarray]:
        """Label maps finished so far (in order), collecting finished chunks without blocking."""
        while self._pending and self._pending[0][0].done():
            self._collect_oldest()
        while self._done:
            yield self._done.popleft()

    def drain(self) -> Iterator[np.ndarray]:
        """Finish everything submitted and yield the remaining label maps in order."""
        self._flush()
        while self._pending:
            self._collect_oldest()
        yield from self.results()

    def worker_pids(self) -> list[int]:
        """Process ids of the running workers (empty in-process or after ``close``)."""
        procs = getattr(self._pool, "_processes", None) or {}
        return sorted(p.pid for p in procs.values() if p.pid is not None)

    def close(self) -> None:
        """Stop the workers: a clean shutdown when nothing is in flight, else terminate them at once."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        busy = any(not f.done() for f, _ in self._pending)
        self._pending.clear()
        self.pending_bytes = 0
        self._chunk.clear()
        if not busy:
            pool.shutdown(wait=True)
            return
        processes = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in processes:
            if proc.is_alive():
                proc.terminate()
        for proc in processes:
            proc.join(timeout=10)
            if proc.is_alive():  # pragma: no cover - SIGTERM ignored
                proc.kill()
                proc.join(timeout=10)

    def __enter__(self) -> CRFPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _noop() -> None:
    time.sleep(0.05)


_BROKEN = ("a dense-CRF worker process died unexpectedly (killed, or out of memory: try fewer "
           "--crf-workers)")
