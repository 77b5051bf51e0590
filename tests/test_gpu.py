"""What only a CUDA GPU can show (``pytest -m gpu``; every test here is skipped where torch sees no GPU).

Tolerances fit what differs on a GPU by nature:

- fp32 with TF32 off: other kernels, other summation orders: ~1e-6 relative per layer; 1e-4 of the output's
  scale after a network;
- bf16 (8-bit mantissa) / fp16 (11-bit) autocast: ~4e-3 / 5e-4 relative per op; 5e-2 / 1e-2 of the scale after a
  network, and the class of almost every pixel unchanged;
- backward: the bilinear upsampling and scatter kernels add with atomics, in no fixed order, so two runs (and
  one process against two) differ in the last bits: 1e-5 on weights after a few steps, as the gloo test on the CPU.

The resume-across-AMP and GPU-count tests are tests/test_gpu_resume.py.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_train import ENV, REPO, assert_same_weights, tiny_config, write_config

pytestmark = pytest.mark.gpu

CUDA = torch.device("cuda", 0)
# fp32 means fp32 in these comparisons, whatever PyTorch's TF32 defaults are (also in the processes started here)
FP32_ENV = {**ENV, "NVIDIA_TF32_OVERRIDE": "0"}


@pytest.fixture
def no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def two_gpus() -> None:
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")


# ------------------------------------------------------------------------------------------------ inference
@pytest.mark.parametrize("precision, scale_tol, agree", [("fp32", 1e-4, 0.999), ("bf16", 5e-2, 0.98),
                                                         ("fp16", 1e-2, 0.99)])
def test_engine_forward_in_each_precision_matches_cpu_fp32(tmp_path, precision, scale_tol, agree) -> None:
    """The engine's logits on the GPU against the CPU fp32 engine: max |diff| <= scale_tol * max |logit|."""
    from reproduce.inference import Segmenter, cuda_native_bf16

    if precision == "bf16" and not cuda_native_bf16(CUDA)[0]:
        pytest.skip("bf16 is emulated before sm80")
    from reference_models.preprocessing import DEEPLAB_TF_UNIT_RANGE
    from tests.test_predict import _random_weights

    weights = _random_weights(tmp_path / "w.pth", "deeplabv3plus_tiny", DEEPLAB_TF_UNIT_RANGE, 0)
    x = torch.randn(2, 3, 97, 129, generator=torch.Generator().manual_seed(1))
    cpu = Segmenter(weights, device="cpu", precision="fp32").forward(x)
    gpu = Segmenter(weights, device="cuda", precision=precision).forward(x).cpu()
    assert gpu.dtype == torch.float32 and gpu.shape == cpu.shape
    scale = float(cpu.abs().max())
    assert float((gpu - cpu).abs().max()) <= scale_tol * scale
    assert float((gpu.argmax(1) == cpu.argmax(1)).float().mean()) >= agree


# ------------------------------------------------------------------------------------------------- training
def _step_setup(kind: str, device: torch.device, seed: int = 0):
    from reproduce.training import loop
    from reproduce.training.config import parse_config

    cfg = parse_config({**tiny_config(kind), "device": device.type})
    torch.manual_seed(seed)
    model = loop.build_model(cfg)
    loop.set_train_mode(model, cfg.bn.mode)
    model.to(device)
    gen = torch.Generator().manual_seed(seed + 1)
    size = cfg.augment.crop_size
    micro = []
    for _ in range(2):
        y = torch.randint(0, 4, (2, size, size), generator=gen)
        y[:, :4] = 255
        micro.append((torch.randn(2, 3, size, size, generator=gen).to(device), y.to(device)))
    return model, loop.build_solver(cfg, model), loop.build_criterion(cfg), micro


def _without_dropout(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


def _steps(kind: str, device: torch.device, n: int, **step_kwargs) -> tuple[list[float], dict[str, torch.Tensor],
                                                                           dict[str, torch.Tensor]]:
    """(losses, weights before, weights after) of ``n`` train_step calls on ``device``."""
    from reproduce.training import train_step

    model, opt, criterion, micro = _step_setup(kind, device)
    _without_dropout(model)
    before = {k: v.detach().cpu().double().clone() for k, v in model.state_dict().items()}
    losses = [float(train_step(model, micro, optimizer=opt, criterion=criterion, lr=0.01, **step_kwargs).loss)
              for _ in range(n)]
    after = {k: v.detach().cpu().double() for k, v in model.state_dict().items()}
    return losses, before, after


def _update_error(ref: tuple, got: tuple) -> float:
    """max |update difference| / max |reference update| over the weights (floating tensors)."""
    worst = 0.0
    for k, b in ref[1].items():
        if not b.is_floating_point():
            continue
        want, have = ref[2][k] - b, got[2][k] - got[1][k]
        scale = float(want.abs().max())
        if scale > 0:
            worst = max(worst, float((want - have).abs().max()) / scale)
    return worst


@pytest.mark.parametrize("kind", ["v2", "v3"])
def test_fp32_training_steps_match_the_cpu(kind, no_tf32) -> None:
    """3 steps in fp32 (TF32 off): losses within 1e-5 relative, weight updates within 1e-3 of their size
    (atomic-add backward: other summation orders, amplified where an update is a small difference)."""
    cpu = _steps(kind, torch.device("cpu"), 3)
    gpu = _steps(kind, CUDA, 3)
    np.testing.assert_allclose(gpu[0], cpu[0], rtol=1e-5)
    assert _update_error(cpu, gpu) <= 1e-3


@pytest.mark.parametrize("kind", ["v2", "v3"])
def test_amp_training_steps_with_a_real_grad_scaler(kind) -> None:
    """fp16 autocast through a real GradScaler: no step skipped, losses within 1e-2 relative of fp32 on the CPU,
    weight updates within 5e-2 of their size; bf16 autocast (no scaler) likewise within 5e-2 / 1e-1."""
    from reproduce.inference import cuda_native_bf16

    cpu = _steps(kind, torch.device("cpu"), 3)
    # 2**10, not the default 2**16: the tiny models' first fp16 gradients could overflow at 2**16 and the
    # scaler skip a step (as it should), which would leave nothing to compare
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**10)
    fp16 = _steps(kind, CUDA, 3, scaler=scaler, amp=True, amp_dtype=torch.float16)
    assert scaler.get_scale() == 2.0**10  # no inf/NaN gradient: the scale never backed off, no step was skipped
    np.testing.assert_allclose(fp16[0], cpu[0], rtol=1e-2)
    assert _update_error(cpu, fp16) <= 5e-2
    if cuda_native_bf16(CUDA)[0]:
        bf16 = _steps(kind, CUDA, 3, amp=True, amp_dtype=torch.bfloat16)
        np.testing.assert_allclose(bf16[0], cpu[0], rtol=5e-2)
        assert _update_error(cpu, bf16) <= 1e-1


def test_train_step_does_not_wait_for_the_gpu() -> None:
    """CUDA's sync debug mode turns every host read of the device into an error: a step (fp32) has none; with AMP,
    the GradScaler's one inf check per step is the only one."""
    from reproduce.training import train_step

    model, opt, criterion, micro = _step_setup("v2", CUDA)
    train_step(model, micro, optimizer=opt, criterion=criterion, lr=0.01)  # warm-up: cuDNN plans, allocator
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        result = train_step(model, micro, optimizer=opt, criterion=criterion, lr=0.01)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert result.loss.device.type == "cuda" and all(t.device.type == "cuda" for t in result.terms.values())
    assert np.isfinite(float(result.loss))


def test_confusion_matrix_updates_do_not_wait_for_the_gpu() -> None:
    """The evaluation's per-image update reads nothing from the GPU; the matrix equals the CPU's."""
    from reproduce.metrics import ConfusionMatrix

    rng = np.random.default_rng(0)
    label = rng.integers(0, 5, (4, 33, 47)).astype(np.uint8)
    label[:, :3] = 255
    pred = rng.integers(0, 5, label.shape).astype(np.uint8)
    cpu, gpu = ConfusionMatrix(5), ConfusionMatrix(5)
    p_gpu, l_gpu = torch.from_numpy(pred).to(CUDA), torch.from_numpy(label).to(CUDA)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for i in range(4):
            gpu.update(p_gpu[i], l_gpu[i])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for i in range(4):
        cpu.update(pred[i], label[i])
    np.testing.assert_array_equal(gpu.matrix, cpu.matrix)
    bad = ConfusionMatrix(5)
    bad.update(torch.tensor([[1, 9]], device=CUDA), torch.tensor([[1, 2]], device=CUDA))
    with pytest.raises(ValueError, match=r"prediction value\(s\) \[9\]"):
        bad.compute()


def test_device_index_is_the_gpu_that_trains(tmp_path, monkeypatch) -> None:
    """--device cuda:1 trains on cuda:1 (it trained on cuda:0 before)."""
    two_gpus()
    from reproduce import train as T
    from reproduce.training import loop

    seen: list[torch.device] = []
    real = loop.train_step

    def step(net, *args, **kwargs):
        seen.append(next(net.parameters()).device)
        return real(net, *args, **kwargs)

    monkeypatch.setattr(loop, "train_step", step)
    current = torch.cuda.current_device()
    try:
        T.train({**tiny_config("v3", iterations=2), "device": "cuda:1"}, tmp_path / "run")
    finally:
        torch.cuda.set_device(current)
    assert seen == [torch.device("cuda", 1)] * 2


@pytest.mark.parametrize("deterministic", [False, True])
def test_cudnn_benchmark_unless_deterministic(tmp_path, deterministic) -> None:
    """Fixed-size crops: cuDNN autotunes its kernels, except in the deterministic mode."""
    from reproduce import train as T
    from reproduce.training.config import Config

    cfg = {**tiny_config("v3", iterations=1), "device": "cuda"}
    if deterministic:
        if "deterministic" not in Config.__dataclass_fields__:
            pytest.skip("no deterministic mode in this tree")
        cfg["deterministic"] = True
    saved = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = deterministic  # the opposite of what the run should set
        T.train(cfg, tmp_path / "run")
        assert torch.backends.cudnn.benchmark is (not deterministic)
    finally:
        torch.backends.cudnn.benchmark = saved


def test_training_batches_are_pinned_for_non_blocking_copies() -> None:
    """On CUDA the loader pins its batches, so the step's non_blocking copies do not wait."""
    from reproduce.training.config import parse_config
    from reproduce.training.data import build_loader, build_train_dataset

    cfg = parse_config({**tiny_config("v3", iterations=1), "device": "cuda"})
    loader, _ = build_loader(cfg, build_train_dataset(cfg), rank=0, world=1, start_iter=0, pin_memory=True)
    batch = next(iter(loader))
    assert batch.images.is_pinned() and batch.labels.is_pinned()


# ---------------------------------------------------------------------------------------------- two processes
def _torchrun(config: Path, out: Path, nproc: int) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "reproduce.train", "--config", str(config), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env={**FP32_ENV, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.mark.parametrize("kind", ["v2", "v3"])  # v2: frozen BN, 4-term loss; v3: SyncBatchNorm over NCCL
def test_two_processes_equal_one_over_nccl(tmp_path, kind) -> None:
    """2 GPUs x half the batch == 1 GPU x the whole batch, within 1e-5 after 4 steps (fp32, TF32 off)."""
    two_gpus()
    cfg = tiny_config(kind, iterations=4)
    cfg["device"] = "cuda"
    if kind == "v3":
        cfg["model"]["kwargs"]["dropout"] = 0.0  # masks are drawn per process
    config = write_config(tmp_path, cfg)
    _torchrun(config, tmp_path / "two", 2)
    _torchrun(config, tmp_path / "one", 1)
    assert_same_weights(tmp_path / "one" / "final.pth", tmp_path / "two" / "final.pth", atol=1e-5)


def _nccl_all_reduce_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    from reproduce.metrics import ConfusionMatrix

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        rng = np.random.default_rng(rank)
        label = rng.integers(0, 5, (20, 30)).astype(np.uint8)
        pred = rng.integers(0, 5, (20, 30)).astype(np.uint8)
        np.save(Path(out_dir) / f"shard{rank}.npy", np.stack([pred, label]))
        on_gpu = ConfusionMatrix(5)
        on_gpu.update(torch.from_numpy(pred).cuda(), torch.from_numpy(label).cuda())
        on_cpu = ConfusionMatrix(5)  # built on the CPU: reduced on the GPU NCCL needs
        on_cpu.update(pred, label)
        np.save(Path(out_dir) / f"gpu{rank}.npy", on_gpu.all_reduce().matrix)
        np.save(Path(out_dir) / f"cpu{rank}.npy", on_cpu.all_reduce().matrix)
    finally:
        dist.destroy_process_group()


def test_confusion_matrix_all_reduce_over_nccl(tmp_path) -> None:
    """GPU and CPU matrices alike sum over NCCL (it cannot reduce CPU tensors: they are moved to the GPU)."""
    two_gpus()
    import torch.multiprocessing as mp

    from reproduce.metrics import ConfusionMatrix

    mp.spawn(_nccl_all_reduce_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    whole = ConfusionMatrix(5)
    for rank in range(2):
        pred, label = np.load(tmp_path / f"shard{rank}.npy")
        whole.update(pred, label)
    for rank in range(2):
        np.testing.assert_array_equal(np.load(tmp_path / f"gpu{rank}.npy"), whole.matrix)
        np.testing.assert_array_equal(np.load(tmp_path / f"cpu{rank}.npy"), whole.matrix)


def test_a_failing_rank_ends_an_nccl_job_in_seconds(tmp_path) -> None:
    """A diverging 2-GPU run: one line from rank 0, every process gone well before NCCL's watchdog would act."""
    two_gpus()
    cfg = {**tiny_config("v3", iterations=8, base_lr=1e30), "device": "cuda"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "reproduce.train", "--config", str(write_config(tmp_path, cfg)), "--out", str(tmp_path / "run")]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, env=FP32_ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and time.monotonic() - t0 < 240
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and lines[0].startswith("error: rank 0 of 2: loss is"), proc.stderr[-3000:]


# ------------------------------------------------------------------------------------------------ benchmarks
def test_benchmark_cuda_timing_waits_for_the_gpu() -> None:
    """time_iterations times the GPU's work, not the launch: a kernel that spins ~20 ms measures ~20 ms."""
    from benchmarks._common import time_iterations

    torch.cuda._sleep(1000)  # load the kernel
    torch.cuda.synchronize()
    cycles = 10_000_000
    t0 = time.perf_counter()
    torch.cuda._sleep(cycles)
    torch.cuda.synchronize()
    spin = time.perf_counter() - t0
    if spin < 2e-3:
        cycles = int(cycles * 20e-3 / spin)
        t0 = time.perf_counter()
        torch.cuda._sleep(cycles)
        torch.cuda.synchronize()
        spin = time.perf_counter() - t0
    samples = time_iterations(lambda: torch.cuda._sleep(cycles), CUDA, warmup=1, repeats=5)
    median = sorted(samples)[len(samples) // 2]
    assert 0.5 * spin <= median <= 2.0 * spin + 1e-3, (median, spin)


def test_training_benchmark_on_cuda_uses_the_scaler_and_stays_finite() -> None:
    from benchmarks.inference import Timing
    from benchmarks.training import TrainConfig, run_config

    config = TrainConfig("tiny", "deeplabv3_tiny", 65, 4, 0.01, model_kwargs=(("output_stride", 8),), num_classes=4)
    for amp in (False, True):
        point = run_config(config, amp=amp, memory_format="channels_last", device=CUDA,
                           timing=Timing(warmup=1, repeats=3, min_seconds=0.0, max_seconds=10.0), num_classes=4,
                           log=lambda _: None)
        assert point["status"] == "ok", point
        assert point["grad_scaler"] is amp and point["finite"] and point["latency"]["median_s"] > 0


def test_gpu_tests_see_the_gpu() -> None:
    """The conftest hides CUDA from every test but these: here "auto" is the GPU."""
    from reproduce.inference import resolve_device

    assert torch.cuda.is_available() and resolve_device("auto").type == "cuda"
