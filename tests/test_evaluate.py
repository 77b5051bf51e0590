"""reproduce.evaluate / reproduce.inference: protocols, scales, flips, whole-set metrics, outputs, errors.

Most tests use a *pixel-wise* DeepLab v2 (identity backbone + 1x1 head, stride 1): its output at a
pixel depends on that pixel only, so any misalignment of padding or cropping changes the result.
The CLI tests use the real DeepLab v2 ResNet-101 (random weights) on ~30 px images padded to 65.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reference_models import build_model
from reference_models.deeplab_v2 import DeepLabV2
from reference_models.preprocessing import CAFFE_DEEPLAB_V2
from reproduce import evaluate as ev
from reproduce.inference import (
    InferenceConfig,
    InferenceError,
    LoadedModel,
    labels_of,
    parse_scales,
    predict_labels,
    predict_probs,
    prepare_input,
    run_image,
    scale_dimension,
)
from reproduce.metrics import ConfusionMatrix
from reproduce.synthetic import write_cocostuff10k, write_voc

VAL_IDS = ["2007_000033", "2007_000042", "2007_000061", "2007_000123"]


class _PixelBackbone(nn.Module):
    feature_info = {"out": (3, 1)}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": x}


def pixel_model(num_classes: int = 21, kernel: int = 1, seed: int = 0) -> LoadedModel:
    torch.manual_seed(seed)
    head = nn.Conv2d(3, num_classes, kernel, padding=kernel // 2)
    nn.init.normal_(head.weight, std=0.05)
    model = DeepLabV2(_PixelBackbone(), head, freeze_bn=False).eval()
    return LoadedModel(model, "pixel", "deeplab_v2", num_classes, CAFFE_DEEPLAB_V2, "test", Path("none"))


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("voc")
    write_voc(root, train_ids=["2007_000032"], val_ids=VAL_IDS, seed=3, sizes=(24, 41))
    return root


@pytest.fixture(scope="module")
def v2_weights(tmp_path_factory) -> Path:
    """Random DeepLab v2 ResNet-101 weights without a provenance JSON (family default preprocessing)."""
    from converters.io import save_state_dict

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "v2.pth"
    save_state_dict(build_model("deeplabv2_resnet101", num_classes=21).state_dict(), path)
    return path


# ------------------------------------------------------------------------------ inference pieces
def test_parse_scales_and_scale_dimension() -> None:
    assert parse_scales("0.5:0.25:1.75") == (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
    assert parse_scales("1") == (1.0,)
    assert parse_scales("0.5,1,1.5") == (0.5, 1.0, 1.5)
    with pytest.raises(InferenceError):
        parse_scales("a:b")
    # a range never passes its stop (rounding the count gave 1, 1.3, 1.6); an exact stop is kept
    assert parse_scales("1:0.3:1.5") == (1.0, 1.3)
    assert parse_scales("1:0.25:2") == (1.0, 1.25, 1.5, 1.75, 2.0)
    assert parse_scales("0.5:0.1:0.8") == (0.5, 0.6, 0.7, 0.8)  # 0.3 / 0.1 is 2.9999999999999996 in floats
    assert parse_scales("1:0.5:1.2") == (1.0,)
    assert parse_scales([0.5, 1]) == (0.5, 1.0)
    # TF's scale_dimension: 513 at 1/4 -> 129 (the decoder grid), at 0.5 -> 257, at 1.75 -> 897
    assert [scale_dimension(513, s) for s in (0.25, 0.5, 1.75)] == [129, 257, 897]


@pytest.mark.parametrize("text", ["inf", "nan", "0", "-1", "0.5,inf", "1,-0.5", "1:0:2", "1:inf:2", "0:0.5:1",
                                  "1:0.5:nan", "2:0.5:1", "1:1e-320:2", "0.1:0.001:10", ",", [1.0, float("nan")]])
def test_parse_scales_refuses_non_finite_non_positive_and_too_many(text) -> None:
    with pytest.raises(InferenceError) as info:
        parse_scales(text)
    assert "\n" not in str(info.value)


def test_pad_is_bottom_right_with_the_mean() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    x = prepare_input(image, CAFFE_DEEPLAB_V2, InferenceConfig(protocol="pad", crop_size=33))
    assert tuple(x.shape) == (1, 3, 33, 33)
    torch.testing.assert_close(x[..., :20, :30], CAFFE_DEEPLAB_V2.apply(image))
    assert float(x[..., 20:, :].abs().max()) == 0.0 and float(x[..., :, 30:].abs().max()) == 0.0
    # a mean-coloured pixel preprocesses to 0: padding with 0 after preprocessing = padding with the mean
    mean_rgb = np.array(CAFFE_DEEPLAB_V2.mean[::-1], dtype=np.float32).reshape(1, 1, 3)
    assert float(CAFFE_DEEPLAB_V2.apply(mean_rgb).abs().max()) < 1e-4
    # bigger than the crop: padded to its own size, never cropped
    big = prepare_input(np.zeros((40, 10, 3), np.uint8), CAFFE_DEEPLAB_V2, InferenceConfig(crop_size=33))
    assert tuple(big.shape[-2:]) == (40, 33)


def test_pad_513_crop_back_equals_whole_image_for_a_pixelwise_model() -> None:
    lm = pixel_model()
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (37, 52, 3), dtype=np.uint8)
    whole = run_image(lm, image, InferenceConfig(protocol="whole"))
    padded = run_image(lm, image, InferenceConfig(protocol="pad", crop_size=513))
    assert tuple(padded.shape) == (21, 37, 52)
    torch.testing.assert_close(padded, whole, rtol=1e-5, atol=1e-6)
    # the crop is the top-left corner: the bottom-right one would differ
    x = prepare_input(image, lm.preprocessing, InferenceConfig(protocol="pad", crop_size=513))
    full = predict_probs(lm, x, InferenceConfig(protocol="pad", crop_size=513), (513, 513))[0]
    assert not torch.allclose(full[:, -37:, -52:], whole)


def test_stride8_scores_are_resized_with_align_corners() -> None:
    lm = LoadedModel(build_model("deeplabv2_resnet101", num_classes=5).eval(), "v2", "deeplab_v2", 5,
                     CAFFE_DEEPLAB_V2, "test", Path("none"))
    x = torch.randn(1, 3, 65, 65)
    probs = predict_probs(lm, x, InferenceConfig(protocol="whole"), (65, 65))
    with torch.no_grad():
        scores = lm.model(x)
    assert tuple(scores.shape[-2:]) == (9, 9)  # (65 - 1) / 8 + 1: Caffe's Interp grid
    expected = torch.softmax(F.interpolate(scores, size=(65, 65), mode="bilinear", align_corners=True), 1)
    torch.testing.assert_close(probs, expected)
    wrong = torch.softmax(F.interpolate(scores, size=(65, 65), mode="bilinear", align_corners=False), 1)
    assert not torch.allclose(probs, wrong, atol=1e-4)


def test_flip_averages_probabilities_of_the_flipped_image() -> None:
    lm = pixel_model(kernel=3)  # a 3x3 head is not left-right symmetric, so the flip matters
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (21, 30, 3), dtype=np.uint8)
    cfg = InferenceConfig(protocol="whole")
    plain = run_image(lm, image, cfg)
    flipped = run_image(lm, np.ascontiguousarray(image[:, ::-1]), cfg).flip(-1)
    both = run_image(lm, image, InferenceConfig(protocol="whole", flip=True))
    torch.testing.assert_close(both, (plain + flipped) / 2)
    assert not torch.allclose(plain, flipped)


def test_v3_multiscale_is_the_mean_of_single_scale_probabilities() -> None:
    torch.manual_seed(0)
    model = build_model("deeplabv3_mobilenetv2", num_classes=4).eval()
    from reproduce.inference import TF_ZERO_MEAN_UNIT_RANGE

    lm = LoadedModel(model, "mnv2", "deeplab_v3", 4, TF_ZERO_MEAN_UNIT_RANGE, "test", Path("none"))
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (45, 61, 3), dtype=np.uint8)
    scales = (0.5, 1.0, 1.5)
    multi = run_image(lm, image, InferenceConfig(protocol="pad", crop_size=65, scales=scales, flip=True))
    singles = [run_image(lm, image, InferenceConfig(protocol="pad", crop_size=65, scales=(s,), flip=True))
               for s in scales]
    torch.testing.assert_close(multi, sum(singles) / 3)
    assert torch.allclose(multi.sum(0), torch.ones(45, 61), atol=1e-5)
    # scale 1: the logits (stride 16) go to the image size with align_corners=True
    x = prepare_input(image, lm.preprocessing, InferenceConfig(crop_size=65))
    with torch.no_grad():
        logits = model(x)
    ref = torch.softmax(F.interpolate(logits, size=(65, 65), mode="bilinear", align_corners=True), 1)[0, :, :45, :61]
    torch.testing.assert_close(run_image(lm, image, InferenceConfig(crop_size=65)), ref)


def _tiny_v3(num_classes: int = 5) -> LoadedModel:
    from reproduce.inference import TF_ZERO_MEAN_UNIT_RANGE

    torch.manual_seed(0)
    model = build_model("deeplabv3_mobilenetv2", num_classes=num_classes).eval()
    return LoadedModel(model, "mnv2", "deeplab_v3", num_classes, TF_ZERO_MEAN_UNIT_RANGE, "test", Path("none"))


@pytest.mark.parametrize("family", ["deeplab_v2", "deeplab_v3"])
def test_labels_after_one_forward_are_the_argmax_of_the_resized_logits_without_a_softmax(family, monkeypatch) -> None:
    lm = pixel_model(kernel=3) if family == "deeplab_v2" else _tiny_v3()
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (45, 61, 3), dtype=np.uint8)  # not square: a swapped crop would show
    config = InferenceConfig(protocol="pad", crop_size=65)
    x = prepare_input(image, lm.preprocessing, config)
    with torch.no_grad():
        logits = F.interpolate(lm.model(x), size=(65, 65), mode="bilinear", align_corners=True)[0, :, :45, :61]
    expected = logits.argmax(0).to(torch.uint8)  # the official single-scale evaluations' argmax of the logits

    def no_softmax(*args, **kwargs):
        raise AssertionError("a softmax after a single forward")

    monkeypatch.setattr(torch, "softmax", no_softmax)
    labels = predict_labels(lm, x, config, (45, 61))
    assert labels.dtype == torch.uint8 and tuple(labels.shape) == (45, 61)
    torch.testing.assert_close(labels, expected, rtol=0, atol=0)
    monkeypatch.undo()
    # the same labels as the argmax of the probabilities, where the top two classes are apart
    probs = predict_probs(lm, x, config, (45, 61))[0]
    top2 = probs.topk(2, dim=0).values
    clear = (top2[0] - top2[1]) > 1e-6
    assert clear.float().mean() > 0.99
    assert torch.equal(labels[clear], labels_of(probs)[clear])


@pytest.mark.parametrize("config", [InferenceConfig(protocol="pad", crop_size=65, flip=True),
                                    InferenceConfig(protocol="pad", crop_size=65, scales=(0.5, 1.0))],
                         ids=["flip", "scales"])
def test_labels_after_several_forwards_are_the_argmax_of_the_mean_probabilities(config) -> None:
    lm = pixel_model(kernel=3)  # varied labels (a random tiny network predicts one class everywhere)
    lm.model.logits_stride = 1
    lm = dataclasses.replace(lm, family="deeplab_v3")  # v3 inference takes scales
    image = np.random.default_rng(6).integers(0, 256, (45, 61, 3), dtype=np.uint8)
    x = prepare_input(image, lm.preprocessing, config)
    mean = predict_probs(lm, x, config, (45, 61))[0]
    single = predict_probs(lm, x, InferenceConfig(protocol="pad", crop_size=65), (45, 61))[0]
    labels = predict_labels(lm, x, config, (45, 61))
    assert torch.equal(labels, mean.argmax(0).to(torch.uint8))
    assert not torch.equal(labels, single.argmax(0).to(torch.uint8))  # the average, not the first forward


def test_v2_refuses_outside_scales() -> None:
    with pytest.raises(InferenceError, match="inside the model"):
        run_image(pixel_model(), np.zeros((8, 8, 3), np.uint8), InferenceConfig(scales=(0.5, 1.0)))


# ------------------------------------------------------------------------------ evaluation loop
def _per_image(lm: LoadedModel, dataset, config: InferenceConfig) -> list[ConfusionMatrix]:
    mats = []
    for i in range(len(dataset)):
        image, label, _ = dataset.load(i)
        cm = ConfusionMatrix(21)
        cm.update(run_image(lm, image, config).argmax(0), label)
        mats.append(cm)
    return mats


def test_whole_set_matrix_is_the_sum_of_per_image_matrices_not_their_mean_miou(voc) -> None:
    lm = pixel_model(seed=4)
    config = InferenceConfig(protocol="pad", crop_size=65)
    dataset = ev.build_eval_dataset("voc12", voc, "val", "pad", 65)
    out = ev.evaluate(lm, dataset, ev.EvalOptions(config=config, progress=False))
    assert out["images"] == len(VAL_IDS) and out["crf"] is None
    mats = _per_image(lm, ev.build_eval_dataset("voc12", voc, "val", "pad", 65), config)
    np.testing.assert_array_equal(out["plain"].matrix, ConfusionMatrix.sum(mats).matrix)
    whole = out["plain"].compute()["miou"]
    per_image_mean = float(np.mean([m.compute()["miou"] for m in mats]))
    assert abs(whole - per_image_mean) > 0.05 * whole  # different numbers; we report the whole-set one
    # DataLoader workers change nothing
    dataset2 = ev.build_eval_dataset("voc12", voc, "val", "pad", 65)
    out2 = ev.evaluate(lm, dataset2, ev.EvalOptions(config=config, workers=2, progress=False))
    np.testing.assert_array_equal(out2["plain"].matrix, out["plain"].matrix)


def test_cocostuff_warp_protocol(tmp_path) -> None:
    base = write_cocostuff10k(tmp_path, n_train=1, n_test=2, sizes=(30, 50))
    dataset = ev.build_eval_dataset("cocostuff10k", base, "test", "warp", 65)
    image, label, meta = dataset.load(0)
    assert image.shape == (65, 65, 3) and label.shape == (65, 65) and meta["orig_size"] != (65, 65)
    lm = pixel_model(num_classes=182)
    out = ev.evaluate(lm, dataset, ev.EvalOptions(config=InferenceConfig(protocol="whole"), progress=False))
    assert out["plain"].matrix.shape == (182, 182)
    assert out["plain"].matrix.sum() == int(sum((dataset.load(i)[1] != 255).sum() for i in range(2)))
    with pytest.raises(InferenceError, match="COCO-Stuff 10k"):
        ev.build_eval_dataset("voc12", tmp_path, "val", "warp", 513)


def test_compile_auto_compiles_long_warp_runs_not_variable_size_ones(tmp_path, voc, monkeypatch) -> None:
    """warp gives one input shape, like pad: compile="auto" compiles a long run; "whole" on VOC never."""
    from reproduce import inference

    compiled: list = []

    def fake_compile(module, **kwargs):  # stands in for inductor: records the shapes it is given
        compiled.append([])
        shapes = compiled[-1]
        return lambda x: (shapes.append(tuple(x.shape)), module(x))[1]

    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(inference, "use_inductor_cache_dir", lambda: tmp_path)
    monkeypatch.setattr(inference, "COMPILE_MIN_IMAGES", 3)
    base = write_cocostuff10k(tmp_path, n_train=1, n_test=3, sizes=(30, 50))
    dataset = ev.build_eval_dataset("cocostuff10k", base, "test", "warp", 33)
    lm = pixel_model(num_classes=182, kernel=3)
    options = ev.EvalOptions(config=InferenceConfig(protocol="whole"), progress=False)
    engine = ev.Segmenter(lm, device="cpu", precision="fp32", compile="auto")
    out = ev.evaluate(engine, dataset, options)
    assert engine.compiled and compiled == [[(1, 3, 33, 33)] * 3]
    assert engine.describe()["forwards"] == {"compiled": 3, "eager": 0}
    plain = ev.evaluate(lm, ev.build_eval_dataset("cocostuff10k", base, "test", "warp", 33), options)
    np.testing.assert_array_equal(out["plain"].matrix, plain["plain"].matrix)
    # shorter than COMPILE_MIN_IMAGES: eager
    short = ev.Segmenter(lm, device="cpu", precision="fp32", compile="auto")
    ev.evaluate(short, dataset, ev.EvalOptions(config=InferenceConfig(protocol="whole"), progress=False, limit=2))
    assert not short.compiled and short.describe()["forwards"] == {"compiled": 0, "eager": 2}
    # "whole" on images of their own sizes is not one shape: never compiled by auto
    varied = ev.Segmenter(pixel_model(kernel=3), device="cpu", precision="fp32", compile="auto")
    ev.evaluate(varied, ev.build_eval_dataset("voc12", voc, "val", "pad", 65), options)
    assert not varied.compiled and len(compiled) == 1


def test_class_count_mismatch_is_an_error(voc) -> None:
    dataset = ev.build_eval_dataset("voc12", voc, "val", "pad", 65)
    with pytest.raises(InferenceError, match="182 classes but voc12 has 21"):
        ev.evaluate(pixel_model(num_classes=182), dataset, ev.EvalOptions(config=InferenceConfig()))


# ------------------------------------------------------------------------------ CLI: outputs and errors
def _cli(voc: Path, weights: Path, out: Path, *extra: str) -> list[str]:
    return ["--model", "deeplabv2_resnet101", "--weights", str(weights), "--dataset", "voc12", "--root", str(voc),
            "--split", "val", "--crop-size", "65", "--workers", "0", "--device", "cpu", "--quiet",
            "--out", str(out), *extra]


def test_cli_writes_json_and_markdown_with_the_published_number_and_difference(voc, v2_weights, tmp_path) -> None:
    out = tmp_path / "res"
    code = ev.main(_cli(voc, v2_weights, out, "--compare-to", "deeplab_v2_resnet101_voc12_val[5]",
                        "--compare-to", "kazuto1011_deeplab_v2:dataset=voc12,crf=false"))
    assert code == 0
    result = json.loads((out / "result.json").read_text())
    run = result["run"]
    assert run["images"] == len(VAL_IDS) and run["protocol"] == "pad" and run["crop_size"] == 65
    assert run["model"]["preprocessing_source"].startswith("default for deeplab_v2")
    assert run["model"]["preprocessing"]["channel_order"] == "BGR"
    plain = result["results"]["plain"]
    cm = np.array(plain["confusion_matrix"])
    assert cm.shape == (21, 21) and cm.sum() == plain["num_pixels"]
    from reproduce.metrics import scores_from_matrix

    assert plain["miou"] == pytest.approx(scores_from_matrix(cm)["miou"])
    assert result["results"]["crf"] is None
    official, kazuto = result["comparison"]
    assert official["row"] == "deeplab_v2_resnet101_voc12_val[5]" and official["miou"]["paper"] == 76.35
    assert official["miou"]["delta"] == pytest.approx(100 * plain["miou"] - 76.35, abs=1e-3)
    assert kazuto["pixel_acc"]["paper"] == 94.64  # all four metrics of a row that has them
    md = (out / "result.md").read_text()
    assert "76.35" in md and "| no CRF |" in md and "Δ mIoU" in md


def test_cli_uses_the_provenance_preprocessing(voc, v2_weights, tmp_path) -> None:
    import shutil

    weights = tmp_path / "w.pth"
    shutil.copy(v2_weights, weights)
    record = {"architecture": "deeplabv2_resnet101", "num_classes": 21,
              "preprocessing": {**CAFFE_DEEPLAB_V2.to_dict(), "mean": [1.0, 2.0, 3.0]}}
    weights.with_suffix(".json").write_text(json.dumps(record))
    out = tmp_path / "res"
    # no --model: the architecture comes from the provenance
    argv = _cli(voc, weights, out, "--limit", "1")
    assert ev.main(argv[2:]) == 0
    run = json.loads((out / "result.json").read_text())["run"]
    assert run["images"] == 1 and run["model"]["preprocessing"]["mean"] == [1.0, 2.0, 3.0]
    assert run["model"]["preprocessing_source"] == "provenance w.json"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"--root": "MISSING"}, "no VOC2012/JPEGImages folder"),
        ({"--weights": "MISSING.pth"}, "weights file not found"),
        ({"--compare-to": "no_such_table[0]"}, "unknown table"),
        ({"--compare-to": "deeplab_v2_resnet101_voc12_val:crf=maybe"}, "no row"),
        ({"--scales": "0.5,1"}, "DeepLab v2's MSC"),
        ({"--scales": "inf"}, "finite positive"),
        ({"--model": "deeplabv2_nope"}, "unknown model"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_1(voc, v2_weights, tmp_path, capsys, change, message) -> None:
    argv = _cli(voc, v2_weights, tmp_path / "res")
    for flag, value in change.items():
        value = str(tmp_path / value) if value.startswith("MISSING") else value
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    assert ev.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "res" / "result.json").exists()


def test_cli_usage_error_is_exit_2(capsys) -> None:
    assert ev.main(["--weights", "x.pth"]) == 2  # main returns the status (the shared runner), never raises
    assert "required" in capsys.readouterr().err


# ------------------------------------------------------------------------------ robustness: strict JSON, bad samples
def _no_nan(text: str) -> dict:
    def refuse(name: str) -> None:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def test_result_json_is_strict_with_null_for_undefined_scores(tmp_path) -> None:
    cm = ConfusionMatrix(21)
    cm.update(torch.zeros(4, 4, dtype=torch.long), torch.zeros(4, 4, dtype=torch.uint8))  # class 0 only
    scores = ev._scores(cm, "present_in_gt")
    assert any(isinstance(v, float) and np.isnan(v) for v in scores["iou"])  # undefined classes exist
    result = {"format": "deeplab-repro evaluation v1", "results": {"plain": scores, "crf": None},
              "run": {"x": float("inf")}}
    ev.write_results(tmp_path, {**result, "run": {**_minimal_run(), "x": float("inf")}}, "")
    text = (tmp_path / "result.json").read_text()
    record = _no_nan(text)
    assert "NaN" not in text and "Infinity" not in text
    iou = record["results"]["plain"]["iou"]
    assert iou[0] == 1.0 and iou[1] is None and record["run"]["x"] is None


def _minimal_run() -> dict:
    return {"model": {"name": "m", "weights": "w.pth", "preprocessing_source": "test", "build_kwargs": {}},
            "dataset": {"name": "voc12", "split": "val"}, "protocol": "pad", "crop_size": 65, "scales": [1.0],
            "flip": False, "images": 1, "classes": "present_in_gt", "device": "cpu", "seconds": 0.1}


def _voc_with_a_truncated_jpeg(tmp_path: Path) -> Path:
    root = tmp_path / "voc"
    write_voc(root, train_ids=["2007_000032"], val_ids=VAL_IDS, seed=3, sizes=(24, 41))
    jpeg = next(root.rglob(f"{VAL_IDS[1]}.jpg"))
    data = jpeg.read_bytes()
    jpeg.write_bytes(data[: len(data) // 2])
    return root


@pytest.mark.parametrize("workers", [0, 2])
def test_unreadable_image_stops_with_its_name_or_is_skipped_and_counted(tmp_path, workers) -> None:
    voc = _voc_with_a_truncated_jpeg(tmp_path)
    config = InferenceConfig(protocol="pad", crop_size=65)
    lm = pixel_model(seed=4)
    with pytest.raises(InferenceError, match=f"{VAL_IDS[1]}.jpg") as info:
        ev.evaluate(lm, ev.build_eval_dataset("voc12", voc, "val", "pad", 65),
                    ev.EvalOptions(config=config, workers=workers, progress=False))
    assert "\n" not in str(info.value)
    out = ev.evaluate(lm, ev.build_eval_dataset("voc12", voc, "val", "pad", 65),
                      ev.EvalOptions(config=config, workers=workers, progress=False, on_error="skip"))
    assert out["images"] == len(VAL_IDS) - 1 and len(out["skipped"]) == 1 and VAL_IDS[1] in out["skipped"][0]
    # the skipped image is not replaced by another one: the matrix is the sum over the readable three
    good = [i for i in VAL_IDS if i != VAL_IDS[1]]
    dataset = ev.build_eval_dataset("voc12", voc, "val", "pad", 65)
    mats = [m for i, m in zip(VAL_IDS, _per_image_safe(lm, dataset, config)) if i in good]
    np.testing.assert_array_equal(out["plain"].matrix, ConfusionMatrix.sum(mats).matrix)


def _per_image_safe(lm: LoadedModel, dataset, config: InferenceConfig) -> list:
    from reproduce.datasets import DatasetError

    mats = []
    for i in range(len(dataset)):
        try:
            image, label, _ = dataset.load(i)
        except DatasetError:
            mats.append(None)
            continue
        cm = ConfusionMatrix(21)
        cm.update(run_image(lm, image, config).argmax(0), label)
        mats.append(cm)
    return mats


def test_cli_on_error_skip_counts_in_the_result(tmp_path, v2_weights, capsys) -> None:
    voc = _voc_with_a_truncated_jpeg(tmp_path)
    out = tmp_path / "res"
    assert ev.main(_cli(voc, v2_weights, out)) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and f"{VAL_IDS[1]}.jpg" in err
    assert not (out / "result.json").exists()
    assert ev.main(_cli(voc, v2_weights, out, "--on-error", "skip", "--data-root", str(voc))) == 0
    run = _no_nan((out / "result.json").read_text())["run"]
    assert run["skipped_images"] == 1 and run["images"] == len(VAL_IDS) - 1
    assert run["engine"]["batchnorm_folded"] and run["engine"]["precision"] in ("fp32", "bf16")
    # the decoding the run chose, as reproduce.evaluate.default_prefetch says for this CPU run
    prefetch = ev.default_prefetch("cpu")
    assert run["pipeline"]["prefetch"] == prefetch
    assert run["pipeline"]["decode"] == ("inline" if prefetch == 0 else f"thread, {prefetch} ahead")
    assert "skipped (missing or unreadable): 1" in (out / "result.md").read_text()


def test_cli_missing_label_stops_naming_it_or_is_skipped_and_counted(tmp_path, v2_weights) -> None:
    from tests.inprocess import run_main

    root = tmp_path / "voc"
    write_voc(root, train_ids=["2007_000032"], val_ids=VAL_IDS, seed=3, sizes=(24, 41))
    label = next(root.rglob(f"SegmentationClass/{VAL_IDS[2]}.png"))
    label.unlink()
    out = tmp_path / "res"
    done = run_main(ev.main, _cli(root, v2_weights, out))
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert str(label) in done.stderr and "not found" in done.stderr
    assert not (out / "result.json").exists()
    done = run_main(ev.main, _cli(root, v2_weights, out, "--on-error", "skip"))
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and str(label) in warnings[0], done.stderr  # named once
    run = _no_nan((out / "result.json").read_text())["run"]
    assert run["skipped_images"] == 1 and run["images"] == len(VAL_IDS) - 1
    assert len(run["skipped"]) == 1 and str(label) in run["skipped"][0]
    assert "skipped (missing or unreadable): 1" in (out / "result.md").read_text()


def test_missing_file_in_the_api_is_counted_with_skip_and_raised_without(tmp_path) -> None:
    root = tmp_path / "voc"
    write_voc(root, train_ids=["2007_000032"], val_ids=VAL_IDS, seed=3, sizes=(24, 41))
    next(root.rglob(f"JPEGImages/{VAL_IDS[0]}.jpg")).unlink()
    config = InferenceConfig(protocol="pad", crop_size=65)
    lm = pixel_model(seed=4)
    from reproduce.datasets import DatasetError

    with pytest.raises(DatasetError, match=f"{VAL_IDS[0]}.jpg"):
        ev.build_eval_dataset("voc12", root, "val", "pad", 65)
    dataset = ev.build_eval_dataset("voc12", root, "val", "pad", 65, on_error="skip")
    out = ev.evaluate(lm, dataset, ev.EvalOptions(config=config, progress=False, on_error="skip"))
    assert out["images"] == len(VAL_IDS) - 1 and len(out["skipped"]) == 1 and VAL_IDS[0] in out["skipped"][0]
    # a reader that left a sample out cannot be evaluated strictly: the first missing file is the error
    dataset = ev.build_eval_dataset("voc12", root, "val", "pad", 65, on_error="skip")
    with pytest.raises(InferenceError, match=f"{VAL_IDS[0]}.jpg"):
        ev.evaluate(lm, dataset, ev.EvalOptions(config=config, progress=False))


@pytest.mark.parametrize("limit", [0, -1])
def test_limit_below_one_is_refused(voc, v2_weights, tmp_path, limit) -> None:
    from tests.inprocess import run_main

    done = run_main(ev.main, _cli(voc, v2_weights, tmp_path / "res", "--limit", str(limit)))
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("usage: ") and f"error: argument --limit: must be >= 1, got {limit}" in done.stderr
    assert not (tmp_path / "res").exists()
    dataset = ev.build_eval_dataset("voc12", voc, "val", "pad", 65)
    with pytest.raises(ValueError, match="limit must be >= 1"):
        ev.evaluate(pixel_model(), dataset, ev.EvalOptions(config=InferenceConfig(), limit=limit, progress=False))


def test_limit_counts_missing_files_among_the_first_n_only(tmp_path, v2_weights) -> None:
    """``--limit N`` is the first N samples of the split's list: a missing file among them is skipped and
    counted; one further down the list is neither evaluated, named nor counted."""
    from tests.inprocess import run_main

    root = tmp_path / "voc"
    write_voc(root, train_ids=["2007_000032"], val_ids=VAL_IDS, seed=3, sizes=(24, 41))
    early = next(root.rglob(f"SegmentationClass/{VAL_IDS[0]}.png"))
    late = next(root.rglob(f"JPEGImages/{VAL_IDS[-1]}.jpg"))
    early.unlink()
    late.unlink()
    out = tmp_path / "res"
    limit = len(VAL_IDS) - 1
    done = run_main(ev.main, _cli(root, v2_weights, out, "--on-error", "skip", "--limit", str(limit)))
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and str(early) in warnings[0], done.stderr
    run = _no_nan((out / "result.json").read_text())["run"]
    assert run["skipped_images"] == 1 and run["images"] == limit - 1, run
    # the first sample only: it is missing, so nothing is left to evaluate
    done = run_main(ev.main, _cli(root, v2_weights, tmp_path / "res1", "--on-error", "skip", "--limit", "1"))
    assert done.returncode == 1 and "the first 1 images of split" in done.stderr and "1 skipped" in done.stderr, \
        done.stderr
    # the API: the same count through EvalOptions(limit=...)
    dataset = ev.build_eval_dataset("voc12", root, "val", "pad", 65, on_error="skip")
    api = ev.evaluate(pixel_model(seed=4), dataset, ev.EvalOptions(config=InferenceConfig(protocol="pad", crop_size=65),
                                                                   progress=False, on_error="skip", limit=2))
    assert api["images"] == 1 and len(api["skipped"]) == 1 and VAL_IDS[0] in api["skipped"][0]


def test_limit_counts_a_sample_listed_twice_once_per_line(tmp_path) -> None:
    """A split list naming a sample twice: ``limit=N`` still takes the first N lines, never more images."""
    root = tmp_path / "voc"
    write_voc(root, train_ids=["2007_000032"], val_ids=VAL_IDS, seed=3, sizes=(24, 41))
    split = next(root.rglob("ImageSets/Segmentation/val.txt"))
    split.write_text("\n".join([VAL_IDS[0], VAL_IDS[1], VAL_IDS[0], *VAL_IDS[2:]]) + "\n")
    dataset = ev.build_eval_dataset("voc12", root, "val", "pad", 65)
    assert len(dataset) == len(VAL_IDS) + 1
    for limit, images in ((1, 1), (2, 2), (3, 3), (100, len(VAL_IDS) + 1)):
        assert ev._limited(dataset, limit) == images, limit
    api = ev.evaluate(pixel_model(seed=4), dataset, ev.EvalOptions(config=InferenceConfig(protocol="pad", crop_size=65),
                                                                   progress=False, limit=2))
    assert api["images"] == 2, api["images"]


def test_limit_without_skip_stops_only_on_files_missing_among_the_first_n(tmp_path, v2_weights) -> None:
    """Without ``--on-error skip``, a missing file stops the run only when it is among the first N images
    ``--limit N`` evaluates; one further down the list is not read, so it does not matter."""
    from tests.inprocess import run_main

    root = tmp_path / "voc"
    write_voc(root, train_ids=["2007_000032"], val_ids=VAL_IDS, seed=3, sizes=(24, 41))
    late = next(root.rglob(f"SegmentationClass/{VAL_IDS[-1]}.png"))
    late.unlink()
    done = run_main(ev.main, _cli(root, v2_weights, tmp_path / "a", "--limit", str(len(VAL_IDS) - 1)))
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stderr
    run = _no_nan((tmp_path / "a" / "result.json").read_text())["run"]
    assert run["images"] == len(VAL_IDS) - 1 and run["skipped_images"] == 0
    done = run_main(ev.main, _cli(root, v2_weights, tmp_path / "b", "--limit", str(len(VAL_IDS))))
    assert done.returncode == 1 and done.stderr.startswith("error: dataset voc12: ") and str(late) in done.stderr, \
        done.stderr
    assert done.stderr.count("\n") == 1 and not (tmp_path / "b" / "result.json").exists()
