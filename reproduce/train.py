"""Train a DeepLab model from a YAML config (one config per published row, reproduce/configs/).

Examples (from the repository root)::

  python -m reproduce.train --config reproduce/configs/deeplabv2_resnet101_msc-cocoinit-vocaug-321-20k.yaml
  python -m reproduce.train --config CONFIG --out runs/my_run --iterations 100 --set solver.base_lr=0.001
  torchrun --nproc_per_node 4 -m reproduce.train --config CONFIG --amp --channels-last   # 4 GPUs
  python -m reproduce.train --config CONFIG --check        # only check that data and weights are in place

What a run does, in order:

1. Resolve the config (YAML + ``--set key.path=value`` + the convenience flags) and the run folder
   (``--out``, default ``runs/<config name>``). If the folder holds a checkpoint of the same
   config, the run resumes from it exactly; a different config is refused (use another ``--out``).
2. Build the model from the registry, load the init weights (``init.weights``: checked against
   the model key by key, with the preprocessing contract of their provenance record), initialise
   new head layers as the official nets do (Caffe: gaussian std 0.01, bias 0).
3. Train with the official solver: poly LR, per-parameter lr/decay multipliers, SGD (Caffe or TF
   flavour), the configured loss. One iteration = ``solver.batch_size`` images in total, split
   into ``solver.accum_steps`` micro-batches per process (Caffe's ``iter_size``) and over the
   processes of ``torchrun``. The result does not depend on that split (tests/test_train_ddp.py).
4. Every ``checkpoint_every`` iterations write a checkpoint (atomically), at the end
   ``final.pth`` (plain state dict, ``reference_models.build_model(...).load_state_dict``) with
   ``final.json`` (provenance: config, init weights' sha256, iterations).

Data order is a pure function of ``(seed, epoch)`` and each sample's augmentation a pure function
of ``(seed, position in the stream)``, so resuming, the number of DataLoader workers and the
number of processes do not change what the model sees.

Exit codes: 0 done, 1 bad input (missing data/weights, config mismatch), 2 usage, 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import json
import math
import os
import re
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn

from converters.io import load_state_dict, provenance_path, save_state_dict, sha256_file, write_json_atomic
from reference_models.preprocessing import Preprocessing

from .checkpoint import latest_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .losses import SegmentationLoss
from .schedule import build_optimizer, poly_lr, set_lr
from .transforms import TrainTransform

__all__ = [
    "ConfigError",
    "DeterministicBatchSampler",
    "load_config",
    "apply_overrides",
    "build_train_dataset",
    "load_init_weights",
    "train",
    "main",
]

# Keys that change how a run is executed but not what it computes: they may differ on resume.
RUNTIME_KEYS = ("workers", "log_every", "checkpoint_every", "keep_checkpoints", "device", "amp", "channels_last",
                "progress", "smoke")


class ConfigError(ValueError):
    """A bad config, missing data or weights: one line, shown without a traceback (exit 1)."""


# ============================================================================ config
def load_config(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config not found (configs live in reproduce/configs/)") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: the config must be a mapping")
    cfg.setdefault("name", path.stem)
    return cfg


def _set_path(cfg: dict[str, Any], dotted: str, value: Any) -> None:
    node = cfg
    keys = dotted.split(".")
    for k in keys[:-1]:
        if not isinstance(node.get(k), dict):
            node[k] = {}
        node = node[k]
    node[keys[-1]] = value


def apply_overrides(cfg: dict[str, Any], overrides: Mapping[str, Any] | Sequence[str]) -> dict[str, Any]:
    """A copy of ``cfg`` with ``key.path=value`` strings (values parsed as YAML) or a ``{path: value}`` map."""
    cfg = copy.deepcopy(cfg)
    items = overrides.items() if isinstance(overrides, Mapping) else []
    if not isinstance(overrides, Mapping):
        parsed = []
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"--set expects key.path=value, got {item!r}")
            key, value = item.split("=", 1)
            parsed.append((key.strip(), yaml.safe_load(value)))
        items = parsed
    for key, value in items:
        _set_path(cfg, key, value)
    return cfg


def _hash_config(cfg: Mapping[str, Any]) -> str:
    stable = {k: v for k, v in cfg.items() if k not in RUNTIME_KEYS}
    return hashlib.sha256(json.dumps(stable, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            if not prefix and k in RUNTIME_KEYS:
                continue
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} -> {b!r}"]


# ============================================================================ distributed
class Dist:
    """This process's place in a ``torchrun`` job (or a single process)."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def init(self, device: torch.device) -> None:
        if self.enabled and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(t)
        return t

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


class CpuSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose batch statistics span every process (what ``nn.SyncBatchNorm`` does on GPUs).

    ``nn.SyncBatchNorm`` refuses CPU tensors; this one all-reduces (differentiably, through
    ``torch.distributed.nn``) the per-channel count, sum and sum of squares, in float64, so it
    works with gloo and matches single-process BatchNorm over the global batch.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not dist.is_initialized():
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        xd = x.double()
        n = torch.tensor([x.numel() / x.shape[1]], dtype=torch.float64, device=x.device)
        stats = torch.cat([n, xd.sum(dim=(0, 2, 3)), (xd * xd).sum(dim=(0, 2, 3))])
        stats = all_reduce(stats)
        c = x.shape[1]
        count, total, total_sq = stats[0], stats[1 : 1 + c], stats[1 + c :]
        mean = total / count
        var = total_sq / count - mean * mean
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(mean.to(self.running_mean.dtype), alpha=m)
            unbiased = var * count / max(float(count) - 1, 1.0)
            self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
        y = (xd - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + self.eps)
        y = y.to(x.dtype)
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y


def convert_sync_bn(model: nn.Module, device: torch.device) -> nn.Module:
    """Replace every plain ``nn.BatchNorm2d`` by a synchronised one (torch's on CUDA, ours elsewhere)."""
    for name, child in list(model.named_children()):
        if type(child) is nn.BatchNorm2d:
            if device.type == "cuda":
                new: nn.Module = nn.SyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                                  child.track_running_stats)
            else:
                new = CpuSyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                       child.track_running_stats)
            new.load_state_dict(child.state_dict())
            new.train(child.training)
            setattr(model, name, new)
        elif isinstance(child, nn.modules.batchnorm._BatchNorm) and type(child) is not CpuSyncBatchNorm:
            raise ConfigError(f"cannot synchronise {type(child).__name__} at {name!r}; train with bn: frozen "
                              "or on one process")
        else:
            convert_sync_bn(child, device)
    return model


# ============================================================================ data
class DeterministicBatchSampler:
    """Yields this process's micro-batches for iterations ``[start_iter, max_iter)``.

    The stream of samples is position ``p = 0, 1, 2, ...``; position ``p`` is sample
    ``perm(seed, p // n)[p % n]`` (a fresh permutation per epoch, a function of ``(seed, epoch)``).
    Iteration ``t`` takes positions ``[t B, (t+1) B)`` (``B`` = global batch); process ``r`` of ``W``
    takes the ``r``-th contiguous share, cut into ``accum_steps`` micro-batches. Items are
    ``(index, position)``; the position seeds the sample's augmentation.
    """

    def __init__(self, n: int, *, seed: int, global_batch: int, accum_steps: int, rank: int = 0, world: int = 1,
                 start_iter: int = 0, max_iter: int, shuffle: bool = True) -> None:
        if n <= 0:
            raise ConfigError("the training set is empty")
        if global_batch % (world * accum_steps):
            raise ConfigError(f"batch size {global_batch} is not divisible by processes ({world}) x accumulation "
                              f"steps ({accum_steps})")
        self.n, self.seed, self.global_batch, self.accum = n, seed, global_batch, accum_steps
        self.rank, self.world, self.start_iter, self.max_iter, self.shuffle = rank, world, start_iter, max_iter, shuffle
        self.micro = global_batch // (world * accum_steps)
        self._perm: tuple[int, np.ndarray] | None = None

    def index(self, position: int) -> int:
        epoch, offset = divmod(position, self.n)
        if not self.shuffle:
            return offset
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, 0x5EED, epoch]).permutation(self.n))
        return int(self._perm[1][offset])

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        share = self.global_batch // self.world
        for it in range(self.start_iter, self.max_iter):
            base = it * self.global_batch + self.rank * share
            for a in range(self.accum):
                positions = range(base + a * self.micro, base + (a + 1) * self.micro)
                yield [(self.index(p), p) for p in positions]

    def __len__(self) -> int:
        return max(self.max_iter - self.start_iter, 0) * self.accum


class AugmentedDataset(torch.utils.data.Dataset):
    """``(index, position) -> (image tensor, label tensor)`` with the augmentation seeded by ``(seed, position)``."""

    def __init__(self, base: Any, transform: TrainTransform, seed: int) -> None:
        self.base, self.transform, self.seed = base, transform, seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, position = item
        image, label, _ = self.base[index]
        return self.transform(image, label, np.random.default_rng([self.seed, 0xA06, position]))


def build_train_dataset(data_cfg: Mapping[str, Any]) -> Any:
    """The raw training reader named by ``data`` (``dataset``, ``root``, ``split``, ``kwargs``)."""
    name = data_cfg.get("dataset")
    kwargs = dict(data_cfg.get("kwargs") or {})
    if name == "shapes":
        from .shapes import ShapesDataset

        return ShapesDataset(**kwargs)
    from .datasets import DatasetError, build_dataset

    root = data_cfg.get("root")
    if not root:
        raise ConfigError(f"data.root is not set for dataset {name!r} (pass --data-root PATH)")
    try:
        return build_dataset(name, root=root, split=data_cfg.get("split"), **kwargs)
    except (DatasetError, FileNotFoundError) as e:
        hint = data_cfg.get("how_to_get")
        raise ConfigError(f"{e}" + (f". {hint}" if hint else "")) from None
    except ValueError as e:
        raise ConfigError(str(e)) from None


def build_transform(cfg: Mapping[str, Any]) -> TrainTransform:
    aug = cfg["augment"]
    scales, scale_range = aug.get("scales"), aug.get("scale_range")
    return TrainTransform(
        preprocessing=build_preprocessing(cfg),
        crop_size=aug["crop_size"] if isinstance(aug["crop_size"], int) else tuple(aug["crop_size"]),
        scales=tuple(scales) if scales is not None else None,
        scale_range=tuple(scale_range) if scale_range is not None else None,
        flip=bool(aug.get("flip", True)),
        resize=aug.get("resize", "caffe"),
        ignore_index=int(cfg.get("ignore_index", 255)),
    )


def build_preprocessing(cfg: Mapping[str, Any]) -> Preprocessing:
    p = cfg["preprocessing"]
    return Preprocessing(channel_order=p["channel_order"], mean=tuple(p["mean"]),
                         std=tuple(p.get("std", (1.0, 1.0, 1.0))), scale=float(p.get("scale", 1.0)))


# ============================================================================ model and weights
def build_model(cfg: Mapping[str, Any]) -> nn.Module:
    from reference_models import build_model as registry_build

    m = cfg["model"]
    try:
        model = registry_build(m["name"], num_classes=int(m["num_classes"]), **(m.get("kwargs") or {}))
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model: {e}") from None
    bn = cfg.get("bn", {}) or {}
    if bn.get("momentum") is not None:
        for mod in model.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.momentum = float(bn["momentum"])
    return model


def _weights_hint(init: Mapping[str, Any]) -> str:
    return init.get("how_to_get") or "convert the official release first (see README)"


def load_init_weights(model: nn.Module, init: Mapping[str, Any], preprocessing: Preprocessing,
                      *, seed: int) -> dict[str, Any]:
    """Load ``init.weights`` into ``model``; return a provenance record.

    ``drop``: regexes of init keys with no place in the model (an ImageNet or COCO classifier);
    ``require``: regexes of model keys that must all come from the file; keys the file lacks
    outside ``require`` are freshly initialised (``head_init``: gaussian ``weight_std``, bias 0,
    as the official prototxt's fillers; or the builder's default when absent). Anything left
    unexplained raises, naming the keys.
    """
    path = init.get("weights")
    record: dict[str, Any] = {"weights": None}
    if path:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: init weights not found. {_weights_hint(init)}")
        state = load_state_dict(path)
        dropped = [k for k in state if any(re.search(p, k) for p in init.get("drop", ()))]
        for k in dropped:
            del state[k]
        prefix = init.get("prefix", "")
        if prefix:
            state = {prefix + k: v for k, v in state.items()}
        own = model.state_dict()
        unexpected = sorted(set(state) - set(own))
        if unexpected:
            raise ConfigError(f"{path}: {len(unexpected)} keys have no place in {type(model).__name__}, e.g. "
                              f"{unexpected[:3]}; add them to init.drop or check init.prefix")
        bad = [k for k in state if tuple(state[k].shape) != tuple(own[k].shape)]
        if bad:
            raise ConfigError(f"{path}: shape mismatch for {bad[:3]} (file {tuple(state[bad[0]].shape)} vs model "
                              f"{tuple(own[bad[0]].shape)})")
        missing = sorted(set(own) - set(state))
        required_missing = [k for k in missing if any(re.search(p, k) for p in init.get("require", ()))]
        if required_missing:
            raise ConfigError(f"{path}: lacks {len(required_missing)} required keys, e.g. {required_missing[:3]}")
        model.load_state_dict(state, strict=False)
        prov = provenance_path(path)
        if prov.is_file():
            info = json.loads(prov.read_text(encoding="utf-8"))
            _check_preprocessing(info.get("preprocessing"), preprocessing, prov)
        record = {"weights": str(path), "sha256": sha256_file(path), "loaded": len(state), "dropped": len(dropped),
                  "fresh": missing}
    else:
        record["fresh"] = sorted(model.state_dict())
    head = init.get("head_init")
    if head:
        g = torch.Generator().manual_seed(seed)
        fresh = set(record["fresh"])
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in fresh and re.search(head.get("match", ".*"), name):
                    if name.endswith("weight"):
                        p.copy_(torch.randn(p.shape, generator=g) * float(head.get("weight_std", 0.01)))
                    elif name.endswith("bias"):
                        p.fill_(float(head.get("bias", 0.0)))
    return record


def _check_preprocessing(recorded: Mapping[str, Any] | None, wanted: Preprocessing, where: Path) -> None:
    """The weights' provenance says how their inputs were made; training must feed the same."""
    if not recorded:
        return
    for key in ("channel_order", "mean", "std", "scale"):
        if key not in recorded:
            continue
        a, b = recorded[key], getattr(wanted, key)
        same = a == b if isinstance(a, str) else np.allclose(np.asarray(a, float), np.asarray(b, float))
        if not same:
            raise ConfigError(f"{where}: the weights expect preprocessing {key}={a!r} but the config gives {b!r}")


# ============================================================================ logging
class Logger:
    """tqdm progress (where it is, time left) + optional TensorBoard + a JSON-lines log, on rank 0 only."""

    def __init__(self, run_dir: Path, *, start: int, total: int, enabled: bool, progress: bool, tensorboard: bool):
        self.enabled = enabled
        self.bar = None
        self.tb = None
        self.log_path = run_dir / "train_log.jsonl"
        if not enabled:
            return
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc="train", unit="it", dynamic_ncols=True,
                            mininterval=2.0, smoothing=0.05, file=sys.stderr)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start)
            except ImportError:
                self.write("note: tensorboard is not installed; logging to train_log.jsonl only "
                           "(pip install tensorboard for curves)")

    def write(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def step(self, it: int, scalars: Mapping[str, float], *, log: bool) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{scalars['loss']:.4f}", lr=f"{scalars['lr']:.2e}", refresh=False)
        if log:
            if self.tb is not None:
                for k, v in scalars.items():
                    self.tb.add_scalar(f"train/{k}", v, it)
            with open(self.log_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"iteration": it, **scalars}) + "\n")
            if self.bar is None:
                self.write(f"iteration {it}: " + ", ".join(f"{k} {v:.4g}" for k, v in scalars.items()))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()


# ============================================================================ training
def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _device(cfg: Mapping[str, Any], d: Dist) -> torch.device:
    want = cfg.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
    if want == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device cuda requested but CUDA is not available (use --device cpu)")
        torch.cuda.set_device(d.local_rank)
        return torch.device("cuda", d.local_rank)
    return torch.device(want)


def train(cfg: dict[str, Any], run_dir: str | os.PathLike) -> Path:
    """Run (or resume) the training ``cfg`` describes in ``run_dir``; return the final weights path."""
    run_dir = Path(run_dir)
    d = Dist()
    device = _device(cfg, d)
    d.init(device)
    solver = cfg["solver"]
    max_iter = int(solver["iterations"])
    global_batch, accum = int(solver["batch_size"]), int(solver.get("accum_steps", 1))
    seed = int(cfg.get("seed", 0))
    amp = bool(cfg.get("amp", False))
    if amp and device.type != "cuda":
        print("note: --amp needs CUDA; training in float32 on the CPU", file=sys.stderr)
        amp = False

    # ---------------------------------------------------------------- resume or start
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = latest_checkpoint(run_dir)
    saved_cfg_path = run_dir / "config.yaml"
    if saved_cfg_path.is_file():
        saved = yaml.safe_load(saved_cfg_path.read_text(encoding="utf-8"))
        if _hash_config(saved) != _hash_config(cfg):
            diff = "; ".join(_diff(saved, cfg)[:6])
            raise ConfigError(f"{run_dir} holds a run of a different config ({diff}); use another --out "
                              "or delete the folder")
    elif d.main:
        from converters.io import write_atomic

        text = yaml.safe_dump(cfg, sort_keys=False)
        write_atomic(saved_cfg_path, lambda p: p.write_text(text, encoding="utf-8"))

    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    import random

    random.seed(seed)
    preprocessing = build_preprocessing(cfg)
    model = build_model(cfg)
    init_record: dict[str, Any] = {}
    if ckpt_path is None:
        init_record = load_init_weights(model, cfg.get("init") or {}, preprocessing, seed=seed)
    bn_mode = (cfg.get("bn") or {}).get("mode", "frozen")
    if d.enabled and bn_mode == "train":
        model = convert_sync_bn(model, device)
    model.to(device)
    if cfg.get("channels_last"):
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, kind=solver.get("optimizer", "sgd"), base_lr=float(solver["base_lr"]),
                                momentum=float(solver.get("momentum", 0.9)),
                                weight_decay=float(solver.get("weight_decay", 0.0)),
                                rules=solver.get("param_rules") or ())
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    start = 0
    if ckpt_path is not None:
        ckpt = load_checkpoint(ckpt_path)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        init_record = ckpt.get("init", {})
        start = int(ckpt["iteration"])
        states = ckpt["rng"]
        set_rng_state(states[d.rank % len(states)])  # a different process count resumes, though not bit-exactly
    net: nn.Module = model
    if d.enabled:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    # ---------------------------------------------------------------- data
    base = build_train_dataset(cfg["data"])
    dataset = AugmentedDataset(base, build_transform(cfg), seed)
    sampler = DeterministicBatchSampler(len(base), seed=seed, global_batch=global_batch, accum_steps=accum,
                                        rank=d.rank, world=d.world, start_iter=start, max_iter=max_iter)
    workers = int(cfg.get("workers", 0))
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=workers, pin_memory=device.type == "cuda",
        persistent_workers=False, prefetch_factor=4 if workers else None,
        generator=torch.Generator().manual_seed(seed),  # keeps the global torch RNG untouched (dropout)
    )
    loss_cfg = cfg["loss"]
    criterion = SegmentationLoss(loss_cfg["kind"], num_classes=int(cfg["model"]["num_classes"]),
                                 ignore_index=int(cfg.get("ignore_index", 255)),
                                 normalization=loss_cfg.get("normalization", "per_image"),
                                 shrink=loss_cfg.get("shrink"))

    # ---------------------------------------------------------------- loop
    log_every = int(cfg.get("log_every", 20))
    ckpt_every = int(cfg.get("checkpoint_every", 1000))
    logger = Logger(run_dir, start=start, total=max_iter, enabled=d.main, progress=bool(cfg.get("progress", True)),
                    tensorboard=bool(cfg.get("tensorboard", True)))
    if start:
        logger.write(f"resuming {run_dir} at iteration {start} of {max_iter}")
    elif d.main:
        logger.write(f"training {cfg['name']}: {max_iter} iterations of {global_batch} images "
                     f"({d.world} process(es) x {accum} accumulation step(s) x {sampler.micro}) on {device}")
    autocast = torch.autocast(device.type, dtype=torch.float16, enabled=amp) if amp else contextlib.nullcontext()
    net.train()
    batches = iter(loader)
    t0 = time.time()
    for it in range(start, max_iter):
        lr = poly_lr(float(solver["base_lr"]), it, max_iter, float(solver.get("lr_power", 0.9)))
        set_lr(optimizer, lr)
        micro = [next(batches) for _ in range(accum)]
        targets = [criterion.targets(y.to(device, non_blocking=True)) for _, y in micro]
        dens: dict[str, torch.Tensor] = {}
        for t in targets:
            for k, v in criterion.denominators(t).items():
                dens[k] = dens.get(k, 0) + v
        keys = sorted(dens)
        packed = d.all_reduce(torch.stack([dens[k] for k in keys]).to(device))
        dens = {k: max(float(packed[i]), 1.0) for i, k in enumerate(keys)}
        optimizer.zero_grad(set_to_none=True)
        loss_value = torch.zeros((), dtype=torch.float64, device=device)
        term_values = {k: 0.0 for k in keys}
        for a, ((x, _), t) in enumerate(zip(micro, targets)):
            x = x.to(device, non_blocking=True)
            if cfg.get("channels_last"):
                x = x.contiguous(memory_format=torch.channels_last)
            sync = contextlib.nullcontext() if not d.enabled or a == accum - 1 else net.no_sync()
            with sync:
                with autocast:
                    out = net(x)
                terms = criterion(out, t)
                loss = sum(terms[k] / dens[k] for k in terms) * d.world  # DDP averages gradients over processes
                scaler.scale(loss).backward()
            loss_value += loss.detach().double() / d.world
            for k in terms:
                term_values[k] += float(terms[k].detach()) / dens[k]
        scaler.step(optimizer)
        scaler.update()
        done = it + 1
        log = done % log_every == 0 or done == max_iter
        scalars = {"loss": float(d.all_reduce(loss_value)) if log else float(loss_value) * d.world, "lr": lr}
        if log:
            scalars.update({f"loss_{k}": v for k, v in term_values.items()} if len(term_values) > 1 else {})
            scalars["sec_per_it"] = (time.time() - t0) / (done - start)
        if not math.isfinite(scalars["loss"]):
            raise FloatingPointError(f"loss is {scalars['loss']} at iteration {done}; lower the learning rate")
        logger.step(done, scalars, log=log)
        if done % ckpt_every == 0 and done < max_iter:
            _save(run_dir, done, model, optimizer, scaler, cfg, init_record, d, keep=int(cfg.get("keep_checkpoints", 2)))
    logger.close()
    final = run_dir / "final.pth"
    _save(run_dir, max_iter, model, optimizer, scaler, cfg, init_record, d, keep=int(cfg.get("keep_checkpoints", 2)))
    if d.main:
        state = {k: v for k, v in _unwrap(model).state_dict().items()}
        save_state_dict(state, final)
        m = cfg["model"]
        write_json_atomic(provenance_path(final), {
            "format": "deeplab-repro provenance v1",
            "architecture": m["name"],
            "num_classes": int(m["num_classes"]),
            "model_kwargs": m.get("kwargs") or {},
            "load_with": f"reference_models.build_model({m['name']!r}, num_classes={m['num_classes']})",
            "trained_with": {"tool": "python -m reproduce.train", "config": cfg["name"], "iterations": max_iter,
                             "processes": d.world, "torch": torch.__version__},
            "config": cfg,
            "init": init_record,
            "preprocessing": preprocessing.to_dict(),
            "weights": {"file": final.name, "sha256": sha256_file(final)},
            "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        })
        logger.write(f"wrote {final} ({max_iter} iterations, {time.time() - t0:.0f} s this session)")
    d.barrier()
    return final


def _save(run_dir: Path, it: int, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: Any,
          cfg: Mapping[str, Any], init_record: Mapping[str, Any], d: Dist, *, keep: int) -> None:
    # Every rank's RNG state (dropout masks differ per rank), gathered to rank 0.
    states: list[Any] = [None] * d.world
    if d.enabled:
        dist.all_gather_object(states, rng_state())
    else:
        states = [rng_state()]
    if d.main:
        save_checkpoint(run_dir, it, {"model": _unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                                      "scaler": scaler.state_dict(), "rng": states, "config": dict(cfg),
                                      "init": dict(init_record)}, keep=keep)
    d.barrier()


# ============================================================================ checks and smoke runs
def check_inputs(cfg: Mapping[str, Any]) -> list[str]:
    """Problems that would stop the run (missing data, missing weights), each with what to do."""
    problems = []
    try:
        ds = build_train_dataset(cfg["data"])
        if len(ds) == 0:
            problems.append(f"data: the {cfg['data'].get('split')} split is empty")
    except ConfigError as e:
        problems.append(f"data: {e}")
    init = cfg.get("init") or {}
    if init.get("weights") and not Path(init["weights"]).is_file():
        problems.append(f"weights: {init['weights']} not found. {_weights_hint(init)}")
    return problems


def smoke_config(cfg: dict[str, Any], smoke_dir: Path) -> dict[str, Any]:
    """``cfg`` with its ``smoke.overrides`` applied and ``{smoke}`` in string values replaced by ``smoke_dir``."""
    smoke = cfg.get("smoke") or {}
    out = apply_overrides(cfg, smoke.get("overrides") or {})

    def sub(v: Any) -> Any:
        if isinstance(v, str):
            return v.replace("{smoke}", str(smoke_dir))
        if isinstance(v, dict):
            return {k: sub(x) for k, x in v.items()}
        if isinstance(v, list):
            return [sub(x) for x in v]
        return v

    out = sub(out)
    out["name"] = f"{cfg['name']}-smoke"
    return out


def write_smoke_inputs(cfg: Mapping[str, Any], smoke_dir: Path) -> None:
    """Write the miniature official-format data (``smoke.data``) and source weights (``smoke.source``)."""
    from . import synthetic

    smoke = cfg.get("smoke") or {}
    smoke_dir.mkdir(parents=True, exist_ok=True)
    kind = smoke.get("data")
    sizes = tuple(smoke.get("sizes", (200, 260)))
    if kind == "voc_aug":
        synthetic.write_voc_aug_sources(smoke_dir / "data", seed=0, sizes=sizes)
    elif kind == "cocostuff10k":
        synthetic.write_cocostuff10k(smoke_dir / "data", n_train=8, n_test=3, sizes=sizes)
    elif kind == "cocostuff164k":
        synthetic.write_cocostuff164k(smoke_dir / "data", n_train=8, n_val=3, sizes=sizes)
    else:
        raise ConfigError(f"smoke.data must be voc_aug, cocostuff10k or cocostuff164k, got {kind!r}")
    source = smoke.get("source") or {}
    target = smoke_dir / "weights" / source.get("file", "")
    if source.get("caffe"):
        from converters.caffe import synth

        if not target.is_file():
            synth.official_caffemodel(source["caffe"], target, num_classes=int(source["num_classes"]))
    elif source.get("tf"):
        from ._smoke import CheckError, make_tf_checkpoint  # writes a TF checkpoint of the release's variables

        if not target.with_name(target.name + ".index").is_file():
            try:
                make_tf_checkpoint(source["tf"], target)
            except CheckError as e:
                raise ConfigError(str(e)) from None


# ============================================================================ CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m reproduce.train",
        description="Train a DeepLab model from a config (reproduce/configs/*.yaml); resumes automatically.",
        epilog="Multi-GPU: torchrun --nproc_per_node N -m reproduce.train --config ... "
               "(DistributedDataParallel; BatchNorm is synchronised when the config trains it).",
    )
    p.add_argument("--config", required=True, type=Path, help="a YAML config, e.g. reproduce/configs/<row>.yaml")
    p.add_argument("--out", type=Path, help="run folder (default: runs/<config name>); rerun to resume")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override any config value (YAML-parsed), e.g. --set solver.base_lr=0.001; repeatable")
    p.add_argument("--data-root", help="dataset root (data.root)")
    p.add_argument("--init-weights", help="init weights file (init.weights); 'none' trains from scratch")
    p.add_argument("--iterations", type=int, help="solver.iterations")
    p.add_argument("--batch-size", type=int, help="global batch size (solver.batch_size)")
    p.add_argument("--accum-steps", type=int, help="micro-batches per iteration and process (solver.accum_steps)")
    p.add_argument("--device", help="cpu, cuda (default: cuda when available)")
    p.add_argument("--workers", type=int, help="DataLoader worker processes")
    p.add_argument("--amp", action="store_true", help="mixed precision (CUDA: autocast float16 + GradScaler)")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format (faster on GPUs)")
    p.add_argument("--checkpoint-every", type=int, help="iterations between checkpoints")
    p.add_argument("--seed", type=int, help="data order, augmentation and head init seed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines instead)")
    p.add_argument("--check", action="store_true", help="only check that data and init weights are in place")
    p.add_argument("--smoke", type=Path, metavar="DIR",
                   help="smoke run: apply the config's smoke overrides with data and weights under DIR")
    p.add_argument("--write-smoke-inputs", type=Path, metavar="DIR",
                   help="write the config's miniature data and official-format source weights under DIR and exit")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return p


def resolve_config(args: argparse.Namespace) -> dict[str, Any]:
    cfg = load_config(args.config)
    cfg = apply_overrides(cfg, args.overrides)
    if args.smoke:
        cfg = smoke_config(cfg, args.smoke)
    flags = {
        "data.root": args.data_root,
        "init.weights": None if args.init_weights in (None,) else (None if args.init_weights == "none" else
                                                                  args.init_weights),
        "solver.iterations": args.iterations,
        "solver.batch_size": args.batch_size,
        "solver.accum_steps": args.accum_steps,
        "device": args.device,
        "workers": args.workers,
        "checkpoint_every": args.checkpoint_every,
        "seed": args.seed,
    }
    for key, value in flags.items():
        if value is not None or (key == "init.weights" and args.init_weights == "none"):
            _set_path(cfg, key, value)
    if args.amp:
        cfg["amp"] = True
    if args.channels_last:
        cfg["channels_last"] = True
    if args.no_progress:
        cfg["progress"] = False
    return cfg


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = resolve_config(args)
        if args.write_smoke_inputs:
            write_smoke_inputs(cfg, args.write_smoke_inputs)
            print(f"wrote smoke inputs under {args.write_smoke_inputs}")
            return 0
        if args.print_config:
            print(yaml.safe_dump(cfg, sort_keys=False), end="")
            return 0
        if args.check:
            problems = check_inputs(cfg)
            for problem in problems:
                print(f"missing: {problem}", file=sys.stderr)
            if not problems:
                print(f"ok: data and weights for {cfg['name']} are in place")
            return 1 if problems else 0
        out = args.out or Path("runs") / cfg["name"]
        train(cfg, out)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 130
    finally:
        if dist.is_initialized():
            shutdown_distributed()
    return 0


def shutdown_distributed(timeout: float = 60.0) -> None:
    """Destroy the process group so that no rank exits while another is still closing its gloo pairs.

    A rank that exits first resets the sockets of a slower rank's gloo threads, which then abort
    the process ("terminate called without an active exception") after the work is done. After
    the destroy, every rank counts itself in on the launcher's store and waits for the others.
    """
    store = dist.distributed_c10d._get_default_store()  # private, but the one store every rank shares
    world = dist.get_world_size()
    dist.barrier()
    dist.destroy_process_group()
    key = "deeplab_repro/shutdown"
    store.add(key, 1)
    deadline = time.monotonic() + timeout
    while store.add(key, 0) < world and time.monotonic() < deadline:
        time.sleep(0.05)


if __name__ == "__main__":
    sys.exit(main())
