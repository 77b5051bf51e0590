"""reproduce.train: exact resume after SIGKILL, accumulation invariance, init-weight checks, config guard."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from converters.io import load_state_dict, save_state_dict
from reproduce import train as T

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def tiny_config(kind: str = "v3", **solver) -> dict:
    """A seconds-long config on generated shapes: ``v3`` (trained BN, dropout) or ``v2`` (4-term MSC loss)."""
    cfg = {
        "name": f"test-{kind}",
        "data": {"dataset": "shapes", "kwargs": {"length": 40, "seed": 0, "size": 48, "num_classes": 4}},
        "preprocessing": {"channel_order": "RGB", "mean": [127.5] * 3, "std": [127.5] * 3},
        "solver": {"iterations": 6, "batch_size": 4, "accum_steps": 1, "optimizer": "sgd", "base_lr": 0.02,
                   "lr_power": 0.9, "momentum": 0.9, "weight_decay": 1e-4,
                   "param_rules": [{"max_ndim": 1, "decay_mult": 0}], **solver},
        "seed": 3, "workers": 0, "log_every": 2, "checkpoint_every": 2, "progress": False, "tensorboard": False,
        "init": {"weights": None}, "device": "cpu",  # never picked by the machine: the GPU tests are tests/test_gpu.py
    }
    if kind == "v3":
        cfg.update(model={"name": "deeplabv3_tiny", "num_classes": 4, "kwargs": {"output_stride": 8}},
                   augment={"crop_size": 41, "scales": [0.75, 1.0, 1.25], "resize": "tf"},
                   loss={"kind": "upsample", "normalization": "pixels"}, bn={"mode": "train", "momentum": 0.1})
    else:
        cfg.update(model={"name": "deeplabv2_tiny_msc", "num_classes": 4},
                   augment={"crop_size": 65, "scales": [0.5, 0.75, 1.0, 1.25, 1.5], "resize": "caffe"},
                   loss={"kind": "caffe_msc", "normalization": "per_image"}, bn={"mode": "frozen"},
                   preprocessing={"channel_order": "BGR", "mean": [104.008, 116.669, 122.675]})
        cfg["solver"].update(optimizer="caffe_sgd", base_lr=0.002,
                             param_rules=[{"match": r"^aspp\..*\.weight$", "lr_mult": 10},
                                          {"match": r"^aspp\..*\.bias$", "lr_mult": 20, "decay_mult": 0}])
    return cfg


def write_config(tmp_path: Path, cfg: dict, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def run_cli(config: Path, out: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "reproduce.train", "--config", str(config), "--out", str(out), *extra]
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stderr[-3000:]}")
    return proc


def kill_training(config: Path, out: Path, *, after: int) -> None:
    """Start ``reproduce.train`` and SIGKILL it once its checkpoint records ``after`` or more iterations."""
    cmd = [sys.executable, "-m", "reproduce.train", "--config", str(config), "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            latest = out / "latest.json"
            if latest.is_file() and json.loads(latest.read_text())["iteration"] >= after:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def assert_same_weights(a: Path, b: Path, atol: float = 0.0) -> None:
    sa, sb = load_state_dict(a), load_state_dict(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        if atol == 0.0:
            assert torch.equal(sa[k], sb[k]), f"{k} differs"
        else:
            torch.testing.assert_close(sa[k].double(), sb[k].double(), atol=atol, rtol=0, msg=k)


def test_sigkill_and_resume_is_bit_identical(tmp_path):
    """A run killed with SIGKILL mid-way and resumed ends with exactly the weights of an uninterrupted run."""
    cfg = tiny_config("v3", iterations=24)
    config = write_config(tmp_path, cfg)
    run_cli(config, tmp_path / "straight")

    out = tmp_path / "killed"
    kill_training(config, out, after=4)
    assert not (out / "final.pth").exists()
    killed_at = json.loads((out / "latest.json").read_text())["iteration"]
    assert 4 <= killed_at < 24
    resumed = run_cli(config, out)
    assert f"resuming {out} at iteration {killed_at}" in resumed.stderr
    assert_same_weights(tmp_path / "straight" / "final.pth", out / "final.pth")


def test_accumulation_split_does_not_change_the_result(tmp_path):
    """Batch 4 in one step == 4 micro-batches of 1 (frozen-BN v2 MSC model, 4-term loss, Caffe SGD)."""
    for accum in (1, 4):
        cfg = tiny_config("v2", iterations=3, accum_steps=accum)
        T.train(cfg, tmp_path / f"accum{accum}")
    assert_same_weights(tmp_path / "accum1" / "final.pth", tmp_path / "accum4" / "final.pth", atol=1e-6)


def test_final_weights_load_strictly_with_provenance(tmp_path):
    cfg = tiny_config("v2", iterations=1)
    final = T.train(cfg, tmp_path / "run")
    record = json.loads(final.with_suffix(".json").read_text())
    from reference_models import build_model

    model = build_model(record["architecture"], num_classes=record["num_classes"])
    model.load_state_dict(load_state_dict(final), strict=True)
    assert record["preprocessing"]["channel_order"] == "BGR"
    assert (tmp_path / "run" / "train_log.jsonl").is_file()


def test_bn_mode_frozen_keeps_batchnorm_fixed_for_any_model(tmp_path):
    """bn: frozen freezes every BatchNorm (statistics and affine), v3 models included; bn: train trains them."""
    from reproduce.training.init_weights import build_model

    for mode in ("frozen", "train"):
        cfg = tiny_config("v3")
        cfg["bn"] = {"mode": mode, "momentum": 0.1}
        cfg["solver"]["iterations"] = 2
        start = build_model(cfg)
        before = {k: v.clone() for k, v in start.state_dict().items()}
        final = T.train(cfg, tmp_path / mode)
        after = load_state_dict(final)
        stats = [k for k in before if k.endswith("running_mean")]
        assert stats
        bn_prefixes = {k.rsplit(".", 1)[0] for k in stats}
        bn_keys = [k for k in before if k.rsplit(".", 1)[0] in bn_prefixes and before[k].is_floating_point()]
        moved = [k for k in bn_keys if not torch.equal(before[k], after[k])]
        if mode == "frozen":
            assert moved == [], moved
        else:
            assert len(moved) == len(bn_keys)
        others = [k for k in before if k not in bn_keys and before[k].is_floating_point()]
        assert any(not torch.equal(before[k], after[k]) for k in others)


def test_config_change_is_refused_on_resume(tmp_path):
    cfg = tiny_config("v2", iterations=2)
    T.train(cfg, tmp_path / "run")
    changed = T.apply_overrides(cfg, ["solver.base_lr=0.5"])
    with pytest.raises(T.ConfigError, match="different config.*base_lr"):
        T.train(changed, tmp_path / "run")
    T.train(T.apply_overrides(cfg, ["workers=1"]), tmp_path / "run")  # runtime keys may change


def test_init_weights_checked_key_by_key(tmp_path):
    from reference_models import build_model

    donor = build_model("deeplabv2_tiny_msc", num_classes=7).state_dict()  # 7-class head: must be dropped
    path = tmp_path / "init.pth"
    save_state_dict(donor, path)
    cfg = tiny_config("v2")
    pre = T.build_preprocessing(cfg)
    model = T.build_model(cfg)
    with pytest.raises(T.ConfigError, match="shape mismatch"):
        T.load_init_weights(model, {"weights": str(path)}, pre, seed=0)
    init = {"weights": str(path), "drop": [r"^aspp\."], "require": [r"^backbone\."],
            "head_init": {"match": r"^aspp\.", "weight_std": 0.01, "bias": 0.0}}
    record = T.load_init_weights(model, init, pre, seed=0)
    assert record["dropped"] == 8 and all(k.startswith("aspp.") for k in record["fresh"])
    assert torch.equal(model.state_dict()["backbone.stage1.0.0.weight"], donor["backbone.stage1.0.0.weight"])
    aspp_w = model.aspp.branches[0].weight.detach()
    assert abs(float(aspp_w.std()) - 0.01) < 0.002 and float(model.aspp.branches[0].bias.detach().abs().max()) == 0.0
    with pytest.raises(T.ConfigError, match="required keys"):
        T.load_init_weights(T.build_model(cfg), {"weights": str(path), "drop": [r"^(aspp|backbone\.stage4)\."],
                                                 "require": [r"^backbone\."]}, pre, seed=0)
    # The weights' provenance names their preprocessing; a config feeding another one is refused.
    path.with_suffix(".json").write_text(json.dumps({"preprocessing": {"channel_order": "RGB"}}))
    with pytest.raises(T.ConfigError, match="channel_order"):
        T.load_init_weights(T.build_model(cfg), init, pre, seed=0)


def test_sampler_order_is_a_function_of_seed_and_position():
    full = T.DeterministicBatchSampler(10, seed=1, global_batch=4, accum_steps=2, max_iter=6)
    batches = list(full)
    assert len(batches) == 12 and all(len(b) == 2 for b in batches)
    positions = [p for b in batches for _, p in b]
    assert positions == list(range(24))
    epoch0 = [i for b in batches for i, p in b if p < 10]
    assert sorted(epoch0) == list(range(10))  # every sample once per epoch
    resumed = list(T.DeterministicBatchSampler(10, seed=1, global_batch=4, accum_steps=2, start_iter=3, max_iter=6))
    assert resumed == batches[6:]
    ranks = [list(T.DeterministicBatchSampler(10, seed=1, global_batch=4, accum_steps=1, rank=r, world=2,
                                              max_iter=6)) for r in (0, 1)]
    merged = [x for it in range(6) for r in (0, 1) for x in ranks[r][it]]
    assert merged == [x for b in batches for x in b]
    with pytest.raises(T.ConfigError, match="not divisible"):
        T.DeterministicBatchSampler(10, seed=1, global_batch=10, accum_steps=3, max_iter=1)


def test_check_mode_explains_what_is_missing(tmp_path):
    cfg = tiny_config("v2")
    cfg["init"] = {"weights": str(tmp_path / "nope.pth"), "how_to_get": "run the converter"}
    cfg["data"] = {"dataset": "voc12", "root": str(tmp_path / "VOCdevkit"), "split": "train_aug",
                   "how_to_get": "see README"}
    config = write_config(tmp_path, cfg)
    proc = run_cli(config, tmp_path / "x", "--check", check=False)
    assert proc.returncode == 1
    assert "weights:" in proc.stderr and "run the converter" in proc.stderr and "data:" in proc.stderr


@pytest.mark.parametrize("path", sorted((REPO / "reproduce" / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_configs_resolve(path):
    """Every shipped config parses, builds its transform, loss, optimizer groups and (cheaply) names a model."""
    from reference_models import list_models

    cfg = T.load_config(path)
    assert cfg.name == path.stem
    assert cfg.model.name in list_models()
    T.build_transform(cfg)
    T.SegmentationLoss(cfg.loss.kind, num_classes=cfg.model.num_classes, normalization=cfg.loss.normalization)
    assert cfg.solver.batch_size % cfg.solver.accum_steps == 0


def _with_eval(cfg: dict, every: int) -> dict:
    cfg["eval"] = {"dataset": "shapes", "split": "val", "protocol": "whole",
                   "kwargs": {"length": 3, "seed": 99, "size": 48, "num_classes": 4}}
    cfg["eval_every"] = every
    return cfg


@pytest.mark.slow
def test_eval_every_keeps_best_and_last_through_sigkill(tmp_path):
    """eval_every writes best.pth and last.pth with score and iteration; a run killed and resumed keeps its best."""
    cfg = _with_eval(tiny_config("v3", iterations=16), every=4)
    config = write_config(tmp_path, cfg)
    run_cli(config, tmp_path / "straight")
    straight = tmp_path / "straight"
    best = json.loads((straight / "best.json").read_text())
    last = json.loads((straight / "last.json").read_text())
    assert best["evaluation"]["iteration"] in (4, 8, 12, 16) and last["evaluation"]["iteration"] == 16
    assert 0.0 <= best["evaluation"]["score"] <= 100.0 and best["evaluation"]["score"] >= last["evaluation"]["score"]
    assert best["weights"]["file"] == "best.pth"
    evals = [json.loads(line) for line in (straight / "train_log.jsonl").read_text().splitlines()
             if "eval_miou" in line]
    assert [e["iteration"] for e in evals] == [4, 8, 12, 16]
    assert max(e["eval_miou"] for e in evals) == best["evaluation"]["score"]
    # The evaluation does not change the training: same weights as a run without it.
    plain = write_config(tmp_path, {**cfg, "eval_every": 0}, "plain.yaml")
    run_cli(plain, tmp_path / "plain")
    assert_same_weights(straight / "final.pth", tmp_path / "plain" / "final.pth")

    out = tmp_path / "killed"
    kill_training(config, out, after=10)
    assert (out / "best.pth").is_file() and not (out / "final.pth").exists()
    ckpt = torch.load(out / json.loads((out / "latest.json").read_text())["file"], weights_only=True)
    assert ckpt["best"] is not None and ckpt["best"]["iteration"] <= ckpt["iteration"]
    run_cli(config, out)
    resumed = json.loads((out / "best.json").read_text())["evaluation"]
    assert resumed == best["evaluation"]
    assert_same_weights(straight / "best.pth", out / "best.pth")
    assert_same_weights(straight / "final.pth", out / "final.pth")
    assert json.loads((out / "final.json").read_text())["best"] == best["evaluation"]


def _folder_config(root: Path, on_error: str, iterations: int = 4) -> dict:
    cfg = tiny_config("v3", iterations=iterations, batch_size=2)
    cfg.update(data={"dataset": "folder", "root": str(root), "split": "train"}, on_error=on_error,
               checkpoint_every=1)
    cfg["model"]["num_classes"] = 3
    return cfg


@pytest.mark.slow
def test_corrupt_sample_is_an_error_or_skipped_and_counted(tmp_path):
    from reproduce.synthetic import write_folder

    root = write_folder(tmp_path / "data", n=8, sizes=(50, 70), splits={"train": range(6), "val": range(6, 8)})
    clean = T.AugmentedDataset(T.build_train_dataset(_folder_config(root, "skip")),
                               T.build_transform(_folder_config(root, "skip")), seed=3, on_error="skip")
    clean_items = {(i, p): clean[(i, p)] for i, p in [(0, 0), (2, 1), (3, 2), (4, 3)]}
    bad = root / "images" / "img_002.jpg"
    bad.write_bytes(b"not a jpeg at all")

    # default: a one-line error naming the file
    proc = run_cli(write_config(tmp_path, _folder_config(root, "error"), "err.yaml"), tmp_path / "err", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and "img_002.jpg" in proc.stderr
    assert "--on-error skip" in proc.stderr and "Traceback" not in proc.stderr

    # skip: the bad sample's position takes the next readable sample; no other position changes
    ds = T.AugmentedDataset(T.build_train_dataset(_folder_config(root, "skip")),
                            T.build_transform(_folder_config(root, "skip")), seed=3, on_error="skip")
    got = ds[(2, 1)]
    assert len(got.skipped) == 1 and "img_002.jpg" in got.skipped[0]
    for (i, p), want in clean_items.items():
        if i != 2:
            assert torch.equal(ds[(i, p)].image, want.image) and ds[(i, p)].skipped == ()

    # a run that skips, interrupted after a checkpoint and resumed, ends bit-identical to an uninterrupted one
    cfg = _folder_config(root, "skip", iterations=6)
    final = T.train(cfg, tmp_path / "skip")
    record = json.loads(final.with_suffix(".json").read_text())
    count = record["skipped_samples"]["count"]
    assert count >= 1 and all("img_002.jpg" in f for f in record["skipped_samples"]["files"])
    logged = [json.loads(line) for line in (tmp_path / "skip" / "train_log.jsonl").read_text().splitlines()]
    assert logged[-1]["skipped_samples"] == count

    from reproduce.training import loop

    real_save = loop._save

    def save_then_stop(run_dir, it, *args, **kwargs):
        out = real_save(run_dir, it, *args, **kwargs)
        if it == 3:
            raise KeyboardInterrupt
        return out

    loop._save = save_then_stop
    try:
        with pytest.raises(KeyboardInterrupt):
            T.train(cfg, tmp_path / "resumed")
    finally:
        loop._save = real_save
    final2 = T.train(cfg, tmp_path / "resumed")
    assert_same_weights(final, final2)
    assert json.loads(final2.with_suffix(".json").read_text())["skipped_samples"]["count"] == count
