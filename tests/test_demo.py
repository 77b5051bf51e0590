"""The demo (`tox -e demo`, the README's first command): each part's own function on tiny settings, and the CLI.

`python -m reproduce.demo` runs these functions with the module's settings (minutes); here each runs in seconds,
so a refactor that breaks a part fails the fast suite.
"""

from __future__ import annotations

import functools
import json
import sys

import pytest
import yaml

from reproduce import demo
from reproduce.training.config import CONFIGS_DIR

V2_CONFIG = CONFIGS_DIR / "deeplabv2_resnet101_msc-cocoinit-vocaug-321-20k.yaml"   # what reproduce/voc_v2.sh runs


def test_parity_part_on_one_small_case(tmp_path, capsys):
    out = tmp_path / "parity.json"
    assert demo.parity_part(tmp_path, out, cases=[("coco_init", "resnet101_init", 91, (49, 49))])
    report = json.loads(out.read_text())
    (row,) = report["cases"]
    assert row["release"] == "coco_init" and row["arch"] == "deeplabv1_resnet101" and row["passed"]
    assert row["output"] == [1, 91, 7, 7] and row["max_rel"] <= demo.MAX_REL
    assert "coco_init     deeplabv1_resnet101" in capsys.readouterr().out


def tiny_v2_recipe(folder):
    """voc_v2's recipe (reproduce/voc_v2.sh) with a smaller smoke run: 1 iteration at crop 33, images of 40-56,
    evaluated on 2 of them."""
    base = yaml.safe_load(V2_CONFIG.read_text())
    variants = [{**v, "smoke_limit": 2} for v in base["eval"]["variants"]]
    path = folder / "voc_v2_tiny.yaml"
    path.write_text(yaml.safe_dump({
        "base": str(V2_CONFIG),
        "recipe": {**base["recipe"], "name": "voc_v2_tiny"},   # a recipe block is never inherited
        "eval": {"variants": variants},
        "smoke": {"sizes": [40, 56], "eval_crop": 65,
                  "overrides": {"solver.iterations": 1, "solver.batch_size": 1, "solver.accum_steps": 1,
                                "augment.crop_size": 33, "eval_every": 0}},
    }))
    return path


def test_story_runs_the_recipe_and_prints_its_report(tmp_path, capsys):
    command = (sys.executable, "-m", "reproduce.recipe", str(tiny_v2_recipe(tmp_path)), "--smoke")
    assert demo.story(tmp_path, command)
    printed = capsys.readouterr().out
    assert (tmp_path / "story" / "report.md").is_file()
    assert "76.35" in printed and "77.69" in printed   # the published numbers beside ours


def test_story_fails_when_the_recipe_fails(tmp_path, capsys):
    assert not demo.story(tmp_path, ("reproduce/voc_v2.sh", "--no-such-flag"))
    assert "FAILED" in capsys.readouterr().out


def test_the_default_story_is_the_readme_script():
    assert demo.STORY_COMMAND == ("reproduce/voc_v2.sh", "--smoke")
    assert (demo.REPO / demo.STORY_COMMAND[0]).is_file()


@pytest.mark.parametrize("min_miou, passed", [(0.0, True), (1.01, False)])
def test_learn_trains_and_scores_held_out_images(tmp_path, capsys, min_miou, passed):
    assert demo.learn(tmp_path, iterations=2, held_out=3, min_miou=min_miou) is passed
    assert (tmp_path / "shapes" / "final.pth").is_file()
    assert "held-out mIoU" in capsys.readouterr().out


def test_cli_rejects_an_unknown_part(capsys):
    assert demo.main(["--parts", "parity,dance"]) == 2
    assert "unknown part(s): dance" in capsys.readouterr().err


def test_cli_runs_the_chosen_part_and_fails_with_one_line(tmp_path, monkeypatch, capsys):
    """`--parts` runs only the named part; a failing part ends with exit 1 and one `error:` line."""
    monkeypatch.setattr(demo, "learn", functools.partial(demo.learn, iterations=1, held_out=2, min_miou=1.01))
    assert demo.main(["--parts", "learn", "--workdir", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert "== 1/3" not in captured.out and "== 3/3" in captured.out
    assert captured.err.strip().splitlines()[-1] == "error: demo: some parts failed (see above)"
