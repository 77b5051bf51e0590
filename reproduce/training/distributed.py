"""Where this process sits in a ``torchrun`` job, BatchNorm synchronised over processes, clean shutdown."""

from __future__ import annotations

import os
import time

import torch
import torch.distributed as dist
from torch import nn

from .config import ConfigError

__all__ = ["Dist", "CpuSyncBatchNorm", "convert_sync_bn", "shutdown_distributed", "unwrap"]


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


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


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
