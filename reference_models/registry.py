"""Name -> builder registries for full models and backbones.

Builders are keyword-only and typed (a popular DeepLab port once swapped
``output_stride`` and ``num_classes`` through positional arguments). Modules
register themselves with the decorators below; ``reference_models/__init__.py``
imports every model module so the registries are complete on import.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

F = TypeVar("F", bound=Callable[..., nn.Module])

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_BACKBONES: dict[str, Callable[..., nn.Module]] = {}


def _register(table: dict[str, Callable[..., nn.Module]], kind: str, name: str) -> Callable[[F], F]:
    def decorator(fn: F) -> F:
        if name in table:
            raise ValueError(f"{kind} '{name}' is registered twice")
        table[name] = fn
        return fn

    return decorator


def register_model(name: str) -> Callable[[F], F]:
    """Register a full-model builder ``fn(*, num_classes, **kwargs)`` under ``name``."""
    return _register(_MODELS, "model", name)


def register_backbone(name: str) -> Callable[[F], F]:
    """Register a backbone builder ``fn(*, output_stride, **kwargs)`` under ``name``."""
    return _register(_BACKBONES, "backbone", name)


def _lookup(table: dict[str, Callable[..., nn.Module]], kind: str, name: str) -> Callable[..., nn.Module]:
    try:
        return table[name]
    except KeyError:
        known = ", ".join(sorted(table))
        raise ValueError(f"unknown {kind} '{name}'; known: {known}") from None


def build_model(name: str, *, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name`` with ``num_classes`` output channels."""
    return _lookup(_MODELS, "model", name)(num_classes=num_classes, **kwargs)


def build_backbone(name: str, *, output_stride: int, **kwargs: Any) -> nn.Module:
    """Build the registered backbone ``name`` at the given output stride."""
    return _lookup(_BACKBONES, "backbone", name)(output_stride=output_stride, **kwargs)


def list_models() -> list[str]:
    """Sorted names of every registered model."""
    return sorted(_MODELS)


def list_backbones() -> list[str]:
    """Sorted names of every registered backbone."""
    return sorted(_BACKBONES)


def validate_output_stride(output_stride: int, allowed: tuple[int, ...] = (8, 16)) -> int:
    """Return ``output_stride`` if allowed, else raise a clear ``ValueError``."""
    if not isinstance(output_stride, int) or isinstance(output_stride, bool) or output_stride not in allowed:
        raise ValueError(f"output_stride must be one of {allowed}, got {output_stride!r}")
    return output_stride
