"""Config schema: unknown keys and --set paths are errors naming the closest key; bases; the resume fingerprint."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from reproduce.training import config as C
from reproduce.training import train
from tests.test_train import ENV, REPO, tiny_config, write_config

CONFIGS = REPO / "reproduce" / "configs"


def test_unknown_set_path_names_the_closest_key(tmp_path):
    cfg = C.load_config(CONFIGS / "deeplabv3_resnet101-os16-vocaug-513-30k.yaml")
    with pytest.raises(C.ConfigError, match=r"unknown config key solver\.base_lrr; did you mean solver\.base_lr\?"):
        C.apply_overrides(cfg, ["solver.base_lrr=5"])
    assert C.apply_overrides(cfg, ["solver.base_lr=5"]).solver.base_lr == 5.0
    assert C.apply_overrides(cfg, ["model.kwargs.dropout=0.5"]).model.kwargs["dropout"] == 0.5  # free-form map
    with pytest.raises(C.ConfigError, match="expected a number"):
        C.apply_overrides(cfg, ["solver.base_lr=fast"])
    proc = subprocess.run([sys.executable, "-m", "reproduce.train", "--config",
                           str(CONFIGS / "deeplabv3_resnet101-os16-vocaug-513-30k.yaml"), "--set", "solver.base_lrr=5",
                           "--print-config"], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "solver.base_lrr" in lines[0] and "did you mean solver.base_lr?" in lines[0]


def test_unknown_key_in_a_file_names_the_file_and_the_closest_key(tmp_path):
    cfg = tiny_config("v3")
    cfg["augment"]["flipp"] = False
    path = write_config(tmp_path, cfg)
    with pytest.raises(C.ConfigError, match=r"cfg\.yaml: unknown config key augment\.flipp; did you mean augment\.flip\?"):
        C.load_config(path)
    cfg = tiny_config("v3")
    cfg["solver"]["optimizer"] = "adam"
    with pytest.raises(C.ConfigError, match="solver.optimizer: 'adam' is not one of sgd, caffe_sgd"):
        C.load_config(write_config(tmp_path, cfg))


def test_base_inheritance(tmp_path):
    v3 = C.load_config(CONFIGS / "deeplabv3_resnet101-os16-vocaug-513-30k.yaml")
    v3plus = C.load_config(CONFIGS / "deeplabv3plus_resnet101-os16-vocaug-513-30k.yaml")
    raw = yaml.safe_load((CONFIGS / "deeplabv3plus_resnet101-os16-vocaug-513-30k.yaml").read_text())
    assert raw["base"] == "deeplabv3_resnet101-os16-vocaug-513-30k.yaml" and "solver" not in raw
    assert v3plus.model.name == "deeplabv3plus_resnet101" and v3plus.solver == v3.solver
    assert v3plus.recipe.name == "voc_v3plus" and v3plus.eval.variants[0].compare_to != v3.eval.variants[0].compare_to
    xc = C.load_config(CONFIGS / "deeplabv3plus_xception65-os16-vocaug-513-30k.yaml")
    assert xc.model.kwargs == {"output_stride": 16}  # _delete_: the ResNet kwargs are not inherited
    # a cycle is an error, not a recursion
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(C.ConfigError, match="cycle"):
        C.load_config(tmp_path / "a.yaml")


def test_shipped_configs_name_their_release_and_rows():
    """init.release is in converters/releases.py and every compare_to row exists in published.yaml."""
    from reproduce.evaluate import resolve_rows
    from reproduce.recipe import find_recipes, load_recipe

    recipes = find_recipes()
    assert {"voc_v2", "cocostuff10k_v2", "cocostuff164k_v2", "voc_v3", "voc_v3plus", "voc_v3plus_xception65",
            "voc_v2_official", "voc_v3plus_official"} <= set(recipes)
    for name in recipes:
        rec = load_recipe(name)
        variants = rec.eval.variants
        assert variants, name
        for v in variants:
            assert len(resolve_rows(v.compare_to)) == len(v.compare_to) >= 1
        if isinstance(rec, C.Config) and rec.init.release:
            rel = C.find_release(rec.init.release)
            assert C.init_weights_path(rec).name == rel.default_output.name


def test_resume_check_covers_only_the_computation(tmp_path):
    cfg = tiny_config("v2", iterations=2)
    cfg["data"]["how_to_get"] = "generated"
    train(cfg, tmp_path / "run")
    edited = {**cfg, "data": {**cfg["data"], "how_to_get": "a new download hint"}, "workers": 1, "eval_every": 0}
    train(edited, tmp_path / "run")  # documentation and runtime keys: resumes
    with pytest.raises(C.ConfigError, match=r"different config \(solver\.base_lr: 0\.002 -> 0\.5\)"):
        train(C.apply_overrides(cfg, ["solver.base_lr=0.5"]), tmp_path / "run")


def test_editing_a_comment_or_hint_in_a_file_keeps_resume(tmp_path):
    """The command's main in-process (the exit 1 one-liner through the interpreter: the test above)."""
    from reproduce.train import main
    from tests.inprocess import run_main

    cfg = tiny_config("v2", iterations=2)
    path = write_config(tmp_path, cfg)
    proc = run_main(main, ["--config", path, "--out", tmp_path / "run"], cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    path.write_text("# a new comment\n" + path.read_text().replace("init:", "init:\n  how_to_get: elsewhere\n "))
    again = run_main(main, ["--config", path, "--out", tmp_path / "run"], cwd=REPO)
    assert again.returncode == 0 and "resuming" in again.stderr, again.stderr
    bad = run_main(main, ["--config", path, "--out", tmp_path / "run", "--set", "solver.base_lr=0.1"], cwd=REPO)
    assert bad.returncode == 1 and "solver.base_lr" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_missing_dataset_names_the_registry_commands(tmp_path):
    """A config without a download hint gets the release registry's (download + prepare) for its data root."""
    from reproduce.training.data import build_train_dataset

    cfg = C.load_config(CONFIGS / "deeplabv2_resnet101_msc-cocoinit-cocostuff10k-321-20k.yaml")
    cfg = C.apply_overrides(cfg, [f"data.root={tmp_path}/cocostuff-10k-v1.1"])
    with pytest.raises(C.ConfigError, match=rf"python -m reproduce\.download cocostuff10k --data-root {tmp_path}$"):
        build_train_dataset(cfg)


@pytest.mark.parametrize("limit", [0, -3])
def test_eval_limit_below_one_is_refused_when_the_config_is_read(limit):
    """Not at the first evaluation, thousands of iterations into the run."""
    cfg = C.load_config(CONFIGS / "deeplabv3_resnet101-os16-vocaug-513-30k.yaml")
    with pytest.raises(C.ConfigError, match=rf"eval_limit must be >= 1 .*got {limit}"):
        C.apply_overrides(cfg, [f"eval_limit={limit}"])
    assert C.apply_overrides(cfg, ["eval_limit=5"]).eval_limit == 5
