"""The training loop: one public :func:`train_step` (what the benchmark times) and :func:`train` (a whole run).

What a run does, in order:

1. Resolve the run folder. If it holds a checkpoint of a config with the same
   :func:`~reproduce.training.config.fingerprint`, the run resumes from it exactly; a config that
   computes something else is refused, naming the keys that changed.
2. Build the model from the registry, load the init weights (checked key by key, with the
   preprocessing contract of their provenance record), initialise new head layers as the official
   nets do.
3. Train with the official solver: poly LR, per-parameter lr/decay multipliers, SGD (Caffe or TF
   flavour), the configured loss. One iteration = ``solver.batch_size`` images in total, split into
   ``solver.accum_steps`` micro-batches per process (Caffe's ``iter_size``) and over the processes
   of ``torchrun``. The result does not depend on that split.
4. Every ``checkpoint_every`` iterations write a checkpoint (atomically); every ``eval_every``
   iterations evaluate on ``eval_split`` (rank 0, the config's evaluation protocol), write
   ``last.pth`` and, when its mIoU is the best so far, ``best.pth`` (each with a ``.json``
   provenance holding the score and iteration). The evaluation leaves every RNG as it was, so it
   does not change the training. At the end ``final.pth`` + ``final.json``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn

from converters.io import provenance_path, save_state_dict, sha256_file, write_json_atomic

from .. import checkpoint as ck
from ..checkpoint import CheckpointError, CheckpointMismatch, rng_state, save_checkpoint, set_rng_state
from ..losses import SegmentationLoss
from ..pixel_losses import AUTO_RULE, ConfiguredLoss, LossOptions, auto_class_weights, label_histogram
from ..schedule import build_optimizer, poly_lr, set_lr
from ..yamlfile import load_yaml
from .config import (
    Config,
    ConfigError,
    changed_keys,
    init_weights_path,
    parse_config,
    to_dict,
    weights_hint,
    write_run_config,
)
from .data import build_loader, build_preprocessing, build_train_dataset, iteration_batches
from .distributed import Dist, EveryRankError, convert_sync_bn, unwrap
from .init_weights import build_model, load_init_weights, set_train_mode
from .logging import Logger

__all__ = ["StepResult", "train_step", "build_criterion", "loss_options", "build_solver", "train", "device_for"]


# ============================================================================ one step
@dataclass
class StepResult:
    """One iteration's loss, left on the device: reading it (``float``) waits for the GPU."""

    loss: torch.Tensor                     # this process's share of the total loss (float64, detached)
    terms: dict[str, torch.Tensor] = field(default_factory=dict)  # this process's share of each term over its
                                                                  # global denominator (float64, detached)


def build_criterion(cfg: Config, dataset: Any = None) -> ConfiguredLoss:
    """The config's loss; ``loss.class_weights: auto`` counts the labels of ``dataset`` (default: the training set)."""
    return ConfiguredLoss(cfg.loss.kind, num_classes=cfg.model.num_classes, ignore_index=cfg.ignore_index,
                          normalization=cfg.loss.normalization, shrink=cfg.loss.shrink,
                          options=loss_options(cfg, dataset))


def loss_options(cfg: Config, dataset: Any = None) -> LossOptions:
    """``cfg.loss``'s options (reproduce/pixel_losses.py), ``auto`` class weights resolved from the labels."""
    loss = cfg.loss
    weights = loss.class_weights
    if weights == "auto":
        if dataset is None:
            dataset = build_train_dataset(cfg)
        weights = auto_class_weights(label_histogram(dataset, cfg.model.num_classes, cfg.ignore_index))
    alpha = None if loss.focal is None else loss.focal.alpha
    return LossOptions(class_weights=None if weights is None else tuple(weights),
                       top_k_percent_pixels=loss.top_k_percent_pixels,
                       hard_example_mining_step=loss.hard_example_mining_step,
                       focal_gamma=0.0 if loss.focal is None else loss.focal.gamma,
                       focal_alpha=tuple(alpha) if isinstance(alpha, list) else alpha,
                       label_smoothing=loss.label_smoothing)


def build_solver(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    """The config's optimizer with one parameter group per (lr_mult, decay_mult) rule."""
    s = cfg.solver
    rules = [{k: v for k, v in to_dict(r).items() if v is not None} for r in s.param_rules]
    return build_optimizer(model, kind=s.optimizer, base_lr=s.base_lr, momentum=s.momentum,
                           weight_decay=s.weight_decay, rules=rules)


def train_step(net: nn.Module, micro_batches: Sequence[tuple[torch.Tensor, torch.Tensor]], *,
               optimizer: torch.optim.Optimizer, criterion: SegmentationLoss, lr: float,
               scaler: torch.amp.GradScaler | None = None, amp: bool = False,
               amp_dtype: torch.dtype = torch.float16, channels_last: bool = False,
               dist_info: Dist | None = None, device: torch.device | None = None) -> StepResult:
    """One solver iteration over ``micro_batches`` (this process's share of the global batch).

    Sets ``lr`` on every parameter group (times the group's ``lr_mult``), accumulates the
    gradients of every micro-batch with each loss term divided by its denominator summed over
    all micro-batches and processes (so the split does not change the update), then one
    optimizer step (through ``scaler`` when AMP runs on CUDA). ``net`` may be wrapped in
    DistributedDataParallel; gradients are synchronised on the last micro-batch only.

    Nothing here reads a value back from the device (the denominators, the loss and its terms stay
    there), so the GPU is never drained mid-iteration; an enabled ``GradScaler`` reads its inf check
    once, in ``scaler.step``.
    """
    d = dist_info or Dist()
    if device is None:
        device = next(unwrap(net).parameters()).device
    scaler = scaler or torch.amp.GradScaler("cuda", enabled=False)
    set_lr(optimizer, lr)
    targets = [criterion.targets(y.to(device, non_blocking=True)) for _, y in micro_batches]
    dens: dict[str, torch.Tensor] = {}
    for t in targets:
        for k, v in criterion.denominators(t).items():
            dens[k] = dens[k] + v if k in dens else v
    keys = sorted(dens)
    packed = d.all_reduce(torch.stack([dens[k].to(device, torch.float64) for k in keys]))
    den64 = packed.clamp(min=1.0)
    # the loss divides by float32 denominators: what a Python-float divisor of a float32 tensor does (same bits)
    den = {k: den64[i].to(torch.float32) for i, k in enumerate(keys)}
    optimizer.zero_grad(set_to_none=True)
    loss_value = torch.zeros((), dtype=torch.float64, device=device)
    term_values = {k: torch.zeros((), dtype=torch.float64, device=device) for k in keys}
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp else contextlib.nullcontext()
    last = len(micro_batches) - 1
    for a, ((x, _), t) in enumerate(zip(micro_batches, targets)):
        x = x.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        sync = contextlib.nullcontext() if not d.enabled or a == last else net.no_sync()
        with sync:
            with autocast:
                out = net(x)
            terms = criterion(out, t)
            loss = sum(terms[k] / den[k] for k in terms) * d.world  # DDP averages gradients over processes
            scaler.scale(loss).backward()
        loss_value += loss.detach().double() / d.world
        for k in terms:
            term_values[k] += terms[k].detach().double() / den64[keys.index(k)]
    scaler.step(optimizer)
    scaler.update()
    return StepResult(loss_value, term_values)


# ============================================================================ helpers
def device_for(cfg: Config, d: Dist) -> torch.device:
    """The device ``cfg.device`` names (``auto``: CUDA when available), made this process's current one.

    ``cuda:N`` is GPU N; plain ``cuda`` (and ``auto``) is GPU ``LOCAL_RANK`` (0 outside ``torchrun``).
    Under ``torchrun`` with several processes each takes its ``LOCAL_RANK``'s GPU, so ``cuda:N`` is refused
    there (choose the GPUs with ``CUDA_VISIBLE_DEVICES``).
    """
    want = cfg.device or "auto"
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(want)
    except RuntimeError:
        raise ConfigError(f"unknown device {want!r} (cpu, cuda, cuda:N or auto)") from None
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise ConfigError(f"device {want} requested but CUDA is not available (use --device cpu)")
    if device.index is not None and d.enabled:
        raise ConfigError(f"device {want}: under torchrun each process trains on cuda:LOCAL_RANK; pass --device "
                          "cuda and choose the GPUs with CUDA_VISIBLE_DEVICES")
    index = d.local_rank if device.index is None else device.index
    count = torch.cuda.device_count()
    if index >= count:
        raise ConfigError(f"device cuda:{index} requested but torch sees {count} GPU(s) (cuda:0 to cuda:{count - 1})")
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def _provenance(cfg: Config, path: Path, *, iteration: int, processes: int, init_record: Mapping[str, Any],
                **extra: Any) -> dict[str, Any]:
    m = cfg.model
    return {
        "format": "deeplab-repro provenance v1",
        "architecture": m.name,
        "num_classes": m.num_classes,
        "model_kwargs": dict(m.kwargs),
        "load_with": f"reference_models.build_model({m.name!r}, num_classes={m.num_classes})",
        "trained_with": {"tool": "python -m reproduce.train", "config": cfg.name, "iterations": iteration,
                         "processes": processes, "torch": torch.__version__,
                         "deterministic": cfg.deterministic},
        **extra,
        "config": to_dict(cfg),
        "init": dict(init_record),
        "preprocessing": build_preprocessing(cfg).to_dict(),
        "weights": {"file": path.name, "sha256": sha256_file(path)},
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _write_weights(path: Path, model: nn.Module, cfg: Config, **record: Any) -> None:
    save_state_dict(dict(unwrap(model).state_dict()), path)
    write_json_atomic(provenance_path(path), _provenance(cfg, path, **record))


class _KeepRng:
    """Restores python/numpy/torch RNG states on exit: an evaluation must not change the training."""

    def __enter__(self) -> None:
        self.state = rng_state()

    def __exit__(self, *exc: Any) -> None:
        set_rng_state(self.state)


def _eval_dataset(cfg: Config) -> Any:
    from ..evaluate import build_eval_dataset

    ev = cfg.eval
    if ev is None:
        raise ConfigError("eval_every needs an eval section (dataset, split, protocol)")
    name = ev.dataset or cfg.data.dataset
    split = cfg.eval_split or ev.split
    if name == "shapes":
        from ..shapes import ShapesDataset

        return ShapesDataset(**{**ev.kwargs, "split": split})
    from ..datasets import DatasetError

    root = ev.root or cfg.data.root
    try:
        return build_eval_dataset(name, root, split, ev.protocol, ev.crop_size, reader_kwargs=ev.kwargs)
    except (DatasetError, ValueError) as e:
        raise ConfigError(f"eval_every: {e}") from None


def evaluate_weights(cfg: Config, weights: Path, device: torch.device) -> dict[str, Any]:
    """mIoU (percent) of ``weights`` on ``eval_split`` with the config's protocol, single scale, no CRF, in IEEE fp32
    (the plain model: TF32 off on a GPU, whatever ``amp`` the training uses)."""
    from ..evaluate import EvalOptions, evaluate
    from ..inference import InferenceConfig, load_model
    from ..metrics import ConfusionMatrix  # noqa: F401 - evaluate() returns its matrices

    ev = cfg.eval
    dataset = _eval_dataset(cfg)
    stride = cfg.model.kwargs.get("output_stride")
    lm = load_model(None, weights, output_stride=stride, device=device)
    options = EvalOptions(config=InferenceConfig(protocol="whole" if ev.protocol == "warp" else ev.protocol,
                                                 crop_size=ev.crop_size),
                          workers=min(cfg.workers, 4), limit=cfg.eval_limit, progress=False)
    out = evaluate(lm, dataset, options)
    scores = out["plain"].compute()
    miou = scores["miou"]
    return {"miou": None if miou is None or not math.isfinite(miou) else 100.0 * float(miou),
            "images": out["images"], "split": getattr(dataset, "split", None), "precision": "fp32"}


# ============================================================================ the run
@contextlib.contextmanager
def deterministic_mode(on: bool) -> Any:
    """With ``on``: deterministic algorithms where torch has them (``warn_only``: an op without one warns
    instead of stopping the run), cuDNN deterministic, no cuDNN benchmark; the previous settings after.

    On the CPU training is bit-exact either way. On CUDA some kernels have no deterministic version
    (``torch.use_deterministic_algorithms`` lists them; each warns when it runs): among them the bilinear
    upsampling backward the loss uses (``F.interpolate``), so even in this mode a CUDA run, resumed or
    over several processes, agrees with another to float32 noise, not to the bit.
    """
    if not on:
        yield
        return
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS is deterministic only with it
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[2], before[3]


def train(cfg: Config | Mapping[str, Any], run_dir: str | os.PathLike) -> Path:
    """Run (or resume) the training ``cfg`` describes in ``run_dir``; return the final weights path.
    ``cfg.deterministic`` runs it in :func:`deterministic_mode`."""
    cfg = parse_config(cfg)
    with deterministic_mode(cfg.deterministic):
        return _train(cfg, run_dir)


def _train(cfg: Config, run_dir: str | os.PathLike) -> Path:
    run_dir = Path(run_dir)
    d = Dist()
    device = device_for(cfg, d)
    d.init(device, cfg.dist_timeout)
    solver = cfg.solver
    max_iter, global_batch, accum, seed = solver.iterations, solver.batch_size, solver.accum_steps, cfg.seed
    amp = cfg.amp
    if amp and device.type != "cuda":
        print("note: --amp needs CUDA; training in float32 on the CPU", file=sys.stderr)
        amp = False

    # ---------------------------------------------------------------- resume or start
    run_dir.mkdir(parents=True, exist_ok=True)
    saved_cfg_path = run_dir / "config.yaml"
    if saved_cfg_path.is_file():
        try:
            saved = parse_config(load_yaml(saved_cfg_path) or {})
        except (ConfigError, yaml.YAMLError, OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{saved_cfg_path}: the run's saved config does not validate ({e}); use another --out "
                              "or delete the folder") from None
        diff = changed_keys(saved, cfg)
        if diff:
            raise ConfigError(f"{run_dir} holds a run of a different config ({'; '.join(diff[:6])}); use another "
                              "--out or delete the folder")
    if d.main:
        write_run_config(saved_cfg_path, cfg)  # the newest runtime settings, same computation

    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    model = build_model(cfg)
    say = _stderr if d.main else None
    found = _find_resume(run_dir, cfg, model, say)
    init_record: dict[str, Any] = {}
    if found is None:
        init_record = load_init_weights(model, cfg.init, build_preprocessing(cfg), seed=seed,
                                        weights=init_weights_path(cfg), hint=weights_hint(cfg))
    if d.enabled:  # dropout masks differ per process (the data order and augmentation have their own seeds)
        torch.manual_seed(seed + d.rank)
    if d.enabled and cfg.bn.mode == "train":
        model = convert_sync_bn(model, device)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = build_solver(cfg, model)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    start = 0
    state: dict[str, Any] = {"skipped": [], "best": None}
    if found is not None:
        start, init_record = _restore(*found, model, optimizer, scaler, d, state, say)
    net: nn.Module = model
    if d.enabled:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    # ---------------------------------------------------------------- data
    base = build_train_dataset(cfg)
    loader, sampler = build_loader(cfg, base, rank=d.rank, world=d.world, start_iter=start,
                                   pin_memory=device.type == "cuda")
    criterion = build_criterion(cfg, base)
    if cfg.loss.class_weights == "auto" and d.main:
        print(f"class weights (auto: {AUTO_RULE}): {[round(w, 4) for w in criterion.options.class_weights]}")

    # ---------------------------------------------------------------- loop
    logger = Logger(run_dir, start=start, total=max_iter, enabled=d.main, progress=cfg.progress,
                    tensorboard=cfg.tensorboard)
    if start:
        logger.write(f"resuming {run_dir} at iteration {start} of {max_iter}")
    elif d.main:
        logger.write(f"training {cfg.name}: {max_iter} iterations of {global_batch} images "
                     f"({d.world} process(es) x {accum} accumulation step(s) x {sampler.micro}) on {device}")
    if device.type == "cuda":  # fixed-size crops: let cuDNN pick its fastest kernels, unless asked to be deterministic
        torch.backends.cudnn.benchmark = not cfg.deterministic
    set_train_mode(net, cfg.bn.mode)
    batches = iter(loader)
    t0 = time.time()
    skipped_before = len(state["skipped"])
    window: list[StepResult] = []  # the iterations since the device was last read
    for it in range(start, max_iter):
        lr = poly_lr(solver.base_lr, it, max_iter, solver.lr_power)
        micro = iteration_batches(batches, accum, it, logger, state["skipped"])
        criterion.set_iteration(it)  # the hard-pixel mining schedule's step
        result = train_step(net, micro, optimizer=optimizer, criterion=criterion, lr=lr, scaler=scaler, amp=amp,
                            channels_last=cfg.channels_last, dist_info=d, device=device)
        done = it + 1
        window.append(result)
        log = done % cfg.log_every == 0 or done == max_iter
        evaluate_now = bool(cfg.eval_every) and (done % cfg.eval_every == 0 or done == max_iter)
        save_now = bool(cfg.checkpoint_every) and done % cfg.checkpoint_every == 0 and done < max_iter
        if not (log or evaluate_now or save_now):
            logger.step(done, {"lr": lr}, log=False)  # no read of the device: the GPU runs ahead
            continue
        # One read of the device per logged iteration (and before a checkpoint or an evaluation, so that
        # neither sees weights a non-finite loss has spoiled); every rank reads the same reduced values.
        scalars = {**_read_window(window, done, len(state["skipped"]), d), "lr": lr}
        window = []
        if log:
            scalars["sec_per_it"] = (time.time() - t0) / (done - start)
        else:
            scalars = {"loss": scalars["loss"], "lr": lr}
        logger.step(done, scalars, log=log)
        if evaluate_now:
            _evaluate(run_dir, done, model, cfg, init_record, d, device, state, logger)
        if save_now:
            _save(run_dir, done, model, optimizer, scaler, cfg, init_record, d, state)
    logger.close()
    final = run_dir / "final.pth"
    skipped_all = _save(run_dir, max_iter, model, optimizer, scaler, cfg, init_record, d, state)
    if d.main:
        new = len(state["skipped"]) - skipped_before
        _write_weights(final, model, cfg, iteration=max_iter, processes=d.world, init_record=init_record,
                       skipped_samples={"count": len(skipped_all), "files": skipped_all[:100]},
                       best=state["best"])
        logger.write(f"wrote {final} ({max_iter} iterations, {time.time() - t0:.0f} s this session"
                     + (f", {new} corrupt sample(s) skipped" if new else "") + ")")
        if skipped_all:
            logger.write(f"skipped {len(skipped_all)} corrupt training sample(s) in this run (final.json)")
    d.barrier()
    return final


def _read_window(window: Sequence[StepResult], done: int, skipped: int, d: Dist) -> dict[str, float]:
    """The global loss (and its terms, and the skipped-sample count) of the last of ``window``'s iterations,
    ending at iteration ``done``: one all-reduce and one read of the device for the whole window.

    Raises (alike on every rank) naming the first iteration whose loss was not finite.
    """
    last = window[-1]
    names = sorted(last.terms) if len(last.terms) > 1 else []  # one term is the loss itself
    count = torch.tensor([float(skipped)], dtype=torch.float64, device=last.loss.device)
    values = d.all_reduce(torch.cat([torch.stack([r.loss for r in window] + [last.terms[k] for k in names]),
                                     count])).tolist()
    losses = values[:len(window)]
    for i, loss in enumerate(losses):
        if not math.isfinite(loss):
            raise EveryRankError(f"loss is {loss} at iteration {done - len(window) + 1 + i}; lower the learning rate")
    scalars = {"loss": losses[-1]}
    scalars.update({f"loss_{k}": v for k, v in zip(names, values[len(window):])})
    scalars["skipped_samples"] = values[-1]
    return scalars


def _evaluate(run_dir: Path, it: int, model: nn.Module, cfg: Config, init_record: Mapping[str, Any], d: Dist,
              device: torch.device, state: dict[str, Any], logger: Logger) -> None:
    """Rank 0: write last.pth, score it, copy it to best.pth when it is the best so far.

    The other ranks wait for rank 0's result on the launcher's store, not in a collective: no NCCL
    watchdog runs while rank 0 evaluates alone (:meth:`Dist.wait_for` bounds the wait by ``dist_timeout``).
    """
    if d.main:
        was_training = model.training
        last = run_dir / "last.pth"
        with _KeepRng():
            _write_weights(last, model, cfg, iteration=it, processes=d.world, init_record=init_record)
            result = evaluate_weights(cfg, last, device)
        set_train_mode(model, cfg.bn.mode, was_training)
        score = result["miou"]
        record = {"metric": "miou", "score": score, "iteration": it, "split": result["split"],
                  "images": result["images"], "precision": result["precision"]}
        info = json.loads(provenance_path(last).read_text(encoding="utf-8"))
        info["evaluation"] = record
        write_json_atomic(provenance_path(last), info)
        best = state["best"]
        if score is not None and (best is None or best["score"] is None or score > best["score"]):
            state["best"] = record
            tmp = run_dir / ".best.pth.tmp"
            shutil.copyfile(last, tmp)
            os.replace(tmp, run_dir / "best.pth")
            info["weights"]["file"] = "best.pth"
            write_json_atomic(run_dir / "best.json", info)
        best = state["best"] or {}
        logger.write(f"iteration {it}: {result['split']} mIoU {score if score is None else round(score, 2)} "
                     f"(best {best.get('score') and round(best['score'], 2)} at iteration {best.get('iteration')})")
        logger.step(it, {"eval_miou": score}, log=True, advance=False)
        d.publish(f"eval/{it}", state["best"])
    elif d.enabled:
        state["best"] = d.wait_for(f"eval/{it}")


def _save(run_dir: Path, it: int, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: Any, cfg: Config,
          init_record: Mapping[str, Any], d: Dist, state: Mapping[str, Any]) -> list[str]:
    """Write a checkpoint (rank 0); return the skipped samples of every rank."""
    # Every rank's RNG state (dropout masks differ per rank) and skipped files, gathered to rank 0.
    rngs: list[Any] = [None] * d.world
    skipped: list[Any] = [None] * d.world
    if d.enabled:
        dist.all_gather_object(rngs, rng_state())
        dist.all_gather_object(skipped, list(state["skipped"]))
    else:
        rngs, skipped = [rng_state()], [list(state["skipped"])]
    if d.main:
        save_checkpoint(run_dir, it, {"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                                      "scaler": scaler.state_dict(), "rng": rngs, "config": to_dict(cfg),
                                      "init": dict(init_record), "skipped_per_rank": skipped, "best": state["best"]},
                        keep=cfg.keep_checkpoints)
    d.barrier()
    return [x for rank in skipped for x in rank]


# ============================================================================ resume
def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def check_run_config(path: Path, saved: Any, cfg: Config) -> None:
    """CheckpointMismatch (one line naming both) if the checkpoint's config computes something else than ``cfg``."""
    try:
        theirs = parse_config(saved)
    except ConfigError as e:
        raise CheckpointError(f"{path}: damaged (its config does not validate: {str(e).splitlines()[0]})") from None
    diff = changed_keys(theirs, cfg)
    if diff:
        raise CheckpointMismatch(f"{path} is a checkpoint of another model or config than this run's "
                                 f"({'; '.join(diff[:4])}: checkpoint -> run); use another --out")


def _check_bookkeeping(path: Path, ckpt: Mapping[str, Any], cfg: Config) -> None:
    """The iteration, best score and skipped-sample lists are what the loop can use."""
    if ckpt["iteration"] > cfg.solver.iterations:
        raise CheckpointError(f"{path}: damaged (iteration {ckpt['iteration']} of a {cfg.solver.iterations}-iteration "
                              "run)")
    best = ckpt.get("best")
    if best is not None and not (isinstance(best, dict) and type(best.get("score")) in (float, int, type(None))
                                 and type(best.get("iteration")) is int):
        raise CheckpointError(f"{path}: damaged (the best-score record is malformed)")
    per_rank = ckpt.get("skipped_per_rank", [])
    lists = [ckpt.get("skipped", [])] + (per_rank if isinstance(per_rank, list) else [None])
    if not all(isinstance(v, list) and all(isinstance(x, str) for x in v) for v in lists):
        raise CheckpointError(f"{path}: damaged (the skipped-sample lists are malformed)")
    if not isinstance(ckpt.get("init", {}), dict):
        raise CheckpointError(f"{path}: damaged (the init record is malformed)")


def _find_resume(run_dir: Path, cfg: Config, model: nn.Module,
                 say: Any) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint in ``run_dir`` that loads safely and fits ``model`` and ``cfg`` (see
    :func:`reproduce.checkpoint.find_checkpoint`), or None for a new run."""
    expected, template = model.state_dict(), build_solver(cfg, model)

    def check(path: Path, ckpt: dict[str, Any]) -> None:
        check_run_config(path, ckpt["config"], cfg)
        ck.check_state_dict(path, ckpt["model"], expected)
        ck.check_optimizer_state(path, ckpt.get("optimizer"), template)
        ck.check_scaler_state(path, ckpt.get("scaler", {}))
        _check_bookkeeping(path, ckpt, cfg)

    return ck.find_checkpoint(run_dir, check=check, required=("model", "optimizer", "rng", "config"),
                           say=say or (lambda text: None))


def _restore(path: Path, ckpt: Mapping[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
             scaler: torch.amp.GradScaler, d: Dist, state: dict[str, Any], say: Any) -> tuple[int, dict[str, Any]]:
    """Load a checkpoint :func:`_find_resume` accepted; return (finished iterations, init record)."""
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    ck.restore_scaler(scaler, ckpt.get("scaler") or {}, say=say)  # AMP may be switched on or off between sessions
    per_rank = ckpt.get("skipped_per_rank") or [[]]
    state["skipped"] = list(per_rank[d.rank % len(per_rank)])
    state["best"] = ckpt.get("best")
    states = ckpt["rng"]
    set_rng_state(states[d.rank % len(states)], say=say, where=str(path))  # another process count resumes,
    return ckpt["iteration"], dict(ckpt.get("init", {}))                   # though not bit-exactly
