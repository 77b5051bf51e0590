"""Parity against an independent Caffe engine: OpenCV's Caffe importer.

OpenCV (``opencv-python-headless<5``) runs the same caffemodel through its own
implementation of Caffe's layers; :func:`opencv_forward` feeds it an input and
returns a named blob. :func:`compare` gives the two numbers the parity tests
bound: ``max|ours - ref| / max|ref|`` and the share of pixels whose argmax agrees.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from converters.caffe import topology
from converters.caffe.synth import write_prototxt


def opencv_forward(net: Any, caffemodel: str | os.PathLike, x: np.ndarray, blob: str) -> np.ndarray:
    """Run ``x`` (1x3xHxW float32) through ``net``'s weights in ``caffemodel`` with OpenCV; return ``blob``.

    ``net`` is the official ``NetParameter``; it is rewritten for OpenCV by
    :func:`converters.caffe.topology.opencv_deploy` (explicit Interp sizes).
    Winograd convolution is disabled: its float error would mask real differences.
    """
    import cv2

    h, w = x.shape[-2:]
    deploy = topology.opencv_deploy(net, (h, w))
    with tempfile.TemporaryDirectory() as tmp:
        proto = write_prototxt(deploy, Path(tmp) / "deploy.prototxt")
        cvnet = cv2.dnn.readNetFromCaffe(str(proto), str(caffemodel))
    cvnet.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    cvnet.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    cvnet.enableWinograd(False)
    cvnet.setInput(np.ascontiguousarray(x, dtype=np.float32))
    return np.asarray(cvnet.forward(blob))


def compare(ours: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """``max_rel`` = max|ours-ref| / max|ref| (inf if ours is not finite); ``argmax_agreement`` over axis 1."""
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if ours.shape != ref.shape:
        raise ValueError(f"shape mismatch: ours {ours.shape}, reference {ref.shape}")
    if not np.isfinite(ours).all():
        return {"max_rel": float("inf"), "argmax_agreement": 0.0}  # NaN/inf would compare as "not greater"
    max_rel = float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-30))
    agree = float((ours.argmax(1) == ref.argmax(1)).mean())
    return {"max_rel": max_rel, "argmax_agreement": agree}


def random_input(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A preprocessed-looking input: BGR pixels minus the Caffe mean (roughly -125..130)."""
    rng = np.random.default_rng(seed)
    smooth = rng.uniform(0, 255, size=(1, 3, max(h // 8, 1), max(w // 8, 1)))
    img = np.kron(smooth, np.ones((1, 1, 8, 8)))[:, :, :h, :w]
    if img.shape[-2:] != (h, w):
        img = np.pad(img, ((0, 0), (0, 0), (0, h - img.shape[2]), (0, w - img.shape[3])), mode="edge")
    img = img + rng.normal(0, 20, size=img.shape)
    mean = np.array([104.008, 116.669, 122.675]).reshape(1, 3, 1, 1)
    return (np.clip(img, 0, 255) - mean).astype(np.float32)
