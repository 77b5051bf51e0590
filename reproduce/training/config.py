"""Training configs: a typed schema, base-config inheritance, validated ``--set`` overrides, a resume fingerprint.

A config file is YAML whose top-level keys are the fields of :class:`Config` (each section a
dataclass below). ``base: other.yaml`` (a path relative to the file) loads that config first and
merges this one over it key by key (mappings merge, everything else replaces), so a row that
differs from another in three values is written as those three values. Any key the schema does
not know, in a file or a ``--set`` path, is an error naming it and the closest known key.

The resume check compares :func:`fingerprint` of the saved and the new config: the values that
change what a run computes. Fields whose metadata says ``affects=False`` (how to run: workers,
logging, device; documentation: download hints, the recipe and evaluation blocks; where files
are: data.root, init.weights) may change between sessions of one run.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from converters.errors import DeeplabError
from reproduce.yamlfile import YAMLFileError, load_yaml, parse_yaml

__all__ = [
    "ConfigError", "Config", "load_config", "parse_config", "apply_overrides", "to_dict", "fingerprint",
    "changed_keys", "config_source", "find_release", "init_weights_path", "smoke_config", "CONFIGS_DIR",
]

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(DeeplabError, ValueError):
    """A bad config, missing data or weights: one line, shown without a traceback (exit 1)."""


def _runtime(default: Any = None, **kw: Any) -> Any:
    """A field that does not change what a run computes (may differ when a run resumes)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"affects": False}, **kw)
    return field(default=default, metadata={"affects": False}, **kw)


def _list(default: list | None = None) -> Any:
    return field(default_factory=lambda: list(default or []))


# ============================================================================ sections
@dataclass
class ModelCfg:
    name: str
    num_classes: int
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class HeadInitCfg:
    match: str = ".*"
    weight_std: float = 0.01
    bias: float = 0.0


@dataclass
class InitCfg:
    release: str | None = _runtime()          # converters/releases.py name: where the weights come from
    weights: str | None = _runtime()          # converted file; default: the release's, below models_dir
    prefix: str = ""
    drop: list[str] = _list()
    require: list[str] = _list()
    head_init: HeadInitCfg | None = None
    how_to_get: str | None = _runtime()


@dataclass
class DataCfg:
    dataset: str
    root: str | None = _runtime()
    split: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    how_to_get: str | None = _runtime()


@dataclass
class PreprocessingCfg:
    channel_order: Literal["RGB", "BGR"]
    mean: list[float]
    std: list[float] = _list([1.0, 1.0, 1.0])
    scale: float = 1.0


@dataclass
class AugmentCfg:
    crop_size: int | list[int]
    scales: list[float] | None = None
    scale_range: list[float] | None = None
    flip: bool = True
    resize: Literal["caffe", "tf"] = "caffe"


@dataclass
class FocalCfg:
    gamma: float = 2.0                     # (1 - p_y) ** gamma; 0 is cross-entropy
    alpha: float | list[float] | None = None   # a factor, or one per class


@dataclass
class LossCfg:
    """The loss; the options beyond kind/normalization are defined in reproduce/pixel_losses.py."""

    kind: str
    normalization: Literal["per_image", "pixels"] = "per_image"
    shrink: Any = None
    class_weights: str | list[float] | None = None   # "auto": from the training labels' histogram; or one per class
    top_k_percent_pixels: float = 1.0      # DeepLab-TF hard-pixel mining: < 1 keeps the hardest share
    hard_example_mining_step: int = 0      # the share anneals from 1 to top_k_percent_pixels over these steps
    focal: FocalCfg | None = None
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.class_weights, str) and self.class_weights != "auto":
            raise ConfigError(f"config key loss.class_weights: {self.class_weights!r} is not auto, a list of "
                              "numbers (one per class) or null")
        if not 0.0 < self.top_k_percent_pixels <= 1.0:
            raise ConfigError(f"config key loss.top_k_percent_pixels: {self.top_k_percent_pixels} is not in (0, 1]")
        if self.hard_example_mining_step < 0:
            raise ConfigError(f"config key loss.hard_example_mining_step: {self.hard_example_mining_step} is < 0")
        if self.top_k_percent_pixels < 1.0 and self.normalization != "pixels":
            raise ConfigError("config key loss.top_k_percent_pixels: hard-pixel mining ranks the pixels of a batch "
                              "(DeepLab-TF); set loss.normalization: pixels")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"config key loss.label_smoothing: {self.label_smoothing} is not in [0, 1)")
        if self.focal is not None and self.focal.gamma < 0:
            raise ConfigError(f"config key loss.focal.gamma: {self.focal.gamma} is < 0")
        for key, value in (("class_weights", self.class_weights),
                           ("focal.alpha", None if self.focal is None else self.focal.alpha)):
            values = value if isinstance(value, list) else [value] if isinstance(value, float) else []
            if any(v < 0 or v != v or v == float("inf") for v in values):
                raise ConfigError(f"config key loss.{key}: weights must be finite and >= 0, got {value}")

    def check_classes(self, num_classes: int) -> str | None:
        """A problem with per-class lists of the wrong length, or None."""
        for key, value in (("class_weights", self.class_weights),
                           ("focal.alpha", None if self.focal is None else self.focal.alpha)):
            if isinstance(value, list) and len(value) != num_classes:
                return f"loss.{key} has {len(value)} values for {num_classes} classes (model.num_classes)"
        return None


@dataclass
class BnCfg:
    mode: Literal["frozen", "train"] = "frozen"
    momentum: float | None = None


@dataclass
class ParamRuleCfg:
    match: str | None = None
    max_ndim: int | None = None
    lr_mult: float = 1.0
    decay_mult: float = 1.0


@dataclass
class SolverCfg:
    iterations: int
    batch_size: int
    base_lr: float
    accum_steps: int = 1
    optimizer: Literal["sgd", "caffe_sgd"] = "sgd"
    lr_power: float = 0.9
    momentum: float = 0.9
    weight_decay: float = 0.0
    param_rules: list[ParamRuleCfg] = _list()


@dataclass
class EvalVariantCfg:
    """One evaluation of the trained weights (a ``reproduce.evaluate`` run) and the published rows it meets."""

    name: str
    output_stride: int | None = None
    scales: list[float] = _list([1.0])
    flip: bool = False
    crf: bool = False
    compare_to: list[str] = _list()        # reproduce/tables/published.yaml rows, TABLE[INDEX]
    say: str | None = None
    smoke_limit: int | None = None         # --smoke: evaluate only the first N images


@dataclass
class EvalCfg:
    dataset: str | None = None             # default: data.dataset
    split: str = "val"
    protocol: Literal["pad", "whole", "warp"] = "pad"
    crop_size: int = 513
    root: str | None = None                # default: data.root
    kwargs: dict[str, Any] = field(default_factory=dict)   # extra reader arguments (the generated shapes)
    variants: list[EvalVariantCfg] = _list()


@dataclass
class SmokeSourceCfg:
    caffe: str | None = None               # converters.caffe.synth topology of a random official caffemodel
    tf: bool = False                       # a random TF checkpoint of the init release's variables


@dataclass
class SmokeCfg:
    data: Literal["voc_aug", "cocostuff10k", "cocostuff164k"]
    sizes: list[int] = _list([200, 260])
    source: SmokeSourceCfg = field(default_factory=SmokeSourceCfg)
    overrides: dict[str, Any] = field(default_factory=dict)
    eval_crop: int = 129                   # evaluation crop of a smoke run


@dataclass
class RecipeCfg:
    """What ``python -m reproduce.recipe NAME`` needs beyond the training config."""

    name: str
    title: str
    data_dir: str = ""                     # the dataset folder below --data-root
    data_help: str = ""                    # what --data-root holds (help text)
    prepare: Literal["voc_aug"] | None = None
    paper: str = ""                        # where the compared rows come from (help text)


@dataclass
class Config:
    model: ModelCfg
    data: DataCfg
    preprocessing: PreprocessingCfg
    augment: AugmentCfg
    loss: LossCfg
    solver: SolverCfg
    name: str = _runtime("config")
    init: InitCfg = field(default_factory=InitCfg)
    bn: BnCfg = field(default_factory=BnCfg)
    seed: int = 0
    ignore_index: int = 255
    models_dir: str = _runtime("data/models")   # where init.release's converted weights are looked for
    workers: int = _runtime(0)
    log_every: int = _runtime(20)
    checkpoint_every: int = _runtime(1000)
    keep_checkpoints: int = _runtime(2)
    device: str | None = _runtime()
    dist_timeout: float = _runtime(3600.0)  # seconds a collective, or the wait for rank 0's evaluation, may take
    amp: bool = _runtime(False)
    deterministic: bool = _runtime(False)   # deterministic kernels where torch has them (see loop.deterministic_mode)
    channels_last: bool = _runtime(False)
    progress: bool = _runtime(True)
    tensorboard: bool = _runtime(True)
    on_error: Literal["error", "skip"] = _runtime("error")   # a corrupt training sample: stop, or skip and count
    eval_every: int = _runtime(0)           # evaluate every N iterations (rank 0), keep best.pth beside last.pth
    eval_split: str | None = _runtime()     # default: eval.split
    eval_limit: int | None = _runtime()     # evaluate on the first N images only
    eval: EvalCfg | None = _runtime()
    smoke: SmokeCfg | None = _runtime()
    recipe: RecipeCfg | None = _runtime()

    def get(self, key: str, default: Any = None) -> Any:  # dict-style reads for callers that held dicts
        return getattr(self, key, default)

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)


# ============================================================================ parsing
_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _closest(key: str, known: Sequence[str]) -> str:
    match = difflib.get_close_matches(key, list(known), n=1, cutoff=0.5)
    return f" (did you mean {match[0]}?)" if match else f" (known: {', '.join(known)})"


def _unknown(dotted: str, known: Sequence[str], prefix: str) -> ConfigError:
    leaf = dotted.rsplit(".", 1)[-1]
    match = difflib.get_close_matches(leaf, list(known), n=1, cutoff=0.5)
    hint = f"; did you mean {prefix}{match[0]}?" if match else f"; known keys: {', '.join(prefix + k for k in known)}"
    return ConfigError(f"unknown config key {dotted}{hint}")


def _shown(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: an error names the value, a mutated file can make it huge."""
    try:
        text = repr(value)
    except ValueError:  # an integer beyond Python's digit limit for str()
        return f"an integer of about {int(value.bit_length() * 0.30103)} digits"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(tp: Any, value: Any, dotted: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, dotted)
            except ConfigError as e:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(f"config key {dotted}: {_shown(value)} is not a {' or '.join(_type_name(a) for a in args)}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"config key {dotted}: {_shown(value)} is not one of {', '.join(map(str, choices))}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {dotted}: expected a list, got {_shown(value)}")
        (item,) = typing.get_args(tp)
        return [_coerce(item, v, f"{dotted}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key {dotted}: expected a mapping, got {_shown(value)}")
        return dict(value)
    if is_dataclass(tp):
        return _build(tp, value, dotted + ".")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key {dotted}: expected true or false, got {_shown(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {dotted}: expected an integer, got {_shown(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key {dotted}: expected a number, got {_shown(value)}")
        try:
            number = float(value)
        except OverflowError:  # an integer beyond any float
            number = math.inf
        if not math.isfinite(number):  # no rate, size or statistic of a config is NaN or infinite
            raise ConfigError(f"config key {dotted}: expected a finite number, got {_shown(value)}")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key {dotted}: expected a string, got {_shown(value)}")
        return value
    raise TypeError(f"schema type {tp} of {dotted} is not supported")


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"config key {prefix.rstrip('.') or 'config'}: expected a mapping, got {_shown(data)}")
    hints = _hints(cls)
    known = [f.name for f in fields(cls)]
    for key in data:
        if key not in hints:
            raise _unknown(f"{prefix}{key}", known, prefix)
    kwargs = {}
    for f in fields(cls):
        if f.name in data:
            kwargs[f.name] = _coerce(hints[f.name], data[f.name], f"{prefix}{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"config key {prefix}{f.name} is required")
    return cls(**kwargs)


def parse_config(data: Mapping[str, Any] | Config, *, where: str | None = None) -> Config:
    """Validate a config mapping against the schema (unknown keys, types, required keys)."""
    if isinstance(data, Config):
        return data
    data = {k: v for k, v in data.items() if k != "base"}
    try:
        cfg = _build(Config, data, "")
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}" if where else str(e)) from None
    _check(cfg, where)
    return cfg


def _check(cfg: Config, where: str | None) -> None:
    def fail(msg: str) -> None:
        raise ConfigError(f"{where}: {msg}" if where else msg)

    s = cfg.solver
    if s.iterations < 1 or s.batch_size < 1 or s.accum_steps < 1:
        fail("solver.iterations, solver.batch_size and solver.accum_steps must be >= 1")
    if s.batch_size % s.accum_steps:
        fail(f"solver.batch_size {s.batch_size} is not divisible by solver.accum_steps {s.accum_steps}")
    if (cfg.augment.scales is None) == (cfg.augment.scale_range is None):
        fail("give exactly one of augment.scales (a list) or augment.scale_range ([low, high])")
    loss_problem = cfg.loss.check_classes(cfg.model.num_classes)
    if loss_problem:
        fail(loss_problem)
    if cfg.init.release is not None and find_release(cfg.init.release) is None:
        fail(f"init.release {_shown(cfg.init.release)} is not in converters/releases.py")
    if cfg.eval_every < 0:
        fail("eval_every must be >= 0")
    if not cfg.dist_timeout > 0:
        fail(f"dist_timeout must be > 0 seconds, got {cfg.dist_timeout}")
    if cfg.eval_limit is not None and cfg.eval_limit < 1:
        fail(f"eval_limit must be >= 1 (or null for the whole split), got {cfg.eval_limit}")
    for key, bounds in _RANGES.items():
        for dotted, value in _values(cfg, key):
            problem = bounds.problem(value) if isinstance(value, (int, float)) else None
            if problem:
                fail(f"config key {dotted}: {problem}, got {_shown(value)}")
    crop = cfg.augment.crop_size
    if isinstance(crop, list) and len(crop) != 2:
        fail(f"config key augment.crop_size: expected one size or [height, width], got {_shown(crop)}")
    sr = cfg.augment.scale_range
    if sr is not None and (len(sr) != 2 or sr[0] > sr[1]):
        fail(f"config key augment.scale_range: expected [low, high] with low <= high, got {_shown(sr)}")
    for key in _REGEXES:
        for dotted, value in _values(cfg, key):
            try:
                re.compile(value)
            except (re.error, RecursionError, OverflowError) as e:
                fail(f"config key {dotted}: {_shown(value)} is not a regular expression ({e})")


@dataclass(frozen=True)
class _Range:
    """Inclusive bounds of a number (``above``: strictly greater than ``low``)."""

    low: float | None = None
    high: float | None = None
    above: bool = False

    def problem(self, value: float) -> str | None:
        if self.low is not None and (value <= self.low if self.above else value < self.low):
            return f"must be {'>' if self.above else '>='} {self.low}" + (
                f" and <= {self.high}" if self.high is not None else "")
        if self.high is not None and value > self.high:
            return f"must be <= {self.high}"
        return None


_SIZE = _Range(1, 16384)  # pixels of a crop or an image side
_POSITIVE = _Range(0, above=True)
_NON_NEGATIVE = _Range(0)
# The value ranges of the schema's numbers, by dotted key ("[]": every item of a list). The types are
# checked when parsing; these are the values a run can use (a crop of 0, workers -1, a rate of 0, a
# class count of 0 fail much later, or silently, if at all).
_RANGES: dict[str, _Range] = {
    "model.num_classes": _Range(1, 65536),
    "init.head_init.weight_std": _NON_NEGATIVE,
    "preprocessing.std[]": _POSITIVE,
    "preprocessing.scale": _POSITIVE,
    "augment.crop_size": _SIZE,
    "augment.crop_size[]": _SIZE,
    "augment.scales[]": _Range(0, 64, above=True),
    "augment.scale_range[]": _Range(0, 64, above=True),
    "bn.momentum": _Range(0, 1),
    "solver.iterations": _Range(1, 10**9),
    "solver.batch_size": _Range(1, 65536),
    "solver.accum_steps": _Range(1, 65536),
    "solver.base_lr": _POSITIVE,
    "solver.lr_power": _NON_NEGATIVE,
    "solver.momentum": _Range(0, 1),
    "solver.weight_decay": _NON_NEGATIVE,
    "solver.param_rules[].max_ndim": _NON_NEGATIVE,
    "solver.param_rules[].lr_mult": _NON_NEGATIVE,
    "solver.param_rules[].decay_mult": _NON_NEGATIVE,
    "seed": _Range(0, 2**63 - 1),
    "ignore_index": _Range(0, 65535),
    "workers": _Range(0, 1024),
    "log_every": _Range(1),
    "checkpoint_every": _NON_NEGATIVE,      # 0: no checkpoints
    "keep_checkpoints": _NON_NEGATIVE,      # 0: keep them all
    "eval.crop_size": _SIZE,
    "eval.variants[].output_stride": _Range(1, 64),
    "eval.variants[].scales[]": _Range(0, 64, above=True),
    "eval.variants[].smoke_limit": _Range(1),
    "smoke.sizes[]": _SIZE,
    "smoke.eval_crop": _SIZE,
}
_REGEXES = ["init.drop[]", "init.require[]", "init.head_init.match", "solver.param_rules[].match"]


def _values(obj: Any, key: str) -> list[tuple[str, Any]]:
    """``[(dotted key with indices, value), ...]`` at ``key`` of ``obj``: nothing below a None section;
    ``name[]`` steps into every item of a list (and past anything else)."""
    found = [("", obj)]
    for part in key.split("."):
        name = part.removesuffix("[]")
        step = []
        for dotted, node in found:
            value = getattr(node, name, None)
            where = f"{dotted}.{name}" if dotted else name
            if part.endswith("[]"):
                if isinstance(value, list):
                    step += [(f"{where}[{i}]", v) for i, v in enumerate(value)]
            elif value is not None:
                step.append((where, value))
        found = step
    return found


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` merged into ``base``: mappings key by key (``_delete_: true`` replaces instead), else replaced."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict) and not v.get("_delete_"):
            out[k] = _merge(out[k], v)
        else:
            out[k] = _strip_delete(copy.deepcopy(v))
    return out


def _strip_delete(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _strip_delete(x) for k, x in v.items() if k != "_delete_"}
    return v


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError) as e:  # RuntimeError: a symlink loop
        raise ConfigError(f"{path}: cannot read the config ({e})") from None
    if resolved in chain:
        raise ConfigError(f"{path}: base configs form a cycle ({' -> '.join(p.name for p in (*chain, path))})")
    try:
        data = load_yaml(path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config not found (configs live in reproduce/configs/)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the config ({e})") from None
    except YAMLFileError as e:
        raise ConfigError(str(e)) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a mapping")
    base = data.pop("base", None)
    if base is None:
        return _strip_delete(data)
    if not isinstance(base, str) or not base or "\x00" in base:
        raise ConfigError(f"{path}: base must be a file name, got {_shown(base)}")
    parent = _read_yaml(path.parent / base, (*chain, resolved))
    parent.pop("name", None)
    parent.pop("recipe", None)  # a recipe is one row: never inherited
    return _merge(parent, data)


def load_config(path: str | os.PathLike) -> Config:
    """Read, inherit (``base:``), validate; ``name`` defaults to the file name."""
    path = Path(path)
    data = _read_yaml(path)
    data.setdefault("name", path.stem)
    return _from_file(parse_config(data, where=str(path)), str(path))


def _from_file(cfg: Config, where: str | None) -> Config:
    """``cfg``, remembering the file it was read from: errors of later overrides name it too."""
    if where is not None:
        cfg._source = where  # not a field: no part of the config's values, its fingerprint or its YAML
    return cfg


def config_source(cfg: Any) -> str | None:
    """The file ``cfg`` was read from (through :func:`load_config` and any overrides since), or None."""
    return getattr(cfg, "_source", None)


# ============================================================================ overrides
def _field_type(cls: Any, parts: list[str], dotted: str) -> None:
    """Raise unless ``parts`` is a path the schema knows (free-form mappings accept any sub-key)."""
    prefix = ""
    tp: Any = cls
    for i, part in enumerate(parts):
        tp = _strip_optional(tp)
        if typing.get_origin(tp) is dict or tp is Any:
            return
        if not is_dataclass(tp):
            raise ConfigError(f"--set {dotted}: {prefix.rstrip('.')} is a value, not a section")
        hints = _hints(tp)
        if part not in hints:
            raise _unknown(dotted, [f.name for f in fields(tp)], prefix)
        tp = hints[part]
        prefix += part + "."
        if i == len(parts) - 1:
            return


def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        dcs = [a for a in args if is_dataclass(a)]
        return dcs[0] if dcs else (args[0] if len(args) == 1 else Any)
    return tp


def apply_overrides(cfg: Config | Mapping[str, Any], overrides: Mapping[str, Any] | Sequence[str]) -> Config:
    """A copy of ``cfg`` with ``key.path=value`` strings (values parsed as YAML) or a ``{path: value}`` map.

    Every path must be one the schema knows: ``solver.base_lrr=5`` fails, suggesting ``solver.base_lr``.
    Errors name the file ``cfg`` was read from, when it was.
    """
    where = config_source(cfg)
    data = to_dict(cfg) if isinstance(cfg, Config) else copy.deepcopy(dict(cfg))
    if isinstance(overrides, Mapping):
        items = list(overrides.items())
    else:
        items = []
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"--set expects key.path=value, got {item!r}")
            key, value = item.split("=", 1)
            try:
                items.append((key.strip(), parse_yaml(value, f"--set {key.strip()}")))
            except YAMLFileError as e:
                raise ConfigError(str(e)) from None
    for key, value in items:
        parts = key.split(".")
        if not all(parts):
            raise ConfigError(f"--set {key}: empty key in the path")
        _field_type(Config, parts, key)
        node = data
        for k in parts[:-1]:
            if not isinstance(node.get(k), dict):
                node[k] = {}
            node = node[k]
        node[parts[-1]] = value
    return _from_file(parse_config(data, where=where), where)


def set_value(cfg: Config, dotted: str, value: Any) -> Config:
    return apply_overrides(cfg, {dotted: value})


# ============================================================================ fingerprint
def to_dict(cfg: Any) -> Any:
    if is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in fields(cfg)}
    if isinstance(cfg, list):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def fingerprint(cfg: Any) -> dict[str, Any]:
    """The flat ``{dotted key: value}`` of everything that changes what a run computes."""
    out: dict[str, Any] = {}

    def walk(obj: Any, prefix: str) -> None:
        if is_dataclass(obj):
            for f in fields(obj):
                if f.metadata.get("affects", True):
                    walk(getattr(obj, f.name), f"{prefix}{f.name}.")
        else:
            out[prefix.rstrip(".")] = to_dict(obj)

    walk(cfg, "")
    return out


def changed_keys(old: Config, new: Config) -> list[str]:
    """``key: old -> new`` for every computation-relevant key that differs."""
    a, b = fingerprint(old), fingerprint(new)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]



def run_config_matches(path: str | os.PathLike, cfg: Config) -> bool:
    """Whether the YAML file at ``path`` already holds ``cfg`` as a run reads its saved config back."""
    try:
        data = load_yaml(path)
        return isinstance(data, Mapping) and to_dict(parse_config(data)) == to_dict(cfg)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, ConfigError):
        return False


def write_run_config(path: str | os.PathLike, cfg: Config) -> None:
    """Save ``cfg`` as the run's ``config.yaml`` (atomically, checked), unless the file already holds it: a
    file that says the same is left byte for byte (it may be the user's own ``--config``, comments and all)."""
    from converters.io import write_text_atomic

    if Path(path).is_file() and run_config_matches(path, cfg):
        return
    write_text_atomic(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))

# ============================================================================ releases and smoke
def find_release(name: str) -> Any:
    """The record of release ``name`` in converters/releases.py, or None."""
    from converters import releases

    return releases.RELEASES.get(name)


def release_format(rel: Any) -> str:
    from converters.releases import TFRelease

    return "tf" if isinstance(rel, TFRelease) else "caffe"


def init_weights_path(cfg: Config) -> Path | None:
    """``init.weights``, else the converted file of ``init.release`` below ``models_dir``, else None."""
    if cfg.init.weights:
        return Path(cfg.init.weights)
    if cfg.init.release:
        return find_release(cfg.init.release).converted_path(Path(cfg.models_dir))
    return None


def release_source(rel: Any, models_dir: str | os.PathLike) -> Path:
    """Where the official file of ``rel`` sits below ``models_dir`` (a TF checkpoint's prefix)."""
    return rel.source_path(Path(models_dir))


def weights_hint(cfg: Config) -> str:
    if cfg.init.how_to_get:
        return cfg.init.how_to_get
    if cfg.init.release:
        rel = find_release(cfg.init.release)
        return (f"It is converted from release {rel.name} ({rel.description}; {rel.url}): "
                f"{rel.how_to_get(Path(cfg.models_dir))}, or run python -m reproduce.recipe")
    return "convert the official release first (see README)"


def smoke_config(cfg: Config, smoke_dir: Path) -> Config:
    """``cfg`` with its ``smoke.overrides`` applied, ``{smoke}`` replaced by ``smoke_dir``, weights below it."""
    if cfg.smoke is None:
        raise ConfigError(f"config {cfg.name} has no smoke section")

    def sub(v: Any) -> Any:
        if isinstance(v, str):
            return v.replace("{smoke}", str(smoke_dir))
        if isinstance(v, dict):
            return {k: sub(x) for k, x in v.items()}
        if isinstance(v, list):
            return [sub(x) for x in v]
        return v

    overrides = {"models_dir": str(smoke_dir / "weights"), **sub(cfg.smoke.overrides),
                 "name": f"{cfg.name}-smoke"}
    if cfg.eval is not None:
        overrides["eval.crop_size"] = cfg.smoke.eval_crop
    return apply_overrides(cfg, overrides)
