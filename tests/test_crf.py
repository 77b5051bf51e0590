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
