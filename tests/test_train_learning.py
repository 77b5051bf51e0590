"""Training learns: a tiny DeepLab v3+ trained on generated shapes for a few CPU minutes reaches mIoU >= 0.9."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from converters.io import load_state_dict
from reproduce import train as T
from reproduce.metrics import ConfusionMatrix
from reproduce.shapes import ShapesDataset
from tests.test_train import REPO


def held_out_scores(cfg, final) -> dict:
    """Scores of the ``final`` weights (in our PyTorch model) on 100 shapes images the training never saw."""
    model = T.build_model(cfg)
    model.load_state_dict(load_state_dict(final))
    model.eval()
    pre = T.build_preprocessing(cfg)
    held_out = ShapesDataset(length=100, seed=12345, size=64, num_classes=4)  # training used seed 0
    cm = ConfusionMatrix(4)
    with torch.no_grad():
        for i in range(len(held_out)):
            image, label, _ = held_out[i]
            cm.update(model.predict(pre.apply(image))[0], torch.from_numpy(label))
    return cm.compute()


@pytest.mark.slow
def test_tiny_model_learns_shapes(tmp_path):
    cfg = T.load_config(REPO / "reproduce" / "configs" / "deeplabv3plus_tiny-shapes-64.yaml")
    cfg = T.apply_overrides(cfg, {"progress": False, "tensorboard": False})
    final = T.train(cfg, tmp_path / "run")
    scores = held_out_scores(cfg, final)
    assert scores["miou"] >= 0.9, scores
    assert np.isfinite(scores["miou"])


def test_shapes_are_reproducible_and_valid():
    a, b = ShapesDataset(length=3, seed=5), ShapesDataset(length=3, seed=5)
    for i in range(3):
        (ia, la, _), (ib, lb, _) = a[i], b[i]
        assert np.array_equal(ia, ib) and np.array_equal(la, lb)
        assert ia.dtype == np.uint8 and ia.shape == (64, 64, 3) and la.shape == (64, 64)
        assert set(np.unique(la)) <= {0, 1, 2, 3, 255}
    assert not np.array_equal(ShapesDataset(length=1, seed=6)[0][0], a[0][0])
