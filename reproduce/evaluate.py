"""Evaluate converted DeepLab weights on a dataset split, the official way, and compare with the paper.

Examples (from the repository root)::

  # DeepLab v2 ResNet-101 (MSC) on VOC 2012 val, padded to 513 as the Caffe test net; with and without CRF
  python -m reproduce.evaluate --weights weights/deeplabv2_resnet101_msc_voc12.pth \\
      --dataset voc12 --root data/VOCdevkit --split val --crf --crf-workers 2 \\
      --compare-to 'deeplab_v2_resnet101_voc12_val[5]' --compare-to 'deeplab_v2_resnet101_voc12_val[6]' \\
      --out results/voc_v2

  # DeepLab v3+ Xception-65, OS 8, scales 0.5:0.25:1.75 + flip
  python -m reproduce.evaluate --model deeplabv3plus_xception65 --weights weights/xception65_voc.pth \\
      --output-stride 8 --scales 0.5:0.25:1.75 --flip --dataset voc12 --root data/VOCdevkit --split val \\
      --compare-to 'deeplab_v3plus_xception65_voc12_val[3]' --out results/voc_v3plus_os8_ms_flip

  # COCO-Stuff 10k, images and labels pre-warped to 513x513 (the official ResNet-101 protocol)
  python -m reproduce.evaluate --weights cocostuff10k.pth --dataset cocostuff10k --root data/cocostuff-10k-v1.1 \\
      --split test --protocol warp --compare-to 'deeplab_v2_cocostuff10k[0]' --out results/cocostuff10k

Protocols (``--protocol``): ``pad`` (default; bottom/right pad to ``--crop-size`` 513 with the mean,
label pixels outside the image ignored, i.e. cropped back), ``whole`` (the image as it is), and
``warp`` (COCO-Stuff 10k: images and labels resized to 513x513 before anything else). See
:mod:`reproduce.inference` for scales, flips and resizing.

Metrics come from one confusion matrix accumulated over the whole split
(:class:`reproduce.metrics.ConfusionMatrix`); with ``--crf`` the same pass fills a second matrix
from the CRF output, so both rows are reported from one inference run. Results: ``<out>/result.json``
(everything, including the confusion matrices) and ``<out>/result.md`` (published vs ours vs the
difference). A ``--compare-to`` row whose settings say ``crf: true`` is compared with the CRF
result, any other row with the plain one.

The forward runs on :class:`reproduce.inference.Segmenter` (BatchNorm folded, channels_last,
``torch.compile`` for long fixed-size runs with ``--compile auto``) at the reference implementations'
precision, IEEE fp32 (TF32 off on CUDA), on every machine unless ``--precision`` asks for another
(``auto``, ``tf32``, ``bf16``, ``fp16``): ``result.json`` (``run.precision``) and ``result.md`` say which ran.
Decoding (image and label files, preprocessing, padding) runs right before each forward where
the forward keeps every CPU core busy (a CPU run), else ``--prefetch`` images ahead in a thread (or in ``--workers`` processes); the forward and the metrics (one bincount per
image into the confusion matrix) run in the main thread, and the dense CRF in ``--crf-workers``
processes (default one per core, fewer when one image's CRF memory would not
fit; see :mod:`reproduce.crf`) that take each image's probabilities as the forward produces them,
at most ``--crf-memory-mb`` of them in flight; results are collected in order, so every setting
gives the same matrices.

``--on-error skip`` skips (and counts, in ``result.json``) images or labels that are missing or
cannot be read, naming each missing file once in a ``warning:`` line; the default stops at the
first with a one-line error naming it. Ctrl-C stops the decoding thread and the CRF workers and
exits 130.
``result.json`` is strict JSON: an undefined score (a class absent from the split) is ``null``.

Exit codes: 0 done, 1 bad input (one line on stderr), 2 usage error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import math
import queue
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from converters.cli import program_name, run_main
from reproduce.inference import (
    COMPILE_MIN_IMAGES,
    EVAL_PRECISION,
    MEMORY_FORMAT_HELP,
    MEMORY_FORMATS,
    PRECISION_HELP,
    PRECISIONS,
    PROTOCOLS,
    InferenceConfig,
    InferenceError,
    LoadedModel,
    Segmenter,
    labels_of,
    parse_scales,
    predict_labels,
    predict_probs,
    prepare_input,
    resolve_device,
)

__all__ = ["EvalOptions", "evaluate", "resolve_rows", "write_results", "main"]

ALL_PROTOCOLS = (*PROTOCOLS, "warp")


@dataclass(frozen=True)
class _Prepare:
    """DataLoader transform (runs in the workers): decode -> preprocess -> pad. Picklable."""

    preprocessing: Any
    config: InferenceConfig

    def __call__(self, image: np.ndarray, label: np.ndarray, meta: dict) -> dict[str, Any]:
        return {"input": prepare_input(image, self.preprocessing, self.config), "image": image, "label": label,
                "meta": meta}


def _first(batch: list) -> Any:
    return batch[0]


class _Guarded:
    """The dataset with read failures turned into ``{"error": message}`` samples (counted or raised in order).

    The base datasets' own ``on_error="skip"`` substitutes the next sample (right for training, where
    the draw order must not change); an evaluation must neither count a sample twice nor stop inside
    a worker process with a wrapped traceback, so failures travel to the main process as data.
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        from reproduce.datasets import DatasetError

        try:
            return self.dataset[index]
        except DatasetError as e:
            return {"error": " ".join(str(e).split())}


class _Prefetcher:
    """Yields ``data[0], data[1], ...`` decoded by one background thread up to ``depth`` items ahead.

    Decoding (PIL, numpy) releases the GIL for most of its time, so on a small CPU it fills the
    gaps of the forward's intra-op threads without the start-up, pickling and memory of worker
    processes. An exception raised while decoding is raised again by the iterator at that
    position, in order. ``close()`` stops the thread (it never blocks the interpreter's exit).
    """

    def __init__(self, data: Any, depth: int) -> None:
        self.data = data
        self._queue: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="eval-decode", daemon=True)
        self._thread.start()

    def __len__(self) -> int:
        return len(self.data)

    def _put(self, item: tuple[str, Any]) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for index in range(len(self.data)):
                if not self._put(("item", self.data[index])):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            self._put(("raise", exc))
            return
        self._put(("end", None))

    def __iter__(self) -> Iterator[Any]:
        while True:
            kind, value = self._queue.get()
            if kind == "end":
                return
            if kind == "raise":
                raise value
            yield value

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


@dataclass
class EvalOptions:
    """Everything :func:`evaluate` needs besides the model and the dataset."""

    config: InferenceConfig
    crf: bool = False
    crf_workers: int | None = None  # None: reproduce.crf.default_workers() for the first image; 0: in this process
    crf_max_bytes: int | None = None  # images in flight to the CRF workers; None: reproduce.crf.DEFAULT_MAX_BYTES
    workers: int = 0  # decoding processes (DataLoader workers); 0: decoding in this process
    prefetch: int | None = None  # images decoded ahead; 0: each right before its forward; None: default_prefetch()
    classes: str = "present_in_gt"
    limit: int | None = None  # the first N images (N >= 1); None: the whole split
    progress: bool = True
    on_error: str = "error"  # "skip": unreadable samples are skipped and counted


PREFETCH_AHEAD = 2  # images a decoding thread (or the DataLoader workers) keeps ready


def default_prefetch(device: torch.device | str, threads: int | None = None) -> int:
    """Images decoded ahead of the forward when none are asked for: 0 (each image decoded right
    before its forward, in the main thread) where the forward runs on the CPU with a thread on every
    usable core, :data:`PREFETCH_AHEAD` (a decoding thread) elsewhere (CUDA, or torch threads left free).

    A decoding thread beside a forward that already keeps every core busy only takes turns with it:
    on 2-core CPUs (AVX2 EPYC, AVX-512 Xeon with AMX) decoding in line measured 0.90-0.98 of the
    forward-only rate, the thread 0.80-0.94 (``benchmarks/reports/eval-pipeline-*``).
    """
    from reproduce.crf import usable_cores

    if torch.device(device).type != "cpu":
        return PREFETCH_AHEAD
    threads = torch.get_num_threads() if threads is None else threads
    return 0 if threads >= usable_cores() else PREFETCH_AHEAD


def decode_mode(workers: int, prefetch: int) -> str:
    """How images are decoded, in words (the ``pipeline`` record of ``result.json``)."""
    if workers > 0:
        return f"{workers} processes"
    return f"thread, {prefetch} ahead" if prefetch > 0 else "inline"


def build_eval_dataset(name: str, root: str | Path, split: str, protocol: str, crop_size: int,
                       on_error: str = "error", reader_kwargs: dict[str, Any] | None = None) -> Any:
    """The reader for ``name``; ``protocol="warp"`` turns on COCO-Stuff 10k's pre-warp.

    ``on_error="skip"``: a sample whose image or label file is missing is left out of the reader
    (its one-line message in ``dataset.skipped``; :func:`evaluate` counts it as skipped); the
    default raises :class:`~reproduce.datasets.DatasetError` naming the first missing file.
    ``reader_kwargs``: further reader arguments (e.g. the ``folder`` reader's ``split_dir``).
    """
    from reproduce.datasets import build_dataset

    kwargs: dict[str, Any] = {**(reader_kwargs or {}), "on_error": on_error}
    if protocol == "warp":
        if name != "cocostuff10k":
            raise InferenceError(f"--protocol warp is the COCO-Stuff 10k protocol; dataset {name!r} has no pre-warp")
        kwargs["warp_size"] = crop_size
    return build_dataset(name, root=root, split=split, **kwargs)


def _within(dataset: Any, sample_id: str, limit: int | None) -> bool:
    """Whether ``sample_id`` is among the first ``limit`` samples of the split's list (all if None)."""
    if limit is None:
        return True
    places = getattr(dataset, "listed_positions", {}).get(sample_id)
    return not places or places[0] < limit


def _dropped(dataset: Any, limit: int | None = None) -> list[str]:
    """Messages of the samples ``dataset`` left out before the run (missing files under ``on_error="skip"``),
    among the first ``limit`` of the split's list."""
    skipped = getattr(dataset, "skipped", None)
    if not skipped:
        return []
    kept = {ref.id for ref in getattr(dataset, "refs", ())}
    return [message for sample_id, message in skipped.items()
            if sample_id not in kept and _within(dataset, sample_id, limit)]


def _limited(dataset: Any, limit: int | None) -> int:
    """How many of the reader's samples (in order) the run takes: those among the first ``limit`` samples of
    the split's list, so that samples left out for missing files count toward ``limit`` (every sample if None)."""
    if limit is None:
        return len(dataset)
    refs = getattr(dataset, "refs", None)
    positions = getattr(dataset, "listed_positions", None)
    if refs is None or positions is None:
        return min(limit, len(dataset))
    # the k-th ref of an id is the k-th line naming it (refs keep the list's order)
    seen: dict[str, int] = {}
    taken = 0
    for ref in refs:
        k = seen[ref.id] = seen.get(ref.id, -1) + 1
        places = positions.get(ref.id)
        if places is None or places[min(k, len(places) - 1)] < limit:
            taken += 1
    return min(limit, taken)


def evaluate(model: LoadedModel | Segmenter, dataset: Any, options: EvalOptions) -> dict[str, Any]:
    """Run ``model`` over ``dataset``; return ``{"plain": ConfusionMatrix, "crf": ConfusionMatrix | None, ...}``
    (``"crf_workers"``: the CRF worker processes used, ``None`` without CRF; ``"decode"`` and
    ``"prefetch"``: how images were decoded, see :func:`default_prefetch`).

    ``model`` is a :class:`~reproduce.inference.Segmenter` (the engine; a plain
    :class:`~reproduce.inference.LoadedModel` runs as it is, eager fp32). ``dataset`` yields
    ``(image, label, meta)`` (the :mod:`reproduce.datasets` contract). Predictions and labels are
    compared at the label's size; nothing is averaged per image. A Segmenter made with
    ``compile="auto"`` compiles when the run is long and the inputs have one shape (``pad``, ``warp``).
    Samples the dataset left out before the run (missing files, ``on_error="skip"``) are counted
    in ``"skipped"`` with ``options.on_error="skip"`` and raised (the first) with ``"error"``.
    """
    from torch.utils.data import DataLoader, Subset

    from reproduce.metrics import ConfusionMatrix

    lm = model.lm if isinstance(model, Segmenter) else model
    if options.on_error not in ("error", "skip"):
        raise InferenceError(f"on_error must be 'error' or 'skip', got {options.on_error!r}")
    if options.limit is not None and options.limit < 1:
        raise InferenceError(f"limit must be >= 1 (or None for the whole split), got {options.limit}")
    if dataset.num_classes != lm.num_classes:
        raise InferenceError(
            f"the model predicts {lm.num_classes} classes but {dataset.name} has {dataset.num_classes}"
        )
    # Inference sees "whole" after the warp: the warped image is the crop size already.
    config = options.config
    dataset.transform = _Prepare(lm.preprocessing, config)
    skipped: list[str] = _dropped(dataset, options.limit)
    if skipped and options.on_error == "error":
        raise InferenceError(skipped[0])
    if hasattr(dataset, "on_error"):
        dataset.on_error = "error"  # never substitute another sample in an evaluation (see _Guarded)
    # --limit N: the first N samples of the split's list; those left out for missing files are among them
    data = Subset(dataset, range(_limited(dataset, options.limit))) if options.limit else dataset
    # pad and COCO-Stuff 10k's warp give one input shape (pad: but for images larger than the crop, which run
    # eagerly: the engine compiles only the first image's shapes)
    fixed_shape = config.protocol == "pad" or getattr(dataset, "warp_size", None) is not None
    if isinstance(model, Segmenter) and model.want_compile(len(data), fixed_shape=fixed_shape):
        model.enable_compile(len(config.scales))
    data = _Guarded(data)
    prefetch = options.prefetch
    if prefetch is None:
        prefetch = PREFETCH_AHEAD if options.workers > 0 else default_prefetch(lm.device)
    waiting: deque[np.ndarray] = deque()  # ground truth of images queued in the CRF pool, in order
    t0 = time.perf_counter()
    count, oversize = 0, 0
    # Everything that starts a thread or processes lives inside the try, so any failure stops them all.
    loader: Any = None
    batches: Any = None  # the loader's iterator (holds the DataLoader workers)
    bar: Any = None
    pool = None
    try:
        plain = ConfusionMatrix(lm.num_classes, dataset.ignore_index)
        refined = ConfusionMatrix(lm.num_classes, dataset.ignore_index) if options.crf else None
        if options.workers > 0:
            loader = DataLoader(data, batch_size=1, shuffle=False, num_workers=options.workers, collate_fn=_first,
                                pin_memory=lm.device.type == "cuda", persistent_workers=False,
                                prefetch_factor=max(1, math.ceil(max(prefetch, 1) / options.workers)))
        elif prefetch > 0:
            loader = _Prefetcher(data, prefetch)
        else:
            loader = DataLoader(data, batch_size=1, shuffle=False, num_workers=0, collate_fn=_first)
        batches = iter(loader)
        iterator: Any = batches
        if options.progress:
            from tqdm import tqdm

            iterator = bar = tqdm(batches, total=len(data), desc=f"eval {dataset.name} {dataset.split}",
                                  unit="img", dynamic_ncols=True)
        for sample in iterator:
            if "error" in sample:
                if options.on_error == "skip":
                    skipped.append(sample["error"])
                    continue
                raise InferenceError(sample["error"])
            label = sample["label"]
            h, w = label.shape
            if options.crf and pool is None:
                from reproduce.crf import CRFPool, item_bytes

                # sized for the first image (the default worker count fits its memory); the workers start
                # beside its forward
                pool = CRFPool(options.crf_workers, max_bytes=options.crf_max_bytes,
                               item_bytes=item_bytes((lm.num_classes, h, w))).warm()
            if config.protocol == "pad" and max(h, w) > config.crop_size:
                oversize += 1
            if pool is None:  # the labels only: no softmax after a single forward
                pred = predict_labels(lm, sample["input"], config, (h, w))
                plain.update(pred, torch.from_numpy(label).to(pred.device))
            else:
                probs = predict_probs(lm, sample["input"], config, (h, w))[0]
                plain.update(labels_of(probs), torch.from_numpy(label).to(probs.device))
                pool.submit(sample["image"], probs.cpu().numpy())
                waiting.append(label)
                for crf_label in pool.results():
                    refined.update(crf_label, waiting.popleft())
            count += 1
        if pool is not None:
            for crf_label in pool.drain():
                refined.update(crf_label, waiting.popleft())
    finally:
        if bar is not None:
            bar.close()
        if isinstance(loader, _Prefetcher):
            loader.close()
        # The DataLoader's iterator stops its worker processes when collected; stop them now instead.
        shutdown = getattr(batches, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        if pool is not None:
            pool.close()
    return {"plain": plain, "crf": refined, "images": count, "oversize_images": oversize,
            "skipped": skipped, "seconds": time.perf_counter() - t0,
            "crf_workers": pool.workers if pool is not None else (options.crf_workers if options.crf else None),
            "decode": decode_mode(options.workers, prefetch), "prefetch": prefetch}


# ---------------------------------------------------------------------------------------- comparison
_ROW_ID = re.compile(r"^(?P<table>[\w.-]+)\[(?P<index>\d+)\]$")


def _parse_value(text: str) -> Any:
    from reproduce.yamlfile import YAMLFileError, parse_yaml

    try:
        return parse_yaml(text, f"--compare-to value {text!r}")
    except YAMLFileError as e:
        raise InferenceError(str(e)) from None


def resolve_rows(specs: Sequence[str]) -> list[Any]:
    """``TABLE[INDEX]`` (the id the tables print) or ``TABLE:key=value,key=value`` -> published rows."""
    from reproduce.tables import find_row, load_tables

    rows = []
    for spec in specs:
        m = _ROW_ID.match(spec.strip())
        if m:
            table = load_tables().get(m["table"])
            if table is None:
                raise InferenceError(f"unknown table {m['table']!r}; tables: {', '.join(sorted(load_tables()))}")
            index = int(m["index"])
            if index >= len(table.rows):
                raise InferenceError(f"{spec}: table {table.name} has rows 0..{len(table.rows) - 1}")
            rows.append(table.rows[index])
            continue
        name, _, query = spec.partition(":")
        settings = {}
        for part in filter(None, query.split(",")):
            key, eq, value = part.partition("=")
            if not eq:
                raise InferenceError(f"--compare-to {spec!r}: expected key=value, got {part!r}")
            settings[key.strip()] = _parse_value(value.strip())
        try:
            rows.append(find_row(name.strip(), **settings))
        except (KeyError, LookupError) as e:
            raise InferenceError(str(e).strip("'\"")) from None
    return rows


def _scores(cm: Any, classes: str) -> dict[str, Any]:
    s = cm.compute(classes=classes)
    return {
        **{k: s[k] for k in ("pixel_acc", "mean_acc", "miou", "fwiou")},
        "percent": {k: round(100.0 * s[k], 4) if not math.isnan(s[k]) else None
                    for k in ("pixel_acc", "mean_acc", "miou", "fwiou")},
        "iou": s["iou"],
        "acc": s["acc"],
        "classes": s["classes"],
        "num_classes_used": s["num_classes_used"],
        "num_pixels": s["num_pixels"],
        "confusion_matrix": cm.matrix.tolist(),
    }


class MarkedRow:
    """A published row whose setting cell says that ours ran at another precision than the reference's fp32 (the
    comparison tables of ``result.md`` and of ``benchmarks.report``)."""

    def __init__(self, row: Any, precision: str) -> None:
        self._row, self._precision = row, precision

    def __getattr__(self, name: str) -> Any:
        return getattr(self._row, name)

    def describe(self) -> str:
        return f"{self._row.describe()}; **ours at {self._precision}, not the reference's fp32**".lstrip("; ")


def comparison(rows: Sequence[Any], results: dict[str, dict[str, Any] | None],
               precision: str | None = None) -> tuple[list[dict], str]:
    """Pair each row with the plain or CRF result (by the row's ``crf`` setting); JSON records + Markdown.
    ``precision``: ours ran at this precision, not the reference's fp32 (marked beside each published number)."""
    from reproduce.tables import METRICS, render_comparison

    entries, records = [], []
    for row in rows:
        variant = "crf" if row.settings.get("crf") is True else "plain"
        measured = results.get(variant)
        entries.append((row if precision is None else MarkedRow(row, precision), measured))
        record = {"row": row.id, "setting": row.describe(), "source": row.source, "compared_with": variant}
        for m in METRICS:
            if m in row.metrics:
                ours = None if measured is None else 100.0 * measured[m]
                record[m] = {"paper": row.metrics[m], "ours": ours,
                             "delta": None if ours is None else round(ours - row.metrics[m], 4)}
        records.append(record)
    metrics = [m for m in METRICS if any(m in r.metrics for r in rows)] or ["miou"]
    return records, render_comparison(entries, metrics) if entries else ""


def precision_record(engine: Segmenter) -> dict[str, Any]:
    """``run.precision`` of ``result.json``: what the forwards ran in, whether it is the reference's (IEEE fp32)."""
    math = engine.float32_math()
    reference = engine.precision == EVAL_PRECISION and not math["tf32"]
    return {"name": engine.precision, "reason": engine.precision_reason, "tf32": math["tf32"],
            "reference": reference}


def precision_line(precision: dict[str, Any] | None) -> str:
    """The ``result.md`` line on the precision (a record without one predates this field: it ran ``auto``)."""
    if not precision:
        return "- precision: not recorded (a result written before evaluations ran fp32 by default)"
    name = precision["name"]
    if precision.get("reference"):
        return f"- precision: {name} (the reference's; TF32 off)"
    return (f"- precision: **{name}** ({precision.get('reason')}), not the reference's fp32: the numbers may differ "
            "from an fp32 evaluation")


def _markdown(result: dict[str, Any], table: str) -> str:
    run = result["run"]
    lines = [
        f"# {run['model']['name']} on {run['dataset']['name']} {run['dataset']['split']}",
        "",
        f"- weights: `{Path(run['model']['weights']).name}` ({run['model']['preprocessing_source']})",
        f"- protocol: {run['protocol']} (crop {run['crop_size']}), scales {list(run['scales'])}, "
        f"flip {run['flip']}, output stride {run['model']['build_kwargs'].get('output_stride', 'default')}",
        f"- images: {run['images']}, classes averaged: {run['classes']}, device: {run['device']}, "
        f"{run['seconds']:.1f} s" + (f", skipped (missing or unreadable): {run['skipped_images']}"
                                     if run.get("skipped_images") else ""),
        precision_line(run.get("precision")),
        "",
        "| variant | pixel acc | mean acc | mIoU | FWIoU |",
        "|---|---:|---:|---:|---:|",
    ]
    for variant in ("plain", "crf"):
        res = result["results"].get(variant)
        if res is None:
            continue
        p = res["percent"]
        cells = [f"{p[k]:.2f}" if p[k] is not None else "–" for k in ("pixel_acc", "mean_acc", "miou", "fwiou")]
        lines.append(f"| {'+ dense CRF' if variant == 'crf' else 'no CRF'} | " + " | ".join(cells) + " |")
    if table:
        lines += ["", "Published vs ours (Δ = ours − published, percentage points):", "", table.rstrip()]
    return "\n".join(lines) + "\n"


def strict_json(value: Any) -> Any:
    """``value`` with every NaN / infinity replaced by ``None`` (JSON ``null``), recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if isinstance(value, np.generic):
        return strict_json(value.item())
    return value


def write_results(out: Path, result: dict[str, Any], table: str) -> tuple[Path, Path]:
    """Write ``result.json`` (strict JSON: undefined scores are ``null``) and ``result.md`` atomically into ``out``."""
    import json

    from converters.io import write_text_atomic

    out.mkdir(parents=True, exist_ok=True)
    text_json = json.dumps(strict_json(result), indent=2, allow_nan=False) + "\n"
    json_path = write_text_atomic(out / "result.json", text_json)
    text = _markdown(result, table)
    md_path = write_text_atomic(out / "result.md", text)
    return json_path, md_path


# ---------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    from reproduce.datasets import DATASETS

    parser = argparse.ArgumentParser(
        prog=program_name("reproduce.evaluate"),
        description="Evaluate DeepLab weights on a dataset split (official protocols) and compare with the paper.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = parser.add_argument_group("model")
    g.add_argument("--model", help="registered model name (default: the architecture in the weights' provenance JSON)")
    g.add_argument("--weights", type=Path, required=True,
                   help="converted weights (.pth / .safetensors); a bare name is looked up in --models-dir")
    g.add_argument("--models-dir", type=Path, default=Path("data") / "models",
                   help="folder holding converted weights (default data/models)")
    g.add_argument("--num-classes", type=int, help="classes (default: from the provenance or the weights)")
    g.add_argument("--output-stride", type=int, choices=(8, 16), help="v3/v3+ output stride (default 16)")
    d = parser.add_argument_group("data")
    d.add_argument("--dataset", required=True, choices=sorted(DATASETS), help="dataset reader")
    d.add_argument("--data-root", "--root", dest="root", type=Path, required=True,
                   help="dataset folder (e.g. data/VOCdevkit)")
    d.add_argument("--split", default="val", help="split to evaluate (default: val)")
    d.add_argument("--limit", type=int, help="evaluate only the first N images of the split's list, N >= 1 "
                   "(debugging; with --on-error skip, missing ones among them are skipped and counted)")
    d.add_argument("--on-error", choices=("error", "skip"), default="error",
                   help="a missing or unreadable image or label: stop naming it (default) or skip it and count it")
    p = parser.add_argument_group("protocol")
    p.add_argument("--protocol", choices=ALL_PROTOCOLS, default="pad",
                   help="pad: bottom/right pad to --crop-size (official VOC); whole: as is; "
                        "warp: COCO-Stuff 10k resized to --crop-size (default: pad)")
    p.add_argument("--crop-size", type=int, default=513, help="pad/warp size (default: 513)")
    p.add_argument("--scales", default="1.0",
                   help="v3/v3+ test scales, START:STEP:STOP or a comma list (default 1.0; v2's MSC is in the model)")
    p.add_argument("--flip", action="store_true", help="also run the left-right flipped image (probabilities averaged)")
    p.add_argument("--crf", action="store_true", help="also report the dense-CRF result (needs pydensecrf2)")
    p.add_argument("--crf-workers", type=int, default=None,
                   help="CRF worker processes beside the forward (default: one per core, here "
                        f"{_default_crf_workers()}, fewer when large images would not fit --crf-memory-mb or the "
                        "available memory; 0: in this process, after each forward)")
    p.add_argument("--crf-memory-mb", type=int, default=None, metavar="MB",
                   help="images (probabilities + RGB) in flight to the CRF workers, held by this process "
                        f"(default {_default_crf_memory_mb()}; at least one image per worker)")
    p.add_argument("--classes", choices=("present_in_gt", "present_in_union", "all"), default="present_in_gt",
                   help="classes averaged into mIoU (see reproduce/metrics.py; default present_in_gt)")
    r = parser.add_argument_group("run")
    r.add_argument("--device", default="auto", help="auto (default: cuda when available), cpu, cuda, cuda:N")
    r.add_argument("--precision", choices=PRECISIONS, default=None,
                   help=f"default {EVAL_PRECISION}, the reference's precision, on every device (TF32 off on CUDA; "
                        f"--amp: fp16); the others are opt-ins, recorded in result.json and marked in result.md. "
                        f"{PRECISION_HELP}")
    r.add_argument("--memory-format", choices=MEMORY_FORMATS, default="auto", help=MEMORY_FORMAT_HELP)
    r.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                   help=f"torch.compile (inductor, frozen weights) for the first image's size, other sizes run "
                        f"eager; auto: for pad or warp runs of >= {COMPILE_MIN_IMAGES} images")
    r.add_argument("--amp", action="store_true", help="same as --precision fp16 (CUDA; an opt-in, not the reference)")
    r.add_argument("--workers", type=int, default=0,
                   help="decoding processes (DataLoader workers); default 0: decoding in this process, which "
                        "measured faster on small CPUs (benchmarks/evaluation.py)")
    r.add_argument("--prefetch", type=int, default=None,
                   help="images decoded ahead of the forward by a decoding thread (0: each decoded right before its "
                        f"forward); default: 0 where the forward runs on the CPU with a thread per core (here "
                        f"{_default_prefetch()}), else {PREFETCH_AHEAD}")
    r.add_argument("--compare-to", action="append", default=[], metavar="ROW",
                   help="published row: TABLE[INDEX] or TABLE:key=value,... (repeatable; see reproduce/tables)")
    r.add_argument("--out", type=Path, default=Path("results") / "eval", help="output folder (default results/eval)")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _default_prefetch() -> int:
    return default_prefetch("cpu")


def _default_crf_workers() -> int:
    from reproduce.crf import default_workers

    return default_workers()


def _default_crf_memory_mb() -> int:
    from reproduce.crf import DEFAULT_MAX_BYTES

    return DEFAULT_MAX_BYTES >> 20


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate as ``args`` say, write the outputs, return the result record."""
    from reproduce.datasets import DatasetError

    if args.workers < 0 or (args.prefetch is not None and args.prefetch < 0) or (args.crf_workers is not None and args.crf_workers < 0):
        raise InferenceError("--workers, --prefetch and --crf-workers must be >= 0")
    if args.crf_memory_mb is not None and args.crf_memory_mb < 1:
        raise InferenceError("--crf-memory-mb must be >= 1")
    rows = resolve_rows(args.compare_to)  # before any heavy work: a typo should fail fast
    if args.crf:
        from reproduce.crf import require_pydensecrf

        require_pydensecrf()
    config = InferenceConfig(
        protocol="whole" if args.protocol == "warp" else args.protocol,
        crop_size=args.crop_size,
        scales=parse_scales(args.scales),
        flip=args.flip,
        amp=args.amp,
    )
    device = str(resolve_device(args.device))
    try:
        # with --limit, a file missing further down the list than the first N images does not matter: the
        # reader records missing files and only those among the first N stop the run (or are skipped)
        dataset = build_eval_dataset(args.dataset, args.root, args.split, args.protocol, args.crop_size,
                                     on_error="skip" if args.limit is not None else args.on_error)
    except DatasetError as e:
        raise InferenceError(f"dataset {args.dataset}: {e}") from None
    missing = _dropped(dataset, args.limit)
    if missing and args.on_error == "error":
        raise InferenceError(f"dataset {args.dataset}: {missing[0]}")
    for message in missing:  # named here, once; counted with the unreadable ones in result.json
        print(f"warning: skipped {message}", file=sys.stderr)
    if _limited(dataset, args.limit) == 0:
        first = f"the first {args.limit} images of " if args.limit is not None else ""
        raise InferenceError(f"{args.root}: {first}split {args.split!r} of {args.dataset} has no images"
                             + (f" left ({len(missing)} skipped: files missing)" if missing else ""))
    from reproduce.predict import resolve_weights

    precision = args.precision or ("fp16" if args.amp else EVAL_PRECISION)
    engine = Segmenter(resolve_weights(args.weights, args.models_dir), model=args.model,
                       num_classes=args.num_classes, output_stride=args.output_stride, device=device,
                       precision=precision, memory_format=args.memory_format,
                       compile={"auto": "auto", "on": True, "off": False}[args.compile], config=config)
    lm = engine.lm
    if not args.quiet:
        print(engine.summary(), file=sys.stderr)
    if lm.family == "deeplab_v2" and config.scales != (1.0,):
        raise InferenceError("--scales is for DeepLab v3/v3+; DeepLab v2's MSC (1, 0.75, 0.5, max) is the "
                             "deeplabv2_resnet101_msc model itself")
    crf_max_bytes = args.crf_memory_mb << 20 if args.crf_memory_mb is not None else None
    options = EvalOptions(config=config, crf=args.crf, crf_workers=args.crf_workers, crf_max_bytes=crf_max_bytes,
                          workers=args.workers, prefetch=args.prefetch, classes=args.classes, limit=args.limit, progress=not args.quiet,
                          on_error=args.on_error)
    try:
        out = evaluate(engine, dataset, options)
    except DatasetError as e:
        raise InferenceError(str(e)) from None
    results = {"plain": _scores(out["plain"], args.classes),
               "crf": _scores(out["crf"], args.classes) if out["crf"] is not None else None}
    precision_run = precision_record(engine)
    records, table = comparison(rows, results, None if precision_run["reference"] else precision_run["name"])
    from reproduce.crf import RESNET101

    result = {
        "format": "deeplab-repro evaluation v1",
        "run": {
            "model": lm.describe(),
            "dataset": {"name": args.dataset, "root": str(args.root), "split": args.split,
                        "class_names": list(dataset.class_names) if dataset.class_names else None},
            "protocol": args.protocol,
            "crop_size": args.crop_size,
            "scales": list(config.scales),
            "flip": config.flip,
            "crf": RESNET101.to_dict() if args.crf else None,
            "classes": args.classes,
            "images": out["images"],
            "oversize_images": out["oversize_images"],
            "device": device,
            "precision": precision_run,
            "engine": engine.describe(),
            "pipeline": {"decode": out["decode"], "prefetch": out["prefetch"], "crf_workers": out["crf_workers"]},
            "on_error": args.on_error,
            "skipped_images": len(out["skipped"]),
            "skipped": out["skipped"],
            "seconds": round(out["seconds"], 2),
            "torch": torch.__version__,
            "command": " ".join(sys.argv) if sys.argv else None,
        },
        "results": results,
        "comparison": records,
    }
    json_path, md_path = write_results(args.out, result, table)
    if not args.quiet:
        print(_markdown(result, table))
        print(f"wrote {json_path} and {md_path}")
    return result


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.limit is not None and args.limit < 1:
        parser.error(f"argument --limit: must be >= 1, got {args.limit} (leave it out for the whole split)")


def main(argv: list[str] | None = None) -> int:
    """The command line: exit 0 done, 1 bad input (one line on stderr), 2 usage, 130 interrupted."""
    return run_main(build_parser(), run, argv, check=_check)


_EPILOG = """examples:
  python -m reproduce.evaluate --weights weights/deeplabv2_resnet101_msc_voc12.pth --dataset voc12 \\
      --data-root data/VOCdevkit --split val --crf --crf-workers 2 --out results/voc_v2
  python -m reproduce.evaluate --model deeplabv3plus_xception65 --weights weights/xception65_voc.pth \\
      --output-stride 8 --scales 0.5:0.25:1.75 --flip --dataset voc12 --data-root data/VOCdevkit --split val

exit codes: 0 done, 1 bad input (one line on stderr), 2 usage, 130 interrupted
"""


if __name__ == "__main__":
    sys.exit(main())
