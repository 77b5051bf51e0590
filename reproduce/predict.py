"""Segment your own images, videos or a camera with converted DeepLab weights: masks and overlays.

Examples (from the repository root)::

  python -m reproduce.predict --weights weights/deeplabv2_resnet101_msc_voc12.pth photos/ --out masks/
  python -m reproduce.predict --weights weights/deeplabv2_resnet101_msc_voc12.pth cat.jpg --crf
  python -m reproduce.predict --model deeplabv3plus_xception65 --weights xception65_voc.pth \\
      --output-stride 8 --scales 0.5:0.25:1.75 --flip street.jpg --out masks/
  python -m reproduce.predict --weights v3plus.pth street.mp4 --out videos/ --frame-masks
  python -m reproduce.predict --weights v3plus.pth --camera 0 --out videos/   # Ctrl-C stops, the video is kept

For each image ``NAME.ext`` it writes ``<out>/NAME.png``, a palette ("P" mode) PNG whose pixel
values are the class indices and whose palette shows them in colour (``--palette``), and
``<out>/NAME_overlay.jpg`` (or ``.png``), the image blended with the coloured mask, both upright as photo
viewers show the image (EXIF orientation applied; ``--ignore-exif`` keeps the stored pixels; 16-bit and
[0, 1] float images are scaled to 0..255, other ranges refused: :func:`reproduce.datasets.read_image`). Inference is
:mod:`reproduce.inference`'s (same preprocessing, protocol, scales and flips as the evaluation);
``--crf`` adds the DeepLab v2 dense CRF (:mod:`reproduce.crf`). The forward runs on
:class:`reproduce.inference.Segmenter` (folded BatchNorm, channels_last, the precision ``auto``
picks); decoding the next image and encoding the last outputs run in threads beside it.

A video file (any format OpenCV reads) or ``--camera N`` gives ``<out>/NAME_overlay.mp4`` at the
source's frame rate and size (and with ``--frame-masks`` ``<out>/NAME/frame_NNNNNN.png``); Ctrl-C
stops cleanly and keeps a playable video of the frames done so far.

Every output is written to a unique temporary name, read back (a decode of each image, the frame count
of a video) and only then renamed into place: a full disk is exit 1 naming the file, never a truncated
file under its name. Nothing is written over an input: an output path that resolves to an input file, or ``--out``
naming an input folder, is an error. ``--on-error skip`` skips (and counts) unreadable images
instead of stopping at the first one. Exit codes: 0, 1 (bad input), 2 (usage), 130 (Ctrl-C).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from converters.cli import native_stderr_silenced, program_name, run_main
from converters.errors import OutputError
from converters.io import StagedFile
from reproduce.inference import (
    MEMORY_FORMAT_HELP,
    MEMORY_FORMATS,
    PRECISION_HELP,
    PRECISIONS,
    PROTOCOLS,
    InferenceConfig,
    InferenceError,
    Segmenter,
    image_labels,
    parse_scales,
    run_image,
)

__all__ = ["PALETTES", "palette", "find_images", "save_mask", "overlay", "predict_files", "predict_video",
           "check_outputs", "PredictReport", "main"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp")
PALETTES = ("voc", "cocostuff", "gray")


def _spread_palette(n: int) -> np.ndarray:
    """``n`` well-separated colours (golden-ratio hues, alternating brightness); entry 255 black."""
    import colorsys

    pal = np.zeros((256, 3), dtype=np.uint8)
    for i in range(min(n, 255)):
        h = (i * 0.618033988749895) % 1.0
        s, v = (0.75, 0.95) if i % 2 == 0 else (0.9, 0.65)
        pal[i] = [round(255 * c) for c in colorsys.hsv_to_rgb(h, s, v)]
    return pal


def palette(name: str) -> np.ndarray:
    """A ``(256, 3)`` uint8 colour map.

    ``voc``: the VOCdevkit colour map (VOC's own PNG colours; 255 is the void colour).
    ``cocostuff``: 182 distinct colours of our own (not the cocostuffapi colours).
    ``gray``: index i shown as gray level i (the PNG stays an index mask either way).
    """
    from reproduce.palette import voc_palette

    if name == "voc":
        return voc_palette()
    if name == "cocostuff":
        return _spread_palette(182)
    if name == "gray":
        return np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
    raise InferenceError(f"unknown palette {name!r}; choose from {', '.join(PALETTES)}")


def find_images(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given plus the images (and videos) directly inside given folders (sorted); one-line error when none."""
    found: list[Path] = []
    paths = list(paths)
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(q for q in p.iterdir()
                            if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES)
        elif p.is_file():
            found.append(p)
        else:
            raise InferenceError(f"{p}: no such image or folder")
    if not found:
        raise InferenceError(f"no images or videos ({', '.join(IMAGE_SUFFIXES + VIDEO_SUFFIXES)}) in "
                             f"{', '.join(map(str, paths))}")
    stems: dict[str, Path] = {}
    for p in found:
        if p.stem in stems:
            raise InferenceError(f"{p} and {stems[p.stem]} would write the same output name {p.stem}")
        stems[p.stem] = p
    return found


def save_mask(path: Path, label: np.ndarray, colours: np.ndarray) -> Path:
    """Write an index mask as a palette PNG (pixel value = class index), atomically, decoded back before it
    is named (:func:`converters.io.save_image`)."""
    from converters.io import save_image

    im = Image.fromarray(label.astype(np.uint8), mode="L").convert("P")
    im.putpalette(colours.reshape(-1).tolist())
    return save_image(path, im, "PNG")


def overlay(image_rgb: np.ndarray, label: np.ndarray, colours: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The image blended with the coloured mask (``alpha`` = mask weight)."""
    colour = colours[label].astype(np.float32)
    return np.clip((1 - alpha) * image_rgb.astype(np.float32) + alpha * colour + 0.5, 0, 255).astype(np.uint8)


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def output_paths(source: Path, out: Path, *, overlay_format: str = "jpg", video_format: str = "mp4") -> list[Path]:
    """The files ``predict`` writes for ``source`` (per-frame masks go into a folder ``<out>/<stem>/``)."""
    if is_video(source):
        return [out / f"{source.stem}_overlay.{video_format}", out / source.stem]
    return [out / f"{source.stem}.png", out / f"{source.stem}_overlay.{overlay_format}"]


def check_outputs(inputs: Sequence[str | Path], sources: Sequence[Path], out: Path, *, overlay_format: str = "jpg",
                  video_format: str = "mp4") -> None:
    """Refuse (one line) an ``out`` that would write over an input: never overwrite what we read.

    Errors: ``out`` is an existing file; ``out`` is a folder given as input (its images would be
    mixed with, and later read back as, outputs); any output path resolves to an input file.
    """
    out_r = out.resolve()
    if out.exists() and not out.is_dir():
        raise InferenceError(f"--out {out}: is a file; give a folder for the masks and overlays")
    for given in map(Path, inputs):
        if given.is_dir() and given.resolve() == out_r:
            raise InferenceError(f"--out {out}: is the input folder {given}; its images would be overwritten or "
                                 "mixed with the outputs, choose another folder")
    taken = {p.resolve(): p for p in sources}
    for source in sources:
        for path in output_paths(source, out, overlay_format=overlay_format, video_format=video_format):
            if path.resolve() in taken:
                raise InferenceError(f"--out {out}: output {path} would overwrite the input {taken[path.resolve()]}")


@dataclass
class PredictReport:
    """What a run did: outputs written, inputs skipped (``--on-error skip``) and why, frames and seconds."""

    written: list[tuple[Path, Path]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # one line per skipped input: "path: problem"
    videos: list[dict] = field(default_factory=list)
    interrupted: bool = False


class _Writer:
    """Encodes and writes outputs in one background thread (PNG/JPEG encoding overlaps the next forward)."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="predict-writer")
        self._pending: list[Future] = []

    def submit(self, fn: Callable[..., object], *args: object) -> None:
        self._pending.append(self._pool.submit(fn, *args))
        if len(self._pending) > 4:  # bounded memory: wait for the oldest
            self._pending.pop(0).result()

    def close(self) -> None:
        try:
            for f in self._pending:
                f.result()
        finally:
            self._pending.clear()
            self._pool.shutdown(wait=True)


def _write_image_outputs(path: Path, out: Path, image: np.ndarray, label: np.ndarray, colours: np.ndarray,
                         overlay_format: str, alpha: float) -> tuple[Path, Path]:
    from converters.io import save_image

    mask_path = save_mask(out / f"{path.stem}.png", label, colours)
    blend = Image.fromarray(overlay(image, label, colours, alpha))
    fmt = "JPEG" if overlay_format == "jpg" else "PNG"
    ov_path = save_image(out / f"{path.stem}_overlay.{overlay_format}", blend, fmt)
    return mask_path, ov_path


def predict_files(
    images: Sequence[Path],
    *,
    model: str | None = None,
    weights: Path | None = None,
    out: Path,
    config: InferenceConfig,
    palette_name: str = "voc",
    crf: bool = False,
    crf_workers: int | None = None,
    overlay_format: str = "jpg",
    num_classes: int | None = None,
    output_stride: int | None = None,
    device: str = "auto",
    alpha: float = 0.5,
    progress: bool = False,
    on_error: str = "error",
    engine: Segmenter | None = None,
    precision: str = "auto",
    report: PredictReport | None = None,
    exif: bool = True,
) -> list[tuple[Path, Path]]:
    """Segment still ``images``; return the ``(mask, overlay)`` paths written, in input order.

    ``on_error="skip"`` skips an image that cannot be decoded and records it in ``report.skipped``;
    ``"error"`` stops at it with a one-line :class:`InferenceError` naming it (what was written before
    stays: every file is written atomically). Images are decoded by
    :func:`reproduce.datasets.read_image` (EXIF orientation applied unless ``exif=False``, 16-bit and float
    images scaled), so masks and overlays match the photo as viewers show it. Decoding the next image and writing the previous outputs
    run in background threads while the network runs.
    """
    from reproduce.datasets import DatasetError, read_image

    if on_error not in ("error", "skip"):
        raise InferenceError(f"on_error must be 'error' or 'skip', got {on_error!r}")
    colours = palette(palette_name)
    seg = engine or Segmenter(weights, model=model, num_classes=num_classes, output_stride=output_stride,
                              device=device, precision=precision, config=config)
    lm = seg.lm
    if lm.num_classes > 255:
        raise InferenceError(f"{lm.num_classes} classes do not fit an 8-bit palette PNG")
    report = report if report is not None else PredictReport()
    pool = None
    if crf:
        from reproduce.crf import CRFPool

        pool = CRFPool(crf_workers)
    out.mkdir(parents=True, exist_ok=True)
    queued: list[tuple[Path, np.ndarray]] = []
    writer = _Writer()

    def write(path: Path, image: np.ndarray, label: np.ndarray) -> None:
        report.written.append((out / f"{path.stem}.png", out / f"{path.stem}_overlay.{overlay_format}"))
        writer.submit(_write_image_outputs, path, out, image, label, colours, overlay_format, alpha)

    def read(path: Path) -> np.ndarray | DatasetError:
        try:
            return read_image(path, exif=exif)
        except DatasetError as e:
            return e

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(images), desc="predict", unit="img")
    reader = ThreadPoolExecutor(1, thread_name_prefix="predict-reader")
    try:
        upcoming = reader.submit(read, images[0]) if images else None
        for i, path in enumerate(images):
            image = upcoming.result()
            upcoming = reader.submit(read, images[i + 1]) if i + 1 < len(images) else None
            if bar is not None:
                bar.update(1)
            if isinstance(image, DatasetError):
                if on_error == "skip":
                    report.skipped.append(str(image))
                    continue
                raise InferenceError(str(image)) from None
            if pool is None:
                write(path, image, image_labels(lm, image, config))
                continue
            pool.submit(image, run_image(lm, image, config).numpy())
            queued.append((path, image))
            for label in pool.results():
                write(*queued.pop(0), label)
        if pool is not None:
            for label in pool.drain():
                write(*queued.pop(0), label)
    finally:
        reader.shutdown(wait=True, cancel_futures=True)
        if bar is not None:
            bar.close()
        if pool is not None:
            pool.close()
        writer.close()
    return report.written


# ---------------------------------------------------------------------------------------------- video and camera
_FOURCC = {"mp4": "mp4v", "avi": "MJPG"}


def predict_video(
    source: Path | int,
    *,
    engine: Segmenter,
    out: Path,
    config: InferenceConfig,
    palette_name: str = "voc",
    alpha: float = 0.5,
    frame_masks: bool = False,
    video_format: str = "mp4",
    max_frames: int | None = None,
    progress: bool = False,
    report: PredictReport | None = None,
) -> dict:
    """Segment a video file (any format OpenCV reads) or camera ``source`` (an int) frame by frame.

    Writes ``<out>/<name>_overlay.<video_format>`` at the source's frame rate and frame size (25 frames/s
    when the source reports no rate, as some cameras do) and, with ``frame_masks``, one palette PNG per frame in ``<out>/<name>/``. The video is written
    to a temporary name and renamed when finalized, also after Ctrl-C (``KeyboardInterrupt`` is
    re-raised after the video with the frames done so far is closed and in place). Returns a record
    with frames, seconds and frames per second.
    """
    import cv2

    colours = palette(palette_name)
    name = f"camera{source}" if isinstance(source, int) else Path(source).stem
    cap = cv2.VideoCapture(source)
    if not cap.isOpened():
        what = f"camera {source}" if isinstance(source, int) else str(source)
        raise InferenceError(f"{what}: OpenCV cannot open it as a video"
                             + (" (no such camera?)" if isinstance(source, int) else ""))
    fps = cap.get(cv2.CAP_PROP_FPS)
    fps = fps if fps and fps > 0 and fps < 1000 else 25.0
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if not isinstance(source, int) else 0
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{name}_overlay.{video_format}"
    masks_dir = out / name
    if frame_masks:
        masks_dir.mkdir(parents=True, exist_ok=True)
    staged = None  # the video's unique temporary (OpenCV picks the container from its suffix)
    writer = None
    frames, t0 = 0, time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total or None, desc=f"video {name}", unit="frame")
    background = _Writer()
    record: dict = {"source": str(source), "output": str(target), "fps": fps}
    keep = False  # rename the video into place: on success and after Ctrl-C, never after another failure
    try:
        while max_frames is None or frames < max_frames:
            ok, bgr = cap.read()
            if not ok:
                break
            rgb = np.ascontiguousarray(bgr[:, :, ::-1])
            if writer is None:
                h, w = rgb.shape[:2]
                staged = StagedFile(target, suffix=f".tmp.{video_format}")
                writer = cv2.VideoWriter(str(staged.path), cv2.VideoWriter_fourcc(*_FOURCC[video_format]), fps,
                                         (w, h))
                if not writer.isOpened():
                    raise InferenceError(f"{target}: OpenCV cannot write {video_format} video here")
                record["size"] = [w, h]
            label = engine.predict(rgb, config)
            writer.write(np.ascontiguousarray(overlay(rgb, label, colours, alpha)[:, :, ::-1]))
            if frame_masks:
                background.submit(save_mask, masks_dir / f"frame_{frames:06d}.png", label, colours)
            frames += 1
            if bar is not None:
                bar.update(1)
        keep = True
    except KeyboardInterrupt:
        keep = True
        record["interrupted"] = True
        if report is not None:
            report.interrupted = True
        raise
    finally:
        cap.release()
        if bar is not None:
            bar.close()
        committed = False
        try:
            background.close()
            if writer is not None:
                writer.release()  # finalizes the container (also after Ctrl-C)
            if staged is not None and keep and frames:
                # cv2.VideoWriter reports no failed write: read the count and the last frame back
                staged.commit(check=lambda p: check_video(p, target, frames))
                committed = True
        finally:
            if staged is not None and not committed:
                staged.discard()
            seconds = time.perf_counter() - t0
            record.update(frames=frames, seconds=round(seconds, 3),
                          frames_per_second=round(frames / seconds, 3) if seconds > 0 else None,
                          written=committed)
            if report is not None:
                report.videos.append(record)
    if frames == 0:
        raise InferenceError(f"{source}: no frame could be read")
    return record


def check_video(path: Path, target: Path, frames: int) -> None:
    """Raise :class:`OutputError` naming ``target`` unless the video at ``path`` opens in OpenCV, holds
    ``frames`` frames and its last frame decodes (a full disk leaves a container without its index)."""
    import cv2

    with native_stderr_silenced():  # FFmpeg prints its own complaint ("moov atom not found") on fd 2
        cap = cv2.VideoCapture(str(path))
    try:
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else -1
        if count != frames:
            found = "does not open" if count < 0 else f"holds {count}"
            raise OutputError(target, f"could not be written: {frames} frames were written, the file read back "
                              f"{found} (disk full or a file-size limit?)")
        with native_stderr_silenced():
            cap.set(cv2.CAP_PROP_POS_FRAMES, frames - 1)
            last = cap.read()[0]
        if not last:
            raise OutputError(target, "could not be written: its last frame does not decode (disk full?)")
    finally:
        cap.release()


# ---------------------------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=program_name("reproduce.predict"),
        description="Segment images, videos or a camera with DeepLab weights: a palette PNG mask and an overlay "
                    "per image, an overlay video per video.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="*", metavar="INPUT",
                        help="image files, video files and/or folders of them (relative to --data-root)")
    parser.add_argument("--camera", type=int, metavar="N", help="segment camera N (OpenCV index) until Ctrl-C")
    parser.add_argument("--model", help="registered model name (default: from the weights' provenance JSON)")
    parser.add_argument("--weights", type=Path, required=True,
                        help="converted weights (.pth / .safetensors); a bare name is looked up in --models-dir")
    parser.add_argument("--models-dir", type=Path, default=Path("data") / "models",
                        help="folder holding converted weights (default data/models)")
    parser.add_argument("--data-root", type=Path, default=Path("."),
                        help="folder relative INPUT paths start from (default: the current folder)")
    parser.add_argument("--num-classes", type=int, help="classes (default: from the provenance or the weights)")
    parser.add_argument("--output-stride", type=int, choices=(8, 16), help="v3/v3+ output stride (default 16)")
    parser.add_argument("--out", type=Path, default=Path("predictions"), help="output folder (default predictions/)")
    parser.add_argument("--palette", choices=PALETTES, default="voc", help="mask colours (default voc)")
    parser.add_argument("--overlay-format", choices=("jpg", "png"), default="jpg", help="overlay file type")
    parser.add_argument("--video-format", choices=tuple(_FOURCC), default="mp4", help="overlay video type (mp4)")
    parser.add_argument("--frame-masks", action="store_true", help="videos: also one mask PNG per frame")
    parser.add_argument("--max-frames", type=int, help="videos/camera: stop after N frames")
    parser.add_argument("--alpha", type=float, default=0.5, help="mask weight in the overlay (default 0.5)")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="pad",
                        help="pad: bottom/right pad to --crop-size as in evaluation (default); whole: as is")
    parser.add_argument("--crop-size", type=int, default=513, help="pad size (default 513)")
    parser.add_argument("--scales", default="1.0", help="v3/v3+ test scales, START:STEP:STOP or a comma list")
    parser.add_argument("--flip", action="store_true", help="average with the left-right flipped image")
    parser.add_argument("--crf", action="store_true", help="dense CRF post-processing of images (needs pydensecrf2)")
    parser.add_argument("--crf-workers", type=int, default=None,
                        help="CRF worker processes beside the forward (default: one per core, fewer when one "
                             "image's CRF memory would not fit; 0: in this process)")
    parser.add_argument("--ignore-exif", action="store_true",
                        help="use the pixels as stored: do not turn photos upright by their EXIF orientation (by "
                             "default masks and overlays match the photo as viewers show it)")
    parser.add_argument("--on-error", choices=("error", "skip"), default="error",
                        help="an unreadable image: stop with an error naming it (default) or skip and count it")
    parser.add_argument("--device", default="auto", help="auto (default: cuda when available), cpu, cuda, cuda:N")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="default auto (speed first; reproduce.evaluate defaults to fp32, the reference's "
                             f"precision). {PRECISION_HELP}")
    parser.add_argument("--memory-format", choices=MEMORY_FORMATS, default="auto", help=MEMORY_FORMAT_HELP)
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (pays back on long videos)")
    parser.add_argument("--amp", action="store_true", help="same as --precision fp16 (CUDA)")
    parser.add_argument("--quiet", action="store_true", help="print nothing on success")
    return parser


_EPILOG = """examples:
  python -m reproduce.predict --weights weights/deeplabv2_resnet101_msc_voc12.pth photos/ --out masks/
  python -m reproduce.predict --weights v3plus.pth street.mp4 --out videos/ --frame-masks
  python -m reproduce.predict --weights v3plus.pth --camera 0 --out videos/   (Ctrl-C stops; the video is kept)

exit codes: 0 done, 1 bad input (one line on stderr), 2 usage, 130 interrupted (outputs so far are complete)
"""


def resolve_weights(weights: Path, models_dir: Path) -> Path:
    """``weights`` as given when it exists, else looked up in ``models_dir`` (directly, then below it)."""
    if weights.exists() or weights.is_absolute():
        return weights
    direct = models_dir / weights
    if direct.exists():
        return direct
    if models_dir.is_dir():
        found = sorted(models_dir.rglob(weights.name))
        if found:
            return found[0]
    return weights


def run(args: argparse.Namespace, report: PredictReport) -> None:
    """Predict as ``args`` say (raises :class:`InferenceError` / ``KeyboardInterrupt``)."""
    if args.crf:
        from reproduce.crf import require_pydensecrf

        require_pydensecrf()
    if not args.inputs and args.camera is None:
        raise InferenceError("give images, videos or folders, or --camera N")
    if args.crf_workers is not None and args.crf_workers < 0:
        raise InferenceError("--crf-workers must be >= 0")
    inputs = [p if Path(p).is_absolute() else str(args.data_root / p) for p in args.inputs]
    sources = find_images(inputs) if inputs else []
    check_outputs(inputs, sources, args.out, overlay_format=args.overlay_format, video_format=args.video_format)
    config = InferenceConfig(protocol=args.protocol, crop_size=args.crop_size, scales=parse_scales(args.scales),
                             flip=args.flip)
    precision = "fp16" if args.amp and args.precision == "auto" else args.precision
    engine = Segmenter(resolve_weights(args.weights, args.models_dir), model=args.model,
                       num_classes=args.num_classes, output_stride=args.output_stride, device=args.device,
                       precision=precision, memory_format=args.memory_format, compile=bool(args.compile),
                       config=config)
    if not args.quiet:
        print(engine.summary(), file=sys.stderr)
    images = [p for p in sources if not is_video(p)]
    if images:
        predict_files(images, out=args.out, config=config, palette_name=args.palette, crf=args.crf,
                      crf_workers=args.crf_workers, overlay_format=args.overlay_format, alpha=args.alpha,
                      progress=not args.quiet, on_error=args.on_error, engine=engine, report=report,
                      exif=not args.ignore_exif)
    videos: list[Path | int] = [p for p in sources if is_video(p)]
    if args.camera is not None:
        videos.append(args.camera)
    for video in videos:
        try:
            predict_video(video, engine=engine, out=args.out, config=config, palette_name=args.palette,
                          alpha=args.alpha, frame_masks=args.frame_masks, video_format=args.video_format,
                          max_frames=args.max_frames, progress=not args.quiet, report=report)
        except InferenceError as e:
            if args.on_error != "skip" or isinstance(video, int):
                raise
            report.skipped.append(str(e))


def _summary(report: PredictReport, out: Path) -> str:
    parts = []
    if report.written:
        parts.append(f"{len(report.written)} masks and overlays")
    for v in report.videos:
        if v.get("written"):
            parts.append(f"{v['output']} ({v['frames']} frames, {v['frames_per_second']} frames/s)")
    text = f"wrote {', '.join(parts) or 'nothing'} to {out}"
    if report.skipped:
        text += f"; skipped {len(report.skipped)} unreadable input(s): " + "; ".join(report.skipped)
    return text


def _run_and_report(args: argparse.Namespace) -> None:
    report = PredictReport()
    try:
        run(args, report)
    except KeyboardInterrupt:
        print(f"interrupted: {_summary(report, args.out)} (complete files)")  # the error line follows on stderr
        raise
    if report.skipped:
        print(f"warning: skipped {len(report.skipped)} unreadable input(s): " + "; ".join(report.skipped),
              file=sys.stderr)
    if not args.quiet:
        print(_summary(report, args.out))


def main(argv: list[str] | None = None) -> int:
    """The command line: exit 0 done, 1 bad input (one line on stderr), 2 usage, 130 interrupted."""
    return run_main(build_parser(), _run_and_report, argv)


if __name__ == "__main__":
    sys.exit(main())
