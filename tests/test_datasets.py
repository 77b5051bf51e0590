"""Dataset readers on miniature trees written in the real on-disk formats (reproduce.synthetic)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch.utils.data
from PIL import Image

from reproduce import synthetic
from reproduce.datasets import (
    DATASETS,
    CocoStuff10k,
    CocoStuff164k,
    DatasetError,
    DeepFashion2,
    FolderSegmentation,
    SBDSegmentation,
    VOCSegmentation,
    build_dataset,
    rasterize_annotation,
    read_cocostuff10k_mat,
    read_index_png,
    read_sbd_mat,
)
from reproduce.palette import colorize, rgb_to_index, voc_palette, voc_palette_flat


def assert_contract(ds: torch.utils.data.Dataset, num_classes: int) -> None:
    """Every sample: (H, W, 3) uint8 RGB image, (H, W) uint8 label in range, meta with id and paths."""
    assert len(ds) > 0
    for i in range(len(ds)):
        image, label, meta = ds[i]
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert label.dtype == np.uint8 and label.shape == image.shape[:2]
        values = np.unique(label)
        assert np.all((values < num_classes) | (values == 255)), values
        assert {"id", "image_path", "label_path", "dataset", "split", "orig_size"} <= set(meta)
        assert Path(meta["image_path"]).stem == meta["id"]


# ----------------------------------------------------------------------------------------------- palette
def test_voc_palette_known_entries() -> None:
    pal = voc_palette()
    assert pal.shape == (256, 3) and pal.dtype == np.uint8
    assert pal[0].tolist() == [0, 0, 0] and pal[1].tolist() == [128, 0, 0] and pal[15].tolist() == [192, 128, 128]
    assert pal[20].tolist() == [0, 64, 128] and pal[255].tolist() == [224, 224, 192]
    assert len(voc_palette_flat()) == 768
    label = np.array([[0, 1, 20], [255, 7, 7]], np.uint8)
    np.testing.assert_array_equal(rgb_to_index(colorize(label)), label)
    with pytest.raises(ValueError, match=r"colour \(1, 2, 3\)"):
        rgb_to_index(np.array([[[1, 2, 3]]], np.uint8))


# ----------------------------------------------------------------------------------------------- VOC / SBD
def test_voc_palette_png_is_read_as_indices(tmp_path: Path) -> None:
    label = np.array([[0, 15, 15], [255, 20, 1]], np.uint8)
    path = tmp_path / "x.png"
    synthetic.save_palette_png(path, label)
    with Image.open(path) as im:
        assert im.mode == "P"
        rgb = np.asarray(im.convert("RGB"))
    np.testing.assert_array_equal(read_index_png(path), label)
    # What the common bug would give instead: colours, e.g. person (15) -> (192, 128, 128).
    assert rgb[0, 1].tolist() == [192, 128, 128]


def test_voc_reader_all_splits(tmp_path: Path) -> None:
    tree = synthetic.write_voc_aug_sources(tmp_path)
    for split, ids in (("train", tree.voc_train), ("val", tree.voc_val), ("trainval", tree.voc_train + tree.voc_val)):
        ds = VOCSegmentation(tmp_path / "VOCdevkit", split)
        assert sorted(ds.ids) == sorted(ids)
        assert_contract(ds, 21)
    image, label, meta = VOCSegmentation(tree.voc_root, "val")[0]
    assert 255 in label  # VOC outlines survive the read
    assert meta["dataset"] == "voc12" and meta["split"] == "val"
    assert meta["label_path"].endswith(f"SegmentationClass/{meta['id']}.png")
    with pytest.raises(DatasetError, match="train_aug is built by"):
        VOCSegmentation(tree.voc_root, "train_aug")
    with pytest.raises(DatasetError, match="JPEGImages"):
        VOCSegmentation(tmp_path / "nowhere", "train")


def test_voc_pair_list_format(tmp_path: Path) -> None:
    """kazuto/DrSleep lists: '/JPEGImages/x.jpg /SegmentationClass/x.png' per line."""
    tree = synthetic.write_voc_aug_sources(tmp_path)
    lines = [f"/JPEGImages/{i}.jpg /SegmentationClass/{i}.png" for i in tree.voc_val[:2]]
    (tree.voc_root / "ImageSets" / "SegmentationAug").mkdir(parents=True)
    (tree.voc_root / "ImageSets" / "SegmentationAug" / "val_pairs.txt").write_text("\n".join(lines) + "\n")
    ds = VOCSegmentation(tree.voc_root, "val_pairs")
    assert ds.ids == tree.voc_val[:2]
    assert_contract(ds, 21)


def test_sbd_mat_struct_roundtrip(tmp_path: Path) -> None:
    seg = np.array([[0, 3], [20, 0]], np.uint8)
    path = tmp_path / "a.mat"
    scipy.io.savemat(path, {"GTcls": {"Segmentation": seg, "CategoriesPresent": np.array([3, 20])}}, format="5")
    np.testing.assert_array_equal(read_sbd_mat(path), seg)
    scipy.io.savemat(tmp_path / "b.mat", {"GTinst": {"Segmentation": seg}})
    with pytest.raises(DatasetError, match=r"b\.mat: no 'GTcls' struct"):
        read_sbd_mat(tmp_path / "b.mat")
    scipy.io.savemat(tmp_path / "c.mat", {"GTcls": {"Boundaries": seg}})
    with pytest.raises(DatasetError, match="no field 'Segmentation'"):
        read_sbd_mat(tmp_path / "c.mat")
    (tmp_path / "d.mat").write_bytes(b"not a matlab file at all" * 10)
    with pytest.raises(DatasetError, match=r"d\.mat: cannot read MATLAB file"):
        read_sbd_mat(tmp_path / "d.mat")


def test_sbd_reader(tmp_path: Path) -> None:
    tree = synthetic.write_voc_aug_sources(tmp_path)
    for split, ids in (("train", tree.sbd_train), ("val", tree.sbd_val)):
        ds = SBDSegmentation(tree.sbd_root, split)
        assert ds.ids == ids
        assert_contract(ds, 21)
    # SBD has no void outlines; elsewhere it equals the VOC label of the same image.
    shared = tree.sbd_train[0]
    _, sbd_label, _ = SBDSegmentation(tree.sbd_root, "train")[0]
    voc_label = read_index_png(tree.voc_root / "SegmentationClass" / f"{shared}.png")
    assert 255 not in sbd_label
    np.testing.assert_array_equal(sbd_label[voc_label != 255], voc_label[voc_label != 255])


# ----------------------------------------------------------------------------------------------- COCO-Stuff
def test_cocostuff10k_label_shift_and_warp(tmp_path: Path) -> None:
    root = synthetic.write_cocostuff10k(tmp_path, n_train=3, n_test=2)
    ds = CocoStuff10k(root, "train")
    assert len(ds) == 3 and len(CocoStuff10k(root, "test")) == 2 and len(CocoStuff10k(root, "all")) == 5
    assert_contract(ds, 182)
    _, label, meta = ds[0]
    raw = scipy.io.loadmat(meta["label_path"])["S"].astype(np.int64)
    np.testing.assert_array_equal(label[raw == 0], 255)  # unlabeled -> ignore
    np.testing.assert_array_equal(label[raw > 0], raw[raw > 0] - 1)  # 1..182 -> 0..181
    assert label[-1, -1] == 181 and label[0, 0] == 255

    warped = CocoStuff10k(root, "train", warp_size=513)
    image, wlabel, wmeta = warped[0]
    assert image.shape == (513, 513, 3) and wlabel.shape == (513, 513)
    assert set(np.unique(wlabel)) <= set(np.unique(label))  # nearest: no invented label values
    assert wmeta["orig_size"] == label.shape


def test_cocostuff10k_rejects_values_above_182(tmp_path: Path) -> None:
    path = tmp_path / "x.mat"
    scipy.io.savemat(path, {"S": np.array([[0, 1], [182, 200]], np.uint16)})
    shifted = read_cocostuff10k_mat(path)
    assert shifted.tolist() == [[255, 0], [181, 199]]
    root = synthetic.write_cocostuff10k(tmp_path / "c", n_train=1, n_test=1)
    ds = CocoStuff10k(root, "train")
    s = scipy.io.loadmat(ds.refs[0].label)["S"]
    s[0, 1] = 200
    scipy.io.savemat(ds.refs[0].label, {"S": s})
    with pytest.raises(DatasetError, match=r"\.mat: label values \{199\} outside \[0, 181\]"):
        ds[0]


def test_cocostuff164k(tmp_path: Path) -> None:
    root = synthetic.write_cocostuff164k(tmp_path, n_train=3, n_val=2)
    ds = CocoStuff164k(root, "val")
    assert ds.split == "val2017" and len(ds) == 2 and len(CocoStuff164k(root, "train2017")) == 3
    assert_contract(ds, 182)
    _, label, meta = ds[0]
    np.testing.assert_array_equal(label, np.asarray(Image.open(meta["label_path"])))
    assert 255 in label and 181 in label


# ----------------------------------------------------------------------------------------------- DeepFashion2
def test_rasterize_paint_order_and_numeric_item_order() -> None:
    anno = {
        "source": "shop",
        "item2": {"category_id": 2, "segmentation": [[2, 2, 6, 2, 6, 6, 2, 6]]},
        "item10": {"category_id": 10, "segmentation": [[5, 5, 8, 5, 8, 8, 5, 8]]},
        "item1": {"category_id": 1, "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4]]},
    }
    mask = rasterize_annotation(anno, 10, 12)
    expected = np.zeros((10, 12), np.uint8)
    expected[0:5, 0:5] = 1  # integer-corner rectangles fill their boundary pixels too
    expected[2:7, 2:7] = 2  # item2 over item1
    expected[5:9, 5:9] = 10  # item10 after item9 (numeric, not string order)
    np.testing.assert_array_equal(mask, expected)
    with pytest.raises(DatasetError, match="item1: polygon 0 needs >= 3"):
        rasterize_annotation({"item1": {"category_id": 1, "segmentation": [[0, 0, 4, 0]]}}, 5, 5, path="a.json")
    with pytest.raises(DatasetError, match="category_id must be an integer in 1..13"):
        rasterize_annotation({"item1": {"category_id": 14, "segmentation": []}}, 5, 5, path="a.json")


def test_deepfashion2_reader_after_prepare(tmp_path: Path) -> None:
    from reproduce.prepare import build_deepfashion2_masks

    root = synthetic.write_deepfashion2(tmp_path, n_train=3, n_val=2)
    with pytest.raises(DatasetError, match="reproduce.prepare deepfashion2"):
        DeepFashion2(root, "train")
    build_deepfashion2_masks(root, progress=False)
    ds = DeepFashion2(root, "train")
    assert len(ds) == 3 and len(DeepFashion2(root, "val")) == 2
    assert_contract(ds, 14)
    for i in range(len(ds)):
        _, label, meta = ds[i]
        anno = json.loads((root / "train" / "annos" / f"{meta['id']}.json").read_text())
        np.testing.assert_array_equal(label, rasterize_annotation(anno, *label.shape))
        assert label.max() >= 1


# ----------------------------------------------------------------------------------------------- own data
@pytest.mark.parametrize("label_format", ["palette", "gray"])
def test_folder_dataset(tmp_path: Path, label_format: str) -> None:
    root = synthetic.write_folder(tmp_path, n=5, label_format=label_format)
    everything = FolderSegmentation(root)
    assert len(everything) == 5 and everything.class_names == ("background", "cat", "dog")
    assert_contract(everything, 3)
    assert FolderSegmentation(root, "train").ids == ["img_000", "img_001", "img_002"]
    assert FolderSegmentation(root, "val").ids == ["img_003", "img_004"]
    (root / "pairs.txt").write_text("images/img_004.jpg labels/img_004.png\n")
    assert FolderSegmentation(root, "pairs").ids == ["img_004"]
    with pytest.raises(DatasetError, match="split 'test'"):
        FolderSegmentation(root, "test")


def test_folder_dataset_explains_rgb_labels(tmp_path: Path) -> None:
    root = synthetic.write_folder(tmp_path, n=2, label_format="rgb")
    ds = FolderSegmentation(root)
    with pytest.raises(DatasetError) as info:
        ds[0]
    message = str(info.value)
    assert "img_000.png" in message and "RGB colour image" in message and "index masks" in message
    assert "\n" not in message


def test_folder_dataset_out_of_range_for_class_list(tmp_path: Path) -> None:
    root = synthetic.write_folder(tmp_path, n=2, classes=("background", "cat", "dog"))
    (root / "classes.txt").write_text("background\ncat\n")  # the masks use class 2: not in the list
    ds = FolderSegmentation(root)
    with pytest.raises(DatasetError, match=r"label values \{2\} outside \[0, 1\]"):
        ds.validate()


# ----------------------------------------------------------------------------------------------- malformed files
def _voc(tmp_path: Path) -> synthetic.VOCAugTree:
    return synthetic.write_voc_aug_sources(tmp_path)


def test_missing_label_error_and_skip(tmp_path: Path) -> None:
    tree = _voc(tmp_path)
    missing = tree.voc_root / "SegmentationClass" / f"{tree.voc_train[1]}.png"
    missing.unlink()
    with pytest.raises(DatasetError) as info:
        VOCSegmentation(tree.voc_root, "train")
    assert isinstance(info.value, ValueError)
    assert str(info.value).startswith(str(missing)) and "not found" in str(info.value)
    ds = VOCSegmentation(tree.voc_root, "train", on_error="skip")
    assert ds.skip_count == 1 and tree.voc_train[1] in ds.skipped
    assert len(ds) == len(tree.voc_train) - 1


def test_size_mismatch_corrupt_image_and_skip_policy(tmp_path: Path) -> None:
    tree = _voc(tmp_path)
    ids = tree.voc_train
    # Sample 1: label of the wrong size. Sample 2: a truncated JPEG. Sample 3: a label value 21.
    synthetic.save_palette_png(tree.voc_root / "SegmentationClass" / f"{ids[1]}.png", np.zeros((5, 7), np.uint8))
    jpg = tree.voc_root / "JPEGImages" / f"{ids[2]}.jpg"
    jpg.write_bytes(jpg.read_bytes()[:100])
    bad = read_index_png(tree.voc_root / "SegmentationClass" / f"{ids[3]}.png")
    bad[0, 0] = 21
    synthetic.save_palette_png(tree.voc_root / "SegmentationClass" / f"{ids[3]}.png", bad)

    strict = VOCSegmentation(tree.voc_root, "train")
    strict[0]
    with pytest.raises(DatasetError, match=rf"{ids[1]}\.png: label size 7x5 \(WxH\) != image size"):
        strict[1]
    with pytest.raises(DatasetError, match=rf"{ids[2]}\.jpg: cannot decode image"):
        strict[2]
    with pytest.raises(DatasetError, match=rf"{ids[3]}\.png: label values \{{21\}} outside \[0, 20\]"):
        strict[3]

    lazy = VOCSegmentation(tree.voc_root, "train", on_error="skip")
    _, _, meta = lazy[1]  # bad samples 1..3 are replaced by the next good one
    assert meta["id"] == ids[4] and lazy.skip_count == 3
    lazy[1]
    assert lazy.skip_count == 3  # counted once per sample, not per access

    checked = VOCSegmentation(tree.voc_root, "train", on_error="skip")
    skipped = checked.validate()
    assert sorted(skipped) == sorted(ids[1:4]) and checked.ids == [ids[0], *ids[4:]]
    assert_contract(checked, 21)


def test_dataloader_default_collate(tmp_path: Path) -> None:
    tree = _voc(tmp_path)
    loader = torch.utils.data.DataLoader(VOCSegmentation(tree.voc_root, "val"), batch_size=1)
    image, label, meta = next(iter(loader))
    assert image.shape[0] == 1 and image.shape[-1] == 3 and label.dtype == torch.uint8
    assert meta["id"] == [tree.voc_val[0]]


def test_transform_hook_and_registry(tmp_path: Path) -> None:
    tree = _voc(tmp_path)
    ds = build_dataset(
        "voc12", root=tree.voc_root, split="val", transform=lambda im, lab, meta: (lab.shape, meta["id"])
    )
    assert ds[0][1] == tree.voc_val[0]
    assert set(DATASETS) == {"voc12", "sbd", "cocostuff10k", "cocostuff164k", "deepfashion2", "folder"}
    with pytest.raises(ValueError, match="unknown dataset"):
        build_dataset("ade20k", root=tmp_path)


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            # A MATLAB v5 file starts with a 128-byte header whose text holds its creation time.
            h.update(str(p.relative_to(root)).encode())
            h.update(data[128:] if p.suffix == ".mat" else data)
    return h.hexdigest()


def test_synthetic_trees_are_deterministic(tmp_path: Path) -> None:
    writers = (
        synthetic.write_voc_aug_sources,
        synthetic.write_cocostuff10k,
        synthetic.write_cocostuff164k,
        synthetic.write_deepfashion2,
        synthetic.write_folder,
    )
    for k, writer in enumerate(writers):
        a, b, c = tmp_path / f"{k}a", tmp_path / f"{k}b", tmp_path / f"{k}c"
        writer(a, seed=3)
        writer(b, seed=3)
        writer(c, seed=4)
        assert _tree_digest(a) == _tree_digest(b), writer.__name__
        assert _tree_digest(a) != _tree_digest(c), writer.__name__
