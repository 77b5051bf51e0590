"""Training in Keras (``--framework keras``): same step as PyTorch, resumable, learns, one weight layout.

* One step from the same weights on the same batch (from the shared data pipeline): the loss and
  every gradient equal PyTorch's to 1e-4 relative; a second step (momentum, lr/decay multipliers,
  poly lr) leaves the same weights. Single-scale v2 (Caffe SGD, per-image normalisation) in float32,
  as trained; v3+ with BatchNorm trained on a batch of 4 (torch SGD, pixel-normalised) in float64
  in both frameworks: there float32 itself is only good to ~1e-3 in the early layers' gradients
  (train-mode BatchNorm over small, nearly constant maps amplifies rounding), in either framework.
  The losses for imbalanced data take the same v2 step: class weights + focal + label smoothing, and
  ``auto`` class weights + DeepLab-TF hard-pixel mining mid-schedule.
* A run interrupted after a checkpoint and resumed ends bit-identical to an uninterrupted one (CPU);
  its ``final.pth`` loads strictly into the PyTorch model and ``final.weights.h5`` into the Keras one,
  both computing the same logits.
* The tiny v3+ on generated shapes reaches >= 90 % held-out mIoU in Keras (slow).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from converters.io import load_state_dict  # noqa: E402
from reproduce import train as T  # noqa: E402
from reproduce.schedule import poly_lr, set_lr  # noqa: E402
from reproduce.training import ConfigError, build_criterion, build_solver, train_step  # noqa: E402
from reproduce.training.data import build_loader  # noqa: E402
from reproduce.training.keras_loop import KerasTrainer, train_keras  # noqa: E402
from tests.test_train import REPO  # noqa: E402
from tests.test_train_learning import held_out_scores  # noqa: E402

TINY = REPO / "reproduce" / "configs" / "deeplabv3plus_tiny-shapes-64.yaml"
RTOL = 1e-4


def _cfg(**overrides):
    base = {"progress": False, "tensorboard": False, "solver.batch_size": 4, "data.kwargs.length": 40,
            "log_every": 1}
    return T.apply_overrides(T.load_config(TINY), {**base, **overrides})


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


CASES = {  # name: (overrides, dtype of both frameworks)
    # v3+, trained BatchNorm, torch SGD, pixel-normalised; logits 10x lr, no decay on 1-d tensors
    "v3plus": ({"model.kwargs": {"output_stride": 8, "dropout": 0.0},
                "solver.param_rules": [{"match": "logits", "lr_mult": 10.0}, {"max_ndim": 1, "decay_mult": 0.0}]},
               "float64"),
    # single-scale DeepLab v2 (Caffe convs), Caffe SGD, per-image normalisation, BatchNorm frozen
    "v2": ({"model.name": "deeplabv2_tiny_msc", "model.kwargs": {"scales": [1.0]}, "solver.optimizer": "caffe_sgd",
            "loss.normalization": "per_image", "bn.mode": "frozen", "preprocessing.channel_order": "BGR",
            "solver.param_rules": [{"match": "aspp.*bias", "lr_mult": 20.0, "decay_mult": 0.0},
                                   {"match": "aspp", "lr_mult": 10.0, "decay_mult": 1.0}]},
           "float32"),
}
_V2 = CASES["v2"][0]
# the losses for imbalanced data (reproduce/pixel_losses.py), same single-scale v2 step in float32
CASES["v2_weights_focal_smoothing"] = ({**_V2, "loss.class_weights": [0.5, 2.0, 1.5, 3.0],
                                        "loss.focal": {"gamma": 2.0, "alpha": [1.0, 0.5, 0.25, 0.75]},
                                        "loss.label_smoothing": 0.1}, "float32")
CASES["v2_auto_weights_topk_mining"] = ({**_V2, "loss.normalization": "pixels", "loss.class_weights": "auto",
                                         "loss.top_k_percent_pixels": 0.2, "loss.hard_example_mining_step": 8},
                                        "float32")


def _torch_step(net, batch, optimizer, criterion, lr, dtype) -> float:
    """One PyTorch solver step: ``train_step`` in float32; in float64 the same loss written in double
    (``SegmentationLoss`` computes in float32 by design)."""
    if dtype == "float32":
        return float(train_step(net, [(batch.images, batch.labels)], optimizer=optimizer, criterion=criterion,
                                lr=lr).loss)
    assert criterion.normalization == "pixels"
    set_lr(optimizer, lr)
    optimizer.zero_grad(set_to_none=True)
    y = batch.labels
    den = float(criterion.denominators(criterion.targets(y))["out"])
    out = net(batch.images.double())
    logits = F.interpolate(out, size=y.shape[-2:], mode="bilinear", align_corners=True)
    loss = F.cross_entropy(logits, y, ignore_index=criterion.ignore_index, reduction="sum") / den
    loss.backward()
    optimizer.step()
    return float(loss)


@pytest.mark.parametrize("case", sorted(CASES))
def test_one_step_matches_pytorch(case, monkeypatch):
    overrides, dtype = CASES[case]
    if dtype == "float64":  # tf.image.resize_bilinear computes in float32 whatever its input: a float64 twin
        import reference_models.keras.layers as layers
        from reproduce.training.keras_loop import _resize_align_corners_exact

        monkeypatch.setattr(layers, "resize_align_corners", _resize_align_corners_exact)
    cfg = _cfg(**overrides)
    torch.manual_seed(0)
    net = T.build_model(cfg)
    init = copy.deepcopy(net.state_dict())
    if dtype == "float64":
        net.double()
    loader, _ = build_loader(cfg, T.build_train_dataset(cfg), rank=0, world=1, start_iter=0)
    batches = iter(loader)
    first, second = next(batches), next(batches)

    twin = T.build_model(cfg)
    twin.load_state_dict(init)
    trainer = KerasTrainer(cfg, twin, dtype=dtype)
    optimizer, criterion = build_solver(cfg, net), build_criterion(cfg)
    lrs = [poly_lr(cfg.solver.base_lr, it, 3, cfg.solver.lr_power) for it in range(2)]

    # step 1: loss and every gradient (iterations 4 and 5: the mining share is 0.6 then 0.5)
    for c in (criterion, trainer.criterion):
        c.set_iteration(4)
    k_loss, k_grads = trainer.gradients([(first.images, first.labels)])
    t_loss = _torch_step(net, first, optimizer, criterion, lrs[0], dtype)
    assert abs(k_loss - t_loss) <= RTOL * abs(t_loss), (k_loss, t_loss)
    params = dict(net.named_parameters())
    assert sorted(trainer.names) == sorted(n for n, p in params.items() if p.requires_grad)
    worst = max(_rel(trainer.torch_layout(i, g.numpy()), params[n].grad) for i, (n, g) in
                enumerate(zip(trainer.names, k_grads)))
    assert worst <= RTOL, worst
    trainer.apply(k_grads, lrs[0])

    # step 2 (momentum, multipliers, the next lr), then every tensor of the state dict
    for c in (criterion, trainer.criterion):
        c.set_iteration(5)
    trainer.step([(second.images, second.labels)], lrs[1])
    _torch_step(net, second, optimizer, criterion, lrs[1], dtype)
    ours, ref = trainer.state_dict(), net.state_dict()
    assert set(ours) == set(ref)
    for key, value in ref.items():
        if key.endswith("num_batches_tracked"):
            continue
        # moving variance: Keras uses the biased batch variance, PyTorch the unbiased (documented)
        tol = 1e-3 if key.endswith("running_var") else RTOL
        assert _rel(ours[key], value) <= tol, key
        if not key.endswith(("running_mean", "running_var")):
            assert not torch.equal(value, init[key]) or not params.get(key, value).requires_grad, key


def test_multiscale_v2_is_refused():
    cfg = _cfg(**{"model.name": "deeplabv2_tiny_msc", "model.kwargs": {}})
    with pytest.raises(ConfigError, match="PyTorch"):
        KerasTrainer(cfg, T.build_model(cfg))


def _interrupt_after(monkeypatch, calls: int) -> None:
    original = KerasTrainer.step
    count = {"n": 0}

    def step(self, micro, lr):
        count["n"] += 1
        if count["n"] > calls:
            raise KeyboardInterrupt
        return original(self, micro, lr)

    monkeypatch.setattr(KerasTrainer, "step", step)


@pytest.mark.slow
def test_interrupted_run_resumes_bit_identical_and_loads_in_both_frameworks(tmp_path, monkeypatch):
    over = {"solver.iterations": 4, "solver.batch_size": 2, "checkpoint_every": 2, "model.kwargs.output_stride": 8}
    straight = train_keras(_cfg(**over), tmp_path / "a")

    with monkeypatch.context() as m:
        _interrupt_after(m, 3)
        with pytest.raises(KeyboardInterrupt):
            train_keras(_cfg(**over), tmp_path / "b")
    assert (tmp_path / "b" / "keras_ckpt_0000002.pt").is_file() and not (tmp_path / "b" / "final.pth").exists()
    assert T.main(["--framework", "keras", "--config", str(TINY), "--out", str(tmp_path / "b"), "--no-progress",
                   *[f"--set={k}={v}" for k, v in {**over, "solver.batch_size": 2, "data.kwargs.length": 40,
                                                      "log_every": 1, "tensorboard": False}.items()]]) == 0
    a, b = load_state_dict(straight), load_state_dict(tmp_path / "b" / "final.pth")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)

    # one layout: final.pth into PyTorch, final.weights.h5 into Keras, same logits
    from reference_models.keras import build_keras_model

    cfg = _cfg(**over)
    net = T.build_model(cfg)
    net.load_state_dict(a, strict=True)
    net.eval()
    kmodel = build_keras_model(cfg.model.name, num_classes=cfg.model.num_classes, **cfg.model.kwargs)
    kmodel.load_weights(tmp_path / "a" / "final.weights.h5")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = net(x).numpy()
    got = kmodel(x.numpy().transpose(0, 2, 3, 1), training=False).numpy().transpose(0, 3, 1, 2)
    assert _rel(got, ref) <= RTOL


@pytest.mark.slow
def test_tiny_model_learns_shapes_in_keras(tmp_path):
    cfg = T.apply_overrides(T.load_config(TINY), {"progress": False, "tensorboard": False})
    final = train_keras(cfg, tmp_path / "run")
    scores = held_out_scores(cfg, final)  # trained in Keras, evaluated in PyTorch
    assert scores["miou"] >= 0.9, scores


_MIRRORED = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from pathlib import Path
from tests.test_train_keras import _cfg
from reproduce.training.keras_loop import train_keras
over = {"solver.iterations": 3, "solver.batch_size": 4, "checkpoint_every": 0, "model.kwargs.output_stride": 8,
        "model.kwargs.dropout": 0.0}
out = Path(sys.argv[1])
train_keras(_cfg(**over), out / "one", strategy=tf.distribute.OneDeviceStrategy("/cpu:0"))
train_keras(_cfg(**over), out / "two", strategy=tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
"""


@pytest.mark.slow
def test_mirrored_strategy_over_two_devices_matches_one(tmp_path):
    """Two replicas (logical CPUs; GPUs in real use): the batch split, synchronised BatchNorm and summed
    gradients give one device's first-step loss; later steps agree to float32 noise."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    subprocess.run([sys.executable, "-c", _MIRRORED, str(tmp_path)], check=True, cwd=REPO, env=env, timeout=900)
    losses = {r: [json.loads(line)["loss"] for line in open(tmp_path / r / "train_log.jsonl")] for r in ("one", "two")}
    assert abs(losses["one"][0] - losses["two"][0]) <= 1e-5 * losses["one"][0], losses
    assert all(abs(a - b) <= 1e-2 * a for a, b in zip(losses["one"], losses["two"])), losses
    assert (tmp_path / "two" / "final.pth").is_file() and (tmp_path / "two" / "final.weights.h5").is_file()
