"""The evaluation pipeline: decoding ahead of the forward, cheap metrics, the dense-CRF worker pool.

Every decoding mode (in line, a prefetch thread, DataLoader processes) and every CRF pool size must
give exactly what the sequential path gives (the same confusion matrices, the same CRF labels in the
same order), and errors and Ctrl-C must stop the decoding thread and the CRF workers: nothing left
running, exit 130 with one line.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from reproduce import evaluate as ev
from reproduce.inference import InferenceConfig, InferenceError, labels_of, predict_probs, prepare_input
from reproduce.metrics import ConfusionMatrix
from reproduce.synthetic import write_voc
from tests.test_evaluate import VAL_IDS, _voc_with_a_truncated_jpeg, pixel_model

REPO = Path(__file__).resolve().parent.parent
CONFIG = InferenceConfig(protocol="pad", crop_size=65)


def _needs_crf() -> None:
    pytest.importorskip("pydensecrf.densecrf", reason="pydensecrf2 not installed (pip install -e .[crf])")


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("voc")
    write_voc(root, train_ids=["2007_000032"], val_ids=VAL_IDS, seed=5, sizes=(24, 41))
    return root


def _sequential(lm, root: Path) -> tuple[ConfusionMatrix, list[np.ndarray], list]:
    """The reference: each image decoded, run and scored in turn, without the pipeline."""
    dataset = ev.build_eval_dataset("voc12", root, "val", "pad", 65)
    cm, probs, samples = ConfusionMatrix(21), [], []
    for i in range(len(dataset)):
        image, label, _ = dataset.load(i)
        p = predict_probs(lm, prepare_input(image, lm.preprocessing, CONFIG), CONFIG, label.shape)[0]
        cm.update(p.argmax(0), label)
        probs.append(p.numpy())
        samples.append((image, label))
    return cm, probs, samples


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")  # exited, not yet reaped
    except FileNotFoundError:
        return True


def _wait_gone(pids: list[int], seconds: float = 30.0) -> list[int]:
    end = time.monotonic() + seconds
    while time.monotonic() < end and not all(_gone(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if not _gone(p)]


def _sig_state(pid: int | str = "self") -> list[str]:
    """How process ``pid`` holds its signals: blocked, ignored, caught (bit 2 is SIGINT)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        return [line.strip() for line in fh if line.startswith(("SigBlk", "SigIgn", "SigCgt"))]


def _descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (from /proc; Linux)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


# ------------------------------------------------------------------------------ decoding ahead of the forward
@pytest.mark.parametrize("workers,prefetch", [(0, 0), (0, 1), (0, 3), (2, 2)])
def test_every_decoding_mode_gives_the_sequential_matrix(voc, workers, prefetch) -> None:
    lm = pixel_model(seed=7)
    expected, _, _ = _sequential(lm, voc)
    out = ev.evaluate(lm, ev.build_eval_dataset("voc12", voc, "val", "pad", 65),
                      ev.EvalOptions(config=CONFIG, workers=workers, prefetch=prefetch, progress=False))
    assert out["images"] == len(VAL_IDS)
    np.testing.assert_array_equal(out["plain"].matrix, expected.matrix)


def test_default_decodes_inline_where_the_cpu_forward_uses_every_core(monkeypatch) -> None:
    from reproduce import crf

    monkeypatch.setattr(crf, "usable_cores", lambda: 4)
    assert ev.default_prefetch("cpu", threads=4) == 0 and ev.default_prefetch("cpu", threads=8) == 0
    assert ev.default_prefetch("cpu", threads=3) == ev.PREFETCH_AHEAD == 2  # a core left for a decoding thread
    assert ev.default_prefetch(torch.device("cuda", 0), threads=4) == 2  # the forward leaves the CPU free
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert ev.default_prefetch("cpu") == 0
    assert [ev.decode_mode(0, 0), ev.decode_mode(0, 2), ev.decode_mode(3, 2)] == [
        "inline", "thread, 2 ahead", "3 processes"]


@pytest.mark.parametrize("threads_per_core", [True, False])
def test_default_decoding_follows_the_rule_and_gives_the_sequential_matrix(voc, monkeypatch, threads_per_core):
    from reproduce import crf

    lm = pixel_model(seed=7)
    expected, _, _ = _sequential(lm, voc)
    cores = torch.get_num_threads() if threads_per_core else torch.get_num_threads() + 1
    monkeypatch.setattr(crf, "usable_cores", lambda: cores)
    started: list[int] = []

    class Prefetcher(ev._Prefetcher):
        def __init__(self, data, ahead):
            started.append(ahead)
            super().__init__(data, ahead)

    monkeypatch.setattr(ev, "_Prefetcher", Prefetcher)
    out = ev.evaluate(lm, ev.build_eval_dataset("voc12", voc, "val", "pad", 65),
                      ev.EvalOptions(config=CONFIG, progress=False))
    np.testing.assert_array_equal(out["plain"].matrix, expected.matrix)
    if threads_per_core:  # no decoding thread: each image decoded right before its forward
        assert (out["decode"], out["prefetch"], started) == ("inline", 0, [])
    else:
        assert (out["decode"], out["prefetch"], started) == ("thread, 2 ahead", 2, [2])
    # DataLoader workers keep 2 images ahead by default
    out = ev.evaluate(lm, ev.build_eval_dataset("voc12", voc, "val", "pad", 65),
                      ev.EvalOptions(config=CONFIG, progress=False, workers=2))
    assert (out["decode"], out["prefetch"]) == ("2 processes", 2)
    np.testing.assert_array_equal(out["plain"].matrix, expected.matrix)


def test_labels_are_argmax_with_its_tie_rule() -> None:
    gen = torch.Generator().manual_seed(0)
    probs = torch.randint(0, 3, (21, 37, 29), generator=gen).float()  # many ties: first maximum wins
    got = labels_of(probs)
    assert got.dtype == torch.uint8
    torch.testing.assert_close(got, probs.argmax(0).to(torch.uint8), rtol=0, atol=0)
    # a view (the top-left crop of a padded map), infinities, 182 classes
    scores = torch.randn(182, 64, 70, generator=gen)
    scores[5, :3] = float("inf")
    scores[7, :2] = float("inf")
    scores[:, 10] = float("-inf")
    view = scores[:, 4:60, :50]
    assert torch.equal(labels_of(view), view.argmax(0).to(torch.uint8))
    assert torch.equal(labels_of(scores), torch.from_numpy(scores.numpy().argmax(0).astype(np.uint8)))
    with pytest.raises(InferenceError, match="257 classes do not fit a uint8 label map"):
        labels_of(torch.zeros(257, 2, 2))


def test_labels_with_nan_scores_are_numpys_argmax() -> None:
    scores = torch.randn(21, 9, 11, generator=torch.Generator().manual_seed(3))
    scores[4, 2, 3] = scores[9, 2, 3] = scores[0, 5, 5] = scores[20, 8, 10] = float("nan")
    got = labels_of(scores)
    assert torch.equal(got, torch.from_numpy(scores.numpy().argmax(0).astype(np.uint8)))
    assert (got[2, 3], got[5, 5], got[8, 10]) == (4, 0, 20)  # argmax takes the first NaN


@pytest.mark.parametrize("n_in,n_out", [(129, 513), (65, 513), (33, 513), (41, 321), (17, 17), (30, 513), (33, 97)])
def test_windowed_resize_gives_the_full_resizes_numbers(n_in, n_out) -> None:
    """The labels and probabilities resize only the window they keep (the image inside its padding); where the
    window's source coordinates are the full resize's exactly (power-of-two factors) the numbers are the same up
    to the kernel's last-bit rounding, elsewhere (and for a channels_last input) it is the full resize."""
    from reproduce.inference import _resize_ac, _resize_window_ac, _window_1d

    gen = torch.Generator().manual_seed(n_in)
    x = torch.randn(1, 5, n_in, n_in + 2, generator=gen) * 10
    f, exact = divmod(n_out - 1, n_in - 1)
    size = (n_out, f * (n_in + 1) + 1 if exact == 0 else n_out + 2)  # columns: the same factor as the rows
    windowed = exact == 0 and f & (f - 1) == 0

    def _same(got: torch.Tensor, want: torch.Tensor, windowed: bool) -> None:
        assert got.shape == want.shape
        if windowed and fmt == torch.contiguous_format:
            assert float((got - want).abs().max()) <= 2e-6 * float(full.abs().max())
        else:  # the full resize, sliced
            assert torch.equal(got, want)
    for fmt in (torch.contiguous_format, torch.channels_last):  # channels_last: the full resize (its own rounding)
        xf = x.contiguous(memory_format=fmt)
        full = _resize_ac(xf, size)
        for rows, cols in [((0, size[0]), (0, size[1])), ((0, 375 % size[0] + 1), (0, 500 % size[1] + 1)),
                           ((3, size[0] - 5), (size[1] - 9, size[1])), ((7, 8), (0, 1)),
                           ((size[0] - 1, size[0]), (2, 3))]:
            _same(_resize_window_ac(xf, size, rows, cols), full[..., rows[0]:rows[1], cols[0]:cols[1]], windowed)
        for _ in range(20):  # random windows
            r0, r1 = sorted(torch.randint(0, size[0] + 1, (2,), generator=gen).tolist())
            c0, c1 = sorted(torch.randint(0, size[1] + 1, (2,), generator=gen).tolist())
            rows, cols = (r0, max(r1, r0 + 1)), (c0, max(c1, c0 + 1))
            if rows[1] <= size[0] and cols[1] <= size[1]:
                _same(_resize_window_ac(xf, size, rows, cols), full[..., rows[0]:rows[1], cols[0]:cols[1]], windowed)
    assert (_window_1d(n_in, n_out, 0, n_out // 2) is None) == (not windowed)
    assert _window_1d(n_in + 2, size[1], 0, 1) == ((0, 2, f + 1, 0) if windowed and f > 1 else
                                                    (0, 1, 1, 0) if f == 1 else None)


def test_prefetcher_keeps_order_raises_in_place_and_stops() -> None:
    class Data:
        def __len__(self) -> int:
            return 1000

        def __getitem__(self, i: int) -> int:
            if i == 5:
                raise RuntimeError("boom at 5")
            return i

    pre = ev._Prefetcher(Data(), 2)
    got = []
    with pytest.raises(RuntimeError, match="boom at 5"):
        for x in pre:
            got.append(x)
    assert got == [0, 1, 2, 3, 4]
    pre.close()
    assert not pre._thread.is_alive()
    # closed while the consumer is not reading: the thread stops although its queue is full
    pre = ev._Prefetcher(list(range(1000)), 2)
    assert next(iter(pre)) == 0
    pre.close()
    assert not pre._thread.is_alive()


def test_unreadable_image_in_the_thread_is_named_or_skipped(tmp_path) -> None:
    root = _voc_with_a_truncated_jpeg(tmp_path)
    lm = pixel_model(seed=4)
    with pytest.raises(InferenceError, match=f"{VAL_IDS[1]}.jpg"):
        ev.evaluate(lm, ev.build_eval_dataset("voc12", root, "val", "pad", 65),
                    ev.EvalOptions(config=CONFIG, prefetch=2, progress=False))
    out = ev.evaluate(lm, ev.build_eval_dataset("voc12", root, "val", "pad", 65),
                      ev.EvalOptions(config=CONFIG, prefetch=2, progress=False, on_error="skip"))
    assert out["images"] == len(VAL_IDS) - 1 and len(out["skipped"]) == 1


# ------------------------------------------------------------------------------ the CRF pool
def test_default_crf_workers_follow_the_cores() -> None:
    from reproduce import crf

    assert 1 <= crf.default_workers() == min(crf.usable_cores(), crf.MAX_DEFAULT_WORKERS)


def test_evaluate_sizes_the_crf_pool_for_the_first_image_within_the_budget(voc, monkeypatch) -> None:
    _needs_crf()
    from reproduce import crf

    made: list[tuple[int | None, dict]] = []

    class Recording(crf.CRFPool):
        def __init__(self, workers=None, **kwargs) -> None:
            made.append((workers, kwargs))
            super().__init__(0, **kwargs)  # in this process: nothing to start

    monkeypatch.setattr(crf, "CRFPool", Recording)
    dataset = ev.build_eval_dataset("voc12", voc, "val", "pad", 65)
    first = dataset.load(0)[1].shape
    out = ev.evaluate(pixel_model(seed=1), dataset,
                      ev.EvalOptions(config=CONFIG, crf=True, crf_max_bytes=5 << 20, progress=False))
    assert made == [(None, {"max_bytes": 5 << 20, "item_bytes": crf.item_bytes((21, *first))})]
    assert out["crf_workers"] == 0 and out["crf"].matrix.sum() == out["plain"].matrix.sum()


def test_crf_memory_must_be_positive(tmp_path, capsys) -> None:
    code = ev.main(["--weights", str(tmp_path / "w.pth"), "--dataset", "voc12", "--data-root", str(tmp_path),
                    "--crf", "--crf-memory-mb", "0", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "--crf-memory-mb" in err


def test_crf_pool_is_bit_exact_and_in_order_when_later_images_finish_first() -> None:
    _needs_crf()
    from reproduce import crf
    from tests.test_crf import _scene

    # a large image first, small ones after: with 2 workers the small ones finish before it
    scenes = [_scene(0, size=(150, 160))] + [_scene(s, size=(20 + s, 31)) for s in range(1, 6)]
    expected = [crf.dense_crf(img, p).argmax(0).astype(np.uint8) for img, _, p in scenes]
    with crf.CRFPool(2, max_pending=8) as pool:
        for img, _, p in scenes:
            pool.submit(img, p)
        got = list(pool.drain())
        pids = pool.worker_pids()
    assert [g.shape for g in got] == [e.shape for e in expected]
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)
    assert len(pids) >= 1 and not _wait_gone(pids)  # a clean close leaves nothing running


def test_evaluate_with_the_crf_pool_equals_the_sequential_crf(voc) -> None:
    _needs_crf()
    from reproduce import crf

    lm = pixel_model(seed=1)
    plain, probs, samples = _sequential(lm, voc)
    refined = ConfusionMatrix(21)
    for p, (image, label) in zip(probs, samples):
        refined.update(crf.dense_crf(image, p).argmax(0), label)
    out = ev.evaluate(lm, ev.build_eval_dataset("voc12", voc, "val", "pad", 65),
                      ev.EvalOptions(config=CONFIG, crf=True, crf_workers=2, progress=False))
    np.testing.assert_array_equal(out["plain"].matrix, plain.matrix)
    np.testing.assert_array_equal(out["crf"].matrix, refined.matrix)


def test_an_error_mid_run_stops_the_crf_workers(tmp_path, monkeypatch) -> None:
    _needs_crf()
    from reproduce import crf

    seen: list[list[int]] = []
    close = crf.CRFPool.close

    def recording_close(self) -> None:
        seen.append(self.worker_pids())
        close(self)

    monkeypatch.setattr(crf.CRFPool, "close", recording_close)
    root = _voc_with_a_truncated_jpeg(tmp_path)
    with pytest.raises(InferenceError, match=f"{VAL_IDS[1]}.jpg"):
        ev.evaluate(pixel_model(seed=4), ev.build_eval_dataset("voc12", root, "val", "pad", 65),
                    ev.EvalOptions(config=CONFIG, crf=True, crf_workers=2, progress=False))
    assert len(seen) == 1 and seen[0], "the pool was closed with its workers running"
    assert not _wait_gone(seen[0])


_DRIVER = textwrap.dedent("""
    import os, signal, sys, time
    # a terminal's Ctrl-C state whatever the test process passed on (an ignored or blocked SIGINT is inherited)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.default_int_handler)
    import reproduce.evaluate as ev
    import reproduce.inference as inf
    from reproduce.inference import Segmenter
    slow = Segmenter.forward
    calls = []
    def forward(self, x):  # a slow network, so the run is still going when Ctrl-C comes
        calls.append(1)
        if len(calls) == 3:  # the CRF pool started before the first forward: say the run is under way
            open(os.environ["DEEPLAB_TEST_RUNNING"], "w").close()
        time.sleep(0.2)
        return slow(self, x)
    Segmenter.forward = forward
    sys.exit(ev.main(sys.argv[1:]))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_exits_130_with_one_line_and_leaves_no_worker(tmp_path) -> None:
    _needs_crf()
    from converters.io import save_state_dict
    from reference_models import build_model

    torch.manual_seed(0)
    weights = tmp_path / "tiny.pth"
    save_state_dict(build_model("deeplabv3plus_tiny", num_classes=21).state_dict(), weights)
    write_voc(tmp_path, train_ids=[], val_ids=[f"2007_{i:06d}" for i in range(40)], seed=1, sizes=(24, 41))
    cmd = [sys.executable, "-c", _DRIVER, "--model", "deeplabv3plus_tiny", "--weights", str(weights),
           "--dataset", "voc12", "--data-root", str(tmp_path), "--crop-size", "65", "--device", "cpu",
           "--crf", "--crf-workers", "2", "--quiet", "--out", str(tmp_path / "out")]
    running = tmp_path / "running"
    env = {**os.environ, "PYTHONPATH": str(REPO), "DEEPLAB_TEST_RUNNING": str(running)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, text=True)
    try:
        seen: set[int] = set()
        deadline = time.monotonic() + 120
        # wait for the third forward (>= 37 x 0.2 s of the run left), not for a number of child processes:
        # counted children could also be short-lived helpers, and the signal then came after the run ended
        while time.monotonic() < deadline and proc.poll() is None and not running.exists():
            seen.update(_descendants(proc.pid))
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        seen.update(_descendants(proc.pid))
        assert len(seen) >= 2, seen  # the CRF workers (and the resource tracker) are running
        sig_state = _sig_state(proc.pid)
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, (err, sig_state, _sig_state())
    assert err.strip() == "error: interrupted", err
    assert not (tmp_path / "out" / "result.json").exists()
    assert not _wait_gone(sorted(seen)), "processes left running after Ctrl-C"



def _recording_dataloader_iter(monkeypatch) -> list:
    """Every DataLoader iterator made from now on (they hold the worker processes)."""
    made: list = []
    make = torch.utils.data.DataLoader.__iter__

    def recording(self):
        made.append(make(self))
        return made[-1]

    monkeypatch.setattr(torch.utils.data.DataLoader, "__iter__", recording)
    return made


@pytest.mark.parametrize("broken", ["ConfusionMatrix", "tqdm", "forward"])
@pytest.mark.parametrize("workers", [0, 2])
def test_a_failure_anywhere_leaves_no_decoding_thread_or_worker(voc, monkeypatch, broken, workers) -> None:
    import threading

    import tqdm

    from reproduce import metrics

    def fail(*args, **kwargs):
        raise RuntimeError(f"{broken} failed")

    # evaluate imports ConfusionMatrix and tqdm when it runs; the forward is its predict_labels (no CRF)
    target = {"ConfusionMatrix": (metrics, "ConfusionMatrix"), "tqdm": (tqdm, "tqdm"),
              "forward": (ev, "predict_labels")}[broken]
    monkeypatch.setattr(*target, fail)
    made = _recording_dataloader_iter(monkeypatch)
    before = set(threading.enumerate())
    with pytest.raises(RuntimeError, match=f"{broken} failed"):
        ev.evaluate(pixel_model(seed=7), ev.build_eval_dataset("voc12", voc, "val", "pad", 65),
                    ev.EvalOptions(config=CONFIG, workers=workers, prefetch=2, progress=True))
    assert not [t for t in set(threading.enumerate()) - before if t.name == "eval-decode"]
    pids = [w.pid for it in made for w in getattr(it, "_workers", [])]
    if workers and broken != "ConfusionMatrix":
        assert pids and all(it._shutdown for it in made)  # stopped on the way out, not left to the collector
    assert not _wait_gone(pids)
