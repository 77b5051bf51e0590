"""Resuming a run safely: checkpoints load with weights_only=True, latest.json stays inside the run folder,
damaged checkpoints are skipped (one line each) down to the newest that loads, a missing or foreign one is
one line; AMP switched on/off and another number of CUDA devices between sessions; deterministic mode."""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from reproduce import checkpoint as ck
from reproduce import train as T
from reproduce.training import loop
from reproduce.training.distributed import Dist
from tests.test_train import ENV, REPO, assert_same_weights, tiny_config, write_config

ITERATIONS = 6


def _config(**top) -> dict:
    cfg = tiny_config("v3", iterations=ITERATIONS)
    cfg.update(checkpoint_every=2, keep_checkpoints=3, **top)
    return cfg


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    """A finished run with ckpt_2, ckpt_4, ckpt_6 and final.pth (the uninterrupted result)."""
    run = tmp_path_factory.mktemp("resume") / "base"
    T.train(_config(), run)
    assert sorted(p.name for p in run.glob("ckpt_*.pt")) == [f"ckpt_{i:07d}.pt" for i in (2, 4, 6)]
    return run


@pytest.fixture
def run(base_run: Path, tmp_path: Path) -> Path:
    """A copy of the base run whose newest checkpoint and final weights are gone: a run killed after ckpt_6."""
    out = tmp_path / "run"
    shutil.copytree(base_run, out)
    for name in ("final.pth", "final.json"):
        (out / name).unlink()
    return out


def _point(run: Path, name: str) -> None:
    (run / "latest.json").write_text(json.dumps({"iteration": 6, "file": name}))


def _lines(err: str, word: str) -> list[str]:
    return [line for line in err.splitlines() if word in line]


class Planted:
    """Unpickling it runs a shell command that writes a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


# ------------------------------------------------------------------------------ what a checkpoint holds
def test_checkpoint_loads_with_weights_only(base_run: Path) -> None:
    ckpt = torch.load(base_run / "ckpt_0000004.pt", map_location="cpu", weights_only=True)
    assert ckpt["iteration"] == 4 and ckpt["format"] == ck.FORMAT
    (rng,) = ckpt["rng"]
    assert rng["numpy"]["keys"].dtype == torch.int64 and rng["python"]["state"].shape == (625,)
    ck.check_rng_state(rng, "x")


def test_rng_state_round_trip_through_a_file(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.standard_normal()  # a cached gaussian in numpy's state
    random.gauss(0, 1)
    state = ck.rng_state()
    torch.save(state, tmp_path / "s.pt")
    expect = (random.random(), np.random.standard_normal(), np.random.random(), torch.rand(3))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    ck.set_rng_state(torch.load(tmp_path / "s.pt", weights_only=True))
    got = (random.random(), np.random.standard_normal(), np.random.random(), torch.rand(3))
    assert got[:3] == expect[:3] and torch.equal(got[3], expect[3])


# ------------------------------------------------------------------------------ acceptance: planted pickle
@pytest.mark.parametrize("pointer", ["outside_relative", "outside_absolute", "symlink_out"])
def test_planted_pickle_and_outside_pointer_run_no_code(run: Path, base_run: Path, tmp_path: Path, capsys,
                                                        pointer) -> None:
    """A pickled ckpt_*.pt in the run folder and a latest.json naming a file elsewhere: nothing is unpickled,
    one line each, and the run resumes from ckpt_4 and ends bit-identical to the uninterrupted one."""
    marker = tmp_path / "marker"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    torch.save(Planted(marker), run / "ckpt_0000006.pt")
    torch.save(Planted(marker), elsewhere / "ckpt_0000008.pt")
    if pointer == "outside_relative":
        _point(run, "../elsewhere/ckpt_0000008.pt")
    elif pointer == "outside_absolute":
        _point(run, str(elsewhere / "ckpt_0000008.pt"))
    else:
        (run / "ckpt_0000008.pt").symlink_to(elsewhere / "ckpt_0000008.pt")
        _point(run, "ckpt_0000008.pt")
    final = T.train(_config(), run)
    err = capsys.readouterr().err
    assert not marker.exists(), "unpickling ran code"
    assert len(_lines(err, "latest.json: refused")) == 1, err
    assert len(_lines(err, "ckpt_0000006.pt: holds pickled objects a safe load refuses (GLOBAL posix.system)")) == 1
    assert f"resuming {run} at iteration 4" in err
    assert_same_weights(base_run / "final.pth", final)


def test_planted_pickle_without_latest_json(run: Path, base_run: Path, tmp_path: Path, capsys) -> None:
    """No latest.json: the folder's checkpoints are tried newest first, the planted one is refused."""
    marker = tmp_path / "marker"
    torch.save(Planted(marker), run / "ckpt_0000006.pt")
    (run / "latest.json").unlink()
    final = T.train(_config(), run)
    err = capsys.readouterr().err
    assert not marker.exists()
    assert len(_lines(err, "latest.json is missing")) == 1 and len(_lines(err, "skipping")) == 1, err
    assert_same_weights(base_run / "final.pth", final)


# ------------------------------------------------------------------------------ damaged, missing, foreign
def test_truncated_latest_checkpoint_falls_back(run: Path, base_run: Path, capsys) -> None:
    data = (base_run / "ckpt_0000006.pt").read_bytes()
    (run / "ckpt_0000006.pt").write_bytes(data[: len(data) // 2])
    final = T.train(_config(), run)
    err = capsys.readouterr().err
    skipped = _lines(err, "skipping")
    assert len(skipped) == 1 and "ckpt_0000006.pt: truncated or not a checkpoint" in skipped[0], err
    assert f"resuming {run} at iteration 4" in err
    assert_same_weights(base_run / "final.pth", final)


def test_every_checkpoint_damaged_is_an_error_not_a_restart(run: Path) -> None:
    for p in run.glob("ckpt_*.pt"):
        p.write_bytes(b"not a zip")
    with pytest.raises(ck.CheckpointError, match=r"holds a run but no usable checkpoint \(ckpt_0000006.pt, "
                                                 r"ckpt_0000004.pt, ckpt_0000002.pt skipped\)"):
        T.train(_config(), run)
    assert not (run / "final.pth").exists()


def test_deleted_latest_checkpoint_is_an_error(run: Path) -> None:
    """latest.json naming a deleted checkpoint: one line, no silent restart from iteration 0."""
    (run / "ckpt_0000006.pt").unlink()
    with pytest.raises(ck.CheckpointError) as e:
        T.train(_config(), run)
    text = str(e.value)
    assert "\n" not in text and str(run / "latest.json") in text and "names ckpt_0000006.pt, which is missing" in text
    assert not (run / "final.pth").exists() and not (run / "ckpt_0000002.pt").stat().st_size == 0


def test_wrong_shape_is_skipped(run: Path, capsys) -> None:
    ckpt = torch.load(run / "ckpt_0000006.pt", weights_only=True)
    key = next(k for k, v in ckpt["model"].items() if v.dim() == 4)
    ckpt["model"][key] = torch.zeros(3, 3)
    torch.save(ckpt, run / "ckpt_0000006.pt")
    T.train(_config(), run)
    (line,) = _lines(capsys.readouterr().err, "skipping")
    assert f"ckpt_0000006.pt: wrong shape: model {key!r} is (3, 3) torch.float32 in the checkpoint" in line


def test_checkpoint_of_another_class_count_is_one_line_naming_both(run: Path) -> None:
    (run / "config.yaml").unlink()  # else the saved config already refuses the run
    cfg = _config()
    cfg["model"]["num_classes"] = 5
    with pytest.raises(ck.CheckpointMismatch) as e:
        T.train(cfg, run)
    text = str(e.value)
    assert "\n" not in text and "ckpt_0000006.pt is a checkpoint of another model or config" in text
    assert "model.num_classes: 4 -> 5" in text


@pytest.mark.parametrize("text", ["{not json", "[]", '{"file": 3}', "", '{"file": "ckpt_0000006.pt\\u0000"}'])
def test_malformed_latest_json_is_one_line_then_newest_that_loads(run: Path, base_run: Path, capsys, text) -> None:
    (run / "latest.json").write_text(text)
    final = T.train(_config(), run)
    err = capsys.readouterr().err
    (line,) = _lines(err, "latest.json")
    assert str(run / "latest.json") in line
    assert f"resuming {run} at iteration 6" in err
    assert_same_weights(base_run / "final.pth", final)


def test_cli_reports_a_foreign_checkpoint_in_one_line(run: Path, tmp_path: Path) -> None:
    (run / "config.yaml").unlink()
    cfg = _config()
    cfg["model"]["num_classes"] = 5
    config = write_config(tmp_path, cfg)
    proc = subprocess.run([sys.executable, "-m", "reproduce.train", "--config", str(config), "--out", str(run)],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "model.num_classes: 4 -> 5" in lines[0], lines


# ------------------------------------------------------------------------------ writing
def test_full_disk_while_writing_a_checkpoint(tmp_path: Path) -> None:
    """A write that fails (here the file-size limit, as a full disk does): one line naming the file, nothing
    under its name, latest.json still names the previous checkpoint."""
    run = tmp_path / "run"
    ck.save_checkpoint(run, 2, {"model": {"w": torch.zeros(4)}})
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, hard))
    try:
        with pytest.raises(ck.CheckpointError) as e:
            ck.save_checkpoint(run, 4, {"model": {"w": torch.zeros(1 << 16)}})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    text = str(e.value)
    assert "\n" not in text and text.startswith(f"{run / 'ckpt_0000004.pt'}: could not write the checkpoint")
    assert "File too large" in text
    assert sorted(p.name for p in run.iterdir()) == ["ckpt_0000002.pt", "latest.json"]
    assert json.loads((run / "latest.json").read_text())["file"] == "ckpt_0000002.pt"


def test_keep_never_removes_the_new_checkpoint_for_a_stray_higher_one(tmp_path: Path) -> None:
    (tmp_path / "ckpt_9999999.pt").write_bytes(b"stray")
    for it in (2, 4):
        ck.save_checkpoint(tmp_path, it, {"model": {"w": torch.zeros(1)}}, keep=1)
    assert sorted(p.name for p in tmp_path.glob("ckpt_*")) == ["ckpt_0000004.pt", "ckpt_9999999.pt"]


# ------------------------------------------------------------------------------ AMP on/off between sessions
def _resume_into(run: Path, scaler: torch.amp.GradScaler) -> list[str]:
    cfg = loop.parse_config(_config())
    model = loop.build_model(cfg)
    said: list[str] = []
    found = loop._find_resume(run, cfg, model, said.append)
    assert found is not None
    optimizer = loop.build_solver(cfg, model)
    loop._restore(*found, model, optimizer, scaler, Dist(), {"skipped": [], "best": None}, said.append)
    return said


def test_resume_with_amp_switched_on(run: Path) -> None:
    """A run saved without AMP (the scaler state is empty) resumed with an enabled GradScaler: it starts fresh
    (torch's load_state_dict raises 'The source state dict is empty' on it)."""
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    said = _resume_into(run, scaler)
    assert said == ["note: the checkpoint was written without AMP: the grad scaler starts fresh"]
    assert scaler.is_enabled() and scaler.get_scale() == 1024.0


def test_resume_with_amp_switched_off_and_kept_on(run: Path) -> None:
    """A run saved with AMP (a scaler that has stepped) resumed without AMP ignores the state, with one note;
    resumed with AMP it gets the saved scale back through a weights_only load."""
    cfg = loop.parse_config(_config())
    model = loop.build_model(cfg)
    optimizer = loop.build_solver(cfg, model)
    amp = torch.amp.GradScaler("cpu", init_scale=256.0, growth_interval=1)
    (amp.scale(next(model.parameters()).sum()) * float("inf")).backward()
    amp.step(optimizer)  # an inf gradient: the step is skipped and the scale backs off to 128
    amp.update()
    ckpt = torch.load(run / "ckpt_0000006.pt", weights_only=True)
    ckpt.pop("format"), ckpt.pop("iteration")
    ck.save_checkpoint(run, 6, {**ckpt, "scaler": amp.state_dict()}, keep=0)

    off = torch.amp.GradScaler("cpu", enabled=False)
    assert _resume_into(run, off) == ["note: AMP is off in this run: the checkpoint's grad-scaler state is not used"]
    on = torch.amp.GradScaler("cpu")
    assert _resume_into(run, on) == [] and on.get_scale() == 128.0


# ------------------------------------------------------------------------------ another number of CUDA devices
class FakeCuda:
    """torch.cuda's RNG functions for ``n`` devices (no CUDA needed)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.states = [torch.full((16,), i, dtype=torch.uint8) for i in range(n)]
        self.set: dict[int, torch.Tensor] = {}

    def install(self, monkeypatch) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: self.n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: self.n)
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in self.states])
        monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device: self.set.__setitem__(device, s.clone()))


@pytest.mark.parametrize("saved,visible", [(2, 2), (4, 2), (1, 3), (2, 0)])
def test_cuda_rng_states_restore_per_visible_device(tmp_path: Path, monkeypatch, saved, visible) -> None:
    FakeCuda(saved).install(monkeypatch)
    state = ck.rng_state()
    assert len(state["cuda"]) == saved
    torch.save(state, tmp_path / "s.pt")
    fake = FakeCuda(visible)
    fake.install(monkeypatch)
    said: list[str] = []
    ck.set_rng_state(torch.load(tmp_path / "s.pt", weights_only=True), say=said.append, where="ckpt")
    restored = min(saved, visible)
    assert sorted(fake.set) == list(range(restored))
    assert all(torch.equal(fake.set[i], torch.full((16,), i, dtype=torch.uint8)) for i in fake.set)
    if saved == visible:
        assert said == []
    else:
        (line,) = said
        assert f"the CUDA RNG states of {saved} device(s)" in line
        assert {(4, 2): "the states of devices 2..3 are not used", (1, 3): "devices 1..2 keep their current state",
                (2, 0): "no CUDA here: not restored"}[(saved, visible)] in line


# ------------------------------------------------------------------------------ deterministic mode
def test_deterministic_mode_is_recorded_and_restored(tmp_path: Path, monkeypatch) -> None:
    seen = []
    real_step = loop.train_step

    def spy(*args, **kwargs):
        seen.append((torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
                     torch.backends.cudnn.benchmark))
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", spy)
    before = torch.are_deterministic_algorithms_enabled()
    cfg = _config(deterministic=True)
    cfg["solver"]["iterations"] = 1
    final = T.train(cfg, tmp_path / "det")
    assert set(seen) == {(True, True, False)}
    assert torch.are_deterministic_algorithms_enabled() == before
    record = json.loads(final.with_suffix(".json").read_text())
    assert record["trained_with"]["deterministic"] is True and record["config"]["deterministic"] is True
    plain = json.loads(T.train({**cfg, "deterministic": False}, tmp_path / "det2").with_suffix(".json").read_text())
    assert plain["trained_with"]["deterministic"] is False


# ------------------------------------------------------------------------------ what the fuzzer found
def _set(ckpt: dict, path: tuple, value) -> None:
    for key in path[:-1]:
        ckpt = ckpt[key]
    if value is KeyError:
        del ckpt[path[-1]]
    else:
        ckpt[path[-1]] = value


@pytest.mark.parametrize("path,value,why", [
    (("config", "seed"), torch.zeros(3), "its config record holds other than plain values"),
    (("rng", 0, "numpy", "has_gauss"), torch.zeros(3), "the numpy RNG state is malformed"),
    (("rng", 0, "python", "gauss"), KeyError, "the python RNG state is malformed"),
    (("optimizer", "param_groups", 0, "params"), torch.zeros(2), "parameter groups differ"),
])
def test_fuzzed_checkpoints_are_skipped_in_one_line(run: Path, capsys, path, value, why) -> None:
    ckpt = torch.load(run / "ckpt_0000006.pt", weights_only=True)
    _set(ckpt, path, value)
    torch.save(ckpt, run / "ckpt_0000006.pt")
    T.train(_config(), run)
    (line,) = _lines(capsys.readouterr().err, "skipping")
    assert "ckpt_0000006.pt: " in line and why in line


def test_pointer_to_a_name_too_long_is_refused(run: Path, capsys) -> None:
    _point(run, "ckpt_" + "9" * 400 + ".pt")
    T.train(_config(), run)
    (line,) = _lines(capsys.readouterr().err, "latest.json")
    assert "refused" in line
