"""Settings models: bad settings reported in one line naming the key (presets and overrides: test_config.py)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError, model_validator

from deblur.settings import Number, Settings, SettingsError, describe_errors


class Example(Settings):
    """A settings model with one field of each kind the stages use."""

    label: ClassVar[str] = "example"

    steps: StrictInt = Field(10, ge=1)
    lr: Number = Field(1e-4, gt=0)
    share: Number = Field(0.5, ge=0, lt=1)
    amp: StrictBool = True
    name: StrictStr = ""
    kind: Literal["a", "b"] = "a"
    sizes: tuple[StrictInt, ...] = (1,)
    limit: StrictInt | None = Field(None, ge=1)
    low: StrictInt = 0
    high: StrictInt = 1

    @model_validator(mode="after")
    def _ordered(self) -> Example:
        if self.low > self.high:
            raise ValueError(f"need low <= high, got {self.low}, {self.high}")
        return self


class Nested(Settings):
    """Flat keys over a nested model, as ``DataConfig`` over ``SynthesisConfig``."""

    label: ClassVar[str] = "outer"

    inner: Example = Field(default_factory=Example)
    seed: StrictInt = 0


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"lr": -1}, "example setting lr must be positive, got -1.0"),
        ({"lr": 0}, "example setting lr must be positive, got 0.0"),
        ({"steps": 0}, "example setting steps must be at least 1, got 0"),
        ({"share": 1}, "example setting share must be in [0, 1), got 1.0"),
        ({"limit": 0}, "example setting limit must be at least 1, got 0"),
        ({"steps": True}, "example setting steps=True: expected int"),
        ({"steps": 2.5}, "example setting steps=2.5: expected int"),
        ({"steps": "3"}, "example setting steps='3': expected int"),
        ({"lr": "fast"}, "example setting lr='fast': expected a number"),
        ({"lr": float("inf")}, "example setting lr=inf: expected a number"),
        ({"lr": False}, "example setting lr=False: expected a number"),
        ({"amp": 1}, "example setting amp=1: expected bool"),
        ({"name": 3}, "example setting name=3: expected str"),
        ({"kind": "c"}, "example setting kind='c': must be 'a' or 'b'"),
        ({"sizes": 3}, "example setting sizes=3: expected a list"),
        ({"sizes": [1, "x"]}, "example setting sizes[1]='x': expected int"),
        ({"low": 2}, "need low <= high, got 2, 1"),
        (
            {"stpes": 1, "lr": 2, "Amp": 0},
            "unknown example setting(s) ['Amp', 'stpes']; known: ['amp', 'high', 'kind', 'limit', 'low', 'lr', "
            "'name', 'share', 'sizes', 'steps']",
        ),
        ({1: 2}, "unknown example setting(s) [1]; known: ['amp', "),
    ],
)
def test_a_bad_setting_is_one_line_naming_the_key(values: dict, message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Example.from_dict(values)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)
    assert isinstance(caught.value, ValueError)  # what the CLI prints as one line


def test_several_bad_settings_are_all_named_and_the_constructor_says_the_same() -> None:
    with pytest.raises(SettingsError, match=r"^example setting steps must be at least 1, got 0; example setting amp=1"):
        Example(steps=0, amp=1)
    with pytest.raises(SettingsError, match=r"^unknown example setting\(s\) \['x'\]; known: .*; example setting lr="):
        Example.from_dict({"x": 1, "lr": "no"})


def test_nested_settings_are_named_by_their_own_keys_and_label() -> None:
    with pytest.raises(SettingsError, match=r"^example setting lr must be positive, got -1.0$"):
        Nested.from_dict({"inner": {"lr": -1}})
    with pytest.raises(SettingsError, match=r"^unknown outer setting\(s\) \['x'\]; known: \['amp', .*'seed', .*\]$"):
        Nested.from_dict({"x": 1})


def test_describe_errors_serves_any_pydantic_model() -> None:
    class Plain(BaseModel):
        model_config = ConfigDict(extra="forbid")
        workers: int = Field(1, ge=1)

    with pytest.raises(ValidationError) as caught:
        Plain.model_validate({"workers": 0, "x": 1})
    assert describe_errors(caught.value, Plain, "batch") == (
        "unknown batch setting(s) ['x']; known: ['workers']; batch setting workers must be at least 1, got 0"
    )
    assert describe_errors(caught.value).startswith("unknown setting(s) ['x']; setting workers")


def test_settings_are_frozen_typed_and_round_trip() -> None:
    example = Example.from_dict({"lr": "1e-3", "steps": 3, "sizes": [2, 3]})
    assert example.lr == 1e-3 and isinstance(example.lr, float) and example.sizes == (2, 3)
    assert Example.from_dict(example.to_dict()) == example
    with pytest.raises(ValidationError):
        example.steps = 4  # type: ignore[misc]


def test_every_stage_reports_a_bad_setting_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from deblur.cli import main

    commands = [
        (["train", str(tmp_path), "--storage", str(tmp_path), "--name", "r", "--set", "lr=-1"], "lr must be positive"),
        (["train", str(tmp_path), "--storage", str(tmp_path), "--name", "r", "--set", "lrr=1"], "['lrr']"),
        (["train", str(tmp_path), "--storage", str(tmp_path), "--name", "r", "--set", "steps=1.5"], "steps=1.5"),
        (["synth", str(tmp_path), str(tmp_path / "out"), "--set", "scale=2"], "scale must be in (0, 1], got 2.0"),
        (["corpus", "--out", str(tmp_path / "raw"), "--videos", "1", "--set", "fps=abc"], "fps='abc': expected int"),
    ]
    for argv, message in commands:
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("deblur: error: ") and message in err and err.count("\n") == 1, err
