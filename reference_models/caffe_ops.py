"""Caffe's size and resize rules, as DeepLab v2's Caffe fork applies them."""

from __future__ import annotations

from fractions import Fraction

import torch
import torch.nn.functional as F


def interp_out(n: int, *, shrink: int = 1, zoom: int = 1, pad_beg: int = 0, pad_end: int = 0) -> int:
    """DeepLab ``Interp`` output size: shrink first, ``(n-1)//s + 1``, then zoom, ``n + (n-1)(z-1)``.

    321 at 0.75 (shrink 4, zoom 3) -> 241; at 0.5 (shrink 2) -> 161.
    """
    n = n + pad_beg + pad_end
    if shrink != 1:
        n = (n - 1) // shrink + 1
    if zoom != 1:
        n = n + (n - 1) * (zoom - 1)
    return n


def scale_factors(scale: float) -> tuple[int, int]:
    """``(shrink, zoom)`` of an Interp that scales by ``scale`` (0.75 -> (4, 3), 0.5 -> (2, 1))."""
    frac = Fraction(scale).limit_denominator(64)
    if frac <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    return frac.denominator, frac.numerator


def scaled_size(n: int, scale: float) -> int:
    """Size Caffe's Interp gives ``n`` at ``scale`` (see :func:`interp_out`)."""
    shrink, zoom = scale_factors(scale)
    return interp_out(n, shrink=shrink, zoom=zoom)


def caffe_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize as Caffe's Interp computes it: ``align_corners=True``; equal size is a copy."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)
