"""The ``train`` suite: images/s and peak memory of one training step per config, AMP and channels_last on/off.

A step is forward (train mode), the MSC loss, backward and an SGD-with-momentum update,
on a random batch (images N(0, 1), labels uniform over the classes with ~5 % ignore
pixels); data loading is excluded. ``AMP`` means ``torch.autocast`` (fp16 with a
``GradScaler`` on CUDA, bf16 on CPU, where no scaler is needed).

What runs is stated in the JSON: ``step_source`` (the harness's own step, built here from
the registered models; ``reproduce/train.py``'s step is used once it exists with a
documented step API) and ``loss_source`` (``reproduce.losses.SegmentationLoss`` when present,
else :func:`msc_cross_entropy`).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks._common import (
    PeakMemory,
    failed,
    summarize,
    time_iterations,
    torch_memory_format,
)
from benchmarks.inference import Timing

IGNORE_INDEX = 255


@dataclass(frozen=True)
class TrainConfig:
    """One published training setup, reduced to what a step's cost depends on."""

    name: str
    model: str
    crop: int
    batch: int
    lr: float
    momentum: float = 0.9
    weight_decay: float = 5e-4
    model_kwargs: tuple[tuple[str, Any], ...] = ()
    num_classes: int | None = None  # None: the suite's --num-classes
    loss_kind: str | None = None  # reproduce.losses kind; None: caffe_msc for a dict output, upsample otherwise
    loss_normalization: str = "per_image"
    source: str = "benchmarks/training.py (built in)"


# Crop and batch as published: Caffe DeepLab v2 (321 crop, batch 10, lr 2.5e-4, wd 5e-4) and
# TF DeepLab v3/v3+ (513 crop, batch 16 ... the TF recipes' train_batch_size, lr 7e-3, wd 4e-5).
TRAIN_CONFIGS: dict[str, TrainConfig] = {c.name: c for c in (
    TrainConfig("deeplabv2_resnet101_msc_voc12", "deeplabv2_resnet101_msc", 321, 10, 2.5e-4),
    TrainConfig("deeplabv3_resnet101_os16_voc12", "deeplabv3_resnet101", 513, 16, 7e-3, weight_decay=4e-5),
    TrainConfig("deeplabv3plus_resnet101_os16_voc12", "deeplabv3plus_resnet101", 513, 16, 7e-3, weight_decay=4e-5),
    TrainConfig("deeplabv3plus_xception65_os16_voc12", "deeplabv3plus_xception65", 513, 16, 7e-3,
                weight_decay=4e-5),
    TrainConfig("deeplabv3_mobilenetv2_os16_voc12", "deeplabv3_mobilenetv2", 513, 16, 7e-3, weight_decay=4e-5),
)}
QUICK_CONFIG = TrainConfig("quick_deeplabv3_mobilenetv2", "deeplabv3_mobilenetv2", 97, 2, 7e-3, weight_decay=4e-5)


def project_configs() -> dict[str, TrainConfig]:
    """The training configs of ``reproduce/configs/*.yaml`` (one per published row), reduced to a step's cost."""
    import yaml

    configs = {}
    for path in sorted((Path(__file__).resolve().parent.parent / "reproduce" / "configs").glob("*.yaml")):
        try:
            cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
            solver, model, loss = cfg["solver"], cfg["model"], cfg.get("loss") or {}
            configs[cfg.get("name", path.stem)] = TrainConfig(
                name=cfg.get("name", path.stem), model=model["name"], crop=int(cfg["augment"]["crop_size"]),
                batch=int(solver["batch_size"]), lr=float(solver["base_lr"]),
                momentum=float(solver.get("momentum", 0.9)), weight_decay=float(solver.get("weight_decay", 0.0)),
                model_kwargs=tuple(sorted((model.get("kwargs") or {}).items())),
                num_classes=int(model["num_classes"]), loss_kind=loss.get("kind"),
                loss_normalization=loss.get("normalization", "per_image"),
                source=str(path.relative_to(path.parents[2])))
        except (KeyError, TypeError, ValueError, yaml.YAMLError):
            continue  # a config this reduction does not understand is left out, not guessed
    return configs


def msc_cross_entropy(outputs: torch.Tensor | dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over every output (the MSC loss), labels shrunk to each output's size.

    Labels are resized with nearest neighbour to each output's spatial size, as the
    Caffe DeepLab v2 training net does (its ``Interp``-shrunk labels); a single tensor
    output is the one-scale case.
    """
    outs = outputs.values() if isinstance(outputs, dict) else (outputs,)
    total = None
    for logits in outs:
        lab = labels
        if tuple(lab.shape[-2:]) != tuple(logits.shape[-2:]):
            lab = F.interpolate(labels[:, None].float(), size=logits.shape[-2:], mode="nearest")[:, 0].long()
        loss = F.cross_entropy(logits.float(), lab, ignore_index=IGNORE_INDEX)
        total = loss if total is None else total + loss
    assert total is not None
    return total


def make_loss(config: TrainConfig) -> tuple[Callable, str]:
    """The config's loss from ``reproduce.losses.SegmentationLoss`` when present, else :func:`msc_cross_entropy`.

    Without a configured kind the project's loss is ``caffe_msc`` (labels shrunk Caffe's way, one
    term per output) for the multi-scale v2 model's dict and ``upsample`` (logits resized to the
    labels) for a tensor; the terms are summed after dividing by their denominators, as a
    single-process step does.
    """
    if importlib.util.find_spec("reproduce.losses") is None:
        return msc_cross_entropy, "harness msc_cross_entropy (reproduce/losses.py is not in this checkout)"
    cls = getattr(importlib.import_module("reproduce.losses"), "SegmentationLoss", None)
    if cls is None:
        return msc_cross_entropy, "harness msc_cross_entropy (reproduce/losses.py has no SegmentationLoss)"
    cache: dict[tuple[str, int], Any] = {}

    def loss_fn(outputs: torch.Tensor | dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        kind = config.loss_kind or ("caffe_msc" if isinstance(outputs, dict) else "upsample")
        first = next(iter(outputs.values())) if isinstance(outputs, dict) else outputs
        key = (kind, int(first.shape[1]))
        if key not in cache:
            cache[key] = cls(kind, num_classes=key[1], ignore_index=IGNORE_INDEX,
                             normalization=config.loss_normalization)
        loss = cache[key]
        targets = loss.targets(labels)
        dens = loss.denominators(targets)
        terms = loss(outputs, targets)
        return sum(terms[k] / dens[k].to(device=terms[k].device, dtype=terms[k].dtype) for k in terms)

    kind = config.loss_kind or "caffe_msc for the v2 MSC dict, upsample otherwise"
    return loss_fn, f"reproduce.losses.SegmentationLoss ({kind}, {config.loss_normalization})"


def _train_py_status() -> str:
    if importlib.util.find_spec("reproduce.train") is None:
        return "reproduce/train.py is not in this checkout"
    return ("reproduce/train.py exposes train(cfg, run_dir) (a whole run with data loading), not a single step; "
            "the configs, model builder and loss are the project's where present")


def run_config(config: TrainConfig, *, amp: bool, memory_format: str, device: torch.device, timing: Timing,
               num_classes: int, log: Callable[[str], None]) -> dict[str, Any]:
    """One (config, AMP, memory format) point: median step time, images/s, peak memory."""
    from reference_models import build_model

    point = {"config": config.name, "model": config.model, "crop": config.crop, "batch": config.batch,
             "amp": amp, "memory_format": memory_format}
    num_classes = config.num_classes or num_classes
    loss_fn, point["loss_source"] = make_loss(config)
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    try:
        model = build_model(config.model, num_classes=num_classes, **dict(config.model_kwargs)).to(device).train()
        fmt = torch_memory_format(memory_format)
        model = model.to(memory_format=fmt)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
        scaler = torch.amp.GradScaler(device.type, enabled=amp and device.type == "cuda")
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(config.batch, 3, config.crop, config.crop, generator=gen).to(device)
        x = x.contiguous(memory_format=fmt)
        y = torch.randint(0, num_classes, (config.batch, config.crop, config.crop), generator=gen)
        y[torch.rand(y.shape, generator=gen) < 0.05] = IGNORE_INDEX
        y = y.to(device)
        losses: list[float] = []

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp):
                out = model(x)
                loss = loss_fn(out, y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            losses.append(float(loss.detach()))

        log(f"  {config.name} b{config.batch} {config.crop} amp={'on' if amp else 'off'} {memory_format}")
        with PeakMemory(device) as mem:
            samples = time_iterations(step, device, warmup=timing.warmup, repeats=timing.repeats,
                                      min_seconds=timing.min_seconds, max_seconds=timing.max_seconds)
    except Exception as exc:  # noqa: BLE001 - recorded; the other points still run
        log(f"    error: {type(exc).__name__}: {str(exc)[:200]}")
        return failed(exc, **point)
    stats = summarize(samples)
    log(f"    {config.batch / stats['median_s']:.2f} images/s")
    return {**point, "status": "ok", "latency": stats, "samples_s": samples,
            "images_per_s": config.batch / stats["median_s"], "memory": mem.record,
            "amp_dtype": str(amp_dtype).replace("torch.", "") if amp else None,
            "grad_scaler": bool(amp and device.type == "cuda"), "loss_first": losses[0], "loss_last": losses[-1],
            "finite": all(torch.isfinite(torch.tensor(losses)).tolist()),
            "trainable_params": sum(p.numel() for p in params)}


def run_train(configs: list[TrainConfig], amps: list[bool], memory_formats: list[str], device: torch.device,
              timing: Timing, *, num_classes: int = 21, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every config x AMP x memory format; the suite's JSON body (without the environment)."""
    results = []
    for config in configs:
        for memory_format in memory_formats:
            for amp in amps:
                results.append(run_config(config, amp=amp, memory_format=memory_format, device=device,
                                          timing=timing, num_classes=num_classes, log=log))
    return {
        "step_source": "harness step (benchmarks/training.py): reproduce/train.py's step is not used because "
                       + _train_py_status(),
        "optimizer": "torch.optim.SGD(lr, momentum, weight_decay) on every trainable parameter (the configs' "
                     "per-parameter lr/decay multipliers do not change a step's cost and are not applied)",
        "step": "zero_grad; forward (train mode) under autocast when AMP; loss; backward; SGD(momentum) step",
        "amp_meaning": {"cuda": "autocast fp16 + GradScaler", "cpu": "autocast bf16, no scaler"},
        "configs": {c.name: asdict(c) for c in configs},
        "timing": asdict(timing),
        "results": results,
    }
