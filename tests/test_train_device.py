"""The training loop's CUDA logic on the CPU, through its seams: the device a config names (``torch.cuda``
mocked), the reads of the device per iteration (``Tensor`` read methods counted), the step's loss values."""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Iterator

import pytest
import torch

from converters.errors import DeeplabError
from reproduce import train as T
from reproduce.training import loop
from reproduce.training.config import ConfigError, parse_config
from reproduce.training.distributed import Dist
from tests.test_train import tiny_config

# Every way a tensor's value reaches the host: on a GPU each one waits for the queued work.
READS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__", "__index__")


@pytest.fixture
def fake_cuda(monkeypatch) -> list[int]:
    """Two GPUs as torch.cuda reports them; returns the indices ``set_device`` was called with."""
    chosen: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    return chosen


def _cfg(device: str):
    return parse_config({**tiny_config("v3"), "device": device})


def _torchrun_rank(monkeypatch, rank: int) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("LOCAL_RANK", str(rank))


def test_device_index_is_honoured(fake_cuda) -> None:
    assert loop.device_for(_cfg("cuda:1"), Dist()) == torch.device("cuda", 1)
    assert fake_cuda == [1]
    assert loop.device_for(_cfg("cuda"), Dist()) == torch.device("cuda", 0)
    assert loop.device_for(_cfg("auto"), Dist()) == torch.device("cuda", 0)
    assert loop.device_for(_cfg("cpu"), Dist()) == torch.device("cpu")
    assert fake_cuda == [1, 0, 0]
    with pytest.raises(ConfigError, match=r"cuda:2 requested but torch sees 2 GPU"):
        loop.device_for(_cfg("cuda:2"), Dist())


def test_torchrun_takes_the_local_rank_gpu(fake_cuda, monkeypatch) -> None:
    _torchrun_rank(monkeypatch, 1)
    assert loop.device_for(_cfg("cuda"), Dist()) == torch.device("cuda", 1)
    assert loop.device_for(_cfg("auto"), Dist()) == torch.device("cuda", 1)
    assert fake_cuda == [1, 1]
    with pytest.raises(ConfigError, match="LOCAL_RANK.*CUDA_VISIBLE_DEVICES"):
        loop.device_for(_cfg("cuda:0"), Dist())  # every process on one GPU: refused


def test_cuda_without_cuda_is_a_config_error(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="CUDA is not available"):
        loop.device_for(_cfg("cuda:1"), Dist())
    with pytest.raises(ConfigError, match="unknown device"):
        loop.device_for(_cfg("gpu7"), Dist())


class Reads:
    """Counts :data:`READS` calls on tensors while ``on``."""

    def __init__(self, monkeypatch) -> None:
        self.on, self.calls = False, []
        for name in READS:
            original = getattr(torch.Tensor, name)

            def counted(t, *args, _original=original, _name=name, **kwargs):
                if self.on:
                    self.calls.append(_name)
                return _original(t, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)

    @contextlib.contextmanager
    def off(self) -> Iterator[None]:
        was, self.on = self.on, False
        try:
            yield
        finally:
            self.on = was


def _step_inputs(kind: str, accum: int):
    """A tiny model, its solver and criterion and ``accum`` random micro-batches of 2 images."""
    cfg = parse_config(tiny_config(kind))
    torch.manual_seed(0)
    model = loop.build_model(cfg)
    loop.set_train_mode(model, cfg.bn.mode)
    size = cfg.augment.crop_size
    gen = torch.Generator().manual_seed(1)
    micro = []
    for _ in range(accum):
        y = torch.randint(0, 4, (2, size, size), generator=gen)
        y[:, :5] = 255
        micro.append((torch.randn(2, 3, size, size, generator=gen), y))
    return model, loop.build_solver(cfg, model), loop.build_criterion(cfg), micro


def _step_before(net, micro_batches, *, optimizer, criterion, lr: float) -> tuple[float, dict[str, float]]:
    """The step as it was (one process): denominators and terms read back to the host every micro-batch."""
    from reproduce.schedule import set_lr

    set_lr(optimizer, lr)
    targets = [criterion.targets(y) for _, y in micro_batches]
    dens: dict[str, float] = {}
    for t in targets:
        for k, v in criterion.denominators(t).items():
            dens[k] = dens.get(k, 0.0) + float(v)
    den = {k: max(v, 1.0) for k, v in dens.items()}
    optimizer.zero_grad(set_to_none=True)
    loss_value, terms_value = torch.zeros((), dtype=torch.float64), dict.fromkeys(den, 0.0)
    for (x, _), t in zip(micro_batches, targets):
        terms = criterion(net(x), t)
        loss = sum(terms[k] / den[k] for k in terms)
        loss.backward()
        loss_value += loss.detach().double()
        for k in terms:
            terms_value[k] += float(terms[k].detach()) / den[k]
    optimizer.step()
    return float(loss_value), terms_value


@pytest.mark.parametrize("kind", ["v2", "v3"])  # v2: 4 per-image terms, v3: one term over valid pixels
def test_step_reads_nothing_and_gives_the_values_of_before(kind, monkeypatch) -> None:
    model, opt, criterion, micro = _step_inputs(kind, accum=2)
    before = _step_inputs(kind, accum=2)
    reads = Reads(monkeypatch)
    torch.manual_seed(5)  # the same dropout masks
    reads.on = True
    result = T.train_step(model, micro, optimizer=opt, criterion=criterion, lr=0.01)
    reads.on = False
    assert reads.calls == []  # nothing is read back to the host within a step
    torch.manual_seed(5)
    want_loss, want_terms = _step_before(before[0], before[3], optimizer=before[1], criterion=before[2], lr=0.01)
    assert float(result.loss) == want_loss
    assert {k: float(v) for k, v in result.terms.items()} == want_terms
    for (name, p), q in zip(model.named_parameters(), before[0].parameters()):
        assert torch.equal(p, q), name  # the same update, bit for bit


def test_loop_reads_the_device_once_per_logged_iteration(tmp_path, monkeypatch) -> None:
    """6 iterations of 2 micro-batches, logged every 3: two reads (the data pipeline and the final save aside)."""
    cfg = tiny_config("v2", iterations=6, accum_steps=2)
    cfg.update(log_every=3, checkpoint_every=0)
    reads = Reads(monkeypatch)
    real_step = loop.train_step

    def step(*args, **kwargs):
        reads.on = True  # from the first step on
        return real_step(*args, **kwargs)

    def outside(fn):
        def call(*args, **kwargs):
            with reads.off():
                return fn(*args, **kwargs)
        return call

    monkeypatch.setattr(loop, "train_step", step)
    monkeypatch.setattr(loop, "iteration_batches", outside(loop.iteration_batches))  # CPU data, not the device
    monkeypatch.setattr(loop, "_save", outside(loop._save))
    monkeypatch.setattr(loop, "_write_weights", outside(loop._write_weights))
    T.train(cfg, tmp_path / "run")
    reads.on = False
    assert reads.calls == ["tolist", "tolist"]


def test_a_non_finite_loss_stops_before_a_checkpoint_keeps_it(tmp_path) -> None:
    """Read at log points only, a diverged loss still stops the run before a checkpoint or evaluation saves it."""
    cfg = tiny_config("v3", iterations=6, base_lr=1e30)
    cfg.update(log_every=100, checkpoint_every=1)
    with pytest.raises(DeeplabError, match=r"loss is (nan|inf) at iteration \d; lower") as caught:
        T.train(cfg, tmp_path / "run")
    first_bad = int(re.search(r"iteration (\d)", str(caught.value)).group(1))
    latest = tmp_path / "run" / "latest.json"
    saved = json.loads(latest.read_text())["iteration"] if latest.exists() else 0
    assert saved == first_bad - 1  # every finite iteration checkpointed, none after


def test_tests_leave_the_device_to_no_one() -> None:
    """Only the gpu-marked tests may look for CUDA; the rest run on the CPU on any machine (the conftest makes
    torch.cuda.is_available() False for them, and the training and predict tests name the CPU)."""
    from pathlib import Path

    import tests.conftest as conftest
    from tests.test_predict import _args

    tests = Path(__file__).resolve().parent
    asking = sorted(p.name for p in tests.glob("test_*.py")
                    if "cuda.is_available()" in p.read_text(encoding="utf-8")
                    and p.name not in ("test_gpu.py", "test_train_device.py"))
    assert asking == []
    assert not torch.cuda.is_available() and hasattr(conftest, "_cpu_unless_gpu_marked")
    assert tiny_config()["device"] == "cpu" and _args(Path("w"), Path("o"))[-3:-1] == ["--device", "cpu"]
    assert "gpu:" in (tests.parent / "pyproject.toml").read_text(encoding="utf-8")


def test_readme_says_what_differs_on_cuda_and_the_timeout_it_names_exists() -> None:
    from pathlib import Path

    from reproduce.training.config import Config

    readme = " ".join((Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8").split())
    default = Config.__dataclass_fields__["dist_timeout"].default
    assert f"`dist_timeout` (seconds, default {default:.0f})" in readme
    assert "error: rank R of W: ..." in readme and "not bit for bit" in readme and "pytest -m gpu" in readme


def test_the_wait_for_rank_0_is_a_store_wait_bounded_by_dist_timeout(monkeypatch) -> None:
    """What the other ranks do while rank 0 evaluates: no collective, a store wait that ends with one line."""
    import torch.distributed as dist

    from reproduce.training import distributed

    store = dist.HashStore()
    monkeypatch.setattr(distributed, "_store", lambda: store)
    monkeypatch.setenv("WORLD_SIZE", "2")
    rank0, rank1 = Dist(), Dist()
    rank1.rank, rank1.timeout_s = 1, 0.2
    rank0.publish("eval/4", {"metric": "miou", "score": 61.5, "iteration": 4})
    assert rank1.wait_for("eval/4") == {"metric": "miou", "score": 61.5, "iteration": 4}
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match=r"rank 1 waited 0 s for rank 0 \(eval/8\) in vain .*raise dist_timeout"):
        rank1.wait_for("eval/8")
    assert time.monotonic() - t0 < 5
