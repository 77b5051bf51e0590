"""reproduce.inference.Segmenter: folded BatchNorm equals the model, state dict untouched, precision choice."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from reference_models import build_model
from reproduce import inference
from reproduce.inference import (
    InferenceConfig,
    InferenceError,
    Segmenter,
    choose_precision,
    fuse_for_inference,
    load_model,
    run_image,
)


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics, so folding them wrongly changes the output."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=gen) * 0.4 - 0.2)
    return model.eval()


@pytest.mark.parametrize("name, size", [("deeplabv3plus_tiny", 65), ("deeplabv3_tiny", 33),
                                        ("deeplabv2_tiny_msc", 65), ("deeplabv2_resnet101", 41),
                                        ("deeplabv3plus_resnet50", 49), ("deeplabv3_mobilenetv2", 33),
                                        # the peers' flavours (imported checkpoints) run on the same engine
                                        ("vainf_deeplabv3plus_mobilenet", 47),
                                        ("torchvision_deeplabv3_mobilenet_v3_large", 45),
                                        ("leimao_deeplabv3_mobilenet_v2", 43),
                                        ("jfzhang95_deeplabv3plus_mobilenetv2", 49),
                                        ("torchvision_deeplabv3_resnet50", 33), ("deeplabv3plus_drn_d_54", 41)])
def test_folded_engine_equals_the_model_and_leaves_its_state_dict(name: str, size: int) -> None:
    torch.manual_seed(0)
    model = _randomize_bn(build_model(name, num_classes=5))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(1, 3, size, size)
    with torch.inference_mode():
        ref = model(x)
    fused = fuse_for_inference(model)
    convs_after_bn = [n for n, m in fused.named_modules() if isinstance(m, nn.BatchNorm2d)]
    # only BatchNorms that follow no convolution may remain (none in these models)
    assert convs_after_bn == []
    engine = Segmenter.from_module(model, device="cpu", precision="fp32")
    out = engine.forward(x)
    assert out.shape == ref.shape
    assert float((out - ref).abs().max() / ref.abs().max()) < 1e-5
    # the network ran channels_last; its logits come back NCHW (softmax over channels_last is ~3x slower)
    assert engine.memory_format == "channels_last" and out.is_contiguous()
    # the model one saves and loads is untouched: same keys, same values
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == any(
        isinstance(m, nn.BatchNorm2d) for m in build_model(name, num_classes=5).modules())


def test_resnet_v2_preactivations_stay_and_channels_last_runs() -> None:
    from reference_models.resnet_tf import ResNetTF

    torch.manual_seed(0)
    trunk = _randomize_bn(ResNetTF(depth=50, version=2, output_stride=16))
    fused = fuse_for_inference(trunk)
    kept = [n for n, m in fused.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert kept and all(n.endswith("preact") or n == "postnorm" for n in kept)
    x = torch.randn(1, 3, 37, 37)
    with torch.inference_mode():
        ref = trunk(x)["out"]
        out = fused.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))["out"]
    assert float((out - ref).abs().max() / ref.abs().max()) < 1e-5


def test_auto_precision_needs_native_and_faster_bf16(monkeypatch) -> None:
    cpu = torch.device("cpu")
    monkeypatch.setattr(inference, "cpu_flags", lambda: {"avx2", "fma"})
    assert choose_precision("auto", cpu)[0] == "fp32"
    monkeypatch.setattr(inference, "cpu_flags", lambda: {"avx512f", "amx_bf16", "amx_tile"})
    assert choose_precision("auto", cpu) == ("bf16", "auto: CPU has AMX (amx_bf16)")
    # avx512_bf16 without AMX: the probe decides (a VM hiding AMX runs bf16 slower than fp32)
    monkeypatch.setattr(inference, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    monkeypatch.setattr(inference, "_probe_cpu_bf16", lambda: {"fp32_ms": 10.0, "bf16_ms": 20.0, "speedup": 0.5})
    precision, why = choose_precision("auto", cpu)
    assert precision == "fp32" and "not faster" in why and "20.0 ms bf16" in why
    monkeypatch.setattr(inference, "_probe_cpu_bf16", lambda: {"fp32_ms": 20.0, "bf16_ms": 8.0, "speedup": 2.5})
    assert choose_precision("auto", cpu)[0] == "bf16"
    assert choose_precision("bf16", cpu) == ("bf16", "asked for")
    with pytest.raises(InferenceError, match="fp16 is for CUDA"):
        choose_precision("fp16", cpu)
    with pytest.raises(InferenceError, match="precision must be one of"):
        choose_precision("int8", cpu)


def test_auto_precision_on_this_machine_is_honest() -> None:
    """Whatever this CPU is, auto says why; where it picks bf16 the probe measured bf16 faster."""
    precision, why = choose_precision("auto", torch.device("cpu"))
    assert why.startswith("auto: ")
    flags = inference.cpu_flags()
    if precision == "bf16":
        assert "amx_bf16" in flags or inference._probe_cpu_bf16()["speedup"] >= 1.3
    elif "avx512_bf16" in flags and "amx_bf16" not in flags:
        assert "probe" in why


def test_auto_precision_on_cuda_asks_the_given_device_for_native_bf16(monkeypatch) -> None:
    """bf16 only from compute capability 8.0, asked of the device given; is_bf16_supported (emulation) is no proof."""
    asked: list = []
    capability = {"value": (7, 5)}  # T4: torch says bf16 is "supported" (emulated), and it is slow
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability",
                        lambda device=None: (asked.append(device), capability["value"])[1])
    cuda1 = torch.device("cuda:1")
    precision, why = choose_precision("auto", cuda1)
    assert precision == "fp16" and "sm75" in why and "cuda:1" in why and why.startswith("auto: ")
    assert len(asked) == 1 and torch.device(asked[0]).index == 1
    capability["value"] = (7, 0)  # V100
    assert choose_precision("auto", cuda1)[0] == "fp16"
    capability["value"] = (8, 0)  # A100
    precision, why = choose_precision("auto", cuda1)
    assert precision == "bf16" and "sm80" in why and "native bf16" in why
    capability["value"] = (8, 6)
    assert choose_precision("auto", cuda1)[0] == "bf16"
    assert all(torch.device(d).index == 1 for d in asked)
    capability["value"] = (7, 5)
    assert choose_precision("bf16", cuda1) == ("bf16", "asked for")  # an explicit choice is honoured


def _tiny_weights(tmp_path: Path, seed: int = 3) -> Path:
    """Random deeplabv3plus_tiny weights (non-trivial BatchNorm) with a provenance JSON."""
    from converters.io import save_state_dict

    torch.manual_seed(seed)
    model = _randomize_bn(build_model("deeplabv3plus_tiny", num_classes=4))
    weights = tmp_path / "tiny.pth"
    save_state_dict(model.state_dict(), weights)
    weights.with_suffix(".json").write_text(json.dumps({"architecture": "deeplabv3plus_tiny", "num_classes": 4,
                                                        "preprocessing": {"channel_order": "RGB",
                                                                          "mean": [127.5] * 3,
                                                                          "std": [127.5] * 3}}))
    return weights


def test_segmenter_from_weights_predicts_like_the_plain_model(tmp_path: Path) -> None:
    weights = _tiny_weights(tmp_path)
    config = InferenceConfig(protocol="pad", crop_size=49)
    engine = Segmenter(weights, device="cpu", precision="fp32", config=config)  # fp32 bounds (auto: bf16 on AMX)
    assert engine.describe()["batchnorm_folded"] and engine.memory_format == "channels_last"
    image = np.random.default_rng(0).integers(0, 256, (40, 45, 3), dtype=np.uint8)
    plain = run_image(load_model(None, weights), image, config)
    scores = engine.scores(image)
    torch.testing.assert_close(scores, plain, rtol=1e-4, atol=1e-5)
    label = engine.predict(image)
    assert label.dtype == np.uint8 and label.shape == (40, 45)
    top2 = plain.topk(2, dim=0).values
    clear = (top2[0] - top2[1]) > 1e-4
    np.testing.assert_array_equal(label[clear.numpy()], plain.argmax(0).numpy()[clear.numpy()])


@pytest.mark.parametrize("kind", ["keras_h5", "keras_zip", "pickle"])
def test_foreign_weight_files_are_named_never_unpickled(tmp_path: Path, kind: str) -> None:
    import zipfile

    if kind == "keras_h5":
        h5py = pytest.importorskip("h5py")
        path = tmp_path / "model.weights.h5"
        with h5py.File(path, "w") as fh:
            fh["layers/dense/vars/0"] = np.zeros(3, np.float32)
        expect = "Keras/HDF5 weights file"
    elif kind == "keras_zip":
        path = tmp_path / "model.keras"
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("config.json", "{}")
        expect = "whole Keras model"
    else:
        path = tmp_path / "model.pth"
        torch.save({"config": InferenceConfig()}, path)  # a pickled object, not a tensor dict
        expect = "never unpickled"
    with pytest.raises(InferenceError) as info:
        load_model("deeplabv3plus_tiny", path)
    message = str(info.value)
    assert expect in message and "\n" not in message and str(path) in message
    assert "weights_only=False" not in message and "caffe2torch" in message


@pytest.mark.parametrize("name, size, scales", [("deeplabv2_tiny_msc", 57, (1.0,)),
                                                ("deeplabv3plus_tiny", 49, (0.75, 1.0))])
def test_flip_pair_runs_as_one_batch_with_the_numbers_of_two_calls(name: str, size: int, scales) -> None:
    """The engine runs an image and its mirror as a batch of 2; probabilities equal two separate calls."""
    from reproduce.inference import predict_probs, scale_dimension

    torch.manual_seed(5)
    model = build_model(name, num_classes=4)
    if any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        _randomize_bn(model)
    engine = Segmenter.from_module(model, device="cpu", precision="fp32")
    batches = []
    inner = engine.lm.runner
    engine.lm.runner = lambda t: (batches.append(t.shape[0]), inner(t))[1]
    x = torch.randn(1, 3, size, size)
    config = InferenceConfig(protocol="whole", scales=scales, flip=True)
    probs = predict_probs(engine.lm, x, config, (size - 3, size - 2))
    assert batches == [2] * len(scales)
    expected = 0
    with torch.inference_mode():
        for s in scales:
            xs = x if s == 1.0 else torch.nn.functional.interpolate(
                x, size=(scale_dimension(size, s),) * 2, mode="bilinear", align_corners=True)
            for flipped in (False, True):
                out = model.eval()(xs.flip(-1) if flipped else xs)
                if engine.lm.family == "deeplab_v3":
                    grid = scale_dimension(size, max(1.0, s) / engine.lm.logits_stride)
                    out = torch.nn.functional.interpolate(out, size=(grid, grid), mode="bilinear", align_corners=True)
                out = torch.nn.functional.interpolate(out, size=(size, size), mode="bilinear", align_corners=True)
                p = torch.softmax(out, dim=1)
                expected = expected + (p.flip(-1) if flipped else p)
    expected = (expected / (2 * len(scales)))[..., :size - 3, :size - 2]
    torch.testing.assert_close(probs, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fuse", [True, False])
def test_segmenter_leaves_the_loaded_model_it_is_given(tmp_path: Path, fuse: bool) -> None:
    """Segmenter(lm) works on a copy: the caller's model keeps its BatchNorms, layout and eager fp32 path."""
    weights = _tiny_weights(tmp_path)
    lm = load_model(None, weights)
    model, keys = lm.model, list(lm.model.state_dict())
    config = InferenceConfig(protocol="pad", crop_size=49)
    image = np.random.default_rng(1).integers(0, 256, (40, 45, 3), dtype=np.uint8)
    plain = run_image(lm, image, config)
    engine = Segmenter(lm, device="cpu", precision="fp32", fuse=fuse, config=config)
    assert lm.runner is None and lm.model is model and list(lm.model.state_dict()) == keys
    assert any(isinstance(m, nn.BatchNorm2d) for m in lm.model.modules())
    conv_weights = [m.weight for m in lm.model.modules() if isinstance(m, nn.Conv2d)]
    assert conv_weights and all(w.is_contiguous() for w in conv_weights)  # not turned channels_last
    build_model("deeplabv3plus_tiny", num_classes=4).load_state_dict(lm.model.state_dict(), strict=True)
    assert engine.lm is not lm and engine.lm.runner is not None and engine.lm.model is engine.net
    # the caller's LoadedModel still runs the plain model: the very same numbers as before the engine existed
    torch.testing.assert_close(run_image(lm, image, config), plain, rtol=0, atol=0)
    # and the engine predicts like it
    torch.testing.assert_close(engine.scores(image), plain, rtol=1e-4, atol=1e-5)
    assert engine.describe()["batchnorm_folded"] is fuse


@pytest.mark.parametrize("tracer", ["recorder", "dynamo"])
def test_compiled_engine_compiles_the_first_shape_only(monkeypatch, tmp_path: Path, tracer: str) -> None:
    """Inputs of new sizes run the fused module eagerly instead of recompiling; describe() counts both.

    ``recorder``: torch.compile replaced by a wrapper recording the shapes it is called with (one shape =
    one compile with ``dynamic=False``); ``dynamo``: traced by dynamo for real (a counting backend instead of
    inductor), counting the graphs it makes.
    """
    graphs: list = []  # one entry per graph made (dynamo) or per shape seen (recorder)
    requested: list[dict] = []
    real_compile = torch.compile

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    def fake_compile(module, **kwargs):
        requested.append(kwargs)
        if tracer == "dynamo":
            return real_compile(module, backend=counting_backend, dynamic=kwargs.get("dynamic"))

        def recorder(x):
            if tuple(x.shape) not in graphs:
                graphs.append(tuple(x.shape))
            return module(x)
        return recorder

    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(inference, "use_inductor_cache_dir", lambda: tmp_path)
    dynamo = importlib.import_module("torch._dynamo") if tracer == "dynamo" else None
    if dynamo is not None:
        dynamo.reset()
    try:
        torch.manual_seed(0)
        model = _randomize_bn(build_model("deeplabv3_tiny", num_classes=5))
        engine = Segmenter.from_module(model, device="cpu", precision="fp32", compile=True)
        assert len(requested) == 1 and requested[0]["dynamic"] is False and engine.compile_shapes == 1
        gen = torch.Generator().manual_seed(1)
        inputs = [torch.randn(1, 3, size, size + 4, generator=gen) for size in (33, 41, 49)]
        outs = [engine.forward(inputs[0])]
        traced = len(graphs)
        assert traced >= 1  # the first shape is compiled
        outs += [engine.forward(x) for x in (*inputs[1:], inputs[0])]
        assert len(graphs) == traced  # other shapes ran eager; the first shape again reused its graph
        if tracer == "recorder":
            assert graphs == [(1, 3, 33, 37)]
        with torch.inference_mode():
            for x, out in zip([*inputs, inputs[0]], outs):
                ref = model(x)
                assert out.shape == ref.shape
                assert float((out - ref).abs().max() / ref.abs().max()) < 1e-5
        described = engine.describe()
        assert described["compiled"] and described["forwards"] == {"compiled": 2, "eager": 2}
        assert described["compiled_shapes"] == [[1, 3, 33, 37]]
        # multi-scale: one graph per scale of the first image
        multi = Segmenter.from_module(model, device="cpu", precision="fp32", compile=True,
                                      config=InferenceConfig(scales=(0.75, 1.0, 1.25)))
        assert multi.compile_shapes == 3
    finally:
        if dynamo is not None:
            dynamo.reset()


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
def test_compiled_engine_freezes_the_weights(monkeypatch, tmp_path: Path) -> None:
    """compile=True really freezes: inductor packs every convolution's weights for oneDNN and fuses ReLU and the
    residual add into the convolutions. With the settings passed only as ``torch.compile(options=...)``, dynamo
    lifted the weights as graph inputs and inductor's freezing found none: no packing, no fusion (the engine's
    compiled forward was no faster than its eager one). The settings do not leak out of the call."""
    from torch._dynamo.utils import counters
    from torch._inductor import config as inductor_config

    monkeypatch.setenv(inference.CACHE_DIR_ENV, str(tmp_path / "cache"))
    importlib.import_module("torch._dynamo").reset()
    counters.clear()
    torch.manual_seed(0)
    model = _randomize_bn(build_model("deeplabv3_tiny", num_classes=5))
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    engine = Segmenter.from_module(model, device="cpu", precision="fp32", compile=True)
    x = torch.randn(1, 3, 33, 37, generator=torch.Generator().manual_seed(1))
    out = engine.forward(x)
    assert inductor_config.freezing is False  # set around the compiled call only
    packed = counters["inductor"]["mkldnn_conv_weight_pack_matcher_count"]
    fused = sum(v for k, v in counters["inductor"].items() if k.startswith("mkldnn_") and "fusion_matcher_count" in k)
    assert packed == convs, dict(counters["inductor"])
    assert fused > 0, dict(counters["inductor"])
    with torch.inference_mode():
        ref = model(x)
    assert float((out - ref).abs().max() / ref.abs().max()) < 1e-5
    assert engine.describe()["forwards"] == {"compiled": 1, "eager": 0}


def test_memory_format_auto_is_channels_last_on_cpu_and_with_reduced_precision_on_cuda() -> None:
    from reproduce.inference import InferenceError, choose_memory_format

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert choose_memory_format("auto", cpu, "fp32")[0] == "channels_last"
    assert choose_memory_format("auto", cpu, "bf16")[0] == "channels_last"
    assert choose_memory_format("auto", cuda, "fp16")[0] == "channels_last"
    assert choose_memory_format("auto", cuda, "bf16")[0] == "channels_last"
    fmt, why = choose_memory_format("auto", cuda, "fp32")
    assert fmt == "contiguous" and "fp32" in why
    assert choose_memory_format("auto", torch.device("mps"), "fp32")[0] == "contiguous"
    assert choose_memory_format("contiguous", cpu, "fp32") == ("contiguous", "asked for")
    assert choose_memory_format("channels_last", cuda, "fp32") == ("channels_last", "asked for")
    with pytest.raises(InferenceError, match="memory format must be one of"):
        choose_memory_format("nhwc", cpu, "fp32")
    engine = Segmenter.from_module(build_model("deeplabv3_tiny", num_classes=3).eval(), device="cpu")
    assert engine.describe()["memory_format"] == "channels_last"
    assert engine.describe()["memory_format_reason"].startswith("auto: ")
