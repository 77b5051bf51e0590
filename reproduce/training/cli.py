"""``python -m reproduce.train`` / ``deeplab-train``: train a DeepLab model from a config; resumes automatically."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from converters.cli import program_name, run_main

from .config import (
    Config,
    ConfigError,
    apply_overrides,
    find_release,
    init_weights_path,
    load_config,
    release_format,
    release_source,
    run_config_matches,
    smoke_config,
    to_dict,
    weights_hint,
)

__all__ = ["build_parser", "resolve_config", "check_inputs", "write_smoke_inputs", "run", "main"]

EPILOG = """\
examples (from the repository root):
  python -m reproduce.train --config reproduce/configs/deeplabv2_resnet101_msc-cocoinit-vocaug-321-20k.yaml
  python -m reproduce.train --config CONFIG --out runs/my_run --iterations 100 --set solver.base_lr=0.001
  python -m reproduce.train --config CONFIG --check          # only check that data and weights are in place
  torchrun --nproc_per_node 4 -m reproduce.train --config CONFIG --amp --channels-last   # 4 GPUs

A run folder (--out, default runs/<config name>) that holds a checkpoint of a config computing the same
thing is resumed exactly; a config that changes the computation is refused, naming the keys.
Multi-GPU: DistributedDataParallel under torchrun; BatchNorm is synchronised when the config trains it.
exit codes: 0 done, 1 bad input (one line on stderr), 2 usage, 130 interrupted (rerun to resume)."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=program_name("reproduce.train"),
        description="Train a DeepLab model from a config (reproduce/configs/*.yaml); resumes automatically.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", required=True, type=Path, help="a YAML config, e.g. reproduce/configs/<row>.yaml")
    p.add_argument("--out", type=Path, help="run folder (default: runs/<config name>); rerun to resume")
    p.add_argument("--framework", choices=("pytorch", "keras"), default="pytorch",
                   help="train in PyTorch (default) or in Keras/TensorFlow (same config, data and solver; "
                        "MirroredStrategy over the visible GPUs; writes final.pth and final.weights.h5)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a config value (YAML-parsed), e.g. --set solver.base_lr=0.001; repeatable; "
                        "unknown keys are errors")
    p.add_argument("--data-root", help="dataset root (data.root)")
    p.add_argument("--models-dir", help="folder of the converted init weights of init.release (default data/models)")
    p.add_argument("--init-weights", help="init weights file (init.weights); 'none' trains from scratch")
    p.add_argument("--iterations", type=int, help="solver.iterations")
    p.add_argument("--batch-size", type=int, help="global batch size (solver.batch_size)")
    p.add_argument("--accum-steps", type=int, help="micro-batches per iteration and process (solver.accum_steps)")
    p.add_argument("--device", help="cpu, cuda or auto (default: auto, cuda when available)")
    p.add_argument("--workers", type=int, help="DataLoader worker processes")
    p.add_argument("--amp", action="store_true", help="mixed precision (CUDA: autocast float16 + GradScaler)")
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic kernels where torch has them (CUDA: slower; not every op has one)")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format (faster on GPUs)")
    p.add_argument("--checkpoint-every", type=int, help="iterations between checkpoints")
    p.add_argument("--eval-every", type=int, help="evaluate every N iterations and keep best.pth beside last.pth")
    p.add_argument("--eval-split", help="split evaluated during training (default: the config's eval.split)")
    p.add_argument("--on-error", choices=("error", "skip"),
                   help="a corrupt training sample: stop naming the file (default) or skip it and count it")
    p.add_argument("--seed", type=int, help="data order, augmentation and head init seed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines instead)")
    p.add_argument("--check", action="store_true", help="only check that data and init weights are in place")
    p.add_argument("--smoke", type=Path, metavar="DIR",
                   help="smoke run: apply the config's smoke overrides with data and weights under DIR")
    p.add_argument("--write-smoke-inputs", type=Path, metavar="DIR",
                   help="write the config's miniature data and official-format source weights under DIR and exit")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return p


def resolve_config(args: argparse.Namespace) -> Config:
    cfg = load_config(args.config)
    if args.overrides:
        cfg = apply_overrides(cfg, args.overrides)
    if args.smoke:
        cfg = smoke_config(cfg, args.smoke)
    flags: dict[str, Any] = {
        "data.root": args.data_root,
        "models_dir": args.models_dir,
        "init.weights": args.init_weights,
        "solver.iterations": args.iterations,
        "solver.batch_size": args.batch_size,
        "solver.accum_steps": args.accum_steps,
        "device": args.device,
        "workers": args.workers,
        "checkpoint_every": args.checkpoint_every,
        "eval_every": args.eval_every,
        "eval_split": args.eval_split,
        "on_error": args.on_error,
        "seed": args.seed,
        "amp": True if args.amp else None,
        "deterministic": True if args.deterministic else None,
        "channels_last": True if args.channels_last else None,
        "progress": False if args.no_progress else None,
    }
    overrides = {k: v for k, v in flags.items() if v is not None}
    if args.init_weights == "none":
        overrides.update({"init.weights": None, "init.release": None})
    return apply_overrides(cfg, overrides) if overrides else cfg


def check_inputs(cfg: Config) -> list[str]:
    """Problems that would stop the run (missing data, missing weights), each with what to do."""
    from .data import build_train_dataset

    problems = []
    try:
        ds = build_train_dataset(cfg)
        if len(ds) == 0:
            problems.append(f"data: the {cfg.data.split} split is empty")
    except ConfigError as e:
        problems.append(f"data: {e}")
    weights = init_weights_path(cfg)
    if weights is not None and not weights.is_file():
        problems.append(f"weights: {weights} not found. {weights_hint(cfg)}")
    return problems


def smoke_source_path(cfg: Config, smoke_dir: Path) -> Path | None:
    """Where the random official-format source file of ``init.release`` goes in a smoke run."""
    rel = find_release(cfg.init.release) if cfg.init.release else None
    return None if rel is None else release_source(rel, smoke_dir / "weights")


def write_smoke_inputs(cfg: Config, smoke_dir: Path) -> None:
    """Write the miniature official-format data (``smoke.data``) and source weights of ``init.release``."""
    from .. import synthetic

    smoke = cfg.smoke
    if smoke is None:
        raise ConfigError(f"config {cfg.name} has no smoke section")
    smoke_dir.mkdir(parents=True, exist_ok=True)
    sizes = tuple(smoke.sizes)
    if smoke.data == "voc_aug":
        synthetic.write_voc_aug_sources(smoke_dir / "data", seed=0, sizes=sizes)
    elif smoke.data == "cocostuff10k":
        synthetic.write_cocostuff10k(smoke_dir / "data", n_train=8, n_test=3, sizes=sizes)
    else:
        synthetic.write_cocostuff164k(smoke_dir / "data", n_train=8, n_val=3, sizes=sizes)
    rel = find_release(cfg.init.release) if cfg.init.release else None
    if rel is None:
        return
    target = release_source(rel, smoke_dir / "weights")
    if release_format(rel) == "caffe":
        if not smoke.source.caffe:
            raise ConfigError(f"config {cfg.name}: smoke.source.caffe must name the topology of {rel.name}")
        from converters.caffe import synth

        if not target.is_file():
            synth.official_caffemodel(smoke.source.caffe, target, num_classes=rel.num_classes)
    else:
        from .._smoke import CheckError, make_tf_checkpoint  # writes a TF checkpoint of the release's variables

        if not target.with_name(target.name + ".index").is_file():
            try:
                make_tf_checkpoint(rel.name, target)
            except CheckError as e:
                raise ConfigError(str(e)) from None


def check_config_kept(config_path: Path, run_dir: Path, cfg: Config) -> None:
    """Refuse (one line) a run that would write over the user's ``--config``: when it is the run folder's own
    ``config.yaml`` (``train --config RUN/config.yaml --out RUN``, the way to resume), the run saves its
    resolved config there. A file that already says the same is left byte for byte
    (:func:`reproduce.training.config.write_run_config`); one that the command line changes is refused."""
    saved = run_dir / "config.yaml"
    try:
        same_file = saved.is_file() and os.path.samefile(saved, config_path)
    except OSError:
        return
    if same_file and not run_config_matches(saved, cfg):
        raise ConfigError(f"{config_path}: is the run's own config.yaml in --out {run_dir}, and this command changes "
                          "what it says (flags, --set or base:); the run would write over it. Pass a copy as "
                          "--config, or drop the changes")


def run(args: argparse.Namespace) -> None:
    """Do what the parsed command line says (raises ConfigError for bad input)."""
    try:
        cfg = resolve_config(args)
        if args.write_smoke_inputs:
            write_smoke_inputs(cfg, args.write_smoke_inputs)
            print(f"wrote smoke inputs under {args.write_smoke_inputs}")
            return
        if args.print_config:
            print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
            return
        if args.check:
            problems = check_inputs(cfg)
            for problem in problems:
                print(f"missing: {problem}", file=sys.stderr)
            if problems:
                raise ConfigError(f"{len(problems)} input(s) of {cfg.name} missing (see above)")
            print(f"ok: data and weights for {cfg.name} are in place")
            return
        out = args.out or Path("runs") / cfg.name
        check_config_kept(args.config, out, cfg)
        if args.framework == "keras":
            from .keras_loop import train_keras

            train_keras(cfg, out)
        else:
            from .distributed import distributed_job
            from .loop import train

            with distributed_job():  # an error on one rank ends every rank (no barrier on the way out)
                train(cfg, out)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume from the last checkpoint", file=sys.stderr)
        raise


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0 done, 1 bad input (one line ``error: ...``), 2 usage, 130 interrupted."""
    return run_main(build_parser(), run, argv)
