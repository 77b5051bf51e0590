"""Generated inputs for ``deeplab-recipe custom``: an imbalanced dataset in the plain folder layout, tiny init weights.

Scenes of 64x64 on a textured background: a large shape of class ``shape`` (about a fifth of the
pixels) and, in most images, one or two small faint reddish discs of class ``speck`` (under 2 % of the
pixels in all). Images are lossless PNGs, masks grayscale index PNGs, ``classes.txt`` one name per line.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from converters.io import save_state_dict, write_json_atomic

CLASSES = ("background", "shape", "speck")
TINY_PRE = {"channel_order": "RGB", "mean": [127.5, 127.5, 127.5], "std": [127.5, 127.5, 127.5], "scale": 1.0}


def scene(rng: np.random.Generator, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """One (image, label) pair."""
    from reproduce.shapes import _shape_mask, _texture

    grey = rng.uniform(70, 190)
    image = (grey + rng.uniform(-20, 20, 3) + 40 * (_texture(rng, size, size)[..., None] - 0.5)).astype(np.float32)
    label = np.zeros((size, size), np.uint8)
    mask = _shape_mask(rng, size, size)
    image[mask] = np.asarray([60.0, 110.0, 200.0]) * rng.uniform(0.8, 1.1) * (0.8 + 0.2 * _texture(rng, size, size)
                                                                            )[mask][:, None]
    label[mask] = 1
    for _ in range(int(rng.choice([0, 1, 1, 2]))):
        speck = np.zeros((size, size), np.uint8)
        cy, cx = (int(v) for v in rng.integers(6, size - 6, 2))
        cv2.circle(speck, (cx, cy), int(rng.integers(3, 6)), 1, -1)
        speck = speck.astype(bool)
        # a faint reddish tint over whatever is below: easy to miss for a loss that counts pixels
        image[speck] = 0.7 * image[speck] + 0.3 * np.asarray([230.0, 70.0, 50.0])
        label[speck] = 2
    image += rng.normal(0, 8, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8), label


def write_imbalanced_folder(root: Path, n: int, seed: int = 0, size: int = 64) -> Path:
    """``n`` scenes under ``root`` (images/, labels/, classes.txt); return ``root``."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image, label = scene(np.random.default_rng([seed, i]), size)
        Image.fromarray(image).save(root / "images" / f"s{i:04d}.png")
        Image.fromarray(label).save(root / "labels" / f"s{i:04d}.png")
    (root / "classes.txt").write_text("".join(f"{c}\n" for c in CLASSES), encoding="utf-8")
    return root


def write_tiny_weights(path: Path, num_classes: int = 21, seed: int = 0) -> Path:
    """Random ``deeplabv3plus_tiny`` weights with a provenance JSON, standing in for converted weights."""
    import torch

    from reference_models import build_model

    torch.manual_seed(seed)
    model = build_model("deeplabv3plus_tiny", num_classes=num_classes, output_stride=8)
    save_state_dict(model.state_dict(), path)
    write_json_atomic(path.with_suffix(".json"), {
        "format": "deeplab-repro provenance v1", "architecture": "deeplabv3plus_tiny", "num_classes": num_classes,
        "model_kwargs": {"output_stride": 8}, "preprocessing": TINY_PRE})
    return path
