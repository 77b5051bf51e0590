"""reproduce.crf: DeepLab v2 ResNet-101 dense CRF settings, raw-RGB input, parallel determinism."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from reproduce import crf


def _scene(seed: int, size: tuple[int, int] = (40, 56), classes: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A piecewise-constant image, its labels, and noisy softmax probabilities that are often wrong."""
    from reproduce.synthetic import image_from_label, random_label

    rng = np.random.default_rng(seed)
    label = random_label(rng, *size, classes=list(range(classes)), cells=3)
    image = image_from_label(rng, label, noise=8)
    logits = rng.normal(0.0, 1.0, (classes, *size)).astype(np.float32)
    logits[label, np.arange(size[0])[:, None], np.arange(size[1])] += 0.9  # right about half the time
    probs = np.exp(logits) / np.exp(logits).sum(0, keepdims=True)
    return image, label, probs.astype(np.float32)


def test_resnet101_settings() -> None:
    assert crf.RESNET101.to_dict() == {"iterations": 10, "pos_w": 3.0, "pos_xy_std": 1.0, "bi_w": 4.0,
                                       "bi_xy_std": 67.0, "bi_rgb_std": 3.0}


def test_missing_pydensecrf_is_a_one_line_hint(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    with pytest.raises(crf.CRFUnavailable) as exc:
        crf.require_pydensecrf()
    assert "pip install pydensecrf2" in str(exc.value) and "\n" not in str(exc.value)


def test_missing_pydensecrf_in_the_evaluate_cli(monkeypatch, tmp_path, capsys) -> None:
    from reproduce import evaluate

    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    code = evaluate.main(["--weights", str(tmp_path / "w.pth"), "--dataset", "voc12", "--root", str(tmp_path),
                          "--crf", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "pip install pydensecrf2" in err


def test_dense_crf_cleans_up_noisy_probabilities() -> None:
    pytest.importorskip("pydensecrf.densecrf", reason="pydensecrf2 not installed (pip install -e .[crf])")
    image, label, probs = _scene(0)
    q = crf.dense_crf(image, probs)
    assert q.shape == probs.shape and q.dtype == np.float32
    np.testing.assert_allclose(q.sum(0), 1.0, atol=1e-4)
    before = (probs.argmax(0) == label).mean()
    after = (q.argmax(0) == label).mean()
    assert after > before + 0.2, (before, after)


def test_dense_crf_wants_the_raw_uint8_image() -> None:
    pytest.importorskip("pydensecrf.densecrf", reason="pydensecrf2 not installed (pip install -e .[crf])")
    image, _, probs = _scene(1)
    with pytest.raises(ValueError, match="raw"):
        crf.dense_crf(image.astype(np.float32) - 120.0, probs)  # a mean-subtracted network input
    with pytest.raises(ValueError, match="size"):
        crf.dense_crf(image[:-1], probs)


def test_pool_result_is_independent_of_workers_and_chunks() -> None:
    pytest.importorskip("pydensecrf.densecrf", reason="pydensecrf2 not installed (pip install -e .[crf])")
    scenes = [_scene(seed, size=(30 + seed, 41)) for seed in range(5)]  # different sizes too
    expected = [crf.dense_crf(img, p).argmax(0).astype(np.uint8) for img, _, p in scenes]
    for workers, chunk in ((0, 1), (1, 2), (2, 2), (2, 3)):
        got = []
        with crf.CRFPool(workers, chunk_size=chunk, max_pending=1) as pool:
            for img, _, p in scenes:
                pool.submit(img, p)
                got.extend(pool.results())
            got.extend(pool.drain())
        assert len(got) == len(scenes), (workers, chunk)
        for a, b in zip(got, expected):
            np.testing.assert_array_equal(a, b)


def test_evaluate_reports_plain_and_crf_from_one_pass(tmp_path) -> None:
    pytest.importorskip("pydensecrf.densecrf", reason="pydensecrf2 not installed (pip install -e .[crf])")
    from reproduce import evaluate as ev
    from reproduce.inference import InferenceConfig
    from reproduce.synthetic import write_voc
    from tests.test_evaluate import pixel_model

    write_voc(tmp_path, train_ids=["a"], val_ids=["b", "c", "d"], sizes=(24, 41))
    config = InferenceConfig(protocol="pad", crop_size=65)
    results = []
    for workers in (0, 2):
        dataset = ev.build_eval_dataset("voc12", tmp_path, "val", "pad", 65)
        out = ev.evaluate(pixel_model(seed=1), dataset,
                          ev.EvalOptions(config=config, crf=True, crf_workers=workers, progress=False))
        assert out["crf"].matrix.sum() == out["plain"].matrix.sum()
        results.append(out)
    np.testing.assert_array_equal(results[0]["crf"].matrix, results[1]["crf"].matrix)
    assert not np.array_equal(results[0]["crf"].matrix, results[0]["plain"].matrix)


# ------------------------------------------------------------------ the byte budget (a stub executor, no workers)
class _ManualExecutor:
    """Stands in for ProcessPoolExecutor: records each chunk, whose future the test finishes by hand."""

    def __init__(self, workers: int, **kwargs) -> None:
        self.workers = workers
        self.futures: list = []

    def submit(self, fn, chunk, params):
        from concurrent.futures import Future

        future: Future = Future()
        self.futures.append((future, chunk))
        return future

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


def _stub_pool(monkeypatch, **kwargs) -> tuple[crf.CRFPool, list[_ManualExecutor]]:
    made: list[_ManualExecutor] = []

    def executor(workers, **kw):
        made.append(_ManualExecutor(workers, **kw))
        return made[-1]

    monkeypatch.setattr(crf, "require_pydensecrf", lambda: None)
    monkeypatch.setattr(crf, "ProcessPoolExecutor", executor)
    return crf.CRFPool(**kwargs), made


def _item(i: int, classes: int = 3, size: tuple[int, int] = (8, 10)) -> tuple[np.ndarray, np.ndarray]:
    image = np.full((*size, 3), i, np.uint8)
    return image, np.full((classes, *size), 1.0 / classes, np.float32)


def _finish(executor: _ManualExecutor, index: int) -> None:
    future, chunk = executor.futures[index]
    future.set_result([np.full(image.shape[:2], image[0, 0, 0], np.uint8) for image, _ in chunk])


def test_pool_blocks_at_the_byte_budget_and_resumes_when_a_result_comes(monkeypatch) -> None:
    import threading

    item = crf.item_bytes((3, 8, 10))
    assert item == 3 * 8 * 10 * 4 + 8 * 10 * 3 == sum(a.nbytes for a in _item(0))
    pool, made = _stub_pool(monkeypatch, workers=2, max_bytes=3 * item, max_pending=100)
    executor = made[0]
    submitted = threading.Semaphore(0)

    def producer() -> None:
        for i in range(6):
            pool.submit(*_item(i))
            submitted.release()

    thread = threading.Thread(target=producer, daemon=True)
    thread.start()
    for _ in range(3):  # 3 images fit the budget
        assert submitted.acquire(timeout=10)
    assert not submitted.acquire(timeout=0.3)  # the 4th went out (over the budget), and submit waits for the 1st
    assert len(executor.futures) == 4 and pool.pending_bytes == 4 * item
    _finish(executor, 0)  # the oldest comes back: the 4th submit returns, the 5th waits for the 2nd
    assert submitted.acquire(timeout=10)
    assert not submitted.acquire(timeout=0.3)
    assert len(executor.futures) == 5 and pool.pending_bytes == 4 * item
    for index in (2, 1):  # out of order: the results still come in submission order
        _finish(executor, index)
    for _ in range(2):
        assert submitted.acquire(timeout=10)
    thread.join(timeout=10)
    assert not thread.is_alive() and len(executor.futures) == 6
    assert [int(label[0, 0]) for label in pool.results()] == [0, 1, 2]
    for index in range(3, 6):
        _finish(executor, index)
    assert [int(label[0, 0]) for label in pool.drain()] == [3, 4, 5]
    assert pool.pending_bytes == 0


def test_pool_keeps_one_image_per_worker_in_flight_over_the_budget(monkeypatch) -> None:
    import threading

    pool, made = _stub_pool(monkeypatch, workers=3, max_bytes=1)
    done = threading.Event()

    def producer() -> None:
        for i in range(4):
            pool.submit(*_item(i))
        done.set()

    threading.Thread(target=producer, daemon=True).start()
    assert not done.wait(timeout=0.5)
    assert len(made[0].futures) == 4  # 3 in flight (one per worker) + the 4th, waiting for the 1st
    _finish(made[0], 0)
    assert done.wait(timeout=10)
    for index in range(1, 4):
        _finish(made[0], index)
    assert [int(label[0, 0]) for label in pool.drain()] == [0, 1, 2, 3]


def test_default_workers_shrink_for_large_images(monkeypatch) -> None:
    monkeypatch.setattr(crf, "usable_cores", lambda: 64)
    voc = crf.item_bytes((21, 375, 500))
    coco164k = crf.item_bytes((182, 480, 640))
    assert coco164k == 182 * 480 * 640 * 4 + 480 * 640 * 3  # ~224 MB
    gib = 1 << 30
    assert crf.default_workers() == crf.MAX_DEFAULT_WORKERS == 16
    assert crf.default_workers(voc, available=24 * gib) == 16  # VOC: every core (up to 16), as before
    monkeypatch.setattr(crf, "available_memory", lambda: None)  # memory unknown: the budget alone
    assert crf.default_workers(coco164k) == 9 == (2 * gib) // coco164k  # one image per worker within 2 GB
    assert crf.default_workers(coco164k, max_bytes=gib) == 4
    # 24 GB available: 0.75 x 24 - 2 GB for the workers, ~5.2 GB each (22 maps + 256 MB)
    assert crf.worker_bytes(coco164k) == 22 * coco164k + (256 << 20)
    assert crf.default_workers(coco164k, available=24 * gib) == 3
    assert crf.default_workers(coco164k, available=gib) == 1  # never 0


def test_a_pool_without_a_size_picks_its_workers_on_the_first_image(monkeypatch) -> None:
    monkeypatch.setattr(crf, "usable_cores", lambda: 8)
    monkeypatch.setattr(crf, "available_memory", lambda: None)
    pool, made = _stub_pool(monkeypatch, max_bytes=3 * crf.item_bytes((30, 20, 20)))
    assert pool.workers is None and not made
    pool.warm()  # nothing to start yet
    assert not made
    pool.submit(*_item(0, classes=30, size=(20, 20)))
    assert pool.workers == 3 and made[0].workers == 3 and pool.max_pending == 6
    hinted, made = _stub_pool(monkeypatch, item_bytes=crf.item_bytes((3, 8, 10)))
    assert hinted.workers == 8 and made[0].workers == 8


def test_available_memory_is_read() -> None:
    available = crf.available_memory()
    if sys.platform.startswith("linux"):
        assert available is not None and 0 < available < 1 << 50
