"""The PASCAL VOC colour map, and conversions between colour and index masks.

VOC ``SegmentationClass`` PNGs are palette ("P" mode) images whose pixel values *are* the
class indices; the palette only decides how they look. Reading them with PIL and
``np.asarray`` gives the indices directly. Converting them to RGB first (a common bug) loses
the indices, which is why :func:`rgb_to_index` exists for users whose masks are already RGB.
"""

from __future__ import annotations

import numpy as np

__all__ = ["voc_palette", "voc_palette_flat", "colorize", "rgb_to_index"]


def voc_palette(num_colors: int = 256) -> np.ndarray:
    """The VOC colour map as a ``(num_colors, 3)`` uint8 array of RGB triples.

    Entry ``i`` spreads the bits of ``i`` over the three channels, from the most significant
    bit of each channel downwards (the ``bitget`` loop of the VOCdevkit's ``VOClabelcolormap.m``):
    0 -> black, 1 -> (128, 0, 0), 255 -> (224, 224, 192), the VOC "void" colour.
    """
    if not 1 <= num_colors <= 256:
        raise ValueError(f"num_colors must be in [1, 256], got {num_colors}")
    index = np.arange(num_colors, dtype=np.int64)
    cmap = np.zeros((num_colors, 3), dtype=np.int64)
    # Vectorised over entries; the 8 iterations are over bit positions, not pixels.
    for shift in range(8):
        for channel in range(3):
            bit = (index >> (3 * shift + channel)) & 1
            cmap[:, channel] |= bit << (7 - shift)
    return cmap.astype(np.uint8)


def voc_palette_flat(num_colors: int = 256) -> list[int]:
    """The palette as the flat ``[r0, g0, b0, r1, ...]`` list that ``PIL.Image.putpalette`` wants."""
    return voc_palette(num_colors).reshape(-1).tolist()


def colorize(label: np.ndarray, palette: np.ndarray | None = None) -> np.ndarray:
    """Map an ``(H, W)`` integer index mask to an ``(H, W, 3)`` uint8 RGB image (for viewing)."""
    palette = voc_palette() if palette is None else np.asarray(palette, dtype=np.uint8)
    label = np.asarray(label)
    if label.ndim != 2 or not np.issubdtype(label.dtype, np.integer):
        raise ValueError(f"expected an (H, W) integer mask, got shape {label.shape} dtype {label.dtype}")
    if label.size and (label.min() < 0 or label.max() >= len(palette)):
        raise ValueError(f"mask values must be in [0, {len(palette)}), got [{label.min()}, {label.max()}]")
    return palette[label]


def rgb_to_index(rgb: np.ndarray, palette: np.ndarray | None = None, *, unknown: int | None = None) -> np.ndarray:
    """Convert an ``(H, W, 3)`` colour mask to an ``(H, W)`` uint8 index mask.

    Each pixel gets the index of its exact colour in ``palette`` (default: the VOC colour map,
    so VOC's void colour maps to 255). Colours not in the palette raise ``ValueError`` naming
    the first one, unless ``unknown`` gives an index for them. JPEG-compressed colour masks
    cannot be converted exactly: their colours are no longer exact.
    """
    palette = voc_palette() if palette is None else np.asarray(palette, dtype=np.uint8)
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"expected an (H, W, 3) colour mask, got shape {rgb.shape}")
    rgb = rgb[..., :3].astype(np.int64)
    codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    pal = palette.astype(np.int64)
    pal_codes = (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]
    # First palette entry wins for duplicate colours; sorting makes the lookup a searchsorted.
    uniq_codes, first = np.unique(pal_codes, return_index=True)
    pos = np.clip(np.searchsorted(uniq_codes, codes), 0, len(uniq_codes) - 1)
    found = uniq_codes[pos] == codes
    out = first[pos]
    if not found.all():
        if unknown is None:
            y, x = np.argwhere(~found)[0]
            r, g, b = rgb[y, x]
            raise ValueError(f"colour ({r}, {g}, {b}) at row {y}, column {x} is not in the palette")
        out = np.where(found, out, unknown)
    if out.max(initial=0) > 255:
        raise ValueError("palette has more than 256 entries; indices do not fit in uint8")
    return out.astype(np.uint8)
