"""Segment your own images with converted DeepLab weights: a colour-mapped mask and an overlay per image.

Examples (from the repository root)::

  python -m reproduce.predict --weights weights/deeplabv2_resnet101_msc_voc12.pth photos/ --out masks/
  python -m reproduce.predict --weights weights/deeplabv2_resnet101_msc_voc12.pth cat.jpg --crf
  python -m reproduce.predict --model deeplabv3plus_xception65 --weights xception65_voc.pth \\
      --output-stride 8 --scales 0.5:0.25:1.75 --flip street.jpg --out masks/

For each image ``NAME.ext`` it writes ``<out>/NAME.png``, a palette ("P" mode) PNG whose pixel
values are the class indices and whose palette shows them in colour (``--palette``), and
``<out>/NAME_overlay.jpg`` (or ``.png``), the image blended with the coloured mask. Inference is
:mod:`reproduce.inference`'s (same preprocessing, protocol, scales and flips as the evaluation);
``--crf`` adds the DeepLab v2 dense CRF (:mod:`reproduce.crf`). Exit codes: 0, 1 (bad input), 2 (usage).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from reproduce.inference import PROTOCOLS, InferenceConfig, InferenceError, load_model, parse_scales, run_image

__all__ = ["PALETTES", "palette", "find_images", "save_mask", "overlay", "predict_files", "main"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
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
    """Files as given plus the images directly inside given folders (sorted); one-line error when none."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            found.append(p)
        else:
            raise InferenceError(f"{p}: no such image or folder")
    if not found:
        raise InferenceError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, paths))}")
    stems: dict[str, Path] = {}
    for p in found:
        if p.stem in stems:
            raise InferenceError(f"{p} and {stems[p.stem]} would write the same output name {p.stem}.png")
        stems[p.stem] = p
    return found


def save_mask(path: Path, label: np.ndarray, colours: np.ndarray) -> Path:
    """Write an index mask as a palette PNG (pixel value = class index), atomically."""
    from converters.io import write_atomic

    im = Image.fromarray(label.astype(np.uint8), mode="L").convert("P")
    im.putpalette(colours.reshape(-1).tolist())
    return write_atomic(path, lambda p: im.save(p, format="PNG"))


def overlay(image_rgb: np.ndarray, label: np.ndarray, colours: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The image blended with the coloured mask (``alpha`` = mask weight)."""
    colour = colours[label].astype(np.float32)
    return np.clip((1 - alpha) * image_rgb.astype(np.float32) + alpha * colour + 0.5, 0, 255).astype(np.uint8)


def predict_files(
    images: Sequence[Path],
    *,
    model: str | None,
    weights: Path,
    out: Path,
    config: InferenceConfig,
    palette_name: str = "voc",
    crf: bool = False,
    crf_workers: int = 0,
    overlay_format: str = "jpg",
    num_classes: int | None = None,
    output_stride: int | None = None,
    device: str = "cpu",
    alpha: float = 0.5,
    progress: bool = False,
) -> list[tuple[Path, Path]]:
    """Segment ``images``; return the ``(mask, overlay)`` paths written, in input order."""
    from converters.io import write_atomic
    from reproduce.datasets import DatasetError, read_image

    colours = palette(palette_name)
    lm = load_model(model, weights, num_classes=num_classes, output_stride=output_stride, device=device)
    if lm.num_classes > 255:
        raise InferenceError(f"{lm.num_classes} classes do not fit an 8-bit palette PNG")
    pool = None
    if crf:
        from reproduce.crf import CRFPool

        pool = CRFPool(crf_workers)
    out.mkdir(parents=True, exist_ok=True)
    written: list[tuple[Path, Path]] = []
    queued: list[tuple[Path, np.ndarray]] = []

    def write(path: Path, image: np.ndarray, label: np.ndarray) -> None:
        mask_path = save_mask(out / f"{path.stem}.png", label, colours)
        blend = Image.fromarray(overlay(image, label, colours, alpha))
        fmt = "JPEG" if overlay_format == "jpg" else "PNG"
        ov_path = write_atomic(out / f"{path.stem}_overlay.{overlay_format}", lambda p: blend.save(p, format=fmt))
        written.append((mask_path, ov_path))

    it: Iterable[Path] = images
    if progress:
        from tqdm import tqdm

        it = tqdm(images, desc="predict", unit="img")
    try:
        for path in it:
            try:
                image = read_image(path)
            except DatasetError as e:
                raise InferenceError(str(e)) from None
            probs = run_image(lm, image, config)
            if pool is None:
                write(path, image, probs.argmax(0).numpy().astype(np.uint8))
                continue
            pool.submit(image, probs.numpy())
            queued.append((path, image))
            for label in pool.results():
                write(*queued.pop(0), label)
        if pool is not None:
            for label in pool.drain():
                write(*queued.pop(0), label)
    finally:
        if pool is not None:
            pool.close()
    return written


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m reproduce.predict",
        description="Segment images with DeepLab weights: a palette PNG mask and an overlay per image.",
        epilog=__doc__.split("Examples (from the repository root)::", 1)[1].split("For each image", 1)[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files and/or folders of images")
    parser.add_argument("--model", help="registered model name (default: from the weights' provenance JSON)")
    parser.add_argument("--weights", type=Path, required=True, help="converted weights (.pth / .safetensors)")
    parser.add_argument("--num-classes", type=int, help="classes (default: from the provenance or the weights)")
    parser.add_argument("--output-stride", type=int, choices=(8, 16), help="v3/v3+ output stride (default 16)")
    parser.add_argument("--out", type=Path, default=Path("predictions"), help="output folder (default predictions/)")
    parser.add_argument("--palette", choices=PALETTES, default="voc", help="mask colours (default voc)")
    parser.add_argument("--overlay-format", choices=("jpg", "png"), default="jpg", help="overlay file type")
    parser.add_argument("--alpha", type=float, default=0.5, help="mask weight in the overlay (default 0.5)")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="pad",
                        help="pad: bottom/right pad to --crop-size as in evaluation (default); whole: as is")
    parser.add_argument("--crop-size", type=int, default=513, help="pad size (default 513)")
    parser.add_argument("--scales", default="1.0", help="v3/v3+ test scales, START:STEP:STOP or a comma list")
    parser.add_argument("--flip", action="store_true", help="average with the left-right flipped image")
    parser.add_argument("--crf", action="store_true", help="dense CRF post-processing (needs pydensecrf2)")
    parser.add_argument("--crf-workers", type=int, default=0, help="CRF worker processes (default 0)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    parser.add_argument("--amp", action="store_true", help="float16 autocast on CUDA")
    parser.add_argument("--quiet", action="store_true", help="print nothing on success")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from reproduce.crf import CRFUnavailable

    try:
        if args.crf:
            from reproduce.crf import require_pydensecrf

            require_pydensecrf()
        if args.device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise InferenceError("--device cuda: no CUDA device is available to torch (use --device cpu)")
        images = find_images(args.inputs)
        config = InferenceConfig(protocol=args.protocol, crop_size=args.crop_size, scales=parse_scales(args.scales),
                                 flip=args.flip, amp=args.amp)
        written = predict_files(
            images, model=args.model, weights=args.weights, out=args.out, config=config, palette_name=args.palette,
            crf=args.crf, crf_workers=args.crf_workers, overlay_format=args.overlay_format,
            num_classes=args.num_classes, output_stride=args.output_stride, device=args.device, alpha=args.alpha,
            progress=not args.quiet,
        )
    except (InferenceError, CRFUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(f"wrote {len(written)} masks and overlays to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
