"""ConfusionMatrix against hand-computed values and scikit-learn; published tables and the report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from reproduce.metrics import ConfusionMatrix, percent, scores_from_matrix
from reproduce.tables import METRICS, find_row, find_rows, load_tables, render_comparison

# every published number of facts/published_tables.yaml, derived by tools/make_test_data.py
PUBLISHED_NUMBERS = Path(__file__).resolve().parent / "data" / "published_numbers.json"


def same_scores(a: dict, b: dict) -> bool:
    """Equality of two compute() results where NaN equals NaN (per-class lists hold NaN)."""
    return a.keys() == b.keys() and all(
        np.array_equal(np.asarray(a[k], dtype=float), np.asarray(b[k], dtype=float), equal_nan=True)
        if k not in ("classes",)
        else a[k] == b[k]
        for k in a
    )


# ----------------------------------------------------------------------------------------------- hand-made
def differential_case() -> tuple[np.ndarray, np.ndarray]:
    """The facts' differential check: 4 classes, 255 ignored.

    Class 2 is predicted but absent from the GT, class 3 is predicted only on an ignored pixel
    (so it is absent everywhere that counts). Class 0: TP 3, union 5 -> 0.6; class 1: TP 5, union 6.
    """
    label = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 255])
    pred = np.array([0, 0, 0, 2, 1, 1, 1, 1, 1, 0, 3])
    return pred, label


def test_differential_check_reproduces_published_conventions() -> None:
    pred, label = differential_case()
    cm = ConfusionMatrix(4)
    cm.update(pred, label)
    gt = cm.compute("present_in_gt")
    union = cm.compute("present_in_union")
    every = cm.compute("all")
    assert round(union["miou"], 4) == 0.4778  # mmseg / tf.metrics.mean_iou / torchmetrics 1.9
    assert round(gt["miou"], 4) == 0.7167  # cocostuffeval / kazuto scores()
    assert round(every["miou"], 4) == 0.3583  # naive mean over all classes
    assert gt["num_classes_used"] == 2 and union["num_classes_used"] == 3
    assert gt["iou"][0] == pytest.approx(0.6) and gt["iou"][1] == pytest.approx(5 / 6)
    assert math.isnan(gt["iou"][3])  # prediction on an ignored pixel does not count
    assert gt["num_pixels"] == 10
    assert gt["pixel_acc"] == pytest.approx(8 / 10)
    assert gt["mean_acc"] == pytest.approx((3 / 4 + 5 / 6) / 2)
    assert gt["fwiou"] == pytest.approx(0.4 * 0.6 + 0.6 * 5 / 6)
    # mean_acc only ever averages classes with GT pixels (accuracy is undefined otherwise).
    assert union["mean_acc"] == gt["mean_acc"]


def test_default_convention_is_present_in_gt() -> None:
    pred, label = differential_case()
    cm = ConfusionMatrix(4)
    cm.update(pred, label)
    assert same_scores(cm.compute(), cm.compute("present_in_gt"))
    with pytest.raises(ValueError, match="classes must be one of"):
        cm.compute("nanmean")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------- sklearn oracle
def random_batch(seed: int, c: int, n: int = 3, h: int = 17, w: int = 23) -> tuple[np.ndarray, np.ndarray]:
    """Labels with ~10% ignore and two classes missing from the GT; predictions mostly right."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, c - 2, size=(n, h, w)).astype(np.uint8)  # classes c-2, c-1 never in GT
    label[rng.random(label.shape) < 0.1] = 255
    pred = np.where(rng.random(label.shape) < 0.6, label, rng.integers(0, c, size=label.shape)).astype(np.int64)
    pred[label == 255] = rng.integers(0, c, size=int((label == 255).sum()))
    return pred, label


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_scikit_learn(seed: int) -> None:
    sklearn_metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn is the independent oracle")
    c = 7
    pred, label = random_batch(seed, c)
    cm = ConfusionMatrix(c)
    for p, lab in zip(pred, label, strict=True):  # one update per image: streaming accumulation
        cm.update(p, lab)

    keep = label.reshape(-1) != 255
    y_true, y_pred = label.reshape(-1)[keep].astype(np.int64), pred.reshape(-1)[keep]
    classes = np.arange(c)
    np.testing.assert_array_equal(cm.matrix, sklearn_metrics.confusion_matrix(y_true, y_pred, labels=classes))

    in_gt = np.unique(y_true)
    in_union = np.union1d(in_gt, np.unique(y_pred))
    per_class = sklearn_metrics.jaccard_score(y_true, y_pred, labels=classes, average=None, zero_division=0)
    per_class = np.where(np.isin(classes, in_union), per_class, np.nan)  # undefined where the union is empty
    ours = cm.compute("present_in_union")
    np.testing.assert_allclose(ours["iou"], per_class, equal_nan=True)

    macro = sklearn_metrics.jaccard_score
    assert ours["miou"] == pytest.approx(macro(y_true, y_pred, labels=in_union, average="macro"))
    gt = cm.compute("present_in_gt")
    assert gt["miou"] == pytest.approx(macro(y_true, y_pred, labels=in_gt, average="macro"))
    assert gt["miou"] != pytest.approx(ours["miou"])  # the two conventions really differ here
    assert gt["pixel_acc"] == pytest.approx(sklearn_metrics.accuracy_score(y_true, y_pred))
    # balanced accuracy = mean recall over classes present in y_true = our mean_acc
    assert gt["mean_acc"] == pytest.approx(sklearn_metrics.balanced_accuracy_score(y_true, y_pred))
    freq = np.bincount(y_true, minlength=c) / y_true.size
    assert gt["fwiou"] == pytest.approx(float(np.nansum(freq * per_class)))


def test_inputs_numpy_torch_batches_and_dtypes_agree() -> None:
    pred, label = random_batch(3, 5)
    a, b, c_ = ConfusionMatrix(5), ConfusionMatrix(5), ConfusionMatrix(5)
    a.update(pred, label)  # whole batch as numpy
    b.update(torch.from_numpy(pred).to(torch.int32), torch.from_numpy(label))  # tensors, other dtypes
    for p, lab in zip(pred, label, strict=True):
        c_.update(p.astype(np.uint8), lab.astype(np.int64))
    np.testing.assert_array_equal(a.matrix, b.matrix)
    np.testing.assert_array_equal(a.matrix, c_.matrix)


def test_merge_equals_single_accumulation() -> None:
    pred, label = random_batch(4, 6, n=4)
    whole = ConfusionMatrix(6)
    whole.update(pred, label)
    shards = []
    for k in range(4):  # e.g. one matrix per DataLoader worker or process
        shard = ConfusionMatrix(6)
        shard.update(pred[k], label[k])
        shards.append(shard)
    np.testing.assert_array_equal(ConfusionMatrix.sum(shards).matrix, whole.matrix)
    merged = ConfusionMatrix(6)
    merged += shards[0]
    merged.merge(shards[1]).merge(shards[2].matrix).merge(torch.from_numpy(shards[3].matrix))
    np.testing.assert_array_equal(merged.matrix, whole.matrix)
    assert same_scores(ConfusionMatrix.from_matrix(whole.matrix).compute(), whole.compute())
    with pytest.raises(ValueError, match="cannot merge"):
        merged.merge(ConfusionMatrix(5))


def _all_reduce_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        pred, label = random_batch(7, 5, n=world)
        cm = ConfusionMatrix(5)
        cm.update(pred[rank], label[rank])  # each rank sees its own shard
        np.save(Path(out_dir) / f"rank{rank}.npy", cm.all_reduce().matrix)
        gpu_path = ConfusionMatrix(5)  # the GPU code path (findings on the device) and a rank without data
        gpu_path._device_path_on_cpu = True
        if rank == 0:
            gpu_path.update(torch.from_numpy(pred[0]), torch.from_numpy(label[0]))
        np.save(Path(out_dir) / f"device{rank}.npy", gpu_path.all_reduce().matrix)
        bad = ConfusionMatrix(5)
        bad._device_path_on_cpu = True
        if rank == 1:
            bad.update(torch.tensor([6]), torch.tensor([0]))
        try:  # every rank raises alike: none is left waiting in a later collective
            bad.all_reduce()
        except ValueError as e:
            (Path(out_dir) / f"error{rank}.txt").write_text(str(e))
    finally:
        dist.destroy_process_group()


def test_all_reduce_sums_over_processes(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    world = 2
    mp.spawn(_all_reduce_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world, join=True)
    pred, label = random_batch(7, 5, n=world)
    whole = ConfusionMatrix(5)
    whole.update(pred, label)
    first = ConfusionMatrix(5)
    first.update(pred[0], label[0])
    for rank in range(world):
        np.testing.assert_array_equal(np.load(tmp_path / f"rank{rank}.npy"), whole.matrix)
        np.testing.assert_array_equal(np.load(tmp_path / f"device{rank}.npy"), first.matrix)
    assert "prediction value(s) [6]" in (tmp_path / "error1.txt").read_text()
    assert "prediction value(s) (on another process)" in (tmp_path / "error0.txt").read_text()


def test_all_reduce_is_noop_without_distributed() -> None:
    pred, label = differential_case()
    cm = ConfusionMatrix(4)
    cm.update(pred, label)
    before = cm.matrix
    np.testing.assert_array_equal(cm.all_reduce().matrix, before)


def test_per_image_average_differs_from_dataset_level() -> None:
    """The pitfall: mean of per-image mIoU is not the dataset mIoU (isht7#5, jfzhang95#12)."""
    # Image 1: a tiny class-1 object, found exactly. Image 2: a large class-1 region, mostly missed.
    label1 = np.zeros((10, 10), np.uint8)
    label1[0, 0] = 1
    pred1 = label1.copy()
    label2 = np.zeros((10, 10), np.uint8)
    label2[:, :6] = 1
    pred2 = np.zeros((10, 10), np.uint8)
    pred2[:, :1] = 1

    dataset = ConfusionMatrix(2)
    per_image = []
    for p, lab in ((pred1, label1), (pred2, label2)):
        dataset.update(p, lab)
        single = ConfusionMatrix(2)
        single.update(p, lab)
        per_image.append(single.compute()["miou"])
    per_image_mean = float(np.mean(per_image))
    dataset_miou = dataset.compute()["miou"]
    # class 0: TP 99+40, union 99+90; class 1: TP 1+10, union 1+60
    assert dataset_miou == pytest.approx((139 / 189 + 11 / 61) / 2)
    assert per_image == pytest.approx([1.0, (40 / 90 + 10 / 60) / 2])
    assert per_image_mean - dataset_miou > 0.15


def test_out_of_range_labels_error_or_ignore() -> None:
    label = np.array([[0, 1], [7, 255]])
    pred = np.array([[0, 1], [1, 0]])
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=r"label value\(s\) \[7\]"):
        cm.update(pred, label)
    assert cm.matrix.sum() == 0  # a rejected update adds nothing
    lenient = ConfusionMatrix(3, out_of_range="ignore")  # the official COCO-Stuff evaluation's behaviour
    lenient.update(pred, label)
    assert lenient.matrix.sum() == 2
    with pytest.raises(ValueError, match=r"prediction value\(s\) \[5\]"):
        cm.update(np.array([5]), np.array([0]))
    with pytest.raises(TypeError, match="argmax"):
        cm.update(np.zeros((2, 2), np.float32), np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError, match="shape"):
        cm.update(np.zeros((2, 2), np.int64), np.zeros((2, 3), np.int64))
    with pytest.raises(ValueError, match="ignore_index"):
        ConfusionMatrix(256, ignore_index=255)


def test_empty_matrix_gives_nan_not_error() -> None:
    scores = ConfusionMatrix(3).compute()
    assert math.isnan(scores["miou"]) and math.isnan(scores["pixel_acc"]) and scores["num_pixels"] == 0
    assert percent(scores_from_matrix(np.eye(2, dtype=np.int64)))["miou"] == 100.0


@pytest.mark.gpu
def test_cuda_inputs_match_cpu() -> None:  # pragma: no cover - runs only where a GPU exists
    pred, label = random_batch(5, 6)
    cpu, gpu = ConfusionMatrix(6), ConfusionMatrix(6)
    cpu.update(pred, label)
    gpu.update(torch.from_numpy(pred).cuda(), torch.from_numpy(label).cuda())
    np.testing.assert_array_equal(cpu.matrix, gpu.matrix)


# ----------------------------------------------------------------------------------------------- published tables
def test_tables_load_with_sources_and_metrics() -> None:
    tables = load_tables()
    assert len(tables) >= 10
    for table in tables.values():
        assert table.source and table.rows
        for row in table.rows:
            assert row.source and row.metrics and set(row.metrics) <= set(METRICS)


@pytest.mark.parametrize(
    ("table", "settings", "miou"),
    [
        ("deeplab_v2_resnet101_voc12_val", {"head": "aspp_l", "crf": False}, 76.35),
        ("deeplab_v2_resnet101_voc12_val", {"head": "aspp_l", "crf": True}, 77.69),
        ("deeplab_v2_vgg16_voc12_val", {"head": "largefov", "crf": True}, 69.84),
        ("deeplab_v2_cocostuff10k", {"backbone": "resnet101"}, 34.4),
        ("deeplab_v2_vgg16_cocostuff164k_val", {}, 33.2),
        ("deeplab_v3_resnet101_voc12_val", {"eval_os": 8, "ms": True, "flip": True, "coco": False}, 79.77),
        ("deeplab_v3plus_resnet101_voc12_val", {"train_os": 16, "eval_os": 16, "decoder": True, "ms": False}, 78.85),
        ("deeplab_v3plus_resnet101_voc12_val", {"train_os": 16, "eval_os": 8, "ms": False}, 79.35),
        ("deeplab_v3plus_resnet101_voc12_val", {"train_os": 16, "eval_os": 8, "ms": True, "flip": True}, 80.57),
        ("deeplab_v3plus_xception65_voc12_val", {"eval_os": 16, "ms": False}, 82.20),
        ("deeplab_v3plus_xception65_voc12_val", {"eval_os": 16, "ms": True}, 83.34),
        ("deeplab_v3plus_xception65_voc12_val", {"eval_os": 8, "ms": True}, 83.58),
        ("kazuto1011_deeplab_v2", {"dataset": "voc12", "crf": True}, 77.93),
        ("tf_model_zoo_voc12", {"backbone": "mobilenet_v2", "depth_multiplier": 0.5, "split": "val"}, 70.19),
    ],
)
def test_find_row(table: str, settings: dict, miou: float) -> None:
    assert find_row(table, **settings).metrics["miou"] == miou


def test_find_row_errors_name_the_candidates() -> None:
    with pytest.raises(LookupError, match="2 rows .* match"):
        find_row("deeplab_v2_resnet101_voc12_val", head="aspp_l")
    with pytest.raises(LookupError, match="no row"):
        find_row("deeplab_v2_resnet101_voc12_val", head="aspp_xl")
    with pytest.raises(KeyError, match="unknown table"):
        find_row("nope")
    assert len(find_rows("kazuto1011_deeplab_v2", crf=True)) == 3


def test_every_number_in_the_facts_file_is_in_our_tables() -> None:
    ours = {v for t in load_tables().values() for r in t.rows for v in r.metrics.values()}
    facts = json.loads(PUBLISHED_NUMBERS.read_text(encoding="utf-8"))["numbers"]
    assert len(facts) > 20
    missing = sorted(set(facts) - ours)
    assert not missing, f"published numbers missing from reproduce/tables/published.yaml: {missing}"


def test_render_comparison_markdown() -> None:
    row = find_row("deeplab_v2_resnet101_voc12_val", head="aspp_l", crf=False)
    kazuto = find_row("kazuto1011_deeplab_v2", dataset="voc12", crf=False)
    pred, label = differential_case()
    cm = ConfusionMatrix(4)
    cm.update(pred, label)
    text = render_comparison([(row, {"miou": 0.7700}), (kazuto, None)], metrics=("miou", "pixel_acc"))
    lines = text.strip().splitlines()
    assert lines[0].startswith("| published result | setting | paper mIoU | ours mIoU | Δ mIoU |")
    assert "| 76.35 | 77.00 | +0.65 |" in lines[2]
    assert "| 76.65 | – | – | 94.64 | – | – |" in lines[3]
    assert len(lines) == 4
    # compute() output can be passed as is; percent-valued input is refused unless declared.
    assert "71.67" in render_comparison([(row, cm.compute())])
    with pytest.raises(ValueError, match="measured_unit='percent'"):
        render_comparison([(row, {"miou": 76.1})])
    assert "| 76.10 | -0.25 |" in render_comparison([(row, {"miou": 76.1})], measured_unit="percent")


def test_torch_bincount_path_equals_numpy_path():
    """The torch code path (used on CUDA) gives the matrix of the numpy path (used on the CPU)."""
    rng = np.random.default_rng(3)
    label = rng.integers(0, 5, (2, 33, 31)).astype(np.uint8)
    label[:, :4] = 255
    label[0, 5, 5] = 9  # out of range, dropped with out_of_range="ignore"
    pred = rng.integers(0, 5, (2, 33, 31))
    a = ConfusionMatrix(5, out_of_range="ignore")
    b = ConfusionMatrix(5, out_of_range="ignore")
    b._torch_bincount_on_cpu = True
    a.update(pred, label)
    b.update(torch.from_numpy(pred), torch.from_numpy(label))
    assert torch.equal(torch.as_tensor(a.matrix), torch.as_tensor(b.matrix))
    with pytest.raises(ValueError, match=r"label value\(s\) \[9\]"):
        b2 = ConfusionMatrix(5)
        b2._torch_bincount_on_cpu = True
        b2.update(torch.from_numpy(pred), torch.from_numpy(label))


def test_readme_published_tables_are_generated_from_the_data():
    """Each published number is typed once (published.yaml); the README section is generated from it."""
    from reproduce.tables import render_published, sync_readme

    readme = Path(__file__).resolve().parent.parent / "README.md"
    assert sync_readme(readme, check=True), "README is stale: run python -m reproduce.tables --readme README.md"
    text = render_published()
    assert "| `[5]` | msc coco aug head=aspp_l | 76.35 |" in text
    assert "82.20" in text and "34.40" in text


# ----------------------------------------------------------------------------------------- the GPU code path
READS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__", "__index__")


def _device_path() -> ConfusionMatrix:
    cm = ConfusionMatrix(5)
    cm._device_path_on_cpu = True  # what a CUDA input takes, on the CPU
    return cm


def test_device_path_reads_nothing_until_the_matrix_is_read(monkeypatch) -> None:
    """~4 reads of the device per image before; now none per update, the matrix is read once at the end."""
    calls: list[str] = []
    for name in READS:
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda t, *a, _o=original, _n=name, **k: calls.append(_n) or _o(t, *a, **k))
    pred, label = random_batch(11, 5, n=3)
    label[0, :2] = 255
    cpu, gpu = ConfusionMatrix(5), _device_path()
    for p, lab in zip(pred, label):
        cpu.update(p, lab)
        gpu.update(torch.from_numpy(p), torch.from_numpy(lab))
    calls.clear()
    for p, lab in zip(pred, label):
        gpu.update(torch.from_numpy(p), torch.from_numpy(lab))
    assert calls == []
    monkeypatch.undo()
    np.testing.assert_array_equal(gpu.matrix, 2 * cpu.matrix)


def test_device_path_defers_the_out_of_range_error_to_the_read() -> None:
    pred, label = random_batch(3, 5, n=2)
    cm = _device_path()
    cm.update(torch.from_numpy(pred[0]), torch.from_numpy(label[0]))
    before = ConfusionMatrix(5)
    before.update(pred[0], label[0])
    bad = label[1].copy()
    bad[0, 0], bad[1, 1] = 9, 7
    cm.update(torch.from_numpy(pred[1]), torch.from_numpy(bad))  # no error yet: that would read the device
    with pytest.raises(ValueError, match=r"label value\(s\) \[7, 9\] outside \[0, 5\) .* in 2 pixel\(s\)"):
        cm.compute()
    cm._problems = None  # what the rejected update left behind: nothing
    np.testing.assert_array_equal(cm.matrix, before.matrix)
    wrong = _device_path()
    wrong.update(torch.tensor([5, 1]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"prediction value\(s\) \[5\]"):
        wrong.compute()
    lenient = ConfusionMatrix(5, out_of_range="ignore")
    lenient._device_path_on_cpu = True
    lenient.update(torch.from_numpy(pred[1]), torch.from_numpy(bad))
    strict_numpy = ConfusionMatrix(5, out_of_range="ignore")
    strict_numpy.update(pred[1], bad)
    np.testing.assert_array_equal(lenient.matrix, strict_numpy.matrix)


def test_all_reduce_runs_on_the_process_groups_device(monkeypatch) -> None:
    """NCCL reduces GPU tensors only: the matrix goes to the current GPU for it, to the CPU for gloo."""
    import torch.distributed as dist

    from reproduce.metrics import _collective_device

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "nccl")
    assert _collective_device() == torch.device("cuda", 1)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "gloo")
    assert _collective_device() == torch.device("cpu")
