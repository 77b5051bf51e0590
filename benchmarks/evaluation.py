"""The ``eval`` suite: confusion-matrix accumulation throughput and dense-CRF images/s.

Confusion matrix: ``reproduce.metrics.ConfusionMatrix.update`` on a batch of random
predictions (int64, as ``argmax`` gives) and labels (uint8, as PNGs decode, ~5 % ignore
pixels), in megapixels per second, on CPU and on CUDA (skipped with a reason without
a GPU). Beside it, on CPU, the per-image numpy ``_fast_hist`` that most DeepLab ports
use (mask, ``np.bincount``), on the same data, as the reference path; both matrices
are checked equal.

Dense CRF: images/s of ``reproduce.crf.CRFPool`` in-process and with 1..N worker processes,
when that module and ``pydensecrf`` are installed (skipped with the reason otherwise).

Evaluation pipeline (:func:`eval_pipeline_throughput`, also a command of its own:
``python -m benchmarks.evaluation --out DIR``): side by side in one run, (a) the engine's forward alone
on pre-decoded tensors, (b) the whole ``reproduce.evaluate`` run (decode + forward + metrics) on a
generated VOC-layout folder of JPEG/PNG files, per decoding mode, (c) dense-CRF images/s with 1..N
worker processes and (d) the evaluation with the CRF against the CRF alone; rates are medians over
interleaved rounds, every pass is checked against the sequential result.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
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
            # the CRF is timed above; the full side-by-side run is python -m benchmarks.evaluation
            sides = (375, 501) if pipeline_size >= 501 else (max(1, pipeline_size // 2), pipeline_size)
            pipeline = eval_pipeline_throughput(model=pipeline_model, images=pipeline_images, size=pipeline_size,
                                                num_classes=num_classes, rounds=2, image_sizes=sides,
                                                decode_modes=("default", "processes"), crf=False, log=log)
        except Exception as exc:  # noqa: BLE001 - recorded, the suite goes on
            pipeline = failed(exc, model=pipeline_model)
    return {"confusion_matrix": cm_results, "crf": crf, "pipeline": pipeline, "timing": asdict(timing)}


# ---------------------------------------------------------------------------------------- evaluation pipeline
DECODE_MODES: dict[str, dict[str, int]] = {
    "default": {},  # reproduce.evaluate's default (reproduce.evaluate.default_prefetch: inline or thread)
    "inline": {"workers": 0, "prefetch": 0},  # decode each image right before its forward (the sequential path)
    "thread": {"workers": 0, "prefetch": 2},  # one decoding thread, 2 images ahead
    "processes": {"workers": 2, "prefetch": 2},  # 2 DataLoader worker processes
}


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        return None


def _cpu_seconds(pids: list[int] = ()) -> float:
    """CPU seconds (user + system) used so far by this process's threads, its reaped children and ``pids``."""
    t = os.times()
    total = t.user + t.system + t.children_user + t.children_system
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, ValueError, IndexError):
            pass
    return total


def _autogroup() -> str | None:
    """Linux's session autogroup of this process (``None`` where the kernel has none or it is off).

    With autogroups on, every process of one session shares that session's CPU share: on a busy
    machine, more worker processes do not get more CPU, so parallel speed-ups cannot show there.
    """
    try:
        with open("/proc/sys/kernel/sched_autogroup_enabled", encoding="ascii") as fh:
            if fh.read().strip() != "1":
                return None
        with open("/proc/self/autogroup", encoding="ascii") as fh:
            return fh.read().strip()
    except OSError:
        return None


def _median(xs: list[float]) -> float:
    return float(np.median(np.asarray(xs, dtype=np.float64)))


def eval_pipeline_throughput(*, model: str = "deeplabv3plus_resnet101", images: int = 8, size: int = 513,
                             rounds: int = 3, num_classes: int = 21, image_sizes: tuple[int, int] = (375, 501),
                             decode_modes: tuple[str, ...] = ("default", "inline", "thread", "processes"),
                             crf_max_workers: int | None = None, crf_eval_workers: int | None = None,
                             crf: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Side by side in one process: forward only, the whole evaluation, dense CRF scaling, evaluation + CRF.

    On a generated VOC-layout split (``images`` JPEG images and palette PNG labels, sides drawn from
    ``image_sizes``, i.e. VOC's ~500x375), with ``model`` (random weights) on the engine
    (:class:`reproduce.inference.Segmenter`, its defaults), ``pad`` protocol at ``size``:

    (a) ``forward``: ``Segmenter.forward`` on the pre-decoded, preprocessed, padded ``1x3xSxS`` tensors;
    (b) ``eval[mode]``: ``reproduce.evaluate.evaluate`` (decode + preprocess + pad + forward + probabilities
        at the label size + confusion matrix) with the decoding modes of :data:`DECODE_MODES` (``default``:
        as ``reproduce.evaluate`` runs without ``--prefetch``/``--workers``; ``default_decode`` says which);
    (c) ``crf[N]``: ``reproduce.crf.CRFPool`` with N = 1..``crf_max_workers`` processes (default: the usable
        cores) on the images and the model's probabilities (pools started before timing);
    (d) ``eval_crf``: the evaluation with ``--crf`` (``crf_eval_workers``, default the pool's default),
        pool start-up included, against ``crf[N]`` alone.

    Every round times each of them once, interleaved, so a change of the machine's load hits all of
    them; rates are images / seconds of a pass, reported as the median over ``rounds``, and each ratio
    both as the ratio of medians and as the median of the per-round ratios. Every pass is checked:
    the confusion matrices of all decoding modes are identical, and the CRF labels of every pool equal
    the in-process CRF's bit for bit.
    """
    import tempfile

    from reference_models import build_model
    from reproduce import crf as crf_mod
    from reproduce import evaluate as ev
    from reproduce.inference import InferenceConfig, Segmenter, predict_probs, prepare_input
    from reproduce.metrics import ConfusionMatrix
    from reproduce.synthetic import write_voc

    unknown = [m for m in decode_modes if m not in DECODE_MODES]
    if unknown:
        raise ValueError(f"unknown decode mode(s) {unknown}; known: {', '.join(DECODE_MODES)}")
    if crf and crf_skip_reason():
        log(f"CRF: skipped ({crf_skip_reason()})")
        crf = False
    load_start = _loadavg()
    config = InferenceConfig(protocol="pad", crop_size=size)
    torch.manual_seed(0)
    engine = Segmenter.from_module(build_model(model, num_classes=num_classes), device="cpu", config=config)
    max_workers = crf_max_workers or crf_mod.usable_cores() if crf else 0
    eval_workers = (crf_mod.default_workers() if crf_eval_workers is None else crf_eval_workers) if crf else 0
    record: dict[str, Any] = {"status": "ok", "model": model, "weights": "random (torch.manual_seed(0))",
                              "size": size, "protocol": "pad", "images": images, "image_sizes": list(image_sizes),
                              "rounds": rounds, "engine": engine.describe(), "loadavg_at_start": load_start}
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        ids = [f"2007_{i:06d}" for i in range(images)]
        voc = write_voc(tmp, train_ids=[], val_ids=ids, seed=0, sizes=image_sizes).parent
        dataset = ev.build_eval_dataset("voc12", voc, "val", "pad", size)
        decoded = [dataset.load(i) for i in range(images)]
        record["image_shapes"] = [list(label.shape) for _, label, _ in decoded]
        inputs = [prepare_input(image, engine.lm.preprocessing, config) for image, _, _ in decoded]
        log(f"  warm-up: {images} forwards (and the probabilities the CRF passes use)")
        probs = [predict_probs(engine.lm, x, config, label.shape)[0].numpy() for x, (_, label, _) in zip(inputs, decoded)]
        expected_plain = ConfusionMatrix(num_classes, 255)
        for p, (_, label, _) in zip(probs, decoded):
            expected_plain.update(p.argmax(0), label)
        reference: list[np.ndarray] = []
        pools: dict[int, Any] = {}
        if crf:
            log(f"  CRF in this process on {images} images (the reference labels)")
            t0 = time.perf_counter()
            reference = [crf_mod._crf_labels(image, p, crf_mod.RESNET101) for (image, _, _), p in zip(decoded, probs)]
            record["crf_in_process_images_per_s"] = images / (time.perf_counter() - t0)
            for n in range(1, max_workers + 1):
                pools[n] = crf_mod.CRFPool(n).start()
        expected_crf = ConfusionMatrix(num_classes, 255)
        for lab, (_, label, _) in zip(reference, decoded):
            expected_crf.update(lab, label)
        seconds: dict[str, list[float]] = {"forward": []}
        cpu: dict[str, list[float]] = {}
        checks: dict[str, bool] = {}
        try:
            for r in range(rounds):
                log(f"  round {r + 1}/{rounds}: forward only")
                t0, c0 = time.perf_counter(), _cpu_seconds()
                for x in inputs:
                    engine.forward(x)
                seconds["forward"].append(time.perf_counter() - t0)
                cpu.setdefault("forward", []).append(_cpu_seconds() - c0)
                log(f"    {images / seconds['forward'][-1]:.3f} images/s")
                for mode in decode_modes:
                    log(f"  round {r + 1}/{rounds}: evaluate, decoding {mode}")
                    data = ev.build_eval_dataset("voc12", voc, "val", "pad", size)
                    options = ev.EvalOptions(config=config, progress=False, **DECODE_MODES[mode])
                    t0, c0 = time.perf_counter(), _cpu_seconds()
                    out = ev.evaluate(engine, data, options)
                    seconds.setdefault(f"eval[{mode}]", []).append(time.perf_counter() - t0)
                    cpu.setdefault(f"eval[{mode}]", []).append(_cpu_seconds() - c0)
                    log(f"    {images / seconds[f'eval[{mode}]'][-1]:.3f} images/s")
                    checks[f"eval[{mode}] matrix == sequential"] = checks.get(
                        f"eval[{mode}] matrix == sequential", True) and bool(
                        out["images"] == images and np.array_equal(out["plain"].matrix, expected_plain.matrix))
                for n, pool in pools.items():
                    log(f"  round {r + 1}/{rounds}: CRF alone, {n} worker(s)")
                    t0, c0 = time.perf_counter(), _cpu_seconds(pool.worker_pids())
                    for (image, _, _), p in zip(decoded, probs):
                        pool.submit(image, p)
                    labels = list(pool.drain())
                    seconds.setdefault(f"crf[{n}]", []).append(time.perf_counter() - t0)
                    cpu.setdefault(f"crf[{n}]", []).append(_cpu_seconds(pool.worker_pids()) - c0)
                    log(f"    {images / seconds[f'crf[{n}]'][-1]:.3f} images/s")
                    checks[f"crf[{n}] labels == in-process"] = checks.get(f"crf[{n}] labels == in-process", True) and (
                        len(labels) == images and all(np.array_equal(a, b) for a, b in zip(labels, reference)))
                if crf:
                    log(f"  round {r + 1}/{rounds}: evaluate + CRF ({eval_workers} worker(s))")
                    data = ev.build_eval_dataset("voc12", voc, "val", "pad", size)
                    options = ev.EvalOptions(config=config, progress=False, crf=True, crf_workers=eval_workers)
                    t0, c0 = time.perf_counter(), _cpu_seconds()
                    out = ev.evaluate(engine, data, options)  # its pool's workers are reaped when it returns
                    seconds.setdefault("eval_crf", []).append(time.perf_counter() - t0)
                    cpu.setdefault("eval_crf", []).append(_cpu_seconds() - c0)
                    log(f"    {images / seconds['eval_crf'][-1]:.3f} images/s")
                    checks["eval_crf matrices == sequential"] = checks.get("eval_crf matrices == sequential", True) and (
                        np.array_equal(out["plain"].matrix, expected_plain.matrix)
                        and np.array_equal(out["crf"].matrix, expected_crf.matrix))
        finally:
            for pool in pools.values():
                pool.close()
    rates = {k: {"images_per_s": images / _median(v), "per_round_images_per_s": [images / x for x in v],
                 "seconds": v, "cpu_seconds": cpu[k], "cpu_seconds_per_image": _median(cpu[k]) / images,
                 "cores_used": _median([c / w for c, w in zip(cpu[k], v)])} for k, v in seconds.items()}
    ratios: dict[str, Any] = {}

    def ratio(name: str, num: str, den: str, factor: float = 1.0, target: float | None = None) -> None:
        if num not in seconds or den not in seconds:
            return
        per_round = [seconds[den][i] / seconds[num][i] / factor for i in range(len(seconds[num]))]
        ratios[name] = {"of_medians": rates[num]["images_per_s"] / rates[den]["images_per_s"] / factor,
                        "median_of_rounds": _median(per_round), "per_round": per_round, "target": target}

    for mode in decode_modes:
        ratio(f"eval[{mode}] / forward", f"eval[{mode}]", "forward", target=0.90)
    for n in pools:
        if n > 1:
            ratio(f"crf[{n}] / ({n} x crf[1])", f"crf[{n}]", "crf[1]", factor=n, target=0.80)
            # CPU cost per image with N workers vs 1: what the N-worker speed-up is on N free cores
            ratios[f"crf[{n}] CPU efficiency (CPU s per image at 1 worker / at {n})"] = {
                "of_medians": rates["crf[1]"]["cpu_seconds_per_image"] / rates[f"crf[{n}]"]["cpu_seconds_per_image"],
                "median_of_rounds": _median([a / b for a, b in zip(cpu["crf[1]"], cpu[f"crf[{n}]"])]),
                "per_round": [a / b for a, b in zip(cpu["crf[1]"], cpu[f"crf[{n}]"])], "target": None}
    if crf:
        ratio(f"eval_crf / crf[{eval_workers}]", "eval_crf", f"crf[{eval_workers}]")
        ratio("eval_crf / forward", "eval_crf", "forward")
    record.update(rates=rates, ratios=ratios, checks=checks, crf_max_workers=max_workers,
                  crf_eval_workers=eval_workers, crf_params=crf_mod.RESNET101.to_dict() if crf else None,
                  decode_modes={m: DECODE_MODES[m] for m in decode_modes}, loadavg_at_end=_loadavg(),
                  default_decode=ev.decode_mode(0, ev.default_prefetch(engine.lm.device)),
                  autogroup=_autogroup())
    # the keys the eval suite has always reported
    record.update(forward_images_per_s=rates["forward"]["images_per_s"],
                  eval_images_per_s=rates[f"eval[{decode_modes[0]}]"]["images_per_s"] if decode_modes else None,
                  eval_over_forward=(ratios[f"eval[{decode_modes[0]}] / forward"]["of_medians"]
                                     if decode_modes else None))
    return record


def format_pipeline(record: dict[str, Any]) -> str:
    """The human table of :func:`eval_pipeline_throughput`."""
    lines = [f"{record['model']} (random weights), pad {record['size']}, {record['images']} generated VOC-layout "
             f"images (JPEG + palette PNG, sides in {record['image_sizes']}), {record['rounds']} interleaved rounds; "
             f"engine: {record['engine']['precision']}, {record['engine']['memory_format']}, "
             f"{record['engine']['torch_threads']} torch threads; reproduce.evaluate's default decoding here: "
             f"{record.get('default_decode', '?')}",
             "", "| stage | images/s (median) | per round | CPU s / image | cores used |", "|---|---:|---|---:|---:|"]
    for name, r in record["rates"].items():
        lines.append(f"| {name} | {r['images_per_s']:.3f} | "
                     + ", ".join(f"{x:.3f}" for x in r["per_round_images_per_s"])
                     + f" | {r['cpu_seconds_per_image']:.2f} | {r['cores_used']:.2f} |")
    lines += ["", "| ratio | of medians | median of rounds | target |", "|---|---:|---:|---:|"]
    for name, r in record["ratios"].items():
        target = "" if r["target"] is None else f">= {r['target']:.2f}"
        lines.append(f"| {name} | {r['of_medians']:.3f} | {r['median_of_rounds']:.3f} | {target} |")
    if record.get("autogroup"):
        lines += ["", f"Linux session autogroups are on ({record['autogroup']}): all processes of this run share one "
                      "CPU share, so on a busy machine N workers get no more CPU than one (compare 'cores used')."]
    lines += ["", "| check | result |", "|---|---|"]
    lines += [f"| {k} | {'yes' if v else 'NO'} |" for k, v in record["checks"].items()]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------- command line
RERUN = "python -m benchmarks.evaluation --out benchmarks/reports/eval-pipeline-2026-12-01"


def build_parser() -> Any:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.evaluation",
        description="Evaluation pipeline benchmark: forward only vs the whole evaluation (decode + forward + "
                    "metrics), dense-CRF scaling with 1..N worker processes, and evaluation + CRF vs CRF alone, "
                    "side by side in one run (random weights, generated VOC-layout JPEG/PNG files).",
        epilog=f"example (a few minutes on a quiet 2-core CPU):\n  {RERUN}\n\n"
               "writes <out>/eval-pipeline.json (strict JSON) and <out>/README.md (tables); exit 0 ok, 1 failed, "
               "2 usage, 130 interrupted",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--model", default="deeplabv3plus_resnet101", help="registered model (default v3+ ResNet-101)")
    parser.add_argument("--size", type=int, default=513, help="pad size (default 513)")
    parser.add_argument("--images", type=int, default=8, help="generated images (default 8)")
    parser.add_argument("--image-sizes", default="375,501", help="image sides drawn from [LOW, HIGH) (default 375,501)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; rates are medians (default 3)")
    parser.add_argument("--decode", default=",".join(DECODE_MODES),
                        help=f"decoding modes to time, comma list of {', '.join(DECODE_MODES)} (default all)")
    parser.add_argument("--crf-max-workers", type=int, help="CRF pools of 1..N processes (default: usable cores)")
    parser.add_argument("--no-crf", action="store_true", help="skip the CRF measurements")
    parser.add_argument("--num-classes", type=int, default=21, help="classes (default 21, VOC)")
    return parser


def _run_cli(args: Any) -> None:
    import json
    import shlex
    import sys

    from benchmarks._common import environment
    from converters.errors import UsageError
    from converters.io import write_text_atomic

    modes = tuple(m for m in args.decode.split(",") if m)
    if any(m not in DECODE_MODES for m in modes) or not modes:
        raise UsageError(f"--decode: choose from {', '.join(DECODE_MODES)}, got {args.decode!r}")
    try:
        low, high = (int(v) for v in args.image_sizes.split(","))
    except ValueError:
        raise UsageError(f"--image-sizes: expected LOW,HIGH, got {args.image_sizes!r}") from None
    if args.images < 1 or args.rounds < 1 or args.size < 1 or not 1 <= low < high:
        raise UsageError("--images, --rounds and --size must be >= 1 and --image-sizes 1 <= LOW < HIGH")
    env = environment(torch.device("cpu"))
    record = eval_pipeline_throughput(model=args.model, images=args.images, size=args.size, rounds=args.rounds,
                                      num_classes=args.num_classes, image_sizes=(low, high), decode_modes=modes,
                                      crf_max_workers=args.crf_max_workers, crf=not args.no_crf,
                                      log=lambda m: print(m, file=sys.stderr, flush=True))
    command = "python -m benchmarks.evaluation " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    record = {"suite": "eval-pipeline", "schema": 1, "command": command, "environment": env, "pipeline": record}
    args.out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(record, indent=2, allow_nan=False) + "\n"
    write_text_atomic(args.out / "eval-pipeline.json", text)
    p = record["pipeline"]
    md = (f"# Evaluation pipeline benchmark\n\nCommand: `{command}`\n\n"
          f"CPU: {env['cpu_model']} [{env.get('cpu_isa', '?')}] ({env['cpus_usable']} usable cores), torch {env['torch']}, "
          f"{env['torch_threads']} threads; load average (1, 5, 15 min) at start {p['loadavg_at_start']}, "
          f"at end {p['loadavg_at_end']}; {env['created_utc']}, commit {(env.get('git') or {}).get('commit')}\n\n"
          + format_pipeline(p))
    write_text_atomic(args.out / "README.md", md)
    print(format_pipeline(p))
    print(f"wrote {args.out / 'eval-pipeline.json'} and {args.out / 'README.md'}")


def main(argv: list[str] | None = None) -> int:
    """The command line (see :func:`build_parser`): exit 0 ok, 1 failed, 2 usage, 130 interrupted."""
    from converters.cli import run_main

    return run_main(build_parser(), _run_cli, argv)


if __name__ == "__main__":
    raise SystemExit(main())
