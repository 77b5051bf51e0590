"""The ``train`` suite: images/s and peak memory of one training step per config, AMP and channels_last on/off.

A step is :func:`reproduce.training.train_step`, the step ``python -m reproduce.train`` runs:
poly-LR set on every parameter group (with the config's per-parameter ``lr_mult``/``decay_mult``
rules), the config's accumulation split into micro-batches, forward (train mode), the config's
``reproduce.losses.SegmentationLoss`` with its global denominators, backward, and the config's
optimizer (SGD or Caffe SGD) step, on a random batch (images N(0, 1), labels uniform over the
classes with ~5 % ignore pixels); data loading is excluded. ``AMP`` means ``torch.autocast``
(fp16 with a ``GradScaler`` on CUDA, bf16 on CPU, where no scaler is needed).
"""

from __future__ import annotations

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
    optimizer: str = "sgd"
    param_rules: tuple[tuple[tuple[str, Any], ...], ...] = ()  # schedule.param_groups rules (as sorted items)
    accum_steps: int = 1
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
    from reproduce.training.config import ConfigError, load_config, to_dict

    configs = {}
    for path in sorted((Path(__file__).resolve().parent.parent / "reproduce" / "configs").glob("*.yaml")):
        try:
            cfg = load_config(path)
        except ConfigError:
            continue  # an invalid config is reported by the training tests, not guessed here
        s, crop = cfg.solver, cfg.augment.crop_size
        configs[cfg.name] = TrainConfig(
            name=cfg.name, model=cfg.model.name, crop=int(crop if isinstance(crop, int) else crop[0]),
            batch=s.batch_size, lr=s.base_lr, momentum=s.momentum, weight_decay=s.weight_decay,
            model_kwargs=tuple(sorted(cfg.model.kwargs.items())), num_classes=cfg.model.num_classes,
            loss_kind=cfg.loss.kind, loss_normalization=cfg.loss.normalization, optimizer=s.optimizer,
            param_rules=tuple(tuple(sorted((k, v) for k, v in to_dict(r).items() if v is not None))
                              for r in s.param_rules),
            accum_steps=s.accum_steps, source=str(path.relative_to(path.parents[2])))
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


def make_criterion(config: TrainConfig, outputs_are_dict: bool, num_classes: int) -> Any:
    """The config's ``SegmentationLoss``; without a configured kind: ``caffe_msc`` for v2's MSC dict, else ``upsample``."""
    from reproduce.losses import SegmentationLoss

    kind = config.loss_kind or ("caffe_msc" if outputs_are_dict else "upsample")
    return SegmentationLoss(kind, num_classes=num_classes, ignore_index=IGNORE_INDEX,
                            normalization=config.loss_normalization)


def run_config(config: TrainConfig, *, amp: bool, memory_format: str, device: torch.device, timing: Timing,
               num_classes: int, log: Callable[[str], None]) -> dict[str, Any]:
    """One (config, AMP, memory format) point: median step time, images/s, peak memory."""
    from reference_models import build_model
    from reproduce.schedule import build_optimizer
    from reproduce.training import train_step

    point = {"config": config.name, "model": config.model, "crop": config.crop, "batch": config.batch,
             "amp": amp, "memory_format": memory_format, "accum_steps": config.accum_steps,
             "optimizer": config.optimizer}
    num_classes = config.num_classes or num_classes
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    try:
        model = build_model(config.model, num_classes=num_classes, **dict(config.model_kwargs)).to(device).train()
        fmt = torch_memory_format(memory_format)
        model = model.to(memory_format=fmt)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = build_optimizer(model, kind=config.optimizer, base_lr=config.lr, momentum=config.momentum,
                              weight_decay=config.weight_decay, rules=[dict(r) for r in config.param_rules])
        scaler = torch.amp.GradScaler(device.type, enabled=amp and device.type == "cuda")
        # a --batch override that the config's accumulation does not divide runs as one micro-batch
        accum = config.accum_steps if config.batch % config.accum_steps == 0 else 1
        point["accum_steps"] = accum
        micro = config.batch // accum
        gen = torch.Generator().manual_seed(0)
        micro_batches = []
        for _ in range(accum):
            x = torch.randn(micro, 3, config.crop, config.crop, generator=gen)
            y = torch.randint(0, num_classes, (micro, config.crop, config.crop), generator=gen)
            y[torch.rand(y.shape, generator=gen) < 0.05] = IGNORE_INDEX
            micro_batches.append((x.to(device).contiguous(memory_format=fmt), y.to(device)))
        with torch.no_grad():
            probe = model.eval()(micro_batches[0][0][:1])
        model.train()
        criterion = make_criterion(config, isinstance(probe, dict), num_classes)
        del probe
        point["loss_source"] = f"reproduce.losses.SegmentationLoss ({criterion.kind}, {config.loss_normalization})"
        losses: list[float] = []

        def step() -> None:
            result = train_step(model, micro_batches, optimizer=opt, criterion=criterion, lr=config.lr,
                                scaler=scaler, amp=amp, amp_dtype=amp_dtype,
                                channels_last=memory_format == "channels_last", device=device)
            losses.append(float(result.loss))

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
        "step_source": "reproduce.training.train_step (the step python -m reproduce.train runs)",
        "optimizer": "the config's optimizer (reproduce.schedule.build_optimizer: sgd or caffe_sgd) with its "
                     "per-parameter lr/decay multiplier groups",
        "step": "set poly lr per group; per micro-batch: forward (train mode, autocast when AMP), loss terms over "
                "global denominators, backward; optimizer step (GradScaler on CUDA AMP)",
        "amp_meaning": {"cuda": "autocast fp16 + GradScaler", "cpu": "autocast bf16, no scaler"},
        "configs": {c.name: asdict(c) for c in configs},
        "timing": asdict(timing),
        "results": results,
    }
