"""The ``precision`` suite: what bf16 and fp16 cost in mIoU against fp32, on models that have learnt something.

Two models are trained here on generated shapes (:mod:`reproduce.shapes`) with the project's training code
(:func:`reproduce.training.train`; a finished run in the work folder is reused):

* ``tiny``: the tiny DeepLab v3+ of ``reproduce/configs/deeplabv3plus_tiny-shapes-64.yaml`` (64 px scenes,
  300 iterations of 16);
* ``r101``: DeepLab v3+ ResNet-101 (output stride 16, random init: no ImageNet weights are downloaded) on 321 px
  scenes at crop 321. Its iterations, batch, images and sizes are settings (``--setting r101.iterations=N``): a
  ResNet-101 step at 321 takes about a minute on a quiet 2-core CPU.

Each is evaluated on held-out scenes (seed 12345; the training scenes use seed 0) by the evaluation code's own
functions (:func:`reproduce.inference.prepare_input`, :func:`~reproduce.inference.predict_labels` on a
:class:`~reproduce.inference.Segmenter`, one :class:`~reproduce.metrics.ConfusionMatrix` over the set, as
:func:`reproduce.evaluate.evaluate` does) at each precision, under the official protocols:

* ``pad``: DeepLab v2's test protocol: bottom/right pad to the crop size with the mean, one scale, no flip
  (513 for VOC's images of at most 500 px; here ``pad_crop`` for scenes of ``eval_size`` px);
* ``msc_flip``: DeepLab-TF's: the padded image at each of ``scales`` (default 0.5:0.25:1.75) and its mirror,
  softmax probabilities averaged.

For bf16 and fp16 each row has the mIoU, its difference to fp32 in percentage points and the argmax agreement
with fp32 (share of the labelled pixels, and of all pixels, predicted alike). fp32 is IEEE fp32 (TF32 off).
bf16 and fp16 are autocast; fp16 runs on a CPU here although ``reproduce`` offers it on CUDA only: autocast
rounds the same operands on every backend and every backend accumulates in fp32, so only the summation order
differs from a GPU (the time does not carry over: a CPU without native bf16/fp16 emulates them).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

REPO_CONFIG = "reproduce/configs/deeplabv3plus_tiny-shapes-64.yaml"
MODELS = ("tiny", "r101")
PRECISIONS = ("fp32", "bf16", "fp16")
PROTOCOLS = ("pad", "msc_flip")
HELD_OUT_SEED = 12345
NUM_CLASSES = 4


@dataclass(frozen=True)
class Plan:
    """How one model is trained and evaluated (every field a ``--setting MODEL.FIELD=VALUE``)."""

    train_size: int  # generated scene side and training crop
    iterations: int
    batch: int
    eval_size: int  # held-out scene side
    pad_crop: int  # the pad protocol's crop (>= eval_size)
    images: int  # held-out scenes under the pad protocol
    msc_images: int  # held-out scenes under the multi-scale + flip protocol (the first ones)
    scales: str = "0.5:0.25:1.75"
    precisions: str = "fp32,bf16,fp16"  # those this model is evaluated at (of the run's; fp32 always)

    def __post_init__(self) -> None:
        if min(self.train_size, self.iterations, self.batch, self.eval_size, self.pad_crop) < 1 or \
                min(self.images, self.msc_images) < 0:
            raise ValueError(f"precision suite: settings must be positive (images >= 0): {self}")
        if self.pad_crop < self.eval_size:
            raise ValueError(f"precision suite: pad_crop {self.pad_crop} is below eval_size {self.eval_size}")
        unknown = set(self.precisions.split(",")) - set(PRECISIONS)
        if unknown:
            raise ValueError(f"precision suite: unknown precision(s) {', '.join(sorted(unknown))} in {self.precisions!r}")


# Held-out scenes a little smaller than the crop they are padded to, as VOC's images (<= 500 px) are padded to 513.
PLANS = {
    "tiny": Plan(train_size=64, iterations=300, batch=16, eval_size=60, pad_crop=65, images=100, msc_images=100),
    "r101": Plan(train_size=321, iterations=300, batch=2, eval_size=300, pad_crop=321, images=20, msc_images=20),
}
QUICK_PLANS = {"tiny": Plan(train_size=32, iterations=2, batch=2, eval_size=30, pad_crop=33, images=2, msc_images=1,
                            scales="0.75,1.25")}


def plans_with(settings: Sequence[str], models: Sequence[str], *, quick: bool = False) -> dict[str, Plan]:
    """The plans of ``models`` with ``MODEL.FIELD=VALUE`` settings applied; ``ValueError`` on a bad one."""
    base = QUICK_PLANS if quick else PLANS
    plans = {m: base.get(m, PLANS[m]) for m in models}
    fields = {f.name: f.type for f in dataclasses.fields(Plan)}
    for item in settings:
        key, eq, value = item.partition("=")
        model, dot, name = key.strip().partition(".")
        if not eq or not dot or model not in MODELS or name not in fields:
            raise ValueError(f"--setting {item!r}: use MODEL.FIELD=VALUE, MODEL in {', '.join(MODELS)}, FIELD in "
                             f"{', '.join(fields)}")
        if model not in plans:
            raise ValueError(f"--setting {item!r}: {model} is not among the models of this run")
        try:
            parsed: Any = value.strip() if name in ("scales", "precisions") else int(value)
        except ValueError:
            raise ValueError(f"--setting {item!r}: {name} takes an integer") from None
        plans[model] = dataclasses.replace(plans[model], **{name: parsed})
    return plans


def training_config(kind: str, *, iterations: int, crop: int, batch: int) -> Any:
    """The training config of model ``kind`` (``tiny`` or ``r101``) on generated shapes at ``crop`` px."""
    from benchmarks._common import REPO
    from reproduce import train as T

    cfg = T.load_config(REPO / REPO_CONFIG)
    over: dict[str, Any] = {"progress": False, "tensorboard": False, "solver.iterations": iterations,
                            "solver.batch_size": batch, "checkpoint_every": max(1, min(25, iterations)),
                            "log_every": max(1, min(25, iterations)),
                            "data.kwargs.size": crop, "augment.crop_size": crop}
    if kind == "r101":
        over.update({"name": f"deeplabv3plus_resnet101-shapes-{crop}", "model.name": "deeplabv3plus_resnet101",
                     "model.kwargs": {"output_stride": 16}, "solver.base_lr": 0.01,
                     # a short run: running statistics that follow the batches (0.99 decay keeps the init)
                     "bn.momentum": 0.3})
    elif kind != "tiny":
        raise ValueError(f"unknown model kind {kind!r}; use one of {', '.join(MODELS)}")
    return T.apply_overrides(cfg, over)


def train_model(kind: str, plan: Plan, workdir: Path, log: Callable[[str], None]) -> tuple[Path, dict[str, Any]]:
    """Train ``kind`` as ``plan`` says in ``workdir/<kind>-<size>-b<batch>-<iterations>`` (a finished run there is
    reused); the final weights and the training record."""
    from reproduce import train as T

    run_dir = workdir / f"{kind}-{plan.train_size}-b{plan.batch}-{plan.iterations}"
    reused = (run_dir / "final.pth").is_file()
    log(f"{kind}: {'reusing' if reused else 'training'} {run_dir} ({plan.iterations} iterations of {plan.batch}, "
        f"{plan.train_size} px)")
    cfg = training_config(kind, iterations=plan.iterations, crop=plan.train_size, batch=plan.batch)
    t0 = time.perf_counter()
    final = T.train(cfg, run_dir)
    return final, {"run_dir": str(run_dir), "model": cfg.model.name, "iterations": plan.iterations,
                   "batch": plan.batch, "crop": plan.train_size, "init": "random", "reused": reused,
                   "seconds": None if reused else round(time.perf_counter() - t0, 1)}


def engine_at(weights: Path, precision: str) -> Any:
    """The inference engine at ``precision`` on the CPU; fp16 (offered on CUDA only) as fp32 engine + fp16 autocast,
    for its numerics."""
    from reproduce.inference import Segmenter

    if precision != "fp16":
        return Segmenter(weights, device="cpu", precision=precision, compile=False)
    engine = Segmenter(weights, device="cpu", precision="fp32", compile=False)
    engine.precision = "fp16"
    engine.precision_reason = "fp16 autocast on the CPU, for its numerics (reproduce offers fp16 on CUDA only)"
    return engine


def protocol_config(protocol: str, plan: Plan) -> Any:
    from reproduce.inference import InferenceConfig, parse_scales

    if protocol == "pad":
        return InferenceConfig(protocol="pad", crop_size=plan.pad_crop)
    return InferenceConfig(protocol="pad", crop_size=plan.pad_crop, scales=parse_scales(plan.scales), flip=True)


def evaluate_precision(engine: Any, dataset: Any, config: Any, count: int) -> tuple[Any, list[torch.Tensor], float]:
    """The confusion matrix and the label maps of the first ``count`` scenes, as ``reproduce.evaluate`` makes them."""
    from reproduce.inference import predict_labels, prepare_input
    from reproduce.metrics import ConfusionMatrix

    cm = ConfusionMatrix(engine.num_classes, dataset.ignore_index)
    preds = []
    t0 = time.perf_counter()
    for i in range(count):
        image, label, _ = dataset[i]
        x = prepare_input(image, engine.lm.preprocessing, config)
        pred = predict_labels(engine.lm, x, config, label.shape)
        cm.update(pred, torch.from_numpy(label))
        preds.append(pred)
    return cm, preds, time.perf_counter() - t0


def _agreement(preds: Sequence[torch.Tensor], refs: Sequence[torch.Tensor], labels: Sequence[Any],
               ignore: int) -> dict[str, float]:
    same = total = same_lab = total_lab = 0
    for p, r, lab in zip(preds, refs, labels):
        eq = p == r
        labelled = torch.from_numpy(lab) != ignore
        same, total = same + int(eq.sum()), total + eq.numel()
        same_lab, total_lab = same_lab + int(eq[labelled].sum()), total_lab + int(labelled.sum())
    return {"argmax_agreement": same_lab / total_lab if total_lab else float("nan"),
            "argmax_agreement_all": same / total if total else float("nan"), "pixels": total,
            "labelled_pixels": total_lab}


def run_model(kind: str, plan: Plan, precisions: Sequence[str], protocols: Sequence[str], workdir: Path,
              log: Callable[[str], None]) -> dict[str, Any]:
    """Train (or reuse) ``kind`` and evaluate it at every precision under every protocol."""
    from reproduce.shapes import ShapesDataset

    asked = ["fp32", *[p for p in plan.precisions.split(",") if p != "fp32"]]
    precisions = [p for p in precisions if p in asked]
    weights, training = train_model(kind, plan, workdir, log)
    held_out = ShapesDataset(length=max(plan.images, plan.msc_images), seed=HELD_OUT_SEED, size=plan.eval_size,
                             num_classes=NUM_CLASSES, split="held-out")
    labels = [held_out[i][1] for i in range(len(held_out))]
    engines = {p: engine_at(weights, p) for p in precisions}
    rows = []
    for protocol in protocols:
        count = plan.images if protocol == "pad" else plan.msc_images
        if count == 0:
            continue
        config = protocol_config(protocol, plan)
        ref: dict[str, Any] | None = None
        for precision in precisions:
            cm, preds, seconds = evaluate_precision(engines[precision], held_out, config, count)
            scores = cm.compute()
            row = {"model": kind, "protocol": protocol, "precision": precision, "images": count,
                   "crop": plan.pad_crop, "scales": list(config.scales), "flip": config.flip,
                   "miou": scores["miou"], "pixel_acc": scores["pixel_acc"], "iou": scores["iou"],
                   "seconds": round(seconds, 2), "engine": _engine_record(engines[precision])}
            if precision == "fp32":
                ref = {"miou": scores["miou"], "preds": preds}
            elif ref is not None:
                row["miou_delta_pp"] = 100.0 * (scores["miou"] - ref["miou"])
                row.update(_agreement(preds, ref["preds"], labels[:count], held_out.ignore_index))
            rows.append(row)
            log(format_row(row))
    return {"model": kind, "plan": dataclasses.asdict(plan), "training": training, "precisions": precisions,
            "rows": rows}


def _engine_record(engine: Any) -> dict[str, Any]:
    d = engine.describe()
    return {k: d[k] for k in ("precision", "precision_reason", "float32_math", "memory_format", "aspp_as_gemm",
                              "atrous_convs_as_gemm", "batchnorm_folded")}


def format_row(r: dict[str, Any]) -> str:
    """One line per result (the progress log)."""
    extra = ""
    if "miou_delta_pp" in r:
        extra = (f", {r['miou_delta_pp']:+.3f} pp vs fp32, argmax agreement {100 * r['argmax_agreement']:.3f} % "
                 f"({100 * r['argmax_agreement_all']:.3f} % of all pixels)")
    return (f"{r['model']} {r['protocol']} {r['precision']}: mIoU {100 * r['miou']:.3f} %{extra} "
            f"[{r['images']} images, {r['seconds']:.0f} s]")


def table(body: dict[str, Any]) -> str:
    """The human table (Markdown) of a suite body."""
    lines = ["| model | protocol | images | precision | mIoU % | Δ mIoU vs fp32 (pp) | argmax agreement (labelled) "
             "| argmax agreement (all pixels) | seconds |", "|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for m in body.get("models", []):
        for r in m.get("rows", []):
            delta = f"{r['miou_delta_pp']:+.3f}" if "miou_delta_pp" in r else "(reference)"
            agree = f"{100 * r['argmax_agreement']:.3f} %" if r.get("argmax_agreement") is not None else "–"
            agree_all = f"{100 * r['argmax_agreement_all']:.3f} %" if r.get("argmax_agreement_all") is not None \
                else "–"
            proto = r["protocol"] + (f" {r['scales']} + flip" if r["flip"] else f" (crop {r['crop']})")
            lines.append(f"| {m['model']} | {proto} | {r['images']} | {r['precision']} | {100 * r['miou']:.3f} | "
                         f"{delta} | {agree} | {agree_all} | {r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def run_precision(models: Sequence[str], precisions: Sequence[str], plans: dict[str, Plan], workdir: Path, *,
                  protocols: Sequence[str] = PROTOCOLS, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The suite's JSON body (strict: no NaN): per model its plan, training record and result rows, and the table."""
    from reproduce.evaluate import strict_json

    precisions = ["fp32", *[p for p in precisions if p != "fp32"]]  # the reference comes first
    out = [run_model(m, plans[m], precisions, protocols, workdir, log) for m in models]
    body = {"models": out, "precisions": precisions, "protocols": list(protocols),
            "held_out_seed": HELD_OUT_SEED, "num_classes": NUM_CLASSES}
    body["table"] = table(body)
    log("\n" + body["table"])
    return strict_json(body)
