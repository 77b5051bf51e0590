"""``deeplab-recipe custom``: from a folder of images and masks to a trained, evaluated model, in one process.

::

    deeplab-recipe custom --data DIR --from RELEASE_OR_WEIGHTS [--classes DIR/classes.txt] [--val-fraction 0.1]

Steps, each announced as ``== [i/n] ...`` (every setting and default is printed first):

1. check the data (:mod:`reproduce.data_check`): every problem one line, nothing trains while any is
   left (``--skip-bad`` leaves those pairs out instead); the mask format and the exact colour -> class
   map used; the class histogram with imbalance and near-empty warnings;
2. the train/val split: ``DIR/splits/train.txt`` + ``val.txt`` when both exist, else a seeded random
   split (``--val-fraction``, ``--seed``); the lists used are written to ``OUT/splits/``;
3. the init weights: a release of ``converters/releases.py`` (converted into ``--models-dir`` when not
   yet), or a converted/imported/trained ``.pth`` with its provenance JSON. The classifier is dropped
   and re-initialised for the new class count (the keys whose shape depends on it);
4. training with the schedule of the published recipe of that architecture (a config in
   reproduce/configs/, see ``--help``), evaluating on val every ``--eval-every`` iterations and keeping
   ``best.pth`` (rerun the same command to resume);
5. evaluation of ``best.pth`` on val (whole images, single scale): ``OUT/eval/result.json``, a
   confusion-matrix plot ``OUT/eval/confusion.png`` and ``OUT/report.md`` with per-class IoU.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from converters.io import provenance_path, write_atomic, write_json_atomic

from .data_check import (
    DataCheck,
    check_folder,
    format_histogram,
    imbalance_warning,
    make_split,
    read_classes,
    read_split,
    write_index_masks,
)
from .training.config import CONFIGS_DIR, Config, apply_overrides, find_release, load_config, release_format, to_dict
from .yamlfile import load_yaml

__all__ = ["build_custom_parser", "run_custom", "SourceWeights", "resolve_source", "base_config", "head_keys",
           "evaluate_confusion", "plot_confusion"]


def _error(message: str) -> Exception:
    from .recipe import RecipeError

    return RecipeError(message)


# ============================================================================ command line
def build_custom_parser(prog: str) -> argparse.ArgumentParser:
    from .recipe import _Parser

    p = _Parser(prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
                description="Train and evaluate a DeepLab model on your own folder of images and masks: check the "
                            "data -> split -> init weights (new head) -> train (keeps best.pth) -> evaluate -> "
                            "report.",
                epilog="layout: DIR/images/<name>.jpg|png, DIR/labels/<name>.png (index masks: pixel = class, 255 = "
                       "ignore; or colour masks with 'name R G B' lines in classes.txt), DIR/classes.txt (line k "
                       "names class k). See README, 'Train on your own data'.")
    p.add_argument("--data", type=Path, required=True, help="the dataset folder (images/, labels/, classes.txt)")
    p.add_argument("--from", dest="source", required=True, metavar="RELEASE_OR_WEIGHTS",
                   help="init weights: a release name (converters/releases.py, e.g. deeplabv3_pascal_train_aug_2018_"
                        "01_04) or a .pth with its provenance .json (converted, imported from a peer, or trained)")
    p.add_argument("--classes", type=Path, help="the class list (default: DATA/classes.txt)")
    p.add_argument("--keep-head", action="store_true",
                   help="keep the weights' classifier (same classes in the same order, e.g. continuing a run on "
                        "new data); default: re-initialise it for the class list")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of the pairs held out for validation when DATA/splits/{train,val}.txt do not exist "
                        "(default 0.1)")
    p.add_argument("--seed", type=int, default=0, help="split, data order, augmentation and head init (default 0)")
    p.add_argument("--out", type=Path, help="run folder (default: runs/custom-<DATA folder name>)")
    p.add_argument("--models-dir", type=Path, default=Path("data/models"),
                   help="where releases are found and converted (default: data/models)")
    p.add_argument("--model", help="architecture for a .pth without provenance JSON (reference_models registry)")
    p.add_argument("--iterations", type=int, help="solver iterations (default: the recipe's)")
    p.add_argument("--batch-size", type=int, help="images per iteration (default: the recipe's)")
    p.add_argument("--crop-size", type=int, help="training crop (default: the recipe's)")
    p.add_argument("--base-lr", type=float, help="poly schedule's starting learning rate (default: the recipe's)")
    p.add_argument("--eval-every", type=int, help="evaluate on val every N iterations, keep best.pth "
                                                  "(default: a tenth of the iterations)")
    p.add_argument("--class-weights", default="none",
                   help="none (default), auto (inverse sqrt of the training pixel shares; reproduce/pixel_losses.py) "
                        "or one weight per class, comma-separated")
    p.add_argument("--top-k-percent-pixels", type=float, default=1.0,
                   help="DeepLab-TF hard-pixel mining: train on this share of the hardest pixels (default 1.0: off)")
    p.add_argument("--hard-example-mining-step", type=int, default=0,
                   help="anneal the mined share from 1.0 to --top-k-percent-pixels over N iterations (default 0)")
    p.add_argument("--focal-gamma", type=float, default=0.0, help="focal loss gamma (default 0: off)")
    p.add_argument("--focal-alpha", type=float, help="focal loss alpha factor (default: none)")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="label smoothing epsilon (default 0: off)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="any other training-config value (YAML), e.g. --set solver.weight_decay=1e-4; repeatable")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out the image/mask pairs with problems and train on the rest (default: stop)")
    p.add_argument("--check-only", action="store_true", help="stop after checking the data and writing the split")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default: auto, cuda when available)")
    p.add_argument("--workers", type=int, help="DataLoader workers (default: the recipe's, at most one per core)")
    return p


# ============================================================================ the init weights
@dataclass
class SourceWeights:
    """Where the init weights come from and what they load into."""

    path: Path
    architecture: str                 # registry model (or backbone, then ``base`` is the config that uses it)
    num_classes: int | None
    model_kwargs: dict[str, Any]
    preprocessing: dict[str, Any] | None
    release: Any = None               # converters.releases record, when --from names one
    base: Path | None = None          # the training config whose init.release these weights are


def _published_configs() -> list[tuple[Path, dict[str, Any]]]:
    """(path, raw mapping) of every training config shipped in ``reproduce/configs``, read by the bounded loader."""
    return [(path, load_yaml(path) or {}) for path in sorted(CONFIGS_DIR.glob("*.yaml"))]


def _configs_by_release() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for path, data in _published_configs():
        rel = (data.get("init") or {}).get("release")
        if rel and rel not in out:
            out[rel] = path
    return out


def resolve_source(source: str, models_dir: Path, model: str | None) -> SourceWeights:
    """The ``--from`` weights: a release (converted on demand) or a weights file with its provenance."""
    from reference_models import list_models

    rel = find_release(source)
    if rel is not None:
        weights = rel.converted_path(models_dir)
        base = _configs_by_release().get(rel.name)
        if rel.arch not in list_models() and base is None:
            raise _error(f"release {rel.name} is an ImageNet backbone ({rel.arch}) that no training recipe here starts "
                         f"from; use a segmentation release or one of: {', '.join(_configs_by_release())}")
        return SourceWeights(weights, rel.arch, rel.num_classes, {}, None, release=rel, base=base)
    path = Path(source)
    if not path.is_file():
        raise _error(f"{path}: --from is neither a release of converters/releases.py nor a weights file")
    prov = provenance_path(path)
    record: dict[str, Any] = {}
    if prov.is_file() and prov != path:
        try:
            record = json.loads(prov.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise _error(f"{prov}: cannot read the provenance JSON ({e})") from None
    arch = model or record.get("architecture")
    if not arch:
        raise _error(f"{path}: no provenance JSON beside the weights: pass --model NAME (the architecture)")
    if arch not in list_models():
        raise _error(f"{path}: architecture {arch!r} is not a registered model (reference_models: "
                     f"{', '.join(list_models())})")
    kwargs = dict(record.get("model_kwargs") or {})
    stride = (record.get("model") or {}).get("output_stride")
    if stride and "output_stride" not in kwargs and not arch.startswith(("deeplabv1", "deeplabv2")):
        kwargs["output_stride"] = int(stride)
    return SourceWeights(path, arch, record.get("num_classes"), kwargs, record.get("preprocessing"))


def base_config(src: SourceWeights) -> Config:
    """The published recipe whose schedule trains ``src``'s architecture (same model, else same family)."""
    if src.base is not None:
        return load_config(src.base)
    arch = src.architecture
    same = None
    for path, data in _published_configs():
        if (data.get("model") or {}).get("name") == arch:
            same = same or path
    if same is not None:
        return load_config(same)
    family = ("deeplabv2_resnet101_msc-cocoinit-vocaug-321-20k" if re.search(r"deeplabv[12]", arch) else
              "deeplabv3plus_resnet101-os16-vocaug-513-30k" if "deeplabv3plus" in arch else
              "deeplabv3_resnet101-os16-vocaug-513-30k")
    return load_config(CONFIGS_DIR / f"{family}.yaml")


def head_keys(arch: str, kwargs: dict[str, Any], num_classes: int) -> list[str]:
    """State-dict keys whose shape depends on the class count (the classifier): built at two class counts."""
    from reference_models import build_model

    a = build_model(arch, num_classes=num_classes, **kwargs).state_dict()
    b = build_model(arch, num_classes=num_classes + 1, **kwargs).state_dict()
    return sorted(k for k in a if tuple(a[k].shape) != tuple(b[k].shape))


def convert_release(rel: Any, models_dir: Path) -> Path:
    """The release's official file converted to PyTorch (in ``models_dir``), with the converters' library calls."""
    out = rel.converted_path(models_dir)
    if out.is_file():
        print(f"   already converted: {out}")
        return out
    source = rel.source_path(models_dir)
    if release_format(rel) == "tf":
        from converters import tf2torch

        if not Path(f"{source}.index").is_file() and not source.is_file():
            raise _error(f"{source}: {rel.missing_message('--models-dir')}")
        return tf2torch.run(argparse.Namespace(dataset=rel.name, checkpoint=source, out=out, arch=None, num_classes=None,
                                               output_stride=None, no_verify=False, quiet=False))
    from converters import caffe2torch

    if not source.is_file():
        raise _error(f"{source}: {rel.missing_message('--models-dir')}")
    return caffe2torch.run(argparse.Namespace(dataset=rel.name, caffemodel=source, out=out, arch=None,
                                              num_classes=None, quiet=False))


# ============================================================================ evaluation and report
def evaluate_confusion(weights: Path, dataset: Any, device: str, output_stride: int | None = None) -> np.ndarray:
    """The (C, C) confusion matrix (rows: truth) of ``weights`` on ``dataset``: whole images, single scale."""
    from .evaluate import EvalOptions, evaluate
    from .inference import InferenceConfig, load_model, resolve_device

    lm = load_model(None, weights, output_stride=output_stride, device=resolve_device(device))
    out = evaluate(lm, dataset, EvalOptions(config=InferenceConfig(protocol="whole"), progress=False))
    return np.asarray(out["plain"].matrix)


def plot_confusion(matrix: np.ndarray, names: list[str], target: Path, title: str) -> Path:
    """A row-normalised (recall) confusion-matrix PNG, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = matrix.sum(axis=1, keepdims=True)
    norm = np.divide(matrix, rows, out=np.zeros_like(matrix, dtype=np.float64), where=rows > 0)
    n = len(names)
    size = max(4.0, 0.45 * n + 2.5)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(n), names, rotation=60, ha="right")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (row-normalised)")
    ax.set_title(title)
    if n <= 25:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    try:
        write_atomic(target, lambda p: fig.savefig(p, format="png", dpi=100))
    finally:
        plt.close(fig)
    return target


def _report(out: Path, *, title: str, lines: list[str], scores: dict[str, Any], names: list[str],
            train_hist: np.ndarray, val_hist: np.ndarray, weights: Path, plot: Path) -> Path:
    def pct(x: float | None) -> str:
        return "–" if x is None or not np.isfinite(x) else f"{100 * x:.2f}"

    body = [f"# {title}", "", *lines, "",
            f"## Evaluation on val: `{weights.name}`, whole images, single scale", "",
            f"mIoU **{pct(scores['miou'])}** over the {scores['num_classes_used']} classes present in val; "
            f"pixel accuracy {pct(scores['pixel_acc'])}, mean accuracy {pct(scores['mean_acc'])}.", "",
            "| class | IoU % | accuracy % | train pixels % | val pixels % |", "|---|---:|---:|---:|---:|"]
    tt, vt = max(int(train_hist.sum()), 1), max(int(val_hist.sum()), 1)
    for k, name in enumerate(names):
        body.append(f"| {k} {name} | {pct(scores['iou'][k])} | {pct(scores['acc'][k])} | "
                    f"{100 * train_hist[k] / tt:.3f} | {100 * val_hist[k] / vt:.3f} |")
    body += ["", f"![confusion matrix]({plot.relative_to(out).as_posix()})", ""]
    text = "\n".join(body)
    path = write_atomic(out / "report.md", lambda p: p.write_text(text, encoding="utf-8"))
    print(text)
    return path


# ============================================================================ the command
def _class_weights(text: str, num_classes: int) -> Any:
    if text in ("none", "auto"):
        return None if text == "none" else "auto"
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != num_classes or any(not 0 <= v < float("inf") for v in values):
        raise _error(f"--class-weights {text!r}: give none, auto or {num_classes} comma-separated numbers >= 0 "
                     "(one per class)")
    return values


def _split(args: argparse.Namespace, check: DataCheck, out: Path) -> tuple[list[str], list[str], str]:
    good = {s.id for s in check.samples}
    given = [args.data / "splits" / f"{s}.txt" for s in ("train", "val")]
    if all(p.is_file() for p in given):
        train, val = (read_split(p) for p in given)
        missing = [f"{p}: names {i!r}, which has no usable image/mask pair" for p, ids in zip(given, (train, val))
                   for i in ids if i not in good]
        if missing and not args.skip_bad:
            for line in missing[:10]:
                print(f"   problem: {line}")
            raise _error(f"{len(missing)} split entr(y/ies) without a usable pair (listed above); fix the lists or "
                         "pass --skip-bad")
        train, val = [i for i in train if i in good], [i for i in val if i in good]
        how = f"the lists in {args.data / 'splits'}"
    else:
        train, val = make_split(sorted(good), args.val_fraction, args.seed)
        how = f"a random split, seed {args.seed}, val fraction {args.val_fraction}"
    if not train or not val:
        raise _error(f"the split leaves {len(train)} training and {len(val)} validation pairs: both need at least one")
    for name, ids in (("train", train), ("val", val)):
        text = "".join(f"{i}\n" for i in ids)
        write_atomic(out / "splits" / f"{name}.txt", lambda p, t=text: p.write_text(t, encoding="utf-8"))
    return train, val, how


def run_custom(argv: list[str], prog: str) -> int:
    """``deeplab-recipe custom ...``: the whole run (module docstring). Raises RecipeError for bad input."""
    from .datasets import DatasetError, FolderSegmentation
    from .recipe import Steps

    args = build_custom_parser(prog).parse_args(argv)
    data: Path = args.data
    out: Path = args.out or Path("runs") / f"custom-{data.resolve().name}"
    classes_path: Path = args.classes or data / "classes.txt"
    if not data.is_dir():
        raise _error(f"{data}: data folder not found")
    if not 0.0 < args.val_fraction < 1.0:
        raise _error(f"--val-fraction {args.val_fraction} is not in (0, 1)")
    try:
        classes = read_classes(classes_path)
    except DatasetError as e:
        raise _error(str(e)) from None
    names = list(classes.names)
    src = resolve_source(args.source, args.models_dir, args.model)
    if args.keep_head and src.num_classes != len(names):
        raise _error(f"--keep-head: the weights have {src.num_classes} classes, {classes_path} lists {len(names)}")
    base = base_config(src)
    steps = Steps(6)

    # ---- every setting, defaults included
    s = base.solver
    iterations = args.iterations or s.iterations
    eval_every = args.eval_every or max(1, iterations // 10)
    weights_opt = _class_weights(args.class_weights, len(names))
    if args.workers is None:
        from .crf import usable_cores

        args.workers = min(base.workers, usable_cores())
    loss_desc = (f"cross-entropy; class weights {args.class_weights}; top_k_percent_pixels {args.top_k_percent_pixels}"
                 f" (hard_example_mining_step {args.hard_example_mining_step}); focal gamma {args.focal_gamma}"
                 f"{'' if args.focal_alpha is None else f' alpha {args.focal_alpha}'}; label smoothing "
                 f"{args.label_smoothing}")
    print(f"== custom recipe: {data} -> {out}")
    settings = [
        ("data", f"{data} (images/, labels/)", "--data"), ("classes", f"{classes_path} ({len(names)} classes)",
                                                           "--classes"),
        ("init weights", f"{args.source} ({src.architecture})", "--from"),
        ("classifier", "kept" if args.keep_head else f"re-initialised for {len(names)} classes", "--keep-head"),
        ("schedule of", f"{base.name} (reproduce/configs)", "the architecture's recipe"),
        ("val fraction", f"{args.val_fraction} (used when DATA/splits/train.txt and val.txt are absent)",
         "--val-fraction"),
        ("seed", str(args.seed), "--seed"), ("iterations", str(iterations), "--iterations"),
        ("batch size", str(args.batch_size or s.batch_size), "--batch-size"),
        ("crop size", str(args.crop_size or base.augment.crop_size), "--crop-size"),
        ("base lr", f"{args.base_lr or s.base_lr} (poly {s.lr_power}, momentum {s.momentum}, weight decay "
                    f"{s.weight_decay})", "--base-lr"),
        ("eval every", f"{eval_every} iterations (keeps best.pth by val mIoU)", "--eval-every"),
        ("loss", loss_desc, "--class-weights, --top-k-percent-pixels, --focal-gamma, --label-smoothing"),
        ("bad pairs", "left out" if args.skip_bad else "stop the run", "--skip-bad"),
        ("device", args.device, "--device"), ("workers", str(args.workers), "--workers"), ("models dir", str(args.models_dir), "--models-dir"),
    ]
    for key, value, flag in settings:
        print(f"   {key:<13} {value}   [{flag}]")
    for item in args.overrides:
        print(f"   --set {item}")

    # ---- data
    steps(f"checking the data in {data}")
    check = check_folder(data, classes)
    for line in check.notes:
        print(f"   {line}")
    for line in check.problems:
        print(f"   problem: {line}")
    if check.problems and not (args.skip_bad and check.samples):
        raise _error(f"{len(check.problems)} problem(s) in {data} (listed above); fix them, or pass --skip-bad to "
                     "train on the other pairs")
    print(f"   {len(check.samples)} usable image/mask pairs" + (f" ({len(check.problems)} left out)"
                                                              if check.problems else ""))
    steps("train/val split")
    try:
        train_ids, val_ids, how = _split(args, check, out)
    except DatasetError as e:
        raise _error(str(e)) from None
    print(f"   {how}: {len(train_ids)} train, {len(val_ids)} val -> {out / 'splits'}")
    train_hist, val_hist = check.histogram(train_ids), check.histogram(val_ids)
    for line in format_histogram(train_hist, check.images_with(train_ids), names,
                                 "   class histogram of the training masks (share of labelled pixels, images):"):
        print(line)
    warnings = imbalance_warning(train_hist, names, check.images_with(train_ids))
    warnings += [f"warning: class {k} {names[k]!r} has no pixel in val: its IoU is undefined there"
                 for k in range(len(names)) if train_hist[k] and not val_hist[k]]
    for line in warnings:
        print(f"   {line}")
    label_dir: str = "labels"
    if check.colour_map is not None:
        label_dir = str(write_index_masks(check, out / "masks").resolve())
        print(f"   colour masks converted to index masks in {label_dir}")
    if args.check_only:
        print("== --check-only: stopping before training")
        return 0

    # ---- init weights and the config
    steps(f"init weights: {args.source}")
    weights = convert_release(src.release, args.models_dir) if src.release is not None else src.path
    if src.preprocessing is None and provenance_path(weights).is_file():  # a converted release's contract
        src.preprocessing = json.loads(provenance_path(weights).read_text(encoding="utf-8")).get("preprocessing")
    cfg = _custom_config(args, base, src, weights, names, weights_opt, label_dir, out, iterations, eval_every)
    if args.keep_head:
        print(f"   {cfg.model.name}, every tensor from {weights} (the classifier kept)")
    else:
        print(f"   {cfg.model.name} with a new {len(names)}-class head (re-initialised: "
              f"{', '.join(cfg.init.drop) or '-'})")
    if cfg.loss.class_weights == "auto":
        from .pixel_losses import AUTO_RULE, auto_class_weights

        resolved = auto_class_weights(train_hist)
        cfg = apply_overrides(cfg, {"loss.class_weights": resolved})
        print(f"   class weights (auto: {AUTO_RULE}): " + ", ".join(f"{n} {w:.3f}" for n, w in zip(names, resolved)))
    write_atomic(out / "custom_config.yaml",
                 lambda p: p.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8"))

    # ---- train
    steps("training (rerun the same command to resume)")
    from .training.loop import train

    run = out / "train"
    final = train(cfg, run)
    best = run / "best.pth"
    chosen = best if best.is_file() else final

    # ---- evaluate and report
    steps(f"evaluating {chosen.name} on val")
    ds = FolderSegmentation(data, "val", **cfg.eval.kwargs)
    matrix = evaluate_confusion(chosen, ds, args.device, cfg.model.kwargs.get("output_stride"))
    from .metrics import scores_from_matrix

    scores = scores_from_matrix(matrix)
    write_json_atomic(out / "eval" / "result.json", {
        "weights": str(chosen), "split": "val", "images": len(ds), "protocol": "whole, single scale",
        "classes": names, "scores": {k: v for k, v in scores.items() if k not in ("iou", "acc")},
        "iou": [None if not np.isfinite(v) else v for v in scores["iou"]],
        "confusion_matrix": matrix.astype(np.int64).tolist()})
    plot = plot_confusion(matrix, names, out / "eval" / "confusion.png", f"{data.name}: val, {chosen.name}")
    steps("report")
    info = json.loads(provenance_path(chosen).read_text(encoding="utf-8"))
    best_rec = info.get("evaluation") or (info.get("best") or {})
    lines = [f"- data: `{data}`, {len(check.samples)} pairs ({how}: {len(train_ids)} train, {len(val_ids)} val), "
             f"{len(names)} classes",
             f"- init: `{args.source}` ({src.architecture}), classifier "
             + ("kept" if args.keep_head else f"re-initialised for {len(names)} classes"),
             f"- schedule: {base.name}, {iterations} iterations of {cfg.solver.batch_size}, crop "
             f"{cfg.augment.crop_size}, base lr {cfg.solver.base_lr}; loss: {loss_desc}",
             f"- weights evaluated: `{chosen}`" + (f" (best val mIoU during training at iteration "
                                                   f"{best_rec.get('iteration')})" if chosen == best else ""),
             *(f"- {w}" for w in warnings)]
    report = _report(out, title=f"Custom training on {data.name}", lines=lines, scores=scores, names=names,
                     train_hist=train_hist, val_hist=val_hist, weights=chosen, plot=plot)
    print(f"== done: {report}")
    return 0


def _custom_config(args: argparse.Namespace, base: Config, src: SourceWeights, weights: Path, names: list[str],
                   class_weights: Any, label_dir: str, out: Path, iterations: int, eval_every: int) -> Config:
    """The training config: ``base``'s schedule, the folder data and splits, the new head, the loss options."""
    num_classes = len(names)
    arch = base.model.name if src.base is not None else src.architecture
    kwargs = dict(base.model.kwargs) if base.model.name == arch else dict(src.model_kwargs)
    segmentation_weights = src.base is None or src.architecture == arch
    drop = ([f"^{re.escape(k)}$" for k in head_keys(arch, kwargs, num_classes)]
            if segmentation_weights and not args.keep_head else [])
    reader = {"classes": names, "split_dir": str((out / "splits").resolve()), "label_dir": label_dir}
    over: dict[str, Any] = {
        "name": f"custom-{args.data.resolve().name}",
        "model.name": arch, "model.num_classes": num_classes, "model.kwargs": kwargs,
        "init.release": None, "init.weights": str(weights), "init.how_to_get": None,
        "init.prefix": "" if segmentation_weights else base.init.prefix,
        "init.drop": [*base.init.drop, *drop] if not segmentation_weights else drop,
        "data": {"dataset": "folder", "root": str(args.data), "split": "train", "kwargs": reader},
        "eval": {"dataset": "folder", "split": "val", "protocol": "whole", "crop_size": base.eval.crop_size
                 if base.eval else 513, "root": str(args.data), "kwargs": reader, "variants": []},
        "eval_every": eval_every, "seed": args.seed, "device": args.device, "recipe": None, "smoke": None,
        "solver.iterations": iterations, "loss.class_weights": class_weights,
        "loss.top_k_percent_pixels": args.top_k_percent_pixels,
        "loss.hard_example_mining_step": args.hard_example_mining_step,
        "loss.label_smoothing": args.label_smoothing,
        "loss.focal": None if not args.focal_gamma and args.focal_alpha is None else
        {"gamma": args.focal_gamma, "alpha": args.focal_alpha},
    }
    if base.model.name != arch and base.loss.kind == "caffe_msc" and not arch.endswith("_msc"):
        over["loss.kind"] = "upsample"  # a single-scale model: one term on upsampled logits
    if args.top_k_percent_pixels < 1.0:
        over["loss.normalization"] = "pixels"  # mining ranks a batch's pixels (DeepLab-TF)
    if src.preprocessing and segmentation_weights:
        pre = src.preprocessing
        over["preprocessing"] = {k: pre[k] for k in ("channel_order", "mean", "std", "scale") if k in pre}
    for flag, key in (("batch_size", "solver.batch_size"), ("crop_size", "augment.crop_size"),
                      ("base_lr", "solver.base_lr"), ("workers", "workers")):
        if getattr(args, flag) is not None:
            over[key] = getattr(args, flag)
    if args.batch_size is not None and args.batch_size % base.solver.accum_steps:
        over["solver.accum_steps"] = 1  # the recipe's accumulation does not divide the new batch
    cfg = apply_overrides(base, over)
    return apply_overrides(cfg, args.overrides) if args.overrides else cfg
