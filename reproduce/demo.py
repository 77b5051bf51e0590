"""The whole DeepLab story in miniature, on the CPU, with nothing to download.

No download is possible or needed. Three parts (``--parts``):

1. ``parity``: random-weight caffemodels in the exact official format and topology (the
   3-scale ResNet-101 of the ``voc12`` release, its COCO ``init``, the VGG-16 ASPP-L) are
   converted with ``converters/caffe2torch.py`` exactly as a user would; the same input runs
   through OpenCV's independent Caffe engine and through our model; a parity report follows.
2. ``story``: ``reproduce/voc_v2.sh --smoke``: convert an official-format ``init.caffemodel``,
   train the real recipe for a few iterations on a generated miniature VOC in the real layout,
   evaluate (with and without dense CRF) and print the table beside the published 76.35 / 77.69.
   The numbers of a miniature mean nothing; the steps are the real ones.
3. ``learn``: a tiny DeepLab v3+ trained for 300 iterations (about a minute on 2 cores) on generated
   shapes reaches mIoU >= 0.9 on held-out images: the training code learns.

Each part is a function taking its settings (``parity_part``, ``story``, ``learn``); the module's constants
are what the demo runs, and tests/test_demo.py runs each function on tiny settings.

The real thing: ``reproduce/voc_v2.sh --data-root data --models-dir data/models`` (see README).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from converters.cli import run_main
from converters.errors import DeeplabError

REPO = Path(__file__).resolve().parent.parent

# The demo's settings, what `python -m reproduce.demo` runs; tests/test_demo.py runs each part on tiny ones.
# Part 1: (release, Caffe topology, classes, input size)
CASES = (
    ("voc12", "resnet101_msc", 21, (321, 321)),
    ("coco_init", "resnet101_init", 91, (321, 321)),
    ("vgg16_voc12", "vgg16_aspp", 21, (321, 321)),
)
MAX_REL, MIN_AGREE = 2e-3, 0.999
# Part 2: the command a user runs (a script under reproduce/ runs with bash); `--out DIR` is appended
STORY_COMMAND = ("reproduce/voc_v2.sh", "--smoke")
# Part 3: the tiny v3+ config, its training length, the held-out images and the mIoU they must reach
LEARN_CONFIG = REPO / "reproduce" / "configs" / "deeplabv3plus_tiny-shapes-64.yaml"
LEARN_ITERATIONS, LEARN_HELD_OUT, LEARN_MIN_MIOU = 300, 100, 0.9


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


def story(workdir: Path, command: Sequence[str] = STORY_COMMAND) -> bool:
    """Part 2: a reproduction recipe end to end on generated data (default: ``reproduce/voc_v2.sh --smoke``).

    ``command`` runs from the repository root with ``--out <workdir>/story`` appended; passes when it exits 0
    and writes ``report.md`` there, which is printed.
    """
    shown = " ".join(command)
    print(f"\n== 2/3 the reproduction story in miniature: {shown}", flush=True)
    print("   (official-format init.caffemodel -> convert -> train -> evaluate with/without CRF -> table)\n",
          flush=True)
    out = (workdir / "story").resolve()   # the command runs in the repository root
    argv = [*command, "--out", str(out)]
    if argv[0].endswith(".sh"):
        argv = ["bash", *argv]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    report = out / "report.md"
    if proc.returncode != 0 or not report.is_file():
        print(proc.stdout[-3000:] + proc.stderr[-3000:])
        print("   the miniature reproduction FAILED")
        return False
    print(report.read_text())
    print("   A miniature: random weights, a few iterations, generated images; the numbers mean nothing.")
    print("   The real run: reproduce/voc_v2.sh --data-root data --models-dir data/models (README, 'Training').")
    return True


def learn(workdir: Path, *, config: Path = LEARN_CONFIG, iterations: int = LEARN_ITERATIONS,
          held_out: int = LEARN_HELD_OUT, min_miou: float = LEARN_MIN_MIOU) -> bool:
    """Part 3: the tiny model of ``config`` trained ``iterations`` steps on generated shapes; passes when its
    mIoU on ``held_out`` shapes images the training never saw is at least ``min_miou``."""
    import torch

    from converters.io import load_state_dict
    from reproduce import train as T
    from reproduce.metrics import ConfusionMatrix
    from reproduce.shapes import ShapesDataset

    print(f"\n== 3/3 training learns: a tiny DeepLab v3+ on generated shapes ({iterations} iterations)", flush=True)
    cfg = T.apply_overrides(T.load_config(config),
                            {"progress": False, "tensorboard": False, "solver.iterations": iterations})
    t0 = time.perf_counter()
    final = T.train(cfg, workdir / "shapes")
    model = T.build_model(cfg)
    model.load_state_dict(load_state_dict(final))
    model.eval()
    pre = T.build_preprocessing(cfg)
    shapes = cfg.data.kwargs
    # training images come from the config's seed; these from another
    images = ShapesDataset(length=held_out, seed=12345, size=shapes["size"], num_classes=shapes["num_classes"])
    cm = ConfusionMatrix(cfg.model.num_classes)
    with torch.no_grad():
        for i in range(len(images)):
            image, label, _ = images[i]
            cm.update(model.predict(pre.apply(image))[0], torch.from_numpy(label))
    miou = cm.compute()["miou"]
    ok = miou >= min_miou
    print(f"   held-out mIoU {100 * miou:.1f} % on {held_out} images after {time.perf_counter() - t0:.0f} s of "
          f"training (threshold {100 * min_miou:g} %): {'yes' if ok else 'NO'}")
    return ok


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m reproduce.demo",
        description="The whole DeepLab story in miniature, on the CPU, with nothing to download: official-format "
        "caffemodels converted and checked against OpenCV's Caffe engine (parity), the voc_v2.sh recipe on a "
        "generated miniature VOC (story), and a tiny DeepLab v3+ that learns (learn).")
    parser.add_argument("--workdir", type=Path, help="where to write the generated files (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=Path("results") / "demo_parity.json", help="JSON parity report")
    parser.add_argument("--parts", default="parity,story,learn",
                        help="comma-separated parts to run: parity, story, learn (default: all)")
    return parser


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    unknown = set(_parts(args)) - {"parity", "story", "learn"}
    if unknown:
        parser.error(f"unknown part(s): {', '.join(sorted(unknown))}")


def _parts(args: argparse.Namespace) -> list[str]:
    return [p.strip() for p in args.parts.split(",") if p.strip()]


def main(argv: list[str] | None = None) -> int:
    return run_main(build_parser(), run, argv, check=_check)


def run(args: argparse.Namespace) -> None:
    """Run the parts; DeeplabError (exit 1) when one fails."""
    parts = _parts(args)
    import torch

    torch.set_num_threads(max(torch.get_num_threads(), 1))
    print("deeplab-repro demo: the official DeepLab releases in PyTorch, proven, in miniature on the CPU\n")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        ok = True
        if "parity" in parts:
            ok &= parity_part(workdir, args.out)
        if "story" in parts:
            ok &= story(workdir)
        if "learn" in parts:
            ok &= learn(workdir)
    print("\n" + ("demo finished: all parts passed" if ok else "demo finished: SOME PARTS FAILED"))
    if not ok:
        raise DeeplabError("demo: some parts failed (see above)")


def parity_part(workdir: Path, out: Path, cases: Sequence[tuple[str, str, int, tuple[int, int]]] = CASES) -> bool:
    """Part 1: official-format caffemodels -> PyTorch, checked against OpenCV's Caffe engine.

    ``cases``: (release, Caffe topology, classes, input size) each; the report goes to ``out`` (JSON).
    """
    print("== 1/3 official-format DeepLab v2 caffemodels -> PyTorch, checked against OpenCV's Caffe engine")
    print("   (random weights in the official format; README: converting the real releases)\n", flush=True)
    rows = []
    for case in cases:
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

    write_json_atomic(out, {"bounds": {"max_rel": MAX_REL, "argmax_agreement": MIN_AGREE}, "cases": rows})
    print(f"report: {out}")
    return all(r["passed"] for r in rows)


if __name__ == "__main__":
    sys.exit(main())
