"""Progress (tqdm), TensorBoard and the JSON-lines log of a run, on rank 0 only."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path

__all__ = ["Logger"]


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

    def step(self, it: int, scalars: Mapping[str, float | None], *, log: bool, advance: bool = True) -> None:
        if not self.enabled:
            return
        if self.bar is not None and advance:
            self.bar.update(1)
            if "loss" in scalars:  # read from the device at logged iterations only
                self.bar.set_postfix(loss=f"{scalars['loss']:.4f}", lr=f"{scalars['lr']:.2e}", refresh=False)
        if log:
            if self.tb is not None:
                for k, v in scalars.items():
                    if v is not None:
                        self.tb.add_scalar(f"train/{k}", v, it)
            with open(self.log_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"iteration": it, **scalars}, allow_nan=False) + "\n")
            if self.bar is None:
                self.write(f"iteration {it}: " + ", ".join(f"{k} {v:.4g}" if v is not None else f"{k} -"
                                                           for k, v in scalars.items()))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
