"""Parity against BVLC Caffe 1.0 itself (Debian 11's python3-caffe), on caffemodels Caffe wrote.

Runs in ``tox -e caffe`` (``DEEPLAB_CAFFE=1``), which ``.ci/run`` runs too: it builds a Debian 11
root with debootstrap (``tools/caffe_root.py``; needs root and Debian's package registry), in
which Caffe builds each official single-scale topology, fills it with realistic random weights,
writes the caffemodel with ``net.save`` and runs the forward pass. We convert *that* file with
``caffe2torch`` and run the same inputs through our model. BVLC Caffe has no ``Interp`` layer (a
DeepLab-fork addition), so the 3-scale net stays checked against OpenCV (test_caffe_parity.py);
OpenCV is also run here on Caffe's own files, to show the two references agree.

Bound as for OpenCV: max|ours - caffe| / max|caffe| <= 2e-3 and argmax agreement >= 99.9 %
on the pixels whose top-2 margin exceeds the float noise.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from converters import caffe2torch
from converters.caffe import parity, topology
from converters.caffe.synth import write_prototxt
from converters.io import load_state_dict
from reference_models import build_model

if os.environ.get("DEEPLAB_CAFFE") != "1":
    pytest.skip("Caffe-engine parity runs in `tox -e caffe` (DEEPLAB_CAFFE=1; builds a Debian 11 root with "
                "BVLC Caffe, needs root)", allow_module_level=True)

REPO = Path(__file__).resolve().parent.parent
MAX_REL = 2e-3
MIN_AGREE = 0.999


def _caffe_root_module():
    spec = importlib.util.spec_from_file_location("caffe_root", REPO / "tools" / "caffe_root.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def caffe_root() -> tuple[object, Path]:
    tool = _caffe_root_module()
    try:
        return tool, tool.ensure_root()
    except tool.CaffeRootUnavailable as exc:
        if os.environ.get("DEEPLAB_CAFFE_REQUIRED") == "1":
            pytest.fail(f"Caffe root unavailable: {exc}")
        pytest.skip(f"Caffe root unavailable: {exc}")


def run_caffe(caffe_root, topo: str, num_classes: int, sizes, seed: int):
    """Caffe builds ``topo``, writes its caffemodel and runs ``sizes``; returns (net, caffemodel, {size: (x, y)})."""
    tool, root = caffe_root
    net = topology.build_net(topo, num_classes=num_classes, input_hw=sizes[0])
    work = Path(tempfile.mkdtemp(prefix="deeplab-caffe-", dir=root / "tmp"))
    try:
        write_prototxt(topology.opencv_deploy(net, sizes[0]), work / "deploy.prototxt")
        shutil.copy(REPO / "tests" / "caffe_side.py", work / "caffe_side.py")
        inputs = {}
        for k, (h, w) in enumerate(sizes):
            x = parity.random_input(h, w, seed=seed + 17 * k)
            np.save(work / f"input_{k:02d}.npy", x)
            inputs[(h, w)] = (k, x)
        inside = "/" + str(work.relative_to(root))
        proc = tool.run_in_root(root, ["python3", f"{inside}/caffe_side.py", inside, topology.output_blob(topo),
                                       str(seed)])
        assert proc.returncode == 0, proc.stderr[-2000:]
        results = {hw: (x, np.load(work / f"output_{k:02d}.npy")) for hw, (k, x) in inputs.items()}
        keep = Path(tempfile.mkdtemp(prefix="caffe-written-"))
        model = shutil.copy(work / "caffe_written.caffemodel", keep / "caffe_written.caffemodel")
        return net, Path(model), results
    finally:
        shutil.rmtree(work, ignore_errors=True)


def check(ours: np.ndarray, ref: np.ndarray) -> dict:
    assert ours.shape == ref.shape
    result = parity.compare(ours, ref)
    top2 = np.sort(ref, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > MAX_REL * np.abs(ref).max()
    result["argmax_agreement_clear"] = float((ours.argmax(1) == ref.argmax(1))[clear].mean())
    assert result["max_rel"] <= MAX_REL, result
    assert result["argmax_agreement_clear"] >= MIN_AGREE, result
    return result


CASES = [
    # (Caffe topology, our registered model, classes, input sizes)
    ("resnet101", "deeplabv2_resnet101", 21, [(321, 321), (97, 100)]),
    ("resnet101_init", "deeplabv1_resnet101", 91, [(100, 97)]),
    ("vgg16_aspp", "deeplabv2_vgg16", 21, [(161, 161), (97, 100)]),
    ("vgg16_largefov", "deeplabv2_vgg16_largefov", 21, [(100, 100), (97, 97)]),
]


@pytest.mark.parametrize("topo,arch,num_classes,sizes", CASES, ids=[c[1] for c in CASES])
def test_converted_model_matches_caffe(caffe_root, tmp_path, topo, arch, num_classes, sizes):
    net, caffemodel, results = run_caffe(caffe_root, topo, num_classes, sizes, seed=len(topo))
    try:
        out = tmp_path / "w.pth"
        assert caffe2torch.main(["--caffemodel", str(caffemodel), "--arch", arch, "--num-classes",
                                 str(num_classes), "--out", str(out), "--quiet"]) == 0
        model = build_model(arch, num_classes=num_classes)
        model.load_state_dict(load_state_dict(out), strict=True)
        model.eval()
        for (h, w), (x, ref) in results.items():
            with torch.no_grad():
                ours = model(torch.from_numpy(x)).numpy()
            result = check(ours, ref)
            print(f"{arch} {h}x{w}: ours vs Caffe {result}")
            # The other reference, OpenCV's importer, on the same Caffe-written file.
            cv = parity.opencv_forward(net, caffemodel, x, topology.output_blob(topo))
            print(f"{arch} {h}x{w}: OpenCV vs Caffe {check(cv, ref)}")
    finally:
        shutil.rmtree(caffemodel.parent, ignore_errors=True)
