"""Lazy registries of backends: a name maps to "module:Class", imported only when that backend is asked for,
so listing or choosing a backend does not load every model's code."""

from __future__ import annotations

import importlib

from reenact.errors import ReenactError


def lookup(registry: dict[str, str], name: str, unknown: str) -> type:
    """The class registered under `name`; `unknown` is the one-line error for a name that is not there."""
    if name not in registry:
        raise ReenactError(unknown)
    module, cls = registry[name].split(":")
    return getattr(importlib.import_module(module), cls)
