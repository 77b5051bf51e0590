"""The main job on its embedded default: official-format caffemodels -> PyTorch, with parity proof.

No download is possible or needed: the demo writes random-weight caffemodels in
the exact official format and topology (the 3-scale ResNet-101 of the ``voc12``
release, its COCO ``init``, and the VGG-16 ASPP-L), converts each with
``converters/caffe2torch.py`` exactly as a user would, runs the same input
through OpenCV's independent Caffe engine and through our model, and prints a
parity report (JSON beside it). With the real files, run the converter on them:
``python converters/caffe2torch.py --dataset voc12``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# (release, Caffe topology, classes, input size)
CASES = (
    ("voc12", "resnet101_msc", 21, (321, 321)),
    ("coco_init", "resnet101_init", 91, (321, 321)),
    ("vgg16_voc12", "vgg16_aspp", 21, (321, 321)),
)
MAX_REL, MIN_AGREE = 2e-3, 0.999


def run_case(release: str, topo: str, classes: int, size: tuple[int, int], workdir: Path) -> dict:
    import numpy as np
    import torch

    from converters.caffe import parity, synth, topology
    from converters.io import load_state_dict
    from converters.releases import CAFFE_RELEASES
    from reference_models import build_model

    rel = CAFFE_RELEASES[release]
    src = workdir / release / rel.file_name
    t0 = time.perf_counter()
    net = synth.official_caffemodel(topo, src, num_classes=classes, seed=len(release))
    t_gen = time.perf_counter() - t0
    out = workdir / release / f"{rel.arch}_{release}.pth"
    cmd = [sys.executable, str(REPO / "converters" / "caffe2torch.py"), "--dataset", release,
           "--caffemodel", str(src), "--out", str(out), "--quiet"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    t_conv = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"conversion failed: {proc.stderr.strip()}")
    model = build_model(rel.arch, num_classes=classes)
    model.load_state_dict(load_state_dict(out), strict=True)
    x = parity.random_input(*size, seed=1)
    t0 = time.perf_counter()
    ref = parity.opencv_forward(net, src, x, topology.output_blob(topo))
    t_cv = time.perf_counter() - t0
    t0 = time.perf_counter()
    with torch.no_grad():
        ours = model.eval()(torch.from_numpy(x)).numpy()
    t_ours = time.perf_counter() - t0
    result = parity.compare(ours, ref)
    return {
        "release": release, "file": rel.file_name, "arch": rel.arch, "classes": classes,
        "caffemodel_mb": round(src.stat().st_size / 1e6, 1), "input": list(size), "output": list(ours.shape),
        "max_rel": result["max_rel"], "argmax_agreement": result["argmax_agreement"],
        "max_abs_ref": float(np.abs(ref).max()),
        "passed": result["max_rel"] <= MAX_REL and result["argmax_agreement"] >= MIN_AGREE,
        "seconds": {"generate": round(t_gen, 2), "convert": round(t_conv, 2), "opencv": round(t_cv, 2),
                    "ours": round(t_ours, 2)},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="where to write the generated files (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=Path("results") / "demo_parity.json", help="JSON report")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(max(torch.get_num_threads(), 1))
    print("deeplab-repro demo: official-format DeepLab v2 caffemodels -> PyTorch, checked against OpenCV's Caffe")
    print("(a miniature: random weights in the official format; see README for converting the real releases)\n")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        rows = []
        for case in CASES:
            print(f"  {case[0]}: writing a {case[1]} caffemodel, converting, running both engines ...", flush=True)
            rows.append(run_case(*case, workdir))
    header = f"{'release':<13} {'architecture':<25} {'MB':>6} {'input':>8} {'output':>16} {'max rel diff':>13} " \
             f"{'argmax agree':>13}  ok"
    print("\n" + header + "\n" + "-" * len(header))
    for r in rows:
        print(f"{r['release']:<13} {r['arch']:<25} {r['caffemodel_mb']:>6} {'x'.join(map(str, r['input'])):>8} "
              f"{'x'.join(map(str, r['output'])):>16} {r['max_rel']:>13.2e} {100 * r['argmax_agreement']:>12.2f}%  "
              f"{'yes' if r['passed'] else 'NO'}")
    print(f"\nbounds: max rel diff <= {MAX_REL:g}, argmax agreement >= {100 * MIN_AGREE:g}%")
    from converters.io import write_json_atomic

    write_json_atomic(args.out, {"bounds": {"max_rel": MAX_REL, "argmax_agreement": MIN_AGREE}, "cases": rows})
    print(f"report: {args.out}")
    return 0 if all(r["passed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
