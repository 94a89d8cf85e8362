"""Flat YAML presets and ``key=value`` overrides, shared by every stage's frozen config."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

__all__ = ["load_preset", "parse_overrides"]

# YAML 1.1 (PyYAML) reads "1e-4" as a string: it wants a dot in a float. YAML 1.2 and every user
# of `--set lr=1e-4` read a number.
_FLOAT = re.compile(
    r"""^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+|\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""",
    re.X,
)


@cache
def _loader() -> type:
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))
    return Loader


def _load_yaml(text: str) -> Any:
    import yaml

    return yaml.load(text, Loader=_loader())  # a SafeLoader: builds no Python objects


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["lr=1e-4", "taus=[7,9]"]`` -> ``{"lr": 0.0001, "taus": [7, 9]}`` (values parsed as YAML)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {item!r} is not of the form key=value")
        try:
            out[key.strip()] = _load_yaml(value) if value.strip() else None
        except yaml.YAMLError as error:
            raise ValueError(f"override {item!r}: cannot parse the value ({error})") from error
    return out


def load_preset(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A flat YAML mapping of settings: every key at the top level, no includes, no inheritance."""
    import yaml

    path = Path(path)
    try:
        values = _load_yaml(path.read_text())
    except OSError as error:
        raise ValueError(f"{path}: cannot read preset ({error.strerror or error})") from error
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML ({error})") from error
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a preset must be a mapping of settings")
    nested = sorted(k for k, v in values.items() if isinstance(v, dict))
    if nested:
        raise ValueError(f"{path}: presets are flat; {nested} hold nested mappings")
    return values
