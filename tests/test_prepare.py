"""`python -m reproduce.prepare`: voc_aug and deepfashion2, end to end on miniature trees."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from converters.io import atomic_path
from reproduce import prepare, synthetic
from reproduce.datasets import DeepFashion2, VOCSegmentation, read_index_png, read_sbd_mat

REPO = Path(__file__).resolve().parents[1]


def voc_args(tree: synthetic.VOCAugTree, *extra: str) -> list[str]:
    return ["voc_aug", "--voc-root", str(tree.voc_root), "--sbd-root", str(tree.sbd_root), "--no-progress", *extra]


def aug_dir(tree: synthetic.VOCAugTree) -> Path:
    return tree.voc_root / "SegmentationClassAug"


def snapshot(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.iterdir())}


def test_train_aug_set_algebra() -> None:
    assert prepare.train_aug_ids(["a", "b"], ["v", "w"], ["a", "v", "s"], ["w", "t", "b"]) == ["a", "b", "s", "t"]


def test_voc_aug_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tree = synthetic.write_voc_aug_sources(tmp_path)
    assert prepare.main(voc_args(tree)) == 0
    out = capsys.readouterr().out
    assert f"train_aug: {len(tree.train_aug)} images" in out and "wrote 12" in out

    list_file = tree.voc_root / "ImageSets" / "SegmentationAug" / "train_aug.txt"
    assert list_file.read_text().split() == tree.train_aug
    assert sorted(p.stem for p in aug_dir(tree).glob("*.png")) == tree.train_aug  # nothing from VOC val
    for sample_id in tree.train_aug:
        written = read_index_png(aug_dir(tree) / f"{sample_id}.png")
        assert written.dtype == np.uint8
        if sample_id in tree.voc_train:  # official VOC labels, outlines included
            expected = read_index_png(tree.voc_root / "SegmentationClass" / f"{sample_id}.png")
        else:
            expected = read_sbd_mat(tree.sbd_root / "dataset" / "cls" / f"{sample_id}.mat")
        np.testing.assert_array_equal(written, expected)

    ds = VOCSegmentation(tree.voc_root, "train_aug")
    assert ds.ids == tree.train_aug and ds.label_set == "SegmentationClassAug"
    image, label, _ = ds[len(ds) - 1]
    assert label.shape == image.shape[:2]


def test_voc_aug_is_idempotent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tree = synthetic.write_voc_aug_sources(tmp_path)
    assert prepare.main(voc_args(tree)) == 0
    list_file = tree.voc_root / "ImageSets" / "SegmentationAug" / "train_aug.txt"
    before, list_mtime = snapshot(aug_dir(tree)), list_file.stat().st_mtime_ns
    capsys.readouterr()
    assert prepare.main(voc_args(tree)) == 0
    assert "wrote 0, kept 12" in capsys.readouterr().out
    assert snapshot(aug_dir(tree)) == before and list_file.stat().st_mtime_ns == list_mtime


def test_voc_aug_resumes_after_interruption(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = synthetic.write_voc_aug_sources(tmp_path)
    real_write = prepare._write_png
    calls = {"n": 0}

    def write_then_die(target: Path, label: np.ndarray) -> None:
        if calls["n"] == 5:
            # Die half-way through a file: the temp file exists, the target must not appear.
            with atomic_path(target) as tmp:
                tmp.write_bytes(b"partial")
                raise KeyboardInterrupt
        calls["n"] += 1
        real_write(target, label)

    monkeypatch.setattr(prepare, "_write_png", write_then_die)
    assert prepare.main(voc_args(tree)) == 130
    done = snapshot(aug_dir(tree))
    assert len(done) == 5 and not list(aug_dir(tree).glob(".*"))  # complete files only, temp file removed
    assert not (tree.voc_root / "ImageSets" / "SegmentationAug" / "train_aug.txt").exists()

    # A hard kill (no cleanup) would leave a temp file; the next run removes it.
    (aug_dir(tree) / ".2008_000099.png.abc123.tmp").write_bytes(b"junk")
    monkeypatch.setattr(prepare, "_write_png", real_write)
    report = prepare.build_voc_aug(tree.voc_root, tree.sbd_root, progress=False)
    assert (report.written, report.kept) == (len(tree.train_aug) - 5, 5)
    assert not list(aug_dir(tree).glob(".*"))
    after = snapshot(aug_dir(tree))
    assert {k: after[k] for k in done} == done  # finished files were not rewritten
    assert sorted(p.stem for p in aug_dir(tree).glob("*.png")) == tree.train_aug


def test_voc_aug_out_folder_and_prefer_sbd(tmp_path: Path) -> None:
    tree = synthetic.write_voc_aug_sources(tmp_path)
    out = tmp_path / "derived"
    assert prepare.main([*voc_args(tree), "--out", str(out), "--prefer", "sbd"]) == 0
    shared = tree.sbd_train[0]  # a VOC train id that SBD also annotates
    assert shared in tree.voc_train
    written = read_index_png(out / "SegmentationClassAug" / f"{shared}.png")
    assert 255 not in written  # SBD labels: no void outlines
    only_voc = [i for i in tree.voc_train if i not in set(tree.sbd_train) | set(tree.sbd_val)]
    assert only_voc and 255 in read_index_png(out / "SegmentationClassAug" / f"{only_voc[0]}.png")
    ds = VOCSegmentation(tree.voc_root, "train_aug", aug_root=out)
    assert len(ds) == len(tree.train_aug)


def test_voc_aug_bad_mat_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tree = synthetic.write_voc_aug_sources(tmp_path)
    sbd_only = [i for i in tree.train_aug if i not in tree.voc_train][0]
    bad = tree.sbd_root / "dataset" / "cls" / f"{sbd_only}.mat"
    bad.write_bytes(b"\x00garbage" * 20)
    assert prepare.main(voc_args(tree)) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and str(bad) in err and "\n" not in err


def test_voc_aug_missing_inputs_and_size_mismatch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tree = synthetic.write_voc_aug_sources(tmp_path)
    (tree.sbd_root / "dataset" / "val.txt").unlink()
    assert prepare.main(voc_args(tree)) == 1
    assert "val.txt: split file not found" in capsys.readouterr().err

    tree = synthetic.write_voc_aug_sources(tmp_path / "b")
    only_voc = [i for i in tree.voc_train if i not in set(tree.sbd_train) | set(tree.sbd_val)][0]
    synthetic.save_palette_png(tree.voc_root / "SegmentationClass" / f"{only_voc}.png", np.zeros((3, 4), np.uint8))
    assert prepare.main(voc_args(tree)) == 1
    assert f"{only_voc}.png: label is 4x3 but {only_voc}.jpg is" in capsys.readouterr().err


def test_cli_help_and_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert prepare.main(["voc_aug", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--voc-root" in text and "--sbd-root" in text and "--out" in text and "10,582" in text
    assert prepare.main(["voc_aug"]) == 2  # missing required flags
    assert prepare.main(["deepfashion2", "--help"]) == 0 and "--data-root" in capsys.readouterr().out


def test_cli_subprocess_bad_input_exits_1_without_traceback(tmp_path: Path) -> None:
    """The real entry point (`python -m reproduce.prepare`), once: one line on stderr, exit code 1."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    bad = subprocess.run(
        [sys.executable, "-m", "reproduce.prepare", "voc_aug", "--voc-root", str(tmp_path / "none"), "--sbd-root", "x"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'none'}: no VOC2012/JPEGImages folder here (expected VOCdevkit/VOC2012/JPEGImages)"
    ]


def test_deepfashion2_prepare_idempotent_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = synthetic.write_deepfashion2(tmp_path / "df2", n_train=3, n_val=2)
    args = ["deepfashion2", "--data-root", str(root), "--no-progress"]
    assert prepare.main(args) == 0
    assert "wrote 5, kept 0" in capsys.readouterr().out
    masks = snapshot(root / "train" / "masks")
    assert prepare.main(args) == 0
    assert "wrote 0, kept 5" in capsys.readouterr().out
    assert snapshot(root / "train" / "masks") == masks
    assert len(DeepFashion2(root, "validation")) == 2

    anno = root / "validation" / "annos" / "000004.json"
    (root / "validation" / "masks" / "000004.png").unlink()
    anno.write_text("{not json")
    assert prepare.main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {anno}: invalid JSON") and "\n" not in err

    anno.write_text(json.dumps({"item1": {"category_id": 3, "segmentation": [[1, 2, 3]]}}))
    assert prepare.main(args) == 1
    assert "item1: polygon 0 needs >= 3 finite (x, y) pairs" in capsys.readouterr().err
