"""``python -m reproduce.recipe NAME`` / ``deeplab-recipe NAME``: a published row, end to end, in one process.

A recipe is data: a training config with a ``recipe:`` block (reproduce/configs/*.yaml; its
``init.release``, ``eval.variants`` and their ``compare_to`` rows say what to convert, how to
evaluate and what to compare with), or an official-weights recipe (reproduce/configs/official/*.yaml:
convert a released model and evaluate it). Steps, each announced as ``== [i/n] ...``:

  train recipe:    convert the init release -> [prepare data] -> check -> train (resumes; keeps best.pth
                   when eval_every is set) -> evaluate each variant -> report
  official recipe: check inputs -> convert the release -> evaluate each variant -> report
  custom:          your own folder of images and masks (reproduce/custom.py): check the data -> split ->
                   init weights with a new head -> train (keeps best.pth) -> evaluate -> report

Rerunning the same command skips finished steps and resumes training. ``--smoke`` runs every step on
generated miniature data and random-weight official-format source files (numbers are meaningless).
The shell scripts ``reproduce/*.sh`` call this module.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from converters.cli import program_name
from converters.errors import DeeplabError
from reproduce.training.config import (
    CONFIGS_DIR,
    Config,
    ConfigError,
    EvalCfg,
    _build,
    apply_overrides,
    find_release,
    init_weights_path,
    load_config,
    release_format,
    release_source,
    smoke_config,
    write_run_config,
)
from reproduce.yamlfile import YAMLFileError, load_yaml

__all__ = ["OfficialRecipe", "find_recipes", "main"]

OFFICIAL_DIR = CONFIGS_DIR / "official"
CUSTOM_USAGE = "custom --data DIR --from RELEASE_OR_WEIGHTS [--classes classes.txt] [--val-fraction 0.1]"
SMOKE_NOTE = " (SMOKE RUN: random weights, miniature data; the numbers mean nothing)"


class RecipeError(ConfigError):
    """A missing input or a failed step: one line (exit 1)."""


@dataclass
class OfficialRecipe:
    """Convert an official released model and evaluate it (reproduce/configs/official/<name>.yaml)."""

    name: str
    title: str
    release: str                              # converters/releases.py: the released model
    smoke: Literal["v2", "v3plus"]            # reproduce._smoke kind (miniature VOC + random official weights)
    eval: EvalCfg = field(default_factory=EvalCfg)
    report_title: str = ""
    smoke_help: str = ""
    smoke_crop: int = 129
    options: list[str] = field(default_factory=list)   # extra flags: amp, crf-workers


def _load_official(path: Path) -> OfficialRecipe:
    try:
        data = load_yaml(path)
    except YAMLFileError as e:
        raise RecipeError(str(e)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"{path}: cannot read the recipe ({' '.join(str(e).split())})") from None
    try:
        rec = _build(OfficialRecipe, {"name": path.stem, **(data or {})}, "")
    except ConfigError as e:
        raise RecipeError(f"{path}: {e}") from None
    if find_release(rec.release) is None:
        raise RecipeError(f"{path}: release {rec.release!r} is not in converters/releases.py")
    return rec


def _weights_help(release: str) -> str:
    """Where an official recipe looks for its release's file, from the release registry."""
    rel = find_release(release)
    return (f"folder holding {rel.folder}/{rel.file_name} of release {rel.name} "
            f"(python -m reproduce.download {rel.name} puts it there; default: data/models)")


def find_recipes() -> dict[str, Path]:
    """Recipe name -> its file (train configs with a ``recipe:`` block, then official recipes)."""
    out: dict[str, Path] = {}
    for path in sorted(CONFIGS_DIR.glob("*.yaml")):
        data = load_yaml(path) or {}
        if isinstance(data.get("recipe"), dict) and data["recipe"].get("name"):
            out[data["recipe"]["name"]] = path
    for path in sorted(OFFICIAL_DIR.glob("*.yaml")):
        out[path.stem] = path
    return out


def load_recipe(name: str) -> Config | OfficialRecipe:
    recipes = find_recipes()
    path = recipes.get(name)
    if path is None:
        cand = Path(name)
        if cand.suffix == ".yaml" and cand.is_file():
            path = cand
        elif (CONFIGS_DIR / f"{name}.yaml").is_file():
            path = CONFIGS_DIR / f"{name}.yaml"
        else:
            import difflib

            close = difflib.get_close_matches(name, list(recipes), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise RecipeError(f"unknown recipe {name!r}{hint} (known: {', '.join(recipes)})")
    if path.parent.resolve() == OFFICIAL_DIR.resolve():
        return _load_official(path)
    cfg = load_config(path)
    if cfg.recipe is None:
        raise RecipeError(f"{path}: the config has no recipe block (title, data_dir, ...)")
    return cfg


# ============================================================================ text
def published_text(variants: Sequence[Any]) -> str:
    """``76.35 mIoU (...), ...``: the compared rows, read from reproduce/tables/published.yaml."""
    from reproduce.evaluate import resolve_rows

    parts = []
    for v in variants:
        for row in resolve_rows(v.compare_to):
            parts.append(f"{row.metrics.get('miou')} mIoU ({row.describe()}; {row.id})")
    return "; ".join(parts) or "no published row to compare with"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2; "unknown argument" names the culprit
        if message.startswith("unrecognized arguments:"):
            message = f"unknown argument '{message.split(':', 1)[1].strip()}' (see --help)"
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser(name: str | None = None, recipe: Config | OfficialRecipe | None = None,
                 prog: str | None = None) -> argparse.ArgumentParser:
    if recipe is None:
        names = ", ".join(find_recipes())
        p = _Parser(prog=prog or program_name("reproduce.recipe"),
                    description="Run a published row end to end: check -> convert -> prepare -> train -> evaluate "
                                "-> report.", epilog=f"recipes: {names}; custom (your own data: {CUSTOM_USAGE})")
        p.add_argument("name", metavar="NAME", help="the recipe (see below)")
        return p
    from reproduce.inference import EVAL_PRECISION, PRECISION_HELP, PRECISIONS

    official = isinstance(recipe, OfficialRecipe)
    if official:
        title = recipe.title
        default_out = f"results/{recipe.name}"
        published = published_text(recipe.eval.variants)
    else:
        title = recipe.recipe.title
        default_out = f"runs/{recipe.name}"
        published = published_text(recipe.eval.variants if recipe.eval else [])
        if recipe.recipe.paper:
            published = f"{recipe.recipe.paper}. Compared rows: {published}"
    p = _Parser(prog=prog or f"{program_name('reproduce.recipe')} {name}", formatter_class=argparse.RawDescriptionHelpFormatter,
                description=f"{title}\nPublished: {published}")
    data_help = "VOCdevkit/VOC2012" if official else (recipe.recipe.data_help or "the dataset")
    p.add_argument("--data-root", type=Path, default=Path("data"),
                   help=f"folder holding the dataset ({data_help}; default: data)")
    p.add_argument("--models-dir", "--weights-dir", dest="models_dir", type=Path, default=Path("data/models"),
                   help=(_weights_help(recipe.release) if official else
                         "folder holding the official source weights (default: data/models)")
                   + "; --weights-dir is the same option")
    p.add_argument("--out", type=Path, default=Path(default_out), help=f"results folder (default: {default_out})")
    if not official:
        p.add_argument("--gpus", type=int, default=1, help="train on N GPUs of this machine with torchrun (default 1)")
    if not official:
        p.add_argument("--amp", action="store_true",
                       help="mixed-precision training, channels-last (CUDA); the evaluation stays at --precision")
    elif "amp" in recipe.options:
        p.add_argument("--amp", action="store_true", help="evaluate in fp16 (CUDA): same as --precision fp16")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help=f"evaluation precision (default {EVAL_PRECISION}, the reference's, on every device; the "
                        "others are opt-ins, recorded in each result.json and marked in the report). "
                        + PRECISION_HELP)
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default: auto, cuda when available)")
    p.add_argument("--workers", type=int, help="DataLoader workers (default: the config's for training; for "
                                               "evaluation a decoding thread, see reproduce.evaluate --workers)")
    if not official or "crf-workers" in recipe.options:
        p.add_argument("--crf-workers", type=int, help="dense-CRF worker processes (default: one per core)")
    p.add_argument("--smoke", action="store_true",
                   help=(recipe.smoke_help if official and recipe.smoke_help else
                         "generated miniature data + random-weight official-format source weights, 2 iterations "
                         "on the CPU, same steps (numbers are meaningless)"))
    return p


# ============================================================================ steps
class Steps:
    def __init__(self, total: int) -> None:
        self.i, self.total = 0, total

    def __call__(self, text: str) -> None:
        self.i += 1
        print(f"== [{self.i}/{self.total}] {text} ({time.strftime('%H:%M:%S')})", flush=True)


def _call(what: str, fn: Any, argv: list[str]) -> None:
    """Run a command's ``main(argv)`` in this process; a non-zero exit (its error already printed) stops here."""
    code = fn(argv)
    if code:
        raise SystemExit(code)


def convert(rel: Any, source: Path, out: Path) -> None:
    if release_format(rel) == "tf":
        from converters import tf2torch

        _call("convert", tf2torch.main, ["--dataset", rel.name, "--checkpoint", str(source), "--out", str(out)])
    else:
        from converters import caffe2torch

        _call("convert", caffe2torch.main, ["--dataset", rel.name, "--caffemodel", str(source), "--out", str(out)])


def _source_present(rel: Any, source: Path) -> bool:
    return Path(f"{source}.index").is_file() if release_format(rel) == "tf" else source.is_file()


def eval_precision(args: argparse.Namespace, official: bool) -> str | None:
    """The evaluations' precision: ``--precision``; an official recipe's ``--amp`` is fp16; else None
    (``reproduce.evaluate``'s default, fp32). A train recipe's ``--amp`` is for the training only."""
    if getattr(args, "precision", None):
        return args.precision
    return "fp16" if official and getattr(args, "amp", False) else None


def evaluate_variants(variants: Sequence[Any], ev: EvalCfg, *, weights: Path, model: str | None, root: Path,
                      out: Path, device: str, workers: int | None, crf_workers: int | None, precision: str | None,
                      smoke_crop: int | None, step: Steps) -> list[Path]:
    """Evaluate each variant with ``reproduce.evaluate`` at ``precision`` (None: its default, fp32)."""
    from reproduce import evaluate

    dirs = []
    for v in variants:
        step(v.say or f"evaluating: {v.name}")
        argv = ["--weights", str(weights), "--dataset", ev.dataset, "--root", str(root), "--split", ev.split,
                "--protocol", ev.protocol, "--crop-size", str(smoke_crop or ev.crop_size),
                "--device", device, "--out", str(out / v.name)]
        if workers is not None:
            argv += ["--workers", str(workers)]
        if model:
            argv += ["--model", model]
        if v.output_stride:
            argv += ["--output-stride", str(v.output_stride)]
        if list(v.scales) != [1.0]:
            argv += ["--scales", ",".join(str(s) for s in v.scales)]
        if v.flip:
            argv.append("--flip")
        if v.crf:
            argv.append("--crf")
            if crf_workers is not None:
                argv += ["--crf-workers", str(crf_workers)]
        if precision:
            argv += ["--precision", precision]
        for row in v.compare_to:
            argv += ["--compare-to", row]
        if smoke_crop is not None:
            argv.append("--quiet")
            if v.smoke_limit:
                argv += ["--limit", str(v.smoke_limit)]
        _call("evaluate", evaluate.main, argv)
        dirs.append(out / v.name)
    return dirs


def write_report(out: Path, title: str, result_dirs: Sequence[Path], extra: Sequence[str] = ()) -> Path:
    from converters.io import write_text_atomic

    parts = [f"# {title}", ""]
    if extra:
        parts += [*extra, ""]
    for d in result_dirs:
        md = d / "result.md"
        if not md.is_file():
            raise RecipeError(f"{md} not found: did that evaluation step fail?")
        text = md.read_text(encoding="utf-8").replace("\n# ", "\n## ")
        parts += ["#" + text if text.startswith("# ") else text, ""]
    body = "\n".join(parts)
    path = write_text_atomic(out / "report.md", body)
    print(body)
    return path


def _train_summary(run: Path) -> list[str]:
    from converters.errors import ConversionError
    from converters.provenance import read_provenance

    lines = []
    final = run / "final.json"
    if final.is_file():
        try:
            rec = read_provenance(final)  # the sidecar of final.pth: checked for shape, one line if it is not
        except ConversionError as e:
            raise RecipeError(str(e)) from None
        skipped = (rec.get("skipped_samples") or {}).get("count", 0)
        lines.append(f"- training: {(rec.get('trained_with') or {}).get('iterations', '?')} iterations -> "
                     f"`{run / 'final.pth'}` (evaluated below); corrupt samples skipped: {skipped}")
        best = rec.get("best")
        if best:
            score = best.get("score")
            score = f"{score:.2f}" if isinstance(score, (int, float)) and not isinstance(score, bool) else "–"
            lines.append(f"- best checkpoint: `{run / 'best.pth'}`, {best.get('split', '?')} mIoU {score} at "
                         f"iteration {best.get('iteration', '?')} (single scale, during training)")
    return lines


def run_train_recipe(cfg: Config, args: argparse.Namespace) -> int:
    r = cfg.recipe
    out: Path = args.out
    data_root: Path = args.data_root
    models_dir: Path = args.models_dir
    device, workers = args.device, args.workers
    note = ""
    variants = cfg.eval.variants if cfg.eval else []
    steps = Steps(4 + len(variants) + (1 if r.prepare else 0))
    if args.smoke:
        smoke_dir = out / "smoke"
        print(f"== smoke run: miniature data + random-weight official-format source weights in {smoke_dir}")
        cfg = smoke_config(cfg, smoke_dir)
        from reproduce.training.cli import write_smoke_inputs

        write_smoke_inputs(cfg, smoke_dir)
        data_root, models_dir, device, workers, note = smoke_dir / "data", smoke_dir / "weights", "cpu", 0, SMOKE_NOTE
        args.gpus = 1
    data = data_root / r.data_dir if r.data_dir else data_root
    overrides: dict[str, Any] = {"data.root": str(data), "models_dir": str(models_dir), "device": device}
    if workers is not None:
        overrides["workers"] = workers
    if args.amp:
        overrides.update(amp=True, channels_last=True)
    cfg = apply_overrides(cfg, overrides)

    # ---- init weights
    weights = init_weights_path(cfg)
    if cfg.init.release:
        rel = find_release(cfg.init.release)
        source = release_source(rel, models_dir)
        steps(f"converting the init weights {rel.name} ({source} -> {weights})")
        if weights.is_file():
            print(f"   already converted: {weights}")
        elif not _source_present(rel, source):
            raise RecipeError(f"{source}: {rel.missing_message('--models-dir')}")
        else:
            convert(rel, source, weights)
    else:
        steps("init weights: none (training from scratch)")

    # ---- data
    if r.prepare == "voc_aug":
        steps("VOC 2012 train_aug (SegmentationClassAug from SBD)")
        if (data / "VOC2012" / "ImageSets" / "SegmentationAug" / "train_aug.txt").is_file():
            print("   already built")
        elif (data / "VOC2012").is_dir() and (data_root / "benchmark_RELEASE").is_dir():
            from reproduce import prepare

            _call("prepare", prepare.main, ["voc_aug", "--voc-root", str(data), "--sbd-root",
                                            str(data_root / "benchmark_RELEASE")])
        else:
            raise RecipeError(f"need VOC 2012 at {data}/VOC2012 and SBD at {data_root}/benchmark_RELEASE: "
                              f"python -m reproduce.download voc2012 sbd --data-root {data_root} "
                              "(see README, 'Datasets')")

    steps("checking data and weights")
    from reproduce.training.cli import check_inputs

    problems = check_inputs(cfg)
    if problems:
        raise RecipeError("; ".join(problems))
    print(f"   ok: data and weights for {cfg.name} are in place")

    # ---- train
    steps("training (progress bar shows iterations and time left; rerun to resume)")
    run = out / "train"
    if args.gpus > 1:
        out.mkdir(parents=True, exist_ok=True)
        resolved = out / "recipe_config.yaml"
        write_run_config(resolved, cfg)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.gpus),
               "-m", "reproduce.train", "--config", str(resolved), "--out", str(run)]
        code = subprocess.call(cmd, env={**os.environ, "PYTHONPATH": os.pathsep.join(
            filter(None, [str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH")]))})
        if code:
            raise SystemExit(code)
    else:
        from reproduce.training.loop import train

        train(cfg, run)
    final = run / "final.pth"

    # ---- evaluate and report
    ev = cfg.eval
    if ev is None:
        raise RecipeError(f"config {cfg.name} has no eval section")
    ev = apply_overrides(cfg, {"eval.dataset": ev.dataset or cfg.data.dataset}).eval
    dirs = evaluate_variants(variants, ev, weights=final, model=None, root=data, out=out,
                             device=device, workers=workers,
                             crf_workers=args.crf_workers, precision=eval_precision(args, official=False),
                             smoke_crop=cfg.smoke.eval_crop if args.smoke and cfg.smoke else None, step=steps)
    steps("report")
    report = write_report(out, r.title + note, dirs, _train_summary(run))
    print(f"== done: {report}")
    return 0


def run_official_recipe(rec: OfficialRecipe, args: argparse.Namespace) -> int:
    from reproduce import _smoke

    out: Path = args.out
    data_root, models_dir, device = args.data_root, args.models_dir, args.device
    workers = args.workers
    note, smoke_crop = "", None
    rel = find_release(rec.release)
    steps = Steps(3 + len(rec.eval.variants))
    if args.smoke:
        what = "TF checkpoint" if release_format(rel) == "tf" else "caffemodel"
        print(f"== smoke run: miniature VOC + random-weight official-format {what} in {out / 'smoke'}")
        _smoke.make_voc(out / "smoke" / "data")
        if rec.smoke == "v2":
            _smoke.make_v2_weights(out / "smoke" / "weights")
        else:
            try:
                _smoke.make_tf_checkpoint(rel.name, out / "smoke" / "weights" / rel.folder / rel.file_name)
            except _smoke.CheckError as e:
                raise RecipeError(str(e)) from None
        data_root, models_dir, device, workers = out / "smoke" / "data", out / "smoke" / "weights", "cpu", 0
        note, smoke_crop = SMOKE_NOTE, rec.smoke_crop
    steps("checking inputs")
    try:
        _smoke.check_voc(data_root)
        source = (_smoke.check_v2_weights(models_dir) if rec.smoke == "v2"
                  else _smoke.check_v3plus_weights(models_dir))
    except _smoke.CheckError as e:
        raise RecipeError(" ".join(str(e).split())) from None
    weights = out / f"{rel.arch}_{rec.eval.dataset}.pth"
    steps(f"converting {source} -> {weights}")
    convert(rel, source, weights)
    dirs = evaluate_variants(rec.eval.variants, rec.eval, weights=weights, model=rel.arch,
                             root=data_root, out=out, device=device, workers=workers,
                             crf_workers=getattr(args, "crf_workers", None),
                             precision=eval_precision(args, official=True),
                             smoke_crop=smoke_crop, step=steps)
    steps("report")
    write_report(out, (rec.report_title or rec.title) + note, dirs)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = None
    if argv[:1] == ["--prog"] and len(argv) > 1:  # the shell wrappers name themselves in --help
        prog, argv = argv[1], argv[2:]
    try:
        if not argv or argv[0].startswith("-"):
            build_parser(prog=prog).parse_args(argv)  # --help, or a usage error
            return 2
        name = argv[0]
        if name == "custom":  # your own data (reproduce/custom.py)
            from reproduce.custom import run_custom

            return run_custom(argv[1:], prog or f"{program_name('reproduce.recipe')} custom")
        recipe = load_recipe(name)
        args = build_parser(name, recipe, prog=prog).parse_args(argv[1:])
        for flag in ("workers", "crf_workers"):  # checked now, not after the conversion and training steps
            if (getattr(args, flag, None) or 0) < 0:
                raise RecipeError(f"--{flag.replace('_', '-')} must be >= 0, got {getattr(args, flag)}")
        if isinstance(recipe, OfficialRecipe):
            return run_official_recipe(recipe, args)
        return run_train_recipe(recipe, args)
    except DeeplabError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to continue (finished steps are skipped, training resumes)",
              file=sys.stderr)
        return 130
    except SystemExit as e:
        return int(e.code) if isinstance(e.code, int) else (0 if e.code is None else 1)


if __name__ == "__main__":
    sys.exit(main())
