"""``deeplab-recipe custom``: the data checks (one line per problem, before any training), the split, the run.

* Each data problem (image without mask, mask without image, size mismatch, values outside the
  classes and the ignore label, colours outside the colour map, non-PNG and unreadable masks) is
  one line, printed before training starts; the command then exits 1 without a run folder.
* Palette and colour masks: the exact colour -> class map is printed; colour masks are converted.
* Class histogram, imbalance and near-empty warnings; a seeded split written as lists.
* End to end on tiny settings: trains from converted-format weights with a new head, keeps
  best.pth, evaluates, writes the report with per-class IoU and a confusion-matrix plot.
* (slow) On an imbalanced dataset, auto class weights and hard-pixel mining lift the rare class's
  IoU above plain cross-entropy at the same iterations.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reproduce import recipe
from reproduce.data_check import (
    ClassList,
    check_folder,
    imbalance_warning,
    make_split,
    read_classes,
)
from tests.custom_data import CLASSES, write_imbalanced_folder, write_tiny_weights

NAMES = ClassList(("background", "cat", "dog"))


def _pair(root: Path, name: str, label: np.ndarray, *, image_size: tuple[int, int] | None = None,
          mode: str | None = None) -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    h, w = image_size or label.shape[:2]
    Image.fromarray(np.full((h, w, 3), 100, np.uint8)).save(root / "images" / f"{name}.jpg")
    im = Image.fromarray(label)
    if mode == "P":
        from reproduce.palette import voc_palette_flat

        im = im.convert("P")
        im.putpalette(voc_palette_flat())
    im.save(root / "labels" / f"{name}.png")


def _label(h: int = 20, w: int = 24, classes: int = 3) -> np.ndarray:
    lab = np.zeros((h, w), np.uint8)
    for k in range(1, classes):
        lab[2 * k:2 * k + 6, 3 * k:3 * k + 8] = k
    return lab


def _good(root: Path, n: int = 3) -> Path:
    for i in range(n):
        _pair(root, f"ok{i}", _label())
    (root / "classes.txt").write_text("background\ncat\ndog\n", encoding="utf-8")
    return root


def _one_problem(check, fragment: str) -> str:
    hits = [p for p in check.problems if fragment in p]
    assert len(hits) == 1 and len(check.problems) == 1, check.problems
    assert "\n" not in hits[0]
    return hits[0]


# ============================================================================ each problem, one line
def test_clean_folder_has_no_problem_and_notes_the_mask_format(tmp_path):
    check = check_folder(_good(tmp_path), NAMES)
    assert check.ok and len(check.samples) == 3
    assert check.notes == ["grayscale masks: the pixel value is the class index"]
    assert check.histogram().tolist() == (3 * np.bincount(_label().ravel(), minlength=3)).tolist()


def test_image_without_mask(tmp_path):
    _good(tmp_path)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / "lonely.png")
    line = _one_problem(check_folder(tmp_path, NAMES), "image without mask")
    assert "lonely.png" in line and "labels/lonely.png" in line


def test_mask_without_image(tmp_path):
    _good(tmp_path)
    Image.fromarray(_label()).save(tmp_path / "labels" / "orphan.png")
    assert "orphan.png" in _one_problem(check_folder(tmp_path, NAMES), "mask without image")


def test_size_mismatch(tmp_path):
    _good(tmp_path)
    _pair(tmp_path, "big", _label(), image_size=(21, 24))
    line = _one_problem(check_folder(tmp_path, NAMES), "mask size 24x20 (WxH) != image size 24x21")
    assert "big.png" in line


def test_values_outside_the_classes_and_ignore(tmp_path):
    _good(tmp_path)
    lab = _label()
    lab[0, 0], lab[1, 1], lab[2, 2] = 7, 254, 255   # 255 is ignore: fine
    _pair(tmp_path, "bad", lab)
    line = _one_problem(check_folder(tmp_path, NAMES), "values {7, 254} are outside classes 0..2")
    assert "bad.png" in line and "ignore label 255" in line


def test_non_png_and_unreadable_masks(tmp_path):
    _good(tmp_path)
    _pair(tmp_path, "jpg", _label())
    (tmp_path / "labels" / "jpg.png").rename(tmp_path / "labels" / "jpg.jpg")
    check = check_folder(tmp_path, NAMES)
    assert any("jpg.jpg: masks must be PNG" in p for p in check.problems)
    tmp2 = _good(tmp_path / "second")
    (tmp2 / "labels" / "ok1.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30)
    assert "ok1.png" in _one_problem(check_folder(tmp2, NAMES), "cannot decode")


def test_palette_masks_note_the_index_colour_class_map(tmp_path):
    for i in range(2):
        _pair(tmp_path, f"p{i}", _label(), mode="P")
    check = check_folder(tmp_path, NAMES)
    assert check.ok
    (note,) = check.notes
    assert "palette index is the class" in note
    assert "0 (0, 0, 0) = background, 1 (128, 0, 0) = cat, 2 (0, 128, 0) = dog" in note


def test_colour_masks_use_the_class_list_colours_and_refuse_unknown_colours(tmp_path):
    (tmp_path / "classes.txt").write_text("sky 0 0 255\nroad 128 128 128\ncar 255 0 0\n", encoding="utf-8")
    classes = read_classes(tmp_path / "classes.txt")
    assert classes.names == ("sky", "road", "car") and classes.colours[2] == (255, 0, 0)
    rgb = np.zeros((10, 12, 3), np.uint8)
    rgb[:] = (0, 0, 255)
    rgb[5:, :] = (128, 128, 128)
    rgb[6:8, 2:5] = (255, 0, 0)
    _pair(tmp_path, "a", rgb)
    check = check_folder(tmp_path, classes)
    assert check.ok and check.histogram().tolist() == [60, 54, 6]
    assert any("(0, 0, 255) = sky, (128, 128, 128) = road, (255, 0, 0) = car" in n for n in check.notes)
    rgb[0, 0] = (1, 2, 3)
    _pair(tmp_path, "b", rgb)
    line = _one_problem(check_folder(tmp_path, classes), "colour (1, 2, 3) is not a class colour")
    assert "b.png" in line


def test_colour_masks_without_colours_map_by_the_voc_colours(tmp_path):
    from reproduce.data_check import write_index_masks
    from reproduce.palette import colorize

    lab = _label()
    lab[0, :4] = 255
    _pair(tmp_path, "v", colorize(lab))
    check = check_folder(tmp_path, NAMES)
    assert check.ok and any("VOC colour map" in n for n in check.notes)
    out = write_index_masks(check, tmp_path / "converted")
    assert np.array_equal(np.asarray(Image.open(out / "v.png")), lab)


def test_class_list_errors_are_one_line(tmp_path):
    from reproduce.datasets import DatasetError

    for text, fragment in (("a\nb\na\n", "duplicate names: a"), ("a 1 2 3\nb\n", "1 of 2 classes have a colour"),
                           ("", "class list is empty"), ("a 1 2 300\n", "above 255")):
        (tmp_path / "c.txt").write_text(text, encoding="utf-8")
        with pytest.raises(DatasetError, match=re.escape(fragment)):
            read_classes(tmp_path / "c.txt")


def test_near_empty_empty_and_imbalanced_classes_are_warned():
    names = ["background", "road", "rare", "never"]
    hist = np.array([900_000, 99_990, 10, 0])
    images = np.array([50, 50, 1, 0])
    lines = imbalance_warning(hist, names, images)
    assert any("class 3 'never' has no pixel" in w for w in lines)
    assert any("class 2 'rare' is near-empty: 10 pixels" in w for w in lines)
    assert any("imbalanced classes: 'background' 90.00 % vs 'rare'" in w and "--class-weights auto" in w
               for w in lines)
    assert imbalance_warning(np.array([600, 400]), names[:2], np.array([5, 5])) == []


def test_split_is_seeded_and_leaves_both_sides_non_empty():
    ids = [f"x{i}" for i in range(50)]
    a, b = make_split(ids, 0.2, seed=3), make_split(list(reversed(ids)), 0.2, seed=3)
    assert a == b and len(a[1]) == 10 and sorted(a[0] + a[1]) == sorted(ids)
    assert make_split(ids, 0.2, seed=4) != a
    assert [len(s) for s in make_split(["p", "q"], 0.01, 0)] == [1, 1]


# ============================================================================ the command
def _run(capsys, *argv) -> tuple[int, str, str]:
    code = recipe.main(["custom", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    return write_tiny_weights(tmp_path_factory.mktemp("w") / "tiny.pth")


def test_command_prints_each_problem_before_training_and_stops(tmp_path, capsys, tiny_weights):
    data = _good(tmp_path / "data", n=4)
    Image.fromarray(_label()).save(data / "labels" / "orphan.png")
    _pair(data, "big", _label(), image_size=(21, 24))
    lab = _label()
    lab[0, 0] = 9
    _pair(data, "bad", lab)
    code, out, err = _run(capsys, "--data", data, "--from", tiny_weights, "--out", tmp_path / "run", "--device", "cpu")
    assert code == 1
    problems = [ln for ln in out.splitlines() if ln.strip().startswith("problem:")]
    assert len(problems) == 3 and "== [2/6]" not in out
    assert err.startswith("error: 3 problem(s)") and err.count("\n") == 1
    assert not (tmp_path / "run" / "train").exists()
    # --skip-bad leaves them out; --check-only stops after the split
    code, out, _ = _run(capsys, "--data", data, "--from", tiny_weights, "--out", tmp_path / "run", "--skip-bad",
                        "--check-only", "--val-fraction", "0.25")
    assert code == 0 and "4 usable image/mask pairs (3 left out)" in out
    assert (tmp_path / "run" / "splits" / "val.txt").read_text().split() == ["ok2"]


def test_command_usage_and_input_errors_are_one_line(tmp_path, capsys, tiny_weights):
    data = _good(tmp_path / "data")
    code, _, err = _run(capsys, "--data", data)
    assert code == 2 and "--from" in err
    code, _, err = _run(capsys, "--data", data, "--from", tmp_path / "nothing.pth")
    assert code == 1 and "neither a release" in err
    code, _, err = _run(capsys, "--data", data, "--from", "resnet_v1_50_2016_08_28")
    assert code == 1 and "ImageNet backbone" in err
    code, _, err = _run(capsys, "--data", data, "--from", tiny_weights, "--class-weights", "1,2")
    assert code == 1 and "give none, auto or 3 comma-separated numbers" in err
    code, _, err = _run(capsys, "--data", data, "--from", tiny_weights, "--val-fraction", "1.5")
    assert code == 1 and "--val-fraction 1.5" in err
    code, _, err = _run(capsys, "--data", data, "--from", "deeplabv3_pascal_train_aug_2018_01_04", "--models-dir",
                        tmp_path / "models", "--out", tmp_path / "run")
    assert code == 1 and err.startswith("error: ") and "deeplabv3_pascal_train_aug" in err and err.count("\n") == 1


def test_command_end_to_end_on_tiny_settings(tmp_path, capsys, tiny_weights):
    """Colour masks (converted), auto class weights, a new 3-class head on 21-class weights, best.pth, report."""
    data = write_imbalanced_folder(tmp_path / "data", 10)
    colours = [(0, 0, 0), (0, 0, 255), (255, 255, 0)]
    for p in (data / "labels").iterdir():
        lab = np.asarray(Image.open(p))
        Image.fromarray(np.asarray(colours, np.uint8)[lab]).save(p)
    (data / "classes.txt").write_text("".join(f"{n} {r} {g} {b}\n" for n, (r, g, b) in zip(CLASSES, colours)))
    out_dir = tmp_path / "run"
    code, out, err = _run(capsys, "--data", data, "--from", tiny_weights, "--out", out_dir, "--iterations", 2,
                          "--batch-size", 2, "--eval-every", 1, "--class-weights", "auto", "--val-fraction", 0.2,
                          "--device", "cpu", "--set", "progress=false", "--set", "tensorboard=false")
    assert code == 0, err
    for key in ("val fraction  0.2", "seed          0", "iterations    2", "crop size     64", "base lr       0.05",
                "eval every    1 iterations", "class weights auto", "schedule of   deeplabv3plus_tiny-shapes-64"):
        assert key in out, key
    assert out.index("== custom recipe") < out.index("== [1/6] checking the data")
    assert "(0, 0, 0) = background, (0, 0, 255) = shape, (255, 255, 0) = speck" in out
    assert "class weights (auto:" in out and "speck" in out
    assert "re-initialised: ^logits\\.semantic\\.bias$, ^logits\\.semantic\\.weight$" in out
    assert (out_dir / "splits" / "train.txt").read_text().split() == make_split(
        [f"s{i:04d}" for i in range(10)], 0.2, 0)[0]
    assert (out_dir / "masks" / "s0000.png").is_file() and (out_dir / "train" / "best.pth").is_file()
    result = json.loads((out_dir / "eval" / "result.json").read_text())
    assert np.asarray(result["confusion_matrix"]).shape == (3, 3) and result["weights"].endswith("best.pth")
    with Image.open(out_dir / "eval" / "confusion.png") as im:
        assert im.format == "PNG" and im.size[0] > 100
    report = (out_dir / "report.md").read_text()
    assert "| 2 speck |" in report and "![confusion matrix](eval/confusion.png)" in report
    assert "mIoU **" in report and "best val mIoU during training" in report
    cfg = (out_dir / "custom_config.yaml").read_text()
    assert "num_classes: 3" in cfg and "dataset: folder" in cfg


def test_keep_head_continues_from_weights_with_the_same_classes(tmp_path, capsys, tiny_weights):
    from converters.io import load_state_dict

    data = write_imbalanced_folder(tmp_path / "data", 6)
    code, _, err = _run(capsys, "--data", data, "--from", tiny_weights, "--keep-head", "--out", tmp_path / "x")
    assert code == 1 and "--keep-head: the weights have 21 classes" in err
    three = write_tiny_weights(tmp_path / "w3" / "three.pth", num_classes=3, seed=1)
    code, out, err = _run(capsys, "--data", data, "--from", three, "--keep-head", "--out", tmp_path / "run",
                          "--iterations", 1, "--batch-size", 2, "--base-lr", 1e-9, "--val-fraction", 0.34,
                          "--device", "cpu", "--set", "progress=false", "--set", "tensorboard=false")
    assert code == 0, err
    assert "classifier    kept" in out and "(the classifier kept)" in out
    before, after = load_state_dict(three), load_state_dict(tmp_path / "run" / "train" / "final.pth")
    # one step at lr 1e-9 (a zero rate is refused): the kept head moves by float noise, a new one would differ wholly
    assert all(torch.allclose(before[k], after[k], rtol=0, atol=1e-6) for k in ("logits.semantic.weight", "logits.semantic.bias"))


# ============================================================================ acceptance (slow)
RARE = 2


@pytest.mark.slow
def test_auto_class_weights_and_mining_lift_the_rare_class(tmp_path, capsys, tiny_weights):
    """An imbalanced folder (the faint ``speck`` class covers 1.2 % of the pixels): same data, schedule and
    150 iterations; the rare class's val IoU (final.pth, and the report's best.pth) is higher with auto class
    weights and with DeepLab-TF hard-pixel mining (0.25, annealed over 100 steps) than with plain cross-entropy.
    Measured (final / best): plain 58.6 / 58.6, auto 61.1 / 64.2, mining 64.1 / 64.1. (Mining at 0.2 from the
    first step, without the schedule, left the class at 0.0.) BatchNorm momentum 0.1 in every run: the tiny
    recipe's 0.01 leaves the running statistics too far behind for 150 iterations, whatever the loss."""
    from reproduce.custom import evaluate_confusion
    from reproduce.datasets import FolderSegmentation
    from reproduce.metrics import scores_from_matrix

    data = write_imbalanced_folder(tmp_path / "data", 200)
    rare = {}
    for name, flags in {"plain": [], "auto": ["--class-weights", "auto"],
                        "mining": ["--top-k-percent-pixels", "0.25", "--hard-example-mining-step", "100"]}.items():
        run = tmp_path / name
        code, out, err = _run(capsys, "--data", data, "--from", tiny_weights, "--out", run, "--iterations", 150,
                              "--batch-size", 8, "--eval-every", 50, "--val-fraction", 0.2, "--device", "cpu", *flags,
                              "--set", "bn.momentum=0.1", "--set", "progress=false", "--set", "tensorboard=false")
        assert code == 0, err
        share = re.search(r"2 speck\s+([0-9.]+) %", out)
        assert share and float(share.group(1)) < 2.0
        best = json.loads((run / "eval" / "result.json").read_text())["iou"][RARE] or 0.0
        val = FolderSegmentation(data, "val", split_dir=run / "splits", classes=list(CLASSES))
        final = scores_from_matrix(evaluate_confusion(run / "train" / "final.pth", val, "cpu", 8))["iou"][RARE]
        rare[name] = (final, best)
    print({k: [round(100 * v, 2) for v in pair] for k, pair in rare.items()})
    for name in ("auto", "mining"):
        assert rare[name][0] > rare["plain"][0] and rare[name][1] > rare["plain"][1], rare


@pytest.mark.slow
def test_command_converts_a_release_and_gives_it_a_new_head(tmp_path, capsys):
    """--from a release name: its official-format file (random TF checkpoint) is converted in-process into
    --models-dir, the 21-class head is replaced by a 3-class one, the v3 recipe's schedule trains it."""
    pytest.importorskip("tensorflow")
    from converters.io import load_state_dict
    from converters.releases import RELEASES
    from reproduce._smoke import make_tf_checkpoint

    rel = RELEASES["deeplabv3_mnv2_pascal_train_aug_2018_01_29"]
    make_tf_checkpoint(rel.name, rel.source_path(tmp_path / "models"))
    data = write_imbalanced_folder(tmp_path / "data", 8)
    code, out, err = _run(capsys, "--data", data, "--from", rel.name, "--models-dir", tmp_path / "models",
                          "--iterations", 1, "--batch-size", 2, "--crop-size", 65, "--eval-every", 1,
                          "--val-fraction", 0.25, "--out", tmp_path / "run", "--device", "cpu",
                          "--set", "progress=false", "--set", "tensorboard=false")
    assert code == 0, err
    assert rel.converted_path(tmp_path / "models").is_file()
    assert "schedule of   deeplabv3_resnet101-os16-vocaug-513-30k" in out
    assert "deeplabv3_mobilenetv2 with a new 3-class head" in out
    final = load_state_dict(tmp_path / "run" / "train" / "final.pth")
    assert final["logits.semantic.weight"].shape[0] == 3
    assert (tmp_path / "run" / "report.md").is_file()
