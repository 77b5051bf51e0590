"""The model of a config and its initial weights (checked key by key against the model)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from converters.errors import ConversionError
from converters.io import load_state_dict, provenance_path, refused_pickle_message, sha256_file
from converters.provenance import read_provenance
from reference_models.preprocessing import Preprocessing

from .config import Config, ConfigError, InitCfg, _build, parse_config

__all__ = ["build_model", "load_init_weights", "set_train_mode"]

PICKLE_HINT = ("use weights converted from an official release (converters/caffe2torch.py, converters/tf2torch.py), "
               "a checkpoint of another DeepLab port imported with python -m converters.import_checkpoint, or the "
               "tensors alone saved as .safetensors")


def build_model(cfg: Config | Mapping[str, Any]) -> nn.Module:
    """The registry model ``cfg.model`` names, with ``bn.momentum`` applied."""
    from reference_models import build_model as registry_build

    cfg = parse_config(cfg)
    m = cfg.model
    try:
        model = registry_build(m.name, num_classes=m.num_classes, **m.kwargs)
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"model: {e}") from None
    if cfg.bn.momentum is not None:
        for mod in model.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.momentum = float(cfg.bn.momentum)
    frozen = cfg.bn.mode == "frozen"
    if hasattr(model, "freeze_bn"):  # DeepLab v2 keeps its own BatchNorm frozen in train() (Caffe's use_global_stats)
        model.freeze_bn = frozen
    for mod in model.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.requires_grad_(not frozen)
    return model


def set_train_mode(model: nn.Module, bn_mode: str, mode: bool = True) -> nn.Module:
    """``model.train(mode)``, with every BatchNorm left in eval mode (running statistics) when ``bn_mode`` is frozen."""
    model.train(mode)
    if mode and bn_mode == "frozen":
        for mod in model.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.eval()
    return model


def load_init_weights(model: nn.Module, init: InitCfg | Mapping[str, Any], preprocessing: Preprocessing,
                      *, seed: int, weights: str | os.PathLike | None = None, hint: str | None = None) -> dict[str, Any]:
    """Load ``init.weights`` into ``model``; return a provenance record.

    ``drop``: regexes of init keys with no place in the model (an ImageNet or COCO classifier);
    ``require``: regexes of model keys that must all come from the file; keys the file lacks
    outside ``require`` are freshly initialised (``head_init``: gaussian ``weight_std``, bias 0,
    as the official prototxt's fillers; or the builder's default when absent). Anything left
    unexplained raises, naming the keys.
    """
    if not isinstance(init, InitCfg):
        init = _build(InitCfg, init, "init.")
    path = weights if weights is not None else init.weights
    record: dict[str, Any] = {"weights": None}
    if path:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: init weights not found. {hint or init.how_to_get or 'convert the official release first (see README)'}")
        try:
            state = load_state_dict(path)
        except Exception as e:  # noqa: BLE001 - any unloadable file is one line naming it
            refused = refused_pickle_message(path, e, PICKLE_HINT)
            first = (str(e).strip().splitlines() or [""])[0][:200]
            raise ConfigError(refused or f"{path}: cannot load the init weights ({type(e).__name__}: {first})") from None
        odd = next((k for k, v in state.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))), None) \
            if isinstance(state, Mapping) else type(state).__name__
        if odd is not None:  # torch.load(weights_only=True) also returns lists, numbers, nested dicts
            raise ConfigError(f"{path}: not a state dict of named tensors (found {str(odd)[:80]!r}); {PICKLE_HINT}")
        dropped = [k for k in state if any(re.search(p, k) for p in init.drop)]
        for k in dropped:
            del state[k]
        prefix = init.prefix
        if prefix:
            state = {prefix + k: v for k, v in state.items()}
        own = model.state_dict()
        unexpected = sorted(set(state) - set(own))
        if unexpected:
            raise ConfigError(f"{path}: {len(unexpected)} keys have no place in {type(model).__name__}, e.g. "
                              f"{unexpected[:3]}; add them to init.drop or check init.prefix")
        bad = [k for k in state if tuple(state[k].shape) != tuple(own[k].shape)]
        if bad:
            raise ConfigError(f"{path}: shape mismatch for {bad[:3]} (file {tuple(state[bad[0]].shape)} vs model "
                              f"{tuple(own[bad[0]].shape)})")
        missing = sorted(set(own) - set(state))
        required_missing = [k for k in missing if any(re.search(p, k) for p in init.require)]
        if required_missing:
            raise ConfigError(f"{path}: lacks {len(required_missing)} required keys, e.g. {required_missing[:3]}")
        model.load_state_dict(state, strict=False)
        prov = provenance_path(path)
        if prov.is_file():
            try:
                info = read_provenance(prov)
            except ConversionError as e:
                raise ConfigError(str(e)) from None
            _check_preprocessing(info.get("preprocessing"), preprocessing, prov)
        record = {"weights": str(path), "sha256": sha256_file(path), "loaded": len(state), "dropped": len(dropped),
                  "fresh": missing}
    else:
        record["fresh"] = sorted(model.state_dict())
    head = init.head_init
    if head is not None:
        g = torch.Generator().manual_seed(seed)
        fresh = set(record["fresh"])
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in fresh and re.search(head.match, name):
                    if name.endswith("weight"):
                        p.copy_(torch.randn(p.shape, generator=g) * head.weight_std)
                    elif name.endswith("bias"):
                        p.fill_(head.bias)
    return record


def _check_preprocessing(recorded: Mapping[str, Any] | None, wanted: Preprocessing, where: Path) -> None:
    """The weights' provenance says how their inputs were made; training must feed the same."""
    if not recorded:
        return
    for key in ("channel_order", "mean", "std", "scale"):
        if key not in recorded:
            continue
        a, b = recorded[key], getattr(wanted, key)
        same = a == b if isinstance(a, str) else np.allclose(np.asarray(a, float), np.asarray(b, float))
        if not same:
            raise ConfigError(f"{where}: the weights expect preprocessing {key}={a!r} but the config gives {b!r}")
