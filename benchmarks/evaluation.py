"""The ``eval`` suite: confusion-matrix accumulation throughput and dense-CRF images/s.

Confusion matrix: ``reproduce.metrics.ConfusionMatrix.update`` on a batch of random
predictions (int64, as ``argmax`` gives) and labels (uint8, as PNGs decode, ~5 % ignore
pixels), in megapixels per second, on CPU and on CUDA (skipped with a reason without
a GPU). Beside it, on CPU, the per-image numpy ``_fast_hist`` that most DeepLab ports
use (mask, ``np.bincount``), on the same data, as the reference path; both matrices
are checked equal.

Dense CRF: images/s of ``reproduce.crf.CRFPool`` in-process and with 1..N worker processes,
when that module and ``pydensecrf`` are installed (skipped with the reason otherwise).

Evaluation pipeline (:func:`eval_pipeline_throughput`): images/s of a whole ``reproduce.evaluate``
run (decode + forward + metrics) against the engine's forward alone, on generated VOC-sized JPEGs.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from benchmarks._common import failed, skipped, summarize, synchronize, time_iterations
from benchmarks.inference import Timing

IGNORE_INDEX = 255


def _fast_hist(label: np.ndarray, pred: np.ndarray, n_class: int) -> np.ndarray:
    """kazuto1011 / jfzhang95 ``_fast_hist``: one image's confusion matrix with numpy."""
    mask = (label >= 0) & (label < n_class)
    return np.bincount(n_class * label[mask].astype(int) + pred[mask], minlength=n_class**2).reshape(n_class, n_class)


def _random_batch(batch: int, size: int, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    pred = torch.randint(0, num_classes, (batch, size, size), generator=gen, dtype=torch.int64)
    label = torch.randint(0, num_classes, (batch, size, size), generator=gen).to(torch.uint8)
    label[torch.rand(label.shape, generator=gen) < 0.05] = IGNORE_INDEX
    return pred, label


def confusion_matrix_throughput(device: torch.device, *, batch: int, size: int, num_classes: int,
                                timing: Timing) -> dict[str, Any]:
    """Megapixels/s of ``ConfusionMatrix.update`` on ``device`` (tensors already on the device)."""
    from reproduce.metrics import ConfusionMatrix

    pred, label = _random_batch(batch, size, num_classes)
    pred, label = pred.to(device), label.to(device)
    cm = ConfusionMatrix(num_classes, IGNORE_INDEX)
    samples = time_iterations(lambda: cm.update(pred, label), device, warmup=timing.warmup, repeats=timing.repeats,
                              min_seconds=min(timing.min_seconds, 2.0), max_seconds=timing.max_seconds)
    stats = summarize(samples)
    mpix = batch * size * size / 1e6
    return {"implementation": "reproduce.metrics.ConfusionMatrix.update", "device": device.type, "status": "ok",
            "batch": batch, "size": size, "num_classes": num_classes, "megapixels_per_update": mpix,
            "latency": stats, "megapixels_per_s": mpix / stats["median_s"]}


def fast_hist_throughput(*, batch: int, size: int, num_classes: int, timing: Timing) -> dict[str, Any]:
    """The numpy reference on the same data, one image at a time; checks it agrees with ours."""
    from reproduce.metrics import ConfusionMatrix

    pred_t, label_t = _random_batch(batch, size, num_classes)
    pred, label = pred_t.numpy(), label_t.numpy()
    hist = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update() -> None:
        for i in range(batch):
            hist[...] += _fast_hist(label[i].ravel(), pred[i].ravel(), num_classes)

    samples = time_iterations(update, torch.device("cpu"), warmup=timing.warmup, repeats=timing.repeats,
                              min_seconds=min(timing.min_seconds, 2.0), max_seconds=timing.max_seconds)
    once = np.zeros_like(hist)
    for i in range(batch):
        once += _fast_hist(label[i].ravel(), pred[i].ravel(), num_classes)
    cm = ConfusionMatrix(num_classes, IGNORE_INDEX)
    cm.update(pred_t, label_t)
    stats = summarize(samples)
    mpix = batch * size * size / 1e6
    return {"implementation": "numpy _fast_hist per image (kazuto1011/jfzhang95), reference", "device": "cpu",
            "status": "ok", "batch": batch, "size": size, "num_classes": num_classes,
            "megapixels_per_update": mpix, "latency": stats, "megapixels_per_s": mpix / stats["median_s"],
            "equals_ours": bool(np.array_equal(once, cm.matrix))}


def crf_skip_reason() -> str | None:
    """Why the CRF benchmark cannot run here (``None`` if it can)."""
    if importlib.util.find_spec("pydensecrf") is None:
        return "pydensecrf is not installed (pip install '.[crf]')"
    return None


def crf_scaling(*, images: int, size: int, num_classes: int, max_workers: int,
                log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Images/s of ``reproduce.crf.CRFPool`` (DeepLab v2 ResNet-101 settings) with 0..``max_workers`` processes.

    ``workers=0`` is the in-process path. Each pool is started and warmed up (one image per
    worker, so the spawned children have imported pydensecrf) before the timed
    ``submit``/``drain`` of ``images`` random images; the start-up is reported separately.
    """
    crf = importlib.import_module("reproduce.crf")
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (images, size, size, 3), dtype=np.uint8)
    logits = rng.standard_normal((images, num_classes, size, size)).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    out: list[dict[str, Any]] = []
    reference: list[np.ndarray] | None = None
    for workers in range(0, max_workers + 1):
        log(f"  CRF, {workers} worker process(es){' (in-process)' if workers == 0 else ''}")
        try:
            t0 = time.perf_counter()
            with crf.CRFPool(workers, chunk_size=1) as pool:
                for _ in range(max(workers, 1)):
                    pool.submit(imgs[0], probs[0])
                list(pool.drain())
                startup = time.perf_counter() - t0
                t1 = time.perf_counter()
                for i in range(images):
                    pool.submit(imgs[i], probs[i])
                labels = list(pool.drain())
                seconds = time.perf_counter() - t1
        except Exception as exc:  # noqa: BLE001
            out.append(failed(exc, workers=workers))
            continue
        if reference is None:
            reference = labels
        same = len(labels) == len(reference) and all(np.array_equal(a, b) for a, b in zip(labels, reference))
        out.append({"workers": workers, "status": "ok", "images": images, "size": size, "num_classes": num_classes,
                    "seconds": seconds, "startup_seconds": startup, "images_per_s": images / seconds,
                    "same_labels_as_first": bool(same), "params": crf.RESNET101.to_dict()})
        log(f"    {images / seconds:.2f} images/s")
    return out


def run_eval(devices: list[torch.device], timing: Timing, *, batch: int, size: int, num_classes: int,
             crf_images: int, crf_size: int, crf_workers: int, pipeline_model: str = "deeplabv3plus_resnet101",
             pipeline_images: int = 0, pipeline_size: int = 513,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """The suite's JSON body (without the environment)."""
    cm_results: list[dict[str, Any]] = []
    for device in devices:
        if device.type == "cuda" and not torch.cuda.is_available():
            cm_results.append(skipped("no CUDA device (torch.cuda.is_available() is False)", device="cuda",
                                      implementation="reproduce.metrics.ConfusionMatrix.update"))
            continue
        log(f"confusion matrix on {device.type}")
        try:
            cm_results.append(confusion_matrix_throughput(device, batch=batch, size=size, num_classes=num_classes,
                                                          timing=timing))
            synchronize(device)
        except Exception as exc:  # noqa: BLE001
            cm_results.append(failed(exc, device=device.type))
    log("confusion matrix, numpy reference")
    cm_results.append(fast_hist_throughput(batch=batch, size=size, num_classes=num_classes, timing=timing))

    reason = crf_skip_reason()
    if reason:
        log(f"CRF: skipped ({reason})")
        crf: list[dict[str, Any]] = [skipped(reason)]
    else:
        crf = crf_scaling(images=crf_images, size=crf_size, num_classes=num_classes,
                          max_workers=crf_workers or os.cpu_count() or 1, log=log)
    pipeline: dict[str, Any] | None = None
    if pipeline_images:
        log(f"evaluation pipeline: {pipeline_model} at {pipeline_size}, {pipeline_images} images")
        try:
            pipeline = eval_pipeline_throughput(model=pipeline_model, images=pipeline_images, size=pipeline_size,
                                                num_classes=num_classes, log=log)
        except Exception as exc:  # noqa: BLE001 - recorded, the suite goes on
            pipeline = failed(exc, model=pipeline_model)
    return {"confusion_matrix": cm_results, "crf": crf, "pipeline": pipeline, "timing": asdict(timing)}


def eval_pipeline_throughput(*, model: str = "deeplabv3plus_resnet101", images: int = 8, size: int = 513,
                             workers: int = 2, rounds: int = 2, num_classes: int = 21,
                             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Images/s of a whole evaluation (decode + forward + metrics) against the engine's forward alone.

    A generated VOC split of ``images`` JPEGs of 375-500 px (VOC's sizes) is evaluated with
    ``reproduce.evaluate.evaluate`` on the engine, ``pad`` protocol at ``size`` (decoding in
    ``workers`` DataLoader processes); the forward-only rate is ``Segmenter.forward`` on ``images``
    padded ``size x size`` inputs. The two are run alternately ``rounds`` times and compared by their
    best round (a shared machine slows single rounds). Pool start-up (DataLoader workers) is included
    in the evaluation's time, as a user sees it.
    """
    import tempfile

    from reference_models import build_model
    from reproduce import evaluate as ev
    from reproduce.inference import InferenceConfig, Segmenter
    from reproduce.synthetic import write_voc

    config = InferenceConfig(protocol="pad", crop_size=size)
    torch.manual_seed(0)
    engine = Segmenter.from_module(build_model(model, num_classes=num_classes), device="cpu", config=config)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    engine.forward(x)  # warm-up
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        ids = [f"2007_{i:06d}" for i in range(images)]
        voc = write_voc(tmp, train_ids=[], val_ids=ids, seed=0, sizes=(375, 500)).parent
        forward_s, eval_s = [], []
        for r in range(rounds):
            log(f"  round {r + 1}: forward only, {images} images")
            t0 = time.perf_counter()
            for _ in range(images):
                engine.forward(x)
            forward_s.append(time.perf_counter() - t0)
            log(f"  round {r + 1}: evaluate (decode in {workers} workers + forward + metrics), {images} images")
            dataset = ev.build_eval_dataset("voc12", voc, "val", "pad", size)
            t0 = time.perf_counter()
            out = ev.evaluate(engine, dataset, ev.EvalOptions(config=config, workers=workers, progress=False))
            eval_s.append(time.perf_counter() - t0)
            assert out["images"] == images
    fwd, evl = images / min(forward_s), images / min(eval_s)
    log(f"    forward only {fwd:.3f} images/s, evaluation {evl:.3f} images/s ({evl / fwd:.3f}x)")
    return {"status": "ok", "model": model, "size": size, "protocol": "pad", "images": images, "workers": workers,
            "rounds": rounds, "forward_seconds": forward_s, "eval_seconds": eval_s,
            "forward_images_per_s": fwd, "eval_images_per_s": evl, "eval_over_forward": evl / fwd,
            "engine": engine.describe()}
