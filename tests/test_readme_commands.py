"""Every command README.md shows is a test, so the README cannot drift from the code.

Commands are extracted generically: each line of a ``sh``/``bash``/``console`` code block (backslash
continuations joined, trailing ``# comments`` dropped), each ``python`` code block as one snippet, and each inline
code span in the prose that starts like a command (``python``, ``deeplab-``, ``reproduce/*.sh``, ``tox``, ``pip``,
``torchrun``). Every one must be classified in ``COMMANDS`` below:

- ``Run``: run for real, as written, in a scratch folder that looks like a checkout (the repository's top-level
  entries linked in) holding generated inputs under the names the command uses (official-format caffemodels, TF
  checkpoints, peer checkpoints, a miniature VOC / COCO-Stuff / DeepFashion2, photos, a video). Optional ``[...]``
  parts are included (the first of ``a|b`` alternatives) unless listed in ``drop``; placeholders (``W.pth``) are
  files the setup writes. Runs over ~20 s are marked slow.
- ``Check``: needs data or hours a test cannot have; ``--help`` must exit 0 and name every ``--option`` the line
  uses (``how="dry-run"``: the command itself with ``--dry-run``, which prints the plan and downloads nothing).
- ``Skip``: not run (installs packages, builds tox environments, starts several processes), with the reason; what
  can be checked statically is (the tox environment or pip extra exists, the path exists).

A README command this file does not know fails ``test_every_readme_command_is_classified`` with a message saying
to classify it here; an entry here that the README no longer shows fails it too.
"""

from __future__ import annotations

import configparser
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import tomllib

from tests.inprocess import run_main, wrapper_argv

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
SHELL_LANGS = {"sh", "bash", "console", "shell"}
INLINE_COMMAND = re.compile(r"(python3? |deeplab-|reproduce/\S+\.sh|tox\b|pip |torchrun )")


# ============================================================================ extraction
@dataclass(frozen=True)
class ReadmeCommand:
    text: str          # as shown: a shell line (continuations joined, comment dropped) or a Python snippet
    kind: str          # "shell" or "python"
    line: int          # where it starts in README.md


def _strip_comment(line: str) -> str:
    """The line without a trailing ``# comment`` (a ``#`` outside quotes that starts a word)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def extract_commands(text: str) -> list[ReadmeCommand]:
    """Every command README ``text`` shows, in order (see the module docstring)."""
    commands: list[ReadmeCommand] = []
    lines = text.splitlines()
    prose: list[tuple[int, str]] = []
    i = 0
    while i < len(lines):
        fence = re.match(r"^```(\w*)\s*$", lines[i])
        if not fence:
            prose.append((i + 1, lines[i]))
            i += 1
            continue
        lang, start = fence.group(1), i + 1
        j = start
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        body = lines[start:j]
        if lang == "python":
            commands.append(ReadmeCommand("\n".join(body).strip(), "python", start + 1))
        elif lang in SHELL_LANGS:
            k = 0
            while k < len(body):
                first, logical = k, body[k].rstrip()
                while logical.endswith("\\") and k + 1 < len(body):
                    k += 1
                    logical = logical[:-1].rstrip() + " " + body[k].strip()
                k += 1
                cmd = _strip_comment(logical).strip()
                if cmd:
                    commands.append(ReadmeCommand(" ".join(cmd.split()), "shell", start + first + 1))
        i = j + 1
    for number, line in prose:
        for span in re.findall(r"`([^`]+)`", line):
            if INLINE_COMMAND.match(span):
                commands.append(ReadmeCommand(" ".join(span.split()), "shell", number))
    return commands


def readme_commands() -> dict[str, ReadmeCommand]:
    """The README's commands by text (a command shown twice is tested once: its first showing)."""
    out: dict[str, ReadmeCommand] = {}
    for cmd in extract_commands(README.read_text(encoding="utf-8")):
        out.setdefault(cmd.text, cmd)
    return out


def test_extraction_joins_continuations_drops_comments_and_finds_inline_commands():
    text = ("Run `python -m x --a 1` or `pick.yaml`.\n\n```sh\npython -m y --b \\\n    --c 'q # r'  # a note\n"
            "# only a comment\n\ntox -e z\n```\n\n```\nnot a command\n```\n\n```python\nimport os\nprint(1)\n```\n")
    assert extract_commands(text) == [
        ReadmeCommand("python -m y --b --c 'q # r'", "shell", 4),
        ReadmeCommand("tox -e z", "shell", 8),
        ReadmeCommand("import os\nprint(1)", "python", 16),
        ReadmeCommand("python -m x --a 1", "shell", 1),
    ]


# ============================================================================ classification
@dataclass(frozen=True)
class Run:
    """Run for real in a scratch checkout after ``setup(folder)``; ``expect``: files it must write."""

    setup: Callable[[Path], None] | None = None
    expect: tuple[str, ...] = ()
    drop: tuple[str, ...] = ()        # optional [...] parts left out (e.g. CUDA-only flags)
    prelude: str = ""                 # a Python snippet's free names (an image, an input tensor)
    slow: bool = False


@dataclass(frozen=True)
class Check:
    """Not run for real (``why``): ``--help`` names every option the line uses, or ``--dry-run`` exits 0."""

    why: str
    how: str = "help"


@dataclass(frozen=True)
class Skip:
    """Not run (``why``); ``check`` (optional) tests what can be tested without running it."""

    why: str
    check: Callable[[], None] | None = field(default=None, compare=False)


# ---------------------------------------------------------------------------- static checks of skipped commands
def _tox_env(name: str) -> Callable[[], None]:
    def check() -> None:
        cfg = configparser.ConfigParser(interpolation=None)
        cfg.read(REPO / "tox.ini")
        envs = {s.removeprefix("testenv:") for s in cfg.sections() if s.startswith("testenv:")}
        envs |= {e.strip() for e in cfg["tox"]["env_list"].split(",")}
        assert name in envs, f"tox.ini has no environment {name!r}"
    return check


def _ci_runs_the_demo() -> None:
    _tox_env("demo")()
    lines = [ln.strip() for ln in (REPO / ".ci" / "run").read_text().splitlines()]
    assert "tox -e demo" in lines, ".ci/run must run the README's first command as written: tox -e demo"


def _extra(name: str) -> Callable[[], None]:
    def check() -> None:
        project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
        if name:
            assert name in project["optional-dependencies"], f"pyproject.toml has no extra [{name}]"
    return check


def _path_exists(rel: str) -> Callable[[], None]:
    def check() -> None:
        _tox_env("full")()
        assert (REPO / rel).is_file(), f"{rel} does not exist"
    return check


# ---------------------------------------------------------------------------- generated inputs
def _caffe_release(release: str, topology: str, classes: int) -> Callable[[Path], None]:
    """An official-format random-weight caffemodel of ``release`` where ``--dataset`` looks (data/models/...)."""
    def setup(folder: Path) -> None:
        from converters.caffe import synth
        from converters.releases import CAFFE_RELEASES

        rel = CAFFE_RELEASES[release]
        synth.official_caffemodel(topology, folder / "data" / "models" / rel.folder / rel.file_name,
                                  num_classes=classes, seed=1)
    return setup


def _converted_voc12(folder: Path) -> None:
    """The voc12 release converted where the README's snippets load it (data/models/deeplabv2_resnet101/)."""
    from converters import caffe2torch

    _caffe_release("voc12", "resnet101_msc", 21)(folder)
    proc = run_main(caffe2torch.main, ["--dataset", "voc12", "--quiet"], cwd=folder)   # looks in ./data/models
    assert proc.returncode == 0, proc.stderr


def _voc12_keras_weights(folder: Path) -> None:
    from converters import caffe2tf

    _caffe_release("voc12", "resnet101_msc", 21)(folder)
    proc = run_main(caffe2tf.main, ["--dataset", "voc12", "--quiet"], cwd=folder)
    assert proc.returncode == 0, proc.stderr


def _caffemodel_file(name: str, topology: str) -> Callable[[Path], None]:
    def setup(folder: Path) -> None:
        from converters.caffe import synth

        synth.official_caffemodel(topology, folder / name, num_classes=21, seed=2)
    return setup


def _weights(name: str, arch: str, classes: int = 21, provenance: bool = True) -> Callable[[Path], None]:
    """Random ``arch`` weights at ``name`` with the provenance JSON a converter writes beside them."""
    def setup(folder: Path) -> None:
        import json

        import torch

        from converters.io import save_state_dict
        from reference_models import build_model
        from reference_models.preprocessing import CAFFE_DEEPLAB_V2, DEEPLAB_TF_UNIT_RANGE

        torch.manual_seed(0)
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        save_state_dict(build_model(arch, num_classes=classes).state_dict(), path)
        if provenance:
            pre = CAFFE_DEEPLAB_V2 if arch.startswith("deeplabv2") else DEEPLAB_TF_UNIT_RANGE
            path.with_suffix(".json").write_text(json.dumps(
                {"architecture": arch, "num_classes": classes, "preprocessing": pre.to_dict()}))
    return setup


def _peer(fmt: str, name: str, state: Callable[[], dict], wrap: str | None = None) -> Callable[[Path], None]:
    """A peer port's checkpoint at ``name``: its exact keys and shapes, random values (tests/peer_checkpoints)."""
    def setup(folder: Path) -> None:
        import torch

        sd = state()
        torch.save(sd if wrap is None else {wrap: sd, "epoch": 3}, folder / name)
    return setup


def _peer_state(module: str, *args, **kwargs) -> Callable[[], dict]:
    def state() -> dict:
        import importlib

        from tests.peer_checkpoints import random_state

        return random_state(importlib.import_module(f"converters.peers.{module}").manifest(*args, **kwargs))
    return state


def _voc(folder: Path) -> None:
    from reproduce.synthetic import write_voc

    write_voc(folder / "data", train_ids=["2007_000032"], val_ids=["2007_000033", "2007_000042"], sizes=(40, 56))


def _voc_aug_sources(folder: Path) -> None:
    from reproduce.synthetic import write_voc_aug_sources

    write_voc_aug_sources(folder / "data", sizes=(30, 40))


def _cocostuff10k(folder: Path) -> None:
    from reproduce.synthetic import write_cocostuff10k

    write_cocostuff10k(folder / "data", n_train=1, n_test=2, sizes=(40, 56))


def _deepfashion2(folder: Path) -> None:
    from reproduce.synthetic import write_deepfashion2

    write_deepfashion2(folder / "data" / "deepfashion2")


def _photos(folder: Path) -> None:
    import numpy as np

    from reproduce.synthetic import image_from_label, random_label, save_jpeg

    rng = np.random.default_rng(0)
    for name, size in (("a", (40, 52)), ("b", (47, 33))):
        save_jpeg(folder / "photos" / f"{name}.jpg", image_from_label(rng, random_label(rng, *size, classes=[0, 8])))


def _video(folder: Path) -> None:
    import cv2
    import numpy as np

    writer = cv2.VideoWriter(str(folder / "street.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (48, 40))
    rng = np.random.default_rng(0)
    for _ in range(3):
        writer.write(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
    writer.release()


def _tf_checkpoint(release: str, prefix: str) -> Callable[[Path], None]:
    def setup(folder: Path) -> None:
        pytest.importorskip("tensorflow", reason="the TF checkpoint is written with TensorFlow")
        from reproduce import _smoke

        _smoke.make_tf_checkpoint(release, folder / prefix)
    return setup


def _tf_release(release: str) -> Callable[[Path], None]:
    def setup(folder: Path) -> None:
        from converters.releases import TF_RELEASES

        rel = TF_RELEASES[release]
        _tf_checkpoint(release, str(Path("data") / "models" / rel.folder / rel.file_name))(folder)
    return setup


def _all(*setups: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(folder: Path) -> None:
        for s in setups:
            s(folder)
    return setup


V2_PTH = "data/models/deeplabv2_resnet101/deeplabv2_resnet101_msc_voc12.pth"
DATA_NEEDED = "needs the real dataset or release (gigabytes) and hours; "
SMOKE_ELSEWHERE = "its --smoke run (the same steps on generated data) is tests/test_scripts_train.py (slow)"
MEASURES = "measures for minutes; tests/test_benchmarks.py runs the suites with --quick"
WRITES_REPO = "rewrites files in the repository (its check mode runs in the tests)"
IMAGE = "import numpy as np\nrgb_uint8_image = np.random.default_rng(0).integers(0, 256, (45, 61, 3), dtype=np.uint8)\n"
NHWC = "import numpy as np\nx_nhwc = np.random.default_rng(0).standard_normal((1, 65, 65, 3)).astype('float32')\n"

COMMANDS: dict[str, Run | Check | Skip] = {
    # ---- first commands
    "tox -e demo": Skip("builds a tox environment: .ci/run runs this line as written, tests/test_demo.py runs "
                        "each demo part on tiny settings", _ci_runs_the_demo),
    "tox": Skip("builds tox environments and runs the tests themselves", _tox_env("py311")),
    "tox -e full": Skip("builds a tox environment and runs every test", _tox_env("full")),
    "tox -e lint": Skip("builds a tox environment (ruff)", _tox_env("lint")),
    "tox -e caffe": Skip("builds a Debian 11 root with Caffe (root and Debian's registry)", _tox_env("caffe")),
    "tox -e full -- -x tests/test_tf_parity.py": Skip("runs tests", _path_exists("tests/test_tf_parity.py")),
    "pip install tox": Skip("installs from PyPI"),
    "pip install": Skip("installs from PyPI (prose)"),
    "pip install torch --index-url https://download.pytorch.org/whl/cpu": Skip("installs from the network"),
    "pip install -e .": Skip("installs the project", _extra("")),
    "pip install -e '.[tf]'": Skip("installs the project", _extra("tf")),
    "pip install -e .[crf]": Skip("installs the project", _extra("crf")),
    "pip install -e .[onnx]": Skip("installs the project", _extra("onnx")),
    "torchrun --nproc_per_node N -m reproduce.train --config ...": Skip(
        "starts N processes on a real config; tests/test_train_ddp.py runs two gloo processes"),
    "R=benchmarks/reports/cpu-$(date -u +%F)-full": Skip("sets a shell variable for the two lines after it"),
    # ---- converting the caffemodels
    "python converters/caffe2torch.py --dataset coco_init": Run(
        _caffe_release("coco_init", "resnet101_init", 91),
        expect=("data/models/deeplabv2_resnet101/deeplabv1_resnet101_coco_init.pth",)),
    "python converters/caffe2torch.py --dataset voc12 --out weights/deeplabv2_voc12.safetensors": Run(
        _caffe_release("voc12", "resnet101_msc", 21), expect=("weights/deeplabv2_voc12.safetensors",), slow=True),
    "python converters/caffe2torch.py --caffemodel other.caffemodel --arch deeplabv2_resnet101 --num-classes 21 "
    "--out other.pth": Run(_caffemodel_file("other.caffemodel", "resnet101"), expect=("other.pth", "other.json")),
    'import torch\nfrom reference_models import build_model\nmodel = build_model("deeplabv2_resnet101_msc", '
    'num_classes=21)\nmodel.load_state_dict(torch.load("data/models/deeplabv2_resnet101/'
    'deeplabv2_resnet101_msc_voc12.pth", weights_only=True))': Run(_converted_voc12, slow=True),
    "python -m reproduce.download voc12": Check("downloads a 1 GB release", how="dry-run"),
    "python -m reproduce.download RELEASE": Check("a placeholder for a release name"),
    "python -m reproduce.download NAME": Check("a placeholder for a release or dataset name"),
    "python -m reproduce.download voc2012 voc12": Check("downloads 3 GB", how="dry-run"),
    "python -m reproduce.download deeplabv3_pascal_train_aug_2018_01_04": Check("downloads 439 MB", how="dry-run"),
    "python -m reproduce.download NAME... --data-root data": Check("a placeholder for names"),
    "python -m reproduce.download": Check("prose: the module's name"),
    "deeplab-download NAME... [--models-dir D] [--data-root D] [--mirror URL] [--dry-run]": Check(
        "a synopsis with placeholders"),
    # ---- console scripts named in the prose
    **{f"deeplab-{name}": Check("prose: the console script's name")
       for name in ("caffe2torch", "tf2torch", "caffe2tf", "tf2keras", "import-checkpoint", "export", "download",
                    "prepare", "train", "evaluate", "predict", "recipe", "benchmark")},
    # ---- TF checkpoints
    "python converters/tf2torch.py --dataset RELEASE": Check("a placeholder for a release name"),
    "python converters/tf2torch.py --checkpoint path/model.ckpt --arch deeplabv3plus_xception65 --out my.pth": Run(
        _tf_checkpoint("deeplabv3_pascal_train_aug_2018_01_04", "path/model.ckpt"), expect=("my.pth", "my.json"),
        slow=True),
    "python -m converters.tf.signatures --write": Check(WRITES_REPO),
    # ---- peers
    "python converters/import_checkpoint.py --from kazuto --checkpoint deeplabv2_resnet101_msc-cocostuff164k-100000.pth"
    " --out weights/kazuto_cocostuff164k.pth": Run(
        _peer("kazuto", "deeplabv2_resnet101_msc-cocostuff164k-100000.pth",
              _peer_state("kazuto", "DeepLabV2_ResNet101_MSC", 182)),
        expect=("weights/kazuto_cocostuff164k.pth", "weights/kazuto_cocostuff164k.json"), slow=True),
    "python converters/import_checkpoint.py --from vainf --checkpoint best_deeplabv3plus_resnet101_voc_os16.pth "
    "--output-stride 16 --out weights/vainf_r101_voc.pth": Run(
        _peer("vainf", "best_deeplabv3plus_resnet101_voc_os16.pth", _peer_state("vainf", "resnet101", True, 21),
              wrap="model_state"), expect=("weights/vainf_r101_voc.pth",), slow=True),
    "python converters/import_checkpoint.py --from jfzhang95 --checkpoint model_best.pth.tar --output-stride 16 "
    "--out weights/jfzhang95_best.pth": Run(
        _peer("jfzhang95", "model_best.pth.tar", _peer_state("jfzhang95", "resnet", 21), wrap="state_dict"),
        expect=("weights/jfzhang95_best.pth",), slow=True),
    "python converters/import_checkpoint.py --from torchvision --checkpoint deeplabv3_resnet101_coco-586e9e4e.pth "
    "--out weights/tv_r101.pth": Run(
        _peer("torchvision", "deeplabv3_resnet101_coco-586e9e4e.pth", _peer_state("torchvision", "resnet101", 21, True)),
        expect=("weights/tv_r101.pth",), slow=True),
    # ---- evaluating the official releases
    "reproduce/voc_v2_official.sh --data-root data --weights-dir data/models --out results/voc_v2 --crf-workers 2":
        Check(DATA_NEEDED + "its --smoke run is tests/test_scripts_official.py (slow)"),
    "reproduce/voc_v3plus_official.sh --data-root data --weights-dir data/models --out results/voc_v3plus":
        Check(DATA_NEEDED + "its --smoke run is tests/test_scripts_official.py (slow)"),
    "python -m reproduce.evaluate --weights W.pth --dataset voc12 --root data --split val [--output-stride 8 --scales "
    "0.5:0.25:1.75 --flip] [--crf --crf-workers 2] [--compare-to 'deeplab_v2_resnet101_voc12_val[5]'] [--device cuda "
    "--amp] --out results/x": Run(_all(_voc, _weights("W.pth", "deeplabv3plus_tiny")),
                                  expect=("results/x/result.json", "results/x/result.md"),
                                  drop=("[--device cuda --amp]",)),
    "python -m reproduce.evaluate --weights W.pth --dataset cocostuff10k --root data/cocostuff-10k-v1.1 --split test "
    "--protocol warp --compare-to 'deeplab_v2_cocostuff10k[0]'": Run(
        _all(_cocostuff10k, _weights("W.pth", "deeplabv2_tiny_msc", classes=182))),
    "python -m reproduce.predict --weights W.pth photos/ --out masks/ [--crf] [--palette voc|cocostuff|gray]": Run(
        _all(_photos, _weights("W.pth", "deeplabv3plus_tiny")), expect=("masks/a.png", "masks/b.png")),
    "python -m reproduce.predict --weights W.pth street.mp4 --out videos/ [--frame-masks]": Run(
        _all(_video, _weights("W.pth", "deeplabv3plus_tiny"))),
    "python -m reproduce.prepare voc_aug --voc-root data/VOCdevkit/VOC2012 --sbd-root data/benchmark_RELEASE": Run(
        _voc_aug_sources, expect=("data/VOCdevkit/VOC2012/ImageSets/SegmentationAug/train_aug.txt",)),
    "python -m reproduce.prepare voc_aug --voc-root data/VOCdevkit --sbd-root data/benchmark_RELEASE": Run(
        _voc_aug_sources, expect=("data/VOCdevkit/VOC2012/ImageSets/SegmentationAug/train_aug.txt",)),
    "python -m reproduce.prepare deepfashion2 --data-root data/deepfashion2": Run(_deepfashion2),
    'from reproduce.inference import Segmenter\nseg = Segmenter("weights/deeplabv3plus_resnet101_voc.pth")   '
    '# device/precision "auto", compile=False\nlabels = seg.predict(rgb_uint8_image)                          '
    '# (H, W) class indices; seg.scores(...) for probabilities\nprint(seg.summary())                          '
    '                 # what it chose and why': Run(
        _weights("weights/deeplabv3plus_resnet101_voc.pth", "deeplabv3plus_resnet101"), prelude=IMAGE),
    # ---- hub, ONNX
    'import torch\nmodel = torch.hub.load(".", "deeplabv2_resnet101_msc", source="local", weights="voc12")        '
    '# a converted release\nmodel = torch.hub.load(".", "deeplabv3plus_xception65", source="local", '
    'weights="w.safetensors")  # a file': Run(
        _all(_converted_voc12, _weights("w.safetensors", "deeplabv3plus_xception65", provenance=False)), slow=True),
    "deeplab-export --weights data/models/deeplabv2_resnet101/deeplabv2_resnet101_msc_voc12.pth --out voc12.onnx":
        Run(_converted_voc12, expect=("voc12.onnx",), slow=True),
    "deeplab-export --weights W.pth --out m.onnx --dynamic": Run(_weights("W.pth", "deeplabv3plus_tiny"),
                                                                  expect=("m.onnx",), slow=True),
    "deeplab-export --weights W.pth --model deeplabv3plus_xception65 --num-classes 21 --height 513 --width 513 "
    "--out m.onnx": Run(_weights("W.pth", "deeplabv3plus_xception65", provenance=False), expect=("m.onnx",),
                        slow=True),
    # ---- training
    "reproduce/voc_v2.sh --smoke": Run(expect=("runs/deeplabv2_resnet101_msc-cocoinit-vocaug-321-20k/report.md",),
                                       slow=True),   # a training recipe's --out defaults to runs/<config>
    **{f"reproduce/{script}.sh --data-root data --models-dir data/models": Check(DATA_NEEDED + SMOKE_ELSEWHERE)
       for script in ("voc_v2", "cocostuff10k_v2", "cocostuff164k_v2", "voc_v3", "voc_v3plus")},
    "python -m reproduce.recipe voc_v3plus_xception65 --data-root data --models-dir data/models": Check(
        DATA_NEEDED + "its --smoke run is tests/test_scripts_train.py::test_xception65_recipe_is_one_config_file"),
    "python -m reproduce.recipe NAME": Check("a placeholder for a recipe name"),
    "deeplab-recipe NAME": Check("a placeholder for a recipe name"),
    "deeplab-recipe custom": Check("prose: the command's name (tests/test_custom_recipe.py runs it end to end)"),
    "python -m reproduce.recipe custom --data my_data --from deeplabv3_pascal_train_aug_2018_01_04 --val-fraction 0.1":
        Check("the user's own folder and an Xception-65 training of hours; tests/test_custom_recipe.py runs the "
              "command end to end on generated folders, a release's checkpoint included (slow)"),
    "python -m reproduce.recipe custom --data my_data --from weights/vainf_r101_voc.pth --class-weights auto":
        Check("the user's own folder and a ResNet-101 training of hours; tests/test_custom_recipe.py runs the "
              "command end to end on generated folders with converted weights"),
    "python -m reproduce.train --config reproduce/configs/<row>.yaml [--out DIR] [--set key=value]": Check(
        "a synopsis with placeholders; tests/test_train*.py train real configs on generated data"),
    "python -m reproduce.train --framework keras --config reproduce/configs/<row>.yaml [--out DIR]": Check(
        "a synopsis with placeholders; tests/test_train_keras.py trains in Keras"),
    # ---- Keras
    "python converters/caffe2tf.py --dataset voc12": Run(
        _caffe_release("voc12", "resnet101_msc", 21),
        expect=("data/models/deeplabv2_resnet101/deeplabv2_resnet101_msc_voc12.weights.h5",), slow=True),
    "python converters/caffe2tf.py --dataset coco_init --out init.keras": Run(
        _caffe_release("coco_init", "resnet101_init", 91), expect=("init.keras",), slow=True),
    "python converters/tf2keras.py --dataset deeplabv3_pascal_train_aug_2018_01_04": Run(
        _tf_release("deeplabv3_pascal_train_aug_2018_01_04"), slow=True),
    "python converters/tf2keras.py --dataset resnet_v1_101_2016_08_28 --out r101.weights.h5": Check(
        "the 2016 slim releases are V1 TensorSlice checkpoints, which TensorFlow 2 no longer writes; "
        "tests/test_tf_checkpoint.py reads V1 files"),
    'from reference_models.keras import build_keras_model, load_keras_model\nmodel = build_keras_model('
    '"deeplabv2_resnet101_msc", num_classes=21)\nmodel.load_weights("data/models/deeplabv2_resnet101/'
    'deeplabv2_resnet101_msc_voc12.weights.h5")\nscores = model(x_nhwc, training=False)   # NHWC, preprocessed as '
    'the .json says (v2: BGR minus mean)\nmodel.export("saved_model/")             # TF Serving / '
    'tf.saved_model.load(...).serve(x)': Run(_voc12_keras_weights, prelude=NHWC, expect=("saved_model",),
                                             slow=True),
    # ---- benchmarks
    "python -m benchmarks.run --suite inference --device cpu --models deeplabv2_resnet101,deeplabv3_resnet101,"
    "deeplabv3plus_resnet101,deeplabv3_mobilenetv2 --sizes 321,513 --batch 1 --precision fp32,bf16 --memory-format "
    "contiguous,channels_last --compile off": Check(MEASURES),
    "python -m benchmarks.run --suite convert": Check(MEASURES),
    "python -m benchmarks.run --suite eval": Check(MEASURES),
    "python -m benchmarks.run --suite train --configs deeplabv3_mobilenetv2_os16_voc12 --batch 2 --sizes 321":
        Check(MEASURES),
    "python -m benchmarks.run --suite engine": Check(MEASURES),
    "python -m benchmarks.run --suite engine --threads 2 --sizes 321,513 --resume --out-dir $R/results "
    "[--models A,B]": Check(MEASURES),
    "python -m benchmarks.report results/benchmarks/*.json [runs/*/result.json] --out "
    "benchmarks/reports/cpu-$(date -u +%F)": Check("needs the benchmark results; tests/test_benchmarks.py "
                                                   "makes reports"),
    "python -m benchmarks.report $R/results --out $R": Check("needs the benchmark results"),
    "python -m benchmarks.evaluation": Check("measures for minutes (tests/test_benchmark_evaluation.py)"),
    # ---- development
    "python tools/compile_protos.py": Check(WRITES_REPO),
    "python -m tools.make_test_data --check": Check("needs ../shared (the official prototxts), not in a checkout"),
    "python -m tests.fuzzing N": Check("a developer tool: N fuzz cases per format for minutes; tests/test_fuzz.py "
                                       "runs the same fuzzer"),
}


# ============================================================================ running
def _checkout(folder: Path) -> Path:
    """``folder`` made to look like a checkout: the repository's top-level entries linked in (generated files
    and outputs stay in ``folder``)."""
    for entry in REPO.iterdir():
        if entry.name.startswith(".") or entry.name in {"data", "results", "weights", "runs"}:
            continue
        (folder / entry.name).symlink_to(entry)
    return folder


def _isolated(folder: Path) -> dict[str, str]:
    """Where downloads and caches would go: below ``folder``, not the user's."""
    return {"HOME": str(folder / "home"), "XDG_CACHE_HOME": str(folder / "home" / ".cache"),
            "DEEPLAB_DOWNLOAD_LOCK": str(folder / "home" / "lock.json"), "TF_CPP_MIN_LOG_LEVEL": "2"}


def _env(folder: Path) -> dict[str, str]:
    env = {**os.environ, **_isolated(folder)}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"   # python, deeplab-*
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _entry(words: list[str], folder: Path) -> tuple[Callable[[list[str]], int], list[str]]:
    """The ``main`` a shell line runs and its arguments, to run it in this process (a Python process per
    ``--help`` costs seconds): ``python -m MOD``, ``python FILE.py``, a console script (pyproject's
    ``[project.scripts]``), or a ``reproduce/*.sh`` wrapper (the arguments it hands to Python)."""
    import importlib

    if words[0] == "bash":
        words = ["python", *wrapper_argv(REPO / words[1], *words[2:], workdir=folder)]
    if words[0] == "python":
        if words[1] == "-m":
            module, rest = words[2], words[3:]
        else:
            module, rest = words[1].removesuffix(".py").replace("/", "."), words[2:]
        return importlib.import_module(module).main, rest
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert words[0] in scripts, f"{words[0]} is not a console script in pyproject.toml"
    module, func = scripts[words[0]].split(":")
    return getattr(importlib.import_module(module), func), words[1:]


def expand_optional(text: str, drop: tuple[str, ...] = ()) -> str:
    """``text`` with each ``[...]`` part kept (its first ``a|b`` alternative) or, when listed in ``drop``,
    removed. Brackets inside quotes (``'table[5]'``) are not optional parts."""
    for part in drop:
        assert part in text, f"{part!r} is not in the command"
        text = text.replace(part, " ")
    out, quote, depth = [], None, 0
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[]":
            depth += 1 if ch == "[" else -1
            continue
        out.append(ch)
    assert depth == 0, f"unbalanced [ ] in {text!r}"
    return re.sub(r"([^\s|]+)(?:\|[^\s|]+)+", r"\1", " ".join("".join(out).split()))


def _program(text: str) -> list[str]:
    """The program part of a shell line (before the first option, placeholder or optional part)."""
    words = shlex.split(text)
    prog = []
    for w in words:
        if prog and (w.startswith(("-", "[", "$")) or w.rstrip(".").isupper() or "<" in w):
            if prog[-1:] == ["python"] or prog[-1:] == ["-m"]:
                prog.append(w)
                continue
            break
        prog.append(w)
    if prog[0].endswith(".sh"):
        prog.insert(0, "bash")
    return prog


def _options(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--[a-z][\w-]*)", text))


def _run(argv: list[str] | str, folder: Path, timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=folder, env=_env(folder), capture_output=True, text=True, timeout=timeout,
                          shell=isinstance(argv, str), executable="/bin/bash" if isinstance(argv, str) else None)


def _params() -> list:
    shown = readme_commands()
    params = []
    for text, cmd in shown.items():
        how = COMMANDS.get(text)
        if how is None:
            continue   # test_every_readme_command_is_classified says so
        marks = [pytest.mark.slow] if isinstance(how, Run) and how.slow else []
        label = f"L{cmd.line}-{type(how).__name__.lower()}-" + re.sub(r"\W+", "_", text)[:60]
        params.append(pytest.param(cmd, how, id=label, marks=marks))
    return params


def test_every_readme_command_is_classified():
    shown = readme_commands()
    unknown = [f"  README.md:{c.line}: {c.text!r}" for t, c in shown.items() if t not in COMMANDS]
    gone = [f"  {t!r}" for t in COMMANDS if t not in shown]
    assert not unknown, ("README commands this test does not know; classify each in COMMANDS of "
                         "tests/test_readme_commands.py (Run with its generated inputs, Check with the reason, or "
                         "Skip with the reason):\n" + "\n".join(unknown))
    assert not gone, "COMMANDS entries the README no longer shows (remove or update them):\n" + "\n".join(gone)


@pytest.mark.parametrize(("cmd", "how"), _params())
def test_readme_command(cmd: ReadmeCommand, how: Run | Check | Skip, tmp_path):
    if isinstance(how, Skip):
        if how.check is not None:
            how.check()
        return
    folder = _checkout(tmp_path)
    if isinstance(how, Check):
        assert cmd.kind == "shell"
        if how.how == "dry-run":
            main, argv = _entry(shlex.split(cmd.text), folder)
            proc = run_main(main, [*argv, "--dry-run"], cwd=folder, env=_isolated(folder))
            assert proc.returncode == 0, proc.stdout + proc.stderr
            assert not (folder / "data").exists() or not any((folder / "data").rglob("*.*")), "a dry run wrote files"
            return
        main, argv = _entry(_program(cmd.text), folder)
        proc = run_main(main, [*argv, "--help"], cwd=folder, env=_isolated(folder))
        assert proc.returncode == 0, f"{_program(cmd.text)} --help failed:\n{proc.stdout}{proc.stderr}"
        missing = sorted(o for o in _options(cmd.text) if not re.search(rf"{re.escape(o)}(?![\w-])", proc.stdout))
        assert not missing, f"README.md:{cmd.line}: {cmd.text!r} uses options its --help does not list: {missing}"
        return
    if how.setup is not None:
        how.setup(folder)
    if cmd.kind == "python":
        proc = _run([sys.executable, "-c", how.prelude + cmd.text], folder)
    else:
        proc = _run(expand_optional(cmd.text, how.drop), folder)
    assert proc.returncode == 0, f"README.md:{cmd.line}: {cmd.text!r} failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    for rel in how.expect:
        assert (folder / rel).exists(), f"README.md:{cmd.line}: {cmd.text!r} did not write {rel}"


def test_optional_parts_and_program():
    assert expand_optional("p --a [--b 1] [--c x|y|z] --t 'r[5]' [--cuda --amp]", drop=("[--cuda --amp]",)) == \
        "p --a --b 1 --c x --t 'r[5]'"
    assert _program("python -m reproduce.prepare voc_aug --voc-root d") == ["python", "-m", "reproduce.prepare",
                                                                          "voc_aug"]
    assert _program("reproduce/voc_v2.sh --data-root data") == ["bash", "reproduce/voc_v2.sh"]
    assert _program("deeplab-download NAME... [--dry-run]") == ["deeplab-download"]
    assert _program("python -m benchmarks.report $R/results --out $R") == ["python", "-m", "benchmarks.report"]


def test_an_unclassified_or_stale_command_fails_with_what_to_do(tmp_path, monkeypatch):
    readme = tmp_path / "README.md"
    readme.write_text("```sh\ntox -e demo\npython -m reproduce.newtool --fast\n```\n")
    monkeypatch.setattr(sys.modules[__name__], "README", readme)
    with pytest.raises(AssertionError, match=r"README.md:3: 'python -m reproduce.newtool --fast'.*") as info:
        test_every_readme_command_is_classified()
    assert "classify each in COMMANDS of tests/test_readme_commands.py" in str(info.value)
    monkeypatch.setattr(sys.modules[__name__], "COMMANDS", {"tox -e demo": COMMANDS["tox -e demo"], "tox": Skip("x")})
    readme.write_text("```sh\ntox -e demo\n```\n")
    with pytest.raises(AssertionError, match="no longer shows"):
        test_every_readme_command_is_classified()
