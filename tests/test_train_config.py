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


# ------------------------------------------------------------------------------ bad values: one line naming file and key
@pytest.mark.parametrize("section,key,value,match", [
    ("model", "num_classes", "four", r"config key model\.num_classes: expected an integer, got 'four'"),
    ("model", "num_classes", 0, r"config key model\.num_classes: must be >= 1"),
    ("solver", "base_lr", float("nan"), r"config key solver\.base_lr: expected a finite number, got nan"),
    ("solver", "base_lr", float("inf"), r"config key solver\.base_lr: expected a finite number, got inf"),
    ("solver", "base_lr", 0, r"config key solver\.base_lr: must be > 0"),
    ("augment", "crop_size", 0, r"config key augment\.crop_size: must be >= 1"),
    ("augment", "crop_size", [64, 0], r"config key augment\.crop_size\[1\]: must be >= 1"),
    ("augment", "crop_size", [64, 64, 64], r"config key augment\.crop_size: expected one size or \[height, width\]"),
    ("augment", "scales", [1.0, -0.5], r"config key augment\.scales\[1\]: must be > 0"),
    (None, "workers", -1, r"config key workers: must be >= 0"),
    (None, "seed", -1, r"config key seed: must be >= 0"),
    ("preprocessing", "std", [127.5, 0, 127.5], r"config key preprocessing\.std\[1\]: must be > 0"),
    ("init", "drop", ["fc8("], r"config key init\.drop\[0\]: 'fc8\(' is not a regular expression"),
])
def test_bad_values_are_one_line_naming_the_file_and_the_key(tmp_path, section, key, value, match):
    cfg = tiny_config("v3")
    (cfg.setdefault(section, {}) if section else cfg)[key] = value
    path = write_config(tmp_path, cfg)
    with pytest.raises(C.ConfigError, match=rf"^{path}: {match}") as exc:
        C.load_config(path)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("override,match", [
    ("workers=-1", r"config key workers: must be >= 0 and <= 1024, got -1"),
    ("model.num_classes=four", r"config key model\.num_classes: expected an integer, got 'four'"),
    ("solver.base_lr=.nan", r"config key solver\.base_lr: expected a finite number, got nan"),
    ("augment.crop_size=0", r"config key augment\.crop_size: must be >= 1"),
    ("solver.base_lr=[", r"--set solver\.base_lr: not valid YAML"),
])
def test_bad_overrides_name_the_config_file(tmp_path, override, match):
    path = write_config(tmp_path, tiny_config("v3"))
    cfg = C.load_config(path)
    with pytest.raises(C.ConfigError, match=match) as exc:
        C.apply_overrides(cfg, [override])
    if "--set" not in match:
        assert str(exc.value).startswith(f"{path}: ")
    assert C.config_source(C.apply_overrides(cfg, ["workers=2"])) == str(path)


@pytest.mark.parametrize("flag", [["--workers", "-1"], ["--set", "augment.crop_size=0"], ["--iterations", "0"]])
def test_train_cli_bad_values_are_one_line(tmp_path, flag):
    from reproduce.training.cli import main
    from tests.inprocess import run_main

    path = write_config(tmp_path, tiny_config("v3"))
    proc = run_main(main, ["--config", path, "--out", tmp_path / "run", *flag])
    assert proc.returncode == 1 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: "), proc.stderr
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------ the bounded YAML loader
def _bomb(levels: int = 9) -> str:
    """Billion laughs: 10**levels strings from a few hundred bytes."""
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    return "\n".join(lines)


def test_alias_bomb_in_model_kwargs_is_refused_at_once(tmp_path):
    import time

    cfg = tiny_config("v3")
    del cfg["model"]
    path = tmp_path / "bomb.yaml"
    bomb = "\n".join("      " + line for line in _bomb().splitlines())
    path.write_text(yaml.safe_dump(cfg) + "model:\n  name: deeplabv3_tiny\n  num_classes: 4\n  kwargs:\n"
                    "    output_stride: 8\n    laughs:\n" + bomb + "\n")
    t0 = time.monotonic()
    with pytest.raises(C.ConfigError, match=rf"^{path}: refused YAML: expands to more than 100000 values") as exc:
        C.load_config(path)
    assert time.monotonic() - t0 < 5 and "\n" not in str(exc.value)
    small = yaml.safe_dump(cfg) + "model:\n  name: deeplabv3_tiny\n  num_classes: 4\n  kwargs:\n    laughs:\n" + \
        "\n".join("      " + line for line in _bomb(3).splitlines()) + "\n"
    path.write_text(small)
    assert len(C.load_config(path).model.kwargs["laughs"]["a3"]) == 10


@pytest.mark.parametrize("text,match", [
    ("a: " + "[" * 200 + "]" * 200, "nests deeper than 64 levels"),
    ("- " * 100 + "x", "nests deeper than 64 levels"),
    ("a: &x [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]\n"
     "b: [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[*x]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]", "after alias expansion"),
    ("a: &a [*a]", "an alias refers to its own ancestor"),
    ("solver: {base_lr: 1}\nsolver: {base_lr: 2}", r"duplicate key 'solver' \(line 2\)"),
    ("a: !!python/object/apply:os.system [echo hi]", "not valid YAML"),
    ("a: !!int abc", "not valid YAML"),
    ("a: [1, 2", "not valid YAML"),
])
def test_bounded_yaml_loader_refuses_in_one_line(tmp_path, text, match):
    from reproduce.yamlfile import YAMLFileError, load_yaml

    path = tmp_path / "x.yaml"
    path.write_text(text)
    with pytest.raises(YAMLFileError, match=rf"^{path}: .*{match}") as exc:
        load_yaml(path)
    assert "\n" not in str(exc.value)
    with pytest.raises(C.ConfigError, match=match):
        C.load_config(path)


def test_bounded_yaml_loader_reads_every_shipped_yaml_as_safe_load_does():
    from reproduce.yamlfile import load_yaml

    files = sorted((REPO / "reproduce").rglob("*.yaml"))
    assert len(files) > 5
    for path in files:
        assert load_yaml(path) == yaml.safe_load(path.read_text(encoding="utf-8")), path
    # merge keys and shared anchors within the bounds still load
    from reproduce.yamlfile import parse_yaml

    assert parse_yaml("a: &x {b: 1}\nc: {<<: *x, d: 2}", "t") == {"a": {"b": 1}, "c": {"b": 1, "d": 2}}


def test_oversized_yaml_file_is_refused_before_parsing(tmp_path):
    from reproduce.yamlfile import MAX_BYTES, YAMLFileError, load_yaml

    path = tmp_path / "big.yaml"
    path.write_text("a: 1\n" + "#" * MAX_BYTES)
    with pytest.raises(YAMLFileError, match=rf"^{path}: refused YAML: larger than 256 KiB"):
        load_yaml(path)


def test_every_yaml_reader_uses_the_bounded_loader():
    """No yaml.safe_load / yaml.load left in the package or tools (one loader, bounded, everywhere)."""
    import re

    offenders = [str(p.relative_to(REPO)) for d in ("reproduce", "converters", "reference_models", "tools")
                 for p in (REPO / d).rglob("*.py") if p.name != "yamlfile.py"
                 and re.search(r"yaml\.(safe_)?load\b|yaml\.(full_|unsafe_)load", p.read_text(encoding="utf-8"))]
    assert offenders == []


@pytest.mark.parametrize("spec,match", [("deeplabv2:x=[", "not valid YAML"),
                                        ("deeplabv2:x=&a [*a]", "an alias refers to its own ancestor")])
def test_compare_to_values_go_through_the_bounded_loader(spec, match):
    from reproduce.evaluate import resolve_rows
    from reproduce.inference import InferenceError

    with pytest.raises(InferenceError, match=rf"^--compare-to value .*{match}"):
        resolve_rows([spec])


@pytest.mark.parametrize("recipe,flag", [("voc_v3plus", "--workers"), ("voc_v3plus", "--crf-workers"),
                                         ("voc_v2", "--workers")])
def test_recipe_negative_workers_are_one_line_before_any_step(tmp_path, recipe, flag):
    from reproduce.recipe import main
    from tests.inprocess import run_main

    proc = run_main(main, [recipe, flag, "-1", "--data-root", tmp_path / "data", "--out", tmp_path / "out"])
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [f"error: {flag} must be >= 0, got -1"]
    assert not (tmp_path / "out").exists()


def test_zero_keeps_its_meaning_where_it_has_one():
    """checkpoint_every 0 (no checkpoints), keep_checkpoints 0 (keep all), eval_every 0 (no evaluation) stay valid."""
    cfg = C.load_config(CONFIGS / "deeplabv3plus_tiny-shapes-64.yaml")
    cfg = C.apply_overrides(cfg, ["checkpoint_every=0", "keep_checkpoints=0", "eval_every=0", "workers=0"])
    assert (cfg.checkpoint_every, cfg.keep_checkpoints, cfg.eval_every, cfg.workers) == (0, 0, 0, 0)
    with pytest.raises(C.ConfigError, match="config key log_every: must be >= 1"):  # the loop divides by it
        C.apply_overrides(cfg, ["log_every=0"])
