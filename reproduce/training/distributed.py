"""Where this process sits in a ``torchrun`` job, BatchNorm synchronised over processes, how the job ends.

A distributed run never hangs:

- the process group has a timeout (the config's ``dist_timeout``, seconds), so a collective
  that waits longer fails instead of waiting for ever (NCCL's watchdog or gloo's own timeout);
- while rank 0 evaluates, the other ranks wait on the launcher's key-value store
  (:meth:`Dist.publish` / :meth:`Dist.wait_for`), not in a collective, for at most the same timeout;
- an error on one rank ends every rank within seconds (:func:`distributed_job`): the failing rank writes
  ``error: rank R of W: <cause>`` (one line), records the cause on the store and aborts the process group
  without meeting the others in a collective; the others' pending collectives then fail (gloo) or torchrun
  stops them when the failing process exits (NCCL), and they exit without a second message. A failure
  that every rank decides alike (:class:`EveryRankError`: a non-finite all-reduced loss) is said by rank 0.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from converters.errors import DeeplabError, ReportedError

from .config import ConfigError

__all__ = ["Dist", "CpuSyncBatchNorm", "convert_sync_bn", "shutdown_distributed", "unwrap", "distributed_job",
           "EveryRankError"]


class EveryRankError(DeeplabError):
    """A failure every rank raises alike (decided on all-reduced values): only rank 0 reports it."""


def _key(name: str) -> str:
    """A store key of this attempt of the job (torchrun's restarts share the launcher's store)."""
    return f"deeplab_repro/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/{name}"


class Dist:
    """This process's place in a ``torchrun`` job (or a single process)."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.timeout_s: float | None = None  # the process group's timeout, set by init

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def init(self, device: torch.device, timeout_s: float) -> None:
        """Join the job's process group (NCCL on CUDA, gloo elsewhere); a collective fails after ``timeout_s``."""
        self.timeout_s = float(timeout_s)
        if self.enabled and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                    timeout=timedelta(seconds=self.timeout_s),
                                    device_id=device if device.type == "cuda" else None)

    def publish(self, key: str, value: Any) -> None:
        """Rank 0: make ``value`` (JSON) available to :meth:`wait_for` on every rank, without a collective."""
        if self.enabled:
            _store().set(_key(key), json.dumps(value))

    def wait_for(self, key: str) -> Any:
        """The value rank 0 :meth:`publish`-ed under ``key``, waiting up to the job's timeout.

        A store wait, not a collective: NCCL's watchdog does not run while rank 0 works alone (an
        evaluation), and a rank 0 that fails makes torchrun stop this process.
        """
        full, timeout = _key(key), self.timeout_s or 1800.0  # 1800 s: torch's own default
        try:
            _store().wait([full], timedelta(seconds=timeout))
        except RuntimeError as e:  # the store's timeout (torch's DistStoreError is a RuntimeError)
            raise ConfigError(f"rank {self.rank} waited {timeout:.0f} s for rank 0 ({key}) in vain "
                              f"({' '.join(str(e).split())[:200]}); raise dist_timeout if the evaluation needs "
                              "longer") from None
        return json.loads(_store().get(full))

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


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _store() -> Any:
    return dist.distributed_c10d._get_default_store()  # private, but the one store every rank shares


def _failure_elsewhere() -> str | None:
    """The cause another rank recorded with :func:`distributed_job`, if any (never waits)."""
    try:
        store = _store()
        if store.check([_key("failed")]):
            return store.get(_key("failed")).decode("utf-8", "replace")
    except Exception:  # noqa: BLE001 - the store may be gone with the launcher; then nobody recorded one
        return None
    return None


def _abort() -> None:
    """Leave the process group at once, without meeting the other ranks (it aborts NCCL communicators)."""
    with contextlib.suppress(Exception):  # already broken by the failure: nothing left to end cleanly
        dist.destroy_process_group()


@contextlib.contextmanager
def distributed_job() -> Iterator[None]:
    """End the process group however the body ends, so that no rank is left waiting for another.

    Success: :func:`shutdown_distributed` (every rank counts itself out). An exception on this rank:
    it is re-raised as one line ``rank R of W: <cause>`` (a :class:`DeeplabError`; other exceptions
    keep their type and traceback), after the cause is recorded on the store and the group aborted.
    An exception that follows another rank's recorded failure (a collective broken by that rank's
    exit) becomes a :class:`ReportedError`: the failing rank has already said why.
    """
    try:
        yield
    except BaseException as exc:
        if not dist.is_initialized():
            raise
        rank, world = dist.get_rank(), dist.get_world_size()
        elsewhere = _failure_elsewhere()
        if (elsewhere is not None or (isinstance(exc, EveryRankError) and rank != 0)) and \
                not isinstance(exc, KeyboardInterrupt):
            _abort()  # another rank reports the cause
            raise ReportedError(f"rank {rank} stopped after {elsewhere or exc}") from None
        cause = " ".join(str(exc).split()) or type(exc).__name__
        line = f"rank {rank} of {world}: {cause}"
        with contextlib.suppress(Exception):
            _store().compare_set(_key("failed"), "", line)  # the first failure wins
        _abort()
        if isinstance(exc, (DeeplabError, OSError)):
            raise DeeplabError(line) from None
        raise
    else:
        if dist.is_initialized():
            shutdown_distributed()


def shutdown_distributed(timeout: float = 60.0) -> None:
    """Destroy the process group so that no rank exits while another is still closing its gloo pairs.

    A rank that exits first resets the sockets of a slower rank's gloo threads, which then abort
    the process ("terminate called without an active exception") after the work is done. After
    the destroy, every rank counts itself in on the launcher's store and waits for the others.
    """
    store = _store()
    world = dist.get_world_size()
    dist.barrier()
    dist.destroy_process_group()
    key = _key("shutdown")
    store.add(key, 1)
    deadline = time.monotonic() + timeout
    while store.add(key, 0) < world and time.monotonic() < deadline:
        time.sleep(0.05)
