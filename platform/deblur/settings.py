"""Settings: frozen pydantic models, flat YAML presets and ``key=value`` overrides.

Every stage's settings are a ``Settings`` model: frozen, unknown keys refused (``extra="forbid"``),
bounds declared with ``Field(ge=..., gt=...)``. Types are strict where pydantic's lax mode would
take a wrong value: ``StrictInt`` refuses a bool or 2.5 for an int, ``StrictBool`` refuses 1 for a
bool; ``Number`` is a finite float that also takes an int or a number written as text ("1e-4").

A bad value, an unknown key or a broken rule between settings is a ``SettingsError``: one line
naming each key and what is wrong (``describe_errors``), which the CLI prints as it is:

    training setting lr must be positive, got -1.0
    training setting steps='abc': expected int
    unknown training setting(s) ['learning_rate']; known: [...]
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Annotated, Any, ClassVar, Self, get_args

from pydantic import AllowInfNan, BaseModel, BeforeValidator, ConfigDict, Strict, ValidationError
from pydantic.fields import FieldInfo

__all__ = ["Number", "Settings", "SettingsError", "describe_errors", "load_preset", "parse_overrides"]


class SettingsError(ValueError):
    """Settings that do not validate; the message is one line naming each bad key."""


def _number_from_text(value: Any) -> Any:
    # YAML 1.1 (PyYAML) reads "1e-4" as a string; a number setting takes any text Python reads as one.
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return float(value)
    return value


# A finite float: takes ints and numbers written as text, refuses bools, nan and inf.
Number = Annotated[float, Strict(), AllowInfNan(False), BeforeValidator(_number_from_text)]


class Settings(BaseModel):
    """Base of every settings model: frozen, unknown keys refused, errors as one line.

    ``label`` names the settings in errors ("training" -> "training setting lr ..."). A field whose
    type is another ``Settings`` model is shown flat: its keys sit beside the others (``to_dict``
    and ``from_dict`` of such a model say how they are nested).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    label: ClassVar[str] = ""

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as error:
            raise SettingsError(describe_errors(error, type(self))) from None

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Self:
        """From a mapping of settings (a preset with overrides, a stored record); unknown keys are errors."""
        keys = [key for key in values if not isinstance(key, str)]  # a YAML key such as 1 or true
        if keys:
            raise SettingsError(_unknown(_prefix(cls.label), keys, cls))
        try:
            return cls.model_validate(dict(values))
        except ValidationError as error:
            raise SettingsError(describe_errors(error, cls)) from None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


def describe_errors(error: ValidationError, model: type[BaseModel] | None = None, label: str | None = None) -> str:
    """One line for a pydantic ``ValidationError``: each bad key, its value and what is wrong.

    ``model`` is the class that was validated: its ``Field`` bounds word range errors ("must be in
    (0, 1]") and its keys are listed after unknown ones. ``label`` names the settings (default: the
    model's ``label``). A rule between settings (a model validator's ``ValueError``) is shown in its
    own words; so is a nested ``Settings`` model's own one-line error (its label, its keys).
    """
    prefix = _prefix(getattr(model, "label", "") if label is None else label)
    unknown: list[Any] = []
    problems: list[str] = []
    for item in error.errors():
        key, field = _key_of(model, item["loc"])
        if item["type"] in ("extra_forbidden", "invalid_key"):
            unknown.append(item["loc"][-1])
        else:
            problems.append(_problem(prefix, key, field, item))
    parts = [_unknown(prefix, unknown, model)] if unknown else []
    return "; ".join([*parts, *dict.fromkeys(problems)])


def _prefix(label: str) -> str:
    return f"{label} setting" if label else "setting"


def _unknown(prefix: str, keys: list[Any], model: type[BaseModel] | None) -> str:
    known = f"; known: {sorted(flat_keys(model))}" if model is not None else ""
    return f"unknown {prefix}(s) {sorted(keys, key=str)}{known}"


def flat_keys(model: type[BaseModel]) -> list[str]:
    """The keys a model takes when nested ``Settings`` models are flattened into it."""
    keys: list[str] = []
    for name, info in model.model_fields.items():
        nested = _settings_type(info)
        keys.extend(flat_keys(nested) if nested is not None else [name])
    return keys


def _settings_type(info: FieldInfo) -> type[Settings] | None:
    kind = info.annotation
    return kind if isinstance(kind, type) and issubclass(kind, Settings) else None


def _key_of(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> tuple[str, FieldInfo | None]:
    """The key an error is about (``taus[0]``) and its field, if one; a nested ``Settings`` field
    adds nothing to the key (its model names its own keys)."""
    key, field, current = "", None, model
    for part in loc:
        if isinstance(part, int):
            key, field = f"{key}[{part}]", None  # an item: the field's bounds are not the item's
            continue
        info = current.model_fields.get(part) if current is not None else None
        nested = _settings_type(info) if info is not None else None
        if nested is not None:
            current = nested
            continue
        key, field, current = f"{key}.{part}" if key else str(part), info, None
    return key, field


# pydantic's error types -> what the setting expects.
_EXPECTED = {
    "int_type": "int",
    "int_parsing": "int",
    "int_from_float": "int",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a number",
    "bool_type": "bool",
    "bool_parsing": "bool",
    "string_type": "str",
    "tuple_type": "a list",
    "list_type": "a list",
    "iterable_type": "a list",
}
_BOUND_ERRORS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")


def _problem(prefix: str, key: str, field: FieldInfo | None, item: Any) -> str:
    value = item.get("input")
    if not key:  # a rule between settings: its own words
        return _plain(item["msg"])
    if item["type"] in _EXPECTED:
        return f"{prefix} {key}={value!r}: expected {_EXPECTED[item['type']]}"
    if item["type"] in _BOUND_ERRORS and field is not None:
        if _takes_float(field) and isinstance(value, int | str) and not isinstance(value, bool):
            value = float(value)  # as the setting would hold it: 0 -> 0.0
        return f"{prefix} {key} must be {_bounds(field)}, got {value}"
    return f"{prefix} {key}={value!r}: {_plain(item['msg'])}"


def _takes_float(field: FieldInfo) -> bool:
    """A float setting, or an optional one (``Number | None``)."""
    return field.annotation is float or float in get_args(field.annotation)


def _plain(message: str) -> str:
    """pydantic's wording made to read as a rule: "Value error, x" -> "x", "Input should be" -> "must be"."""
    for head in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(head)
    if message.startswith("Input should be "):
        message = "must be " + message.removeprefix("Input should be ")
    return message


def _bounds(field: FieldInfo) -> str:
    """A field's declared bounds in words: "positive", "at least 1", "in (0, 1]"."""
    low = high = None
    for bound in field.metadata:
        for name, bracket in (("gt", "("), ("ge", "[")):
            if getattr(bound, name, None) is not None:
                low = (getattr(bound, name), bracket)
        for name, bracket in (("lt", ")"), ("le", "]")):
            if getattr(bound, name, None) is not None:
                high = (getattr(bound, name), bracket)
    if low and high:
        return f"in {low[1]}{low[0]}, {high[0]}{high[1]}"
    if low:
        if low[1] == "(":
            return "positive" if low[0] == 0 else f"greater than {low[0]}"
        return f"at least {low[0]}"
    if high:
        return f"less than {high[0]}" if high[1] == ")" else f"at most {high[0]}"
    return "within its bounds"


# ---------------------------------------------------------------------------------------------
# Flat YAML presets and key=value overrides
# ---------------------------------------------------------------------------------------------

# YAML 1.1 (PyYAML) reads "1e-4" as a string: it wants a dot in a float. YAML 1.2 and every user
# of `--set lr=1e-4` read a number, and so do ``parse_overrides`` and ``load_preset`` (lists of
# numbers and settings that take any type, which ``Number`` does not reach, included).
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
