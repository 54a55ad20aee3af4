"""Command-line overrides of main.py's UPPER_CASE constants: `--name=value`, no framework."""
from __future__ import annotations

from dataclasses import fields
from typing import Any

from utils.errors import InputError

TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no")


def parse_value(name: str, text: str, default: Any) -> Any:
    """Convert `text` to the type of the constant's default value."""
    if isinstance(default, bool):
        if text.lower() in TRUE + FALSE:
            return text.lower() in TRUE
        raise InputError(f"--{name} expects True or False, got {text!r}.")
    if isinstance(default, (tuple, list)):
        items = [item.strip() for item in text.split(",") if item.strip()]
        element = default[0] if default else ""
        return tuple(parse_value(name, item, element) for item in items)
    if default is None or isinstance(default, str):
        return None if text.lower() == "none" else text
    try:
        return type(default)(text)
    except ValueError:
        kind = "an integer" if isinstance(default, int) else "a number"
        raise InputError(f"--{name} expects {kind}, got {text!r}.") from None


def parse_overrides(constants: dict[str, Any], argv: list[str]) -> dict[str, Any]:
    """The `--name=value` arguments as {NAME: value}, each of its constant's type.

    A bare `--name` sets a True/False constant to True. Lists are comma-separated.
    An unknown name or a value of the wrong type raises InputError.
    """
    overrides = {}
    valid = sorted(name.lower() for name in constants)
    for argument in argv:
        name, has_value, text = argument.removeprefix("--").partition("=")
        key = name.upper()
        if not argument.startswith("--") or key not in constants:
            raise InputError(f"Unknown option {argument!r}; valid options are --{', --'.join(valid)}.")
        if not has_value:
            if not isinstance(constants[key], bool):
                raise InputError(f"--{name} needs a value: --{name}=...")
            text = "true"
        overrides[key] = parse_value(name, text, constants[key])
    return overrides


def check(rules: list[tuple[bool, str]]) -> None:
    """Raise InputError with the message of the first (holds, message) rule that does not hold."""
    for ok, message in rules:
        if not ok:
            raise InputError(f"{message}.")


def bundle(cls: type, config: dict[str, Any]) -> Any:
    """The dataclass `cls` filled from the constants of the same (upper-case) names."""
    return cls(**{field.name: config[field.name.upper()] for field in fields(cls)})
