"""``hubconf.py`` through ``torch.hub`` with ``source="local"`` (no network)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from converters.io import save_state_dict
from converters.releases import CAFFE_RELEASES, TF_RELEASES
from reference_models import build_model, list_models
from reference_models import registry as model_registry

REPO = str(Path(__file__).resolve().parent.parent)


def entry_points() -> list[str]:
    """What ``torch.hub.list`` reports (it takes GitHub repositories only): the public callables of hubconf."""
    module = torch.hub._import_module("hubconf", str(Path(REPO) / "hubconf.py"))
    return sorted(f for f in dir(module) if callable(getattr(module, f)) and not f.startswith("_"))


def test_every_registered_model_is_an_entry_point():
    assert entry_points() == list_models()


def test_a_newly_registered_model_appears_without_editing_hubconf():
    name = "deeplabv3_tiny_hubtest"
    model_registry.register_model(name)(lambda *, num_classes, **kw: build_model("deeplabv3_tiny",
                                                                                   num_classes=num_classes, **kw))
    try:
        assert name in entry_points()
        model = torch.hub.load(REPO, name, source="local", num_classes=3)
        assert model(torch.zeros(1, 3, 33, 33)).shape[1] == 3
    finally:
        del model_registry._MODELS[name]


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_file_loads_strictly(tmp_path, suffix):
    torch.manual_seed(0)
    ref = build_model("deeplabv3plus_tiny", num_classes=5).eval()
    path = tmp_path / f"w{suffix}"
    save_state_dict(ref.state_dict(), path)
    model = torch.hub.load(REPO, "deeplabv3plus_tiny", source="local", weights=str(path), num_classes=5)
    assert not model.training
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))


def test_provenance_gives_classes_and_preprocessing(tmp_path):
    ref = build_model("deeplabv3plus_tiny", num_classes=7)
    path = tmp_path / "w.pth"
    save_state_dict(ref.state_dict(), path)
    pp = TF_RELEASES["deeplabv3_pascal_train_aug_2018_01_04"].preprocessing
    path.with_suffix(".json").write_text(json.dumps({"architecture": "deeplabv3plus_tiny", "num_classes": 7,
                                                     "preprocessing": pp.to_dict()}))
    model = torch.hub.load(REPO, "deeplabv3plus_tiny", source="local", weights=str(path))
    assert model.preprocessing == pp
    with pytest.raises(ValueError, match="provenance says deeplabv3plus_tiny, not deeplabv3_tiny"):
        torch.hub.load(REPO, "deeplabv3_tiny", source="local", weights=str(path))


def test_wrong_shapes_and_pickles_are_refused(tmp_path):
    path = tmp_path / "w.pth"
    save_state_dict(build_model("deeplabv3plus_tiny", num_classes=5).state_dict(), path)
    with pytest.raises(ValueError, match="does not fit deeplabv3_tiny"):
        torch.hub.load(REPO, "deeplabv3_tiny", source="local", weights=str(path), num_classes=5)
    evil = tmp_path / "evil.pth"
    torch.save({"x": object()}, evil)  # not loadable with weights_only=True
    with pytest.raises(ValueError, match="cannot read weights"):
        torch.hub.load(REPO, "deeplabv3_tiny", source="local", weights=str(evil))


def test_missing_release_says_how_to_get_it(tmp_path):
    release = CAFFE_RELEASES["vgg16_voc12"]
    with pytest.raises(ValueError) as info:
        torch.hub.load(REPO, release.arch, source="local", weights=release.name, models_dir=tmp_path)
    msg = str(info.value)
    assert "\n" not in msg and str(release.converted_path(tmp_path)) in msg
    assert f"python -m reproduce.download {release.name}" in msg and "python -m converters.caffe2torch --dataset vgg16_voc12" in msg
    with pytest.raises(ValueError, match="holds deeplabv2_vgg16 weights, not deeplabv2_resnet101_msc"):
        torch.hub.load(REPO, "deeplabv2_resnet101_msc", source="local", weights=release.name, models_dir=tmp_path)
    with pytest.raises(ValueError, match="is the resnet_v1_101 backbone"):
        torch.hub.load(REPO, "deeplabv3_resnet101", source="local", weights="resnet_v1_101_2016_08_28")


def test_release_name_resolves_to_the_converted_file(tmp_path, monkeypatch):
    release = TF_RELEASES["deeplabv3_mnv2_pascal_train_aug_2018_01_29"]  # the smallest release model
    torch.manual_seed(1)
    ref = build_model(release.arch, num_classes=release.num_classes).eval()
    save_state_dict(ref.state_dict(), release.converted_path(tmp_path))
    monkeypatch.setenv("DEEPLAB_MODELS_DIR", str(tmp_path))
    model = torch.hub.load(REPO, release.arch, source="local", weights=release.name)
    assert model.preprocessing == release.preprocessing
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))


@pytest.mark.slow
def test_deeplabv2_resnet101_msc_from_the_voc12_release(tmp_path):
    """The documented call: torch.hub.load(repo, "deeplabv2_resnet101_msc", weights="voc12", source="local")."""
    release = CAFFE_RELEASES["voc12"]
    torch.manual_seed(2)
    ref = build_model(release.arch, num_classes=release.num_classes).eval()
    save_state_dict(ref.state_dict(), release.converted_path(tmp_path))
    model = torch.hub.load(REPO, "deeplabv2_resnet101_msc", source="local", weights="voc12", models_dir=tmp_path)
    x = torch.randn(1, 3, 49, 49)
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))
