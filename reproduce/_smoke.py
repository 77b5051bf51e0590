"""Helpers for the official reproduction scripts (``reproduce/voc_*_official.sh``).

The scripts keep bash to argument parsing and running steps; everything else lives here:

* ``check {v2,v3plus} --data-root D --models-dir W``: verify VOC 2012 val and the official
  weights are where the script expects them, print the resolved source path on stdout, or print a
  one-paragraph message saying what is missing and where to get it (exit 1).
* ``make {v2,v3plus} --dir D``: ``--smoke`` inputs: a miniature VOC 2012 in the real layout
  (``D/data/VOCdevkit/VOC2012``) and random-weight source files in the official format
  (the ``voc12`` release file in ``D/weights/``, a 3-scale ResNet-101 caffemodel; or the
  ``deeplabv3_pascal_train_aug_2018_01_04`` checkpoint in its release folder under ``D/weights/``, a TF V2
  checkpoint holding every variable of ``converters/manifests/<release>.json``, written by TensorFlow;
  file and folder names from ``converters/releases.py``).
* ``report --out FILE RESULT_DIR...``: one Markdown report from several ``result.md`` files.

Nothing here produces reported numbers: smoke weights are random, so smoke mIoU is near zero.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import numpy as np

from converters.cli import run_main
from converters.errors import DeeplabError
from converters.releases import CAFFE_RELEASES, DATASETS, TF_RELEASES

_V2 = CAFFE_RELEASES["voc12"]
V2_FILE = _V2.file_name
V2_FOLDER = _V2.folder  # data/models/<folder>/ after deeplab-download
_V3PLUS = TF_RELEASES["deeplabv3_pascal_train_aug_2018_01_04"]
V3PLUS_RELEASE = _V3PLUS.name
V3PLUS_FOLDER = _V3PLUS.folder  # what the tarball unpacks to
V3PLUS_PREFIX = _V3PLUS.file_name
_VOC = DATASETS["voc2012"].archives[0]
REPO = Path(__file__).resolve().parent.parent

SMOKE_VAL_IDS = ("2007_000033", "2007_000042", "2007_000061")
SMOKE_TRAIN_IDS = ("2007_000032",)
SMOKE_SIZES = (48, 112)  # image sides in pixels; the smoke evaluation pads to 129


class CheckError(DeeplabError):
    """A missing input, with the message the user should read."""


# ---------------------------------------------------------------------------------------- checks
def check_voc(data_root: Path) -> Path:
    """VOC 2012 val with its labels under ``data_root``; returns the VOC2012 folder."""
    from reproduce.datasets import DatasetError, find_voc2012, read_split_file

    try:
        voc = find_voc2012(data_root)
    except DatasetError:
        raise CheckError(
            f"PASCAL VOC 2012 not found under --data-root {data_root}. Expected {data_root}/VOCdevkit/VOC2012/"
            "{JPEGImages,SegmentationClass,ImageSets/Segmentation/val.txt}. Get it with:\n"
            f"  python -m reproduce.download voc2012 --data-root {data_root}\n"
            f"(or download {_VOC.url} and run: {_VOC.unpack_command(data_root)})"
        ) from None
    split = voc / "ImageSets" / "Segmentation" / "val.txt"
    if not split.is_file():
        raise CheckError(f"{split} is missing: the VOC 2012 tree at {voc} is incomplete (re-extract the tarball)")
    ids = [i for i, _, _ in read_split_file(split)]
    missing = [i for i in ids if not (voc / "SegmentationClass" / f"{i}.png").is_file()
               or not (voc / "JPEGImages" / f"{i}.jpg").is_file()]
    if missing:
        raise CheckError(f"{len(missing)} of {len(ids)} val images or labels are missing under {voc} "
                         f"(first: {missing[0]}); re-extract {_VOC.file_name}")
    return voc


def check_v2_weights(weights_dir: Path) -> Path:
    for cand in (weights_dir / V2_FILE, weights_dir / V2_FOLDER / V2_FILE):
        if cand.is_file():
            return cand
    raise CheckError(
        f"{V2_FILE} not found in --models-dir {weights_dir} (looked at {weights_dir / V2_FILE} and "
        f"{weights_dir / V2_FOLDER / V2_FILE}). It is the DeepLab v2 ResNet-101 VOC model in\n  {_V2.url}\n"
        f"(see {_V2.page}); get it with: python -m reproduce.download {_V2.name} --models-dir {weights_dir}"
    )


def check_v3plus_weights(weights_dir: Path) -> Path:
    for folder in (weights_dir / V3PLUS_FOLDER, weights_dir / V3PLUS_RELEASE, weights_dir):
        prefix = folder / V3PLUS_PREFIX
        if Path(f"{prefix}.index").is_file():
            if not any(folder.glob(f"{V3PLUS_PREFIX}.data-*")):
                raise CheckError(f"{prefix}.index is there but no {V3PLUS_PREFIX}.data-* file beside it "
                                 "(incomplete extraction?)")
            return prefix
    raise CheckError(
        f"TF checkpoint {V3PLUS_FOLDER}/{V3PLUS_PREFIX}.index not found in --models-dir {weights_dir}. "
        f"It is the DeepLab v3+ Xception-65 VOC model (zoo xception65_coco_voc_trainaug):\n"
        f"  python -m reproduce.download {V3PLUS_RELEASE} --models-dir {weights_dir}\n"
        f"(or download {_V3PLUS.url} and run: {_V3PLUS.archive.unpack_command(weights_dir)})"
    )


# ---------------------------------------------------------------------------------------- smoke inputs
def make_voc(root: Path) -> Path:
    from reproduce.synthetic import write_voc

    return write_voc(root, train_ids=list(SMOKE_TRAIN_IDS), val_ids=list(SMOKE_VAL_IDS), seed=0, sizes=SMOKE_SIZES)


def make_v2_weights(weights_dir: Path) -> Path:
    from converters.caffe import synth

    path = weights_dir / V2_FILE
    synth.official_caffemodel("resnet101_msc", path, num_classes=21, seed=0)
    return path


def _manifest(release: str) -> dict:
    import json

    path = REPO / "converters" / "manifests" / f"{release}.json"
    if not path.is_file():
        raise CheckError(f"{path} not found: the variable manifest of {release} is needed to write a smoke checkpoint")
    return json.loads(path.read_text(encoding="utf-8"))


def random_tf_value(name: str, shape: list[int], rng: np.random.Generator) -> np.ndarray:
    """A realistic random value for one TF variable (He-scaled weights, mild BatchNorm statistics).

    Mild statistics keep the 16 summed Xception middle units finite in float32 (as the parity tests do).
    """
    if name.endswith("depthwise_weights"):
        value = rng.standard_normal(shape) * math.sqrt(2.0 / math.prod(shape[:2]))
    elif name.endswith("weights"):
        value = rng.standard_normal(shape) * math.sqrt(2.0 / max(math.prod(shape[:-1]), 1))
    elif name.endswith("gamma"):
        value = rng.uniform(0.3, 1.0, shape)
    elif name.endswith("moving_variance"):
        value = rng.uniform(0.5, 1.5, shape)
    elif name == "global_step" or not shape and "step" in name:
        return np.asarray(30000, dtype=np.int64)
    else:  # beta, moving_mean, biases
        value = rng.normal(0.0, 0.2, shape)
    return np.asarray(value, dtype=np.float32)


def make_tf_checkpoint(release: str, prefix: Path, seed: int = 0) -> Path:
    """Write a TF V2 checkpoint holding exactly the manifest's variables (random values) with a TF1 Saver.

    Graph-mode ``tf.compat.v1.train.Saver`` writes the plain variable names the official
    checkpoints have (an object-based ``tf.train.Checkpoint`` would add ``/.ATTRIBUTES/...``).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
    except ImportError:
        raise CheckError("--smoke for DeepLab v3+ writes a TF checkpoint and needs TensorFlow: "
                         "pip install -e .[tf]") from None
    tf1 = tf.compat.v1
    manifest = _manifest(release)
    rng = np.random.default_rng(seed)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    graph = tf.Graph()
    with graph.as_default():
        variables, feed = [], {}
        for name, shape in manifest["variables"].items():
            value = random_tf_value(name, list(shape), rng)
            ph = tf1.placeholder(tf.as_dtype(value.dtype), value.shape)
            var = tf1.Variable(ph, name=name, trainable=False)
            variables.append(var)
            feed[ph] = value
        with tf1.Session(graph=graph) as sess:
            sess.run([v.initializer for v in variables], feed)
            tf1.train.Saver(variables).save(sess, str(prefix), write_meta_graph=False)
    return prefix


# ---------------------------------------------------------------------------------------- report
def report(out: Path, result_dirs: list[Path], title: str) -> Path:
    from converters.io import write_text_atomic

    parts = [f"# {title}", ""]
    for d in result_dirs:
        md = d / "result.md"
        if not md.is_file():
            raise CheckError(f"{md} not found: did that evaluation step fail?")
        text = md.read_text(encoding="utf-8").replace("\n# ", "\n## ")
        parts += ["#" + text if text.startswith("# ") else text, ""]
    body = "\n".join(parts)
    return write_text_atomic(out, body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reproduce._smoke",
                                     description="Smoke-run inputs and checks for the reproduction recipes.")
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="check data and weights; print the resolved weights path")
    c.add_argument("which", choices=("v2", "v3plus"))
    c.add_argument("--data-root", type=Path, required=True)
    c.add_argument("--models-dir", type=Path, required=True, help="folder holding the release folders")
    m = sub.add_parser("make", help="write smoke inputs (miniature VOC + random official-format weights)")
    m.add_argument("which", choices=("v2", "v3plus"))
    m.add_argument("--dir", type=Path, required=True)
    r = sub.add_parser("report", help="join result.md files into one report")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--title", default="Reproduction report")
    r.add_argument("results", type=Path, nargs="+")
    return run_main(parser, _run, argv)


def _run(args: argparse.Namespace) -> None:
    """Do what ``args`` say; a missing input raises CheckError (one line, exit 1)."""
    if args.command == "check":
        check_voc(args.data_root)
        if args.which == "v2":
            print(check_v2_weights(args.models_dir))
        else:
            print(check_v3plus_weights(args.models_dir))
    elif args.command == "make":
        voc = make_voc(args.dir / "data")
        if args.which == "v2":
            weights = make_v2_weights(args.dir / "weights")
        else:
            weights = make_tf_checkpoint(V3PLUS_RELEASE, args.dir / "weights" / V3PLUS_FOLDER / V3PLUS_PREFIX)
        print(f"smoke inputs: {voc} and {weights}", file=sys.stderr)
    else:
        print(report(args.out, args.results, args.title))


if __name__ == "__main__":
    sys.exit(main())
