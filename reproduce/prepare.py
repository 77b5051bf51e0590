"""Build derived dataset files: VOC's SegmentationClassAug + train_aug list, and DeepFashion2 masks.

    python -m reproduce.prepare voc_aug --voc-root data/VOCdevkit --sbd-root data/benchmark_RELEASE
    python -m reproduce.prepare deepfashion2 --data-root data/deepfashion2

Every output file is written to a temporary file and renamed into place, so an interrupted run
leaves only complete files; rerunning the same command skips them and finishes the rest, and a
run with nothing left to do writes nothing. A bad source file (corrupt, or one that crashes
scipy's ``.mat`` reader, which runs in a helper process for that reason) is reported with one
line naming it, gets no output file, and does not stop the others: the run writes every good
file, then ends with exit code 1 (2 for usage errors), and the train_aug list is only written
once every mask of it exists.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from converters.cli import program_name, run_main
from converters.errors import DeeplabError, ReportedError
from converters.io import save_image, write_text_atomic

from .datasets.base import _PIL_ERRORS, DatasetError, check_label, read_index_png, read_split_file
from .datasets.deepfashion2 import SPLIT_ALIASES, load_annotation, rasterize_annotation
from .datasets.voc import find_sbd, find_voc2012, read_sbd_mat

__all__ = ["PrepareReport", "PrepareFailed", "build_voc_aug", "build_deepfashion2_masks", "train_aug_ids", "main"]

OFFICIAL_TRAIN_AUG_SIZE = 10_582  # VOC 2012 train + SBD train + SBD val - VOC 2012 val, on the real releases


@dataclass
class PrepareReport:
    """What a prepare step did: files written now, files already present (kept), and where."""

    written: int
    kept: int
    output: Path
    list_file: Path | None = None
    list_size: int = 0
    list_changed: bool = False
    failed: list[str] | None = None  # one line per bad source file (no output was written for it)


class PrepareFailed(DatasetError):
    """Some source files were bad: every good file was written, ``failures`` lists the bad ones."""

    def __init__(self, failures: list[str], report: PrepareReport) -> None:
        self.failures = failures
        self.report = report
        super().__init__(None, f"{len(failures)} bad source file(s); first: {failures[0]}")


def train_aug_ids(
    voc_train: Iterable[str], voc_val: Iterable[str], sbd_train: Iterable[str], sbd_val: Iterable[str]
) -> list[str]:
    """The train_aug set: (VOC train | SBD train | SBD val) - VOC val, sorted. 10,582 ids on the real data."""
    return sorted((set(voc_train) | set(sbd_train) | set(sbd_val)) - set(voc_val))


def _ids(path: Path) -> list[str]:
    return [i for i, _, _ in read_split_file(path)]


def _image_size(path: Path) -> tuple[int, int]:
    """(H, W) from the image header only (no decode)."""
    try:
        with Image.open(path) as im:
            w, h = im.size
        return h, w
    except FileNotFoundError:
        raise DatasetError(path, "image file not found") from None
    except _PIL_ERRORS as e:
        raise DatasetError(path, f"cannot read image header ({type(e).__name__}: {e})") from None


def _write_png(target: Path, label: np.ndarray) -> None:
    """Write an index mask as a grayscale PNG, atomically and decoded back (``converters.io.save_image``)."""
    save_image(target, Image.fromarray(label, mode="L"), "PNG")


def _write_text_if_changed(target: Path, text: str) -> bool:
    """Atomically write ``text`` unless ``target`` already holds exactly it; return whether it wrote."""
    if target.is_file() and target.read_text(encoding="utf-8") == text:
        return False
    write_text_atomic(target, text)
    return True


def _remove_stale_temps(folder: Path) -> None:
    """Delete temp files a hard kill (SIGKILL, power loss) left behind; atomic_path names them ``.<name>.*.tmp``."""
    if folder.is_dir():
        for p in folder.glob(".*.tmp"):
            p.unlink(missing_ok=True)


def _progress(items: Sequence[str], desc: str, enabled: bool) -> Iterable[str]:
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="file", disable=not enabled, dynamic_ncols=True)


def build_voc_aug(
    voc_root: str | os.PathLike,
    sbd_root: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    prefer: str = "voc",
    force: bool = False,
    progress: bool = True,
) -> PrepareReport:
    """Write ``<out>/SegmentationClassAug/<id>.png`` and ``<out>/ImageSets/SegmentationAug/train_aug.txt``.

    ``out`` defaults to the VOC2012 folder, where :class:`~reproduce.datasets.VOCSegmentation` looks.
    Masks are written for the train_aug ids only (never for VOC val, which must not be trained on).
    Label source: an id in VOC train takes the official VOC PNG when ``prefer="voc"`` (finer,
    with 255 void outlines), the rest take SBD's ``GTcls.Segmentation``; ``prefer="sbd"`` takes
    SBD wherever SBD has the id. Existing masks are kept unless ``force``.
    """
    if prefer not in ("voc", "sbd"):
        raise ValueError(f"prefer must be 'voc' or 'sbd', got {prefer!r}")
    voc = find_voc2012(voc_root)
    sbd = find_sbd(sbd_root)
    voc_train = _ids(voc / "ImageSets" / "Segmentation" / "train.txt")
    voc_val = _ids(voc / "ImageSets" / "Segmentation" / "val.txt")
    sbd_train, sbd_val = _ids(sbd / "train.txt"), _ids(sbd / "val.txt")
    ids = train_aug_ids(voc_train, voc_val, sbd_train, sbd_val)
    in_voc, in_sbd = set(voc_train), set(sbd_train) | set(sbd_val)

    out_dir = Path(out) if out is not None else voc
    label_dir = out_dir / "SegmentationClassAug"
    _remove_stale_temps(label_dir)
    written = kept = 0
    failed: list[str] = []
    for sample_id in _progress(ids, "SegmentationClassAug", progress):
        target = label_dir / f"{sample_id}.png"
        if target.is_file() and not force:
            kept += 1
            continue
        use_voc = sample_id in in_voc and (prefer == "voc" or sample_id not in in_sbd)
        source = voc / "SegmentationClass" / f"{sample_id}.png" if use_voc else sbd / "cls" / f"{sample_id}.mat"
        try:
            raw = read_index_png(source) if use_voc else read_sbd_mat(source)
            label = check_label(raw, source, num_classes=21)
            image = voc / "JPEGImages" / f"{sample_id}.jpg"
            h, w = _image_size(image)
            if (h, w) != label.shape:
                raise DatasetError(source,
                                   f"label is {label.shape[1]}x{label.shape[0]} but {image.name} is {w}x{h} (WxH)")
        except DatasetError as e:
            failed.append(str(e))
            continue
        _write_png(target, label)
        written += 1

    list_file = out_dir / "ImageSets" / "SegmentationAug" / "train_aug.txt"
    if failed:  # the list would name masks that do not exist: written by the rerun that completes them
        raise PrepareFailed(failed, PrepareReport(written, kept, label_dir, list_file, len(ids), False, failed))
    changed = _write_text_if_changed(list_file, "".join(f"{i}\n" for i in ids))
    return PrepareReport(written, kept, label_dir, list_file, len(ids), changed)


def build_deepfashion2_masks(
    root: str | os.PathLike,
    splits: Sequence[str] = ("train", "validation"),
    *,
    force: bool = False,
    progress: bool = True,
) -> PrepareReport:
    """Rasterise ``<root>/<split>/annos/*.json`` to ``<root>/<split>/masks/*.png`` (0 background, 1..13).

    The mask size is the size of the matching ``image/<id>.jpg``. Existing masks are kept unless ``force``.
    """
    root = Path(root)
    written = kept = 0
    failed: list[str] = []
    for split in splits:
        split = SPLIT_ALIASES.get(split, split)
        annos = root / split / "annos"
        if not annos.is_dir():
            raise DatasetError(annos, "annotation folder not found (expected <root>/{train,validation}/annos)")
        masks = root / split / "masks"
        _remove_stale_temps(masks)
        names = sorted(p.stem for p in annos.glob("*.json"))
        for name in _progress(names, f"deepfashion2 {split}", progress):
            target = masks / f"{name}.png"
            if target.is_file() and not force:
                kept += 1
                continue
            anno_path = annos / f"{name}.json"
            try:
                h, w = _image_size(root / split / "image" / f"{name}.jpg")
                mask = rasterize_annotation(load_annotation(anno_path), h, w, path=anno_path)
            except DatasetError as e:
                failed.append(str(e))
                continue
            _write_png(target, mask)
            written += 1
    if failed:
        raise PrepareFailed(failed, PrepareReport(written, kept, root, failed=failed))
    return PrepareReport(written, kept, root)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=program_name("reproduce.prepare"),
        description="Build derived dataset files. Safe to interrupt and rerun: finished files are kept.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    voc = sub.add_parser(
        "voc_aug",
        aliases=["voc-aug"],
        help="SegmentationClassAug masks and the train_aug list from VOC 2012 + SBD",
        description=(
            "Write SegmentationClassAug/<id>.png (grayscale index masks) and "
            "ImageSets/SegmentationAug/train_aug.txt = VOC train + SBD train + SBD val - VOC val "
            f"({OFFICIAL_TRAIN_AUG_SIZE:,} images on the official releases)."
        ),
    )
    voc.add_argument(
        "--voc-root", required=True, type=Path, help="VOCdevkit/VOC2012, VOCdevkit, or the folder holding it"
    )
    voc.add_argument("--sbd-root", required=True, type=Path, help="benchmark_RELEASE (or its dataset/ folder)")
    voc.add_argument("--out", type=Path, default=None, help="output folder (default: the VOC2012 folder)")
    voc.add_argument(
        "--prefer",
        choices=("voc", "sbd"),
        default="voc",
        help="label source for VOC train images that SBD also annotates (default: voc, with 255 void outlines)",
    )
    voc.add_argument("--force", action="store_true", help="rewrite masks that already exist")
    voc.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    df2 = sub.add_parser(
        "deepfashion2",
        help="rasterise DeepFashion2 polygon annotations to PNG masks",
        description="Write <root>/<split>/masks/<id>.png: 0 background, 1..13 categories, later items painted on top.",
    )
    df2.add_argument("--data-root", required=True, type=Path, help="folder holding train/ and validation/")
    df2.add_argument(
        "--splits", nargs="+", default=["train", "validation"], help="splits to convert (default: train validation)"
    )
    df2.add_argument("--force", action="store_true", help="rewrite masks that already exist")
    df2.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def run(args: argparse.Namespace) -> None:
    """Do what ``args`` say; bad input raises a DeeplabError (one line, exit 1)."""
    try:
        if args.command in ("voc_aug", "voc-aug"):
            rep = build_voc_aug(
                args.voc_root,
                args.sbd_root,
                args.out,
                prefer=args.prefer,
                force=args.force,
                progress=not args.no_progress,
            )
            print(f"SegmentationClassAug: wrote {rep.written}, kept {rep.kept} existing -> {rep.output}")
            note = (
                ""
                if rep.list_size == OFFICIAL_TRAIN_AUG_SIZE
                else f" (the official releases give {OFFICIAL_TRAIN_AUG_SIZE:,})"
            )
            state = "written" if rep.list_changed else "unchanged"
            print(f"train_aug: {rep.list_size} images{note}, {state} -> {rep.list_file}")
        else:
            rep = build_deepfashion2_masks(args.data_root, args.splits, force=args.force,
                                           progress=not args.no_progress)
            print(f"DeepFashion2 masks: wrote {rep.written}, kept {rep.kept} existing under {rep.output}")
    except PrepareFailed as e:  # one line per bad file, then what was done; exit 1
        for line in e.failures:
            print(f"error: {line}", file=sys.stderr)
        print(f"wrote {e.report.written}, kept {e.report.kept} existing; {len(e.failures)} bad source file(s) "
              "listed above got no output (fix or remove them, then rerun the same command)")
        raise ReportedError(f"{len(e.failures)} bad source file(s)") from None
    except DatasetError:
        raise
    except ValueError as e:
        raise DeeplabError(str(e)) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit code (0 ok, 1 bad input, 2 usage, 130 interrupted)."""
    return run_main(_parser(), run, argv,
                    interrupted="interrupted: finished files are kept; rerun the same command to resume")


if __name__ == "__main__":
    sys.exit(main())
