"""Presets and key=value overrides: values are YAML, numbers the way users write them."""

from __future__ import annotations

from pathlib import Path

import pytest

from deblur.settings import load_preset, parse_overrides


def test_overrides_read_numbers_as_users_write_them() -> None:
    values = parse_overrides(["lr=1e-4", "weight_decay=1E-5", "steps=300", "taus=[7, 9]", "name=run1", "amp=false"])
    assert values == {"lr": 1e-4, "weight_decay": 1e-5, "steps": 300, "taus": [7, 9], "name": "run1", "amp": False}
    assert isinstance(values["lr"], float) and isinstance(values["steps"], int)
    assert parse_overrides(["x=-2.5e3", "y=.5", "z=1_000"]) == {"x": -2500.0, "y": 0.5, "z": 1000}


def test_bad_overrides_and_presets_name_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not of the form key=value"):
        parse_overrides(["lr"])
    with pytest.raises(ValueError, match="cannot parse the value"):
        parse_overrides(["taus=[7, 9"])
    preset = tmp_path / "p.yaml"
    preset.write_text("lr: 5e-4\nsteps: 10\n")
    assert load_preset(preset) == {"lr": 5e-4, "steps": 10}
    preset.write_text("model:\n  width: 64\n")
    with pytest.raises(ValueError, match="presets are flat"):
        load_preset(preset)
