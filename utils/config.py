"""Settings: main.py's UPPER_CASE constants, overridden as `--name=value`, read into frozen bundles.

A bundle is a frozen dataclass whose fields are constants of the same (upper-case)
names; each constant belongs to exactly one bundle. A bundle writes itself to a run's
config.json and checkpoints (`record`) and reads itself back (`from_record`), so that a
run written by an earlier version of the code keeps working: a field added later
declares, with `since`, the value the earlier code used, and a record without it reads
as that value.
"""
from __future__ import annotations

import ast
import io
import tokenize
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from utils.errors import InputError

TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no")

# The run format this code writes into config.json and checkpoints (FORMAT). Format 1: runs
# written before the format was recorded. Raise it when a key changes meaning, not when one
# is added (an added field declares `since`).
FORMAT = 2

# What a command does with a run's checkpoints, for `may_differ`.
USES = ("resume", "evaluate", "predict")


def setting(*, since: Any = MISSING, may_differ: tuple[str, ...] = ()) -> Any:
    """A bundle field. since: the value runs written before the field existed were made
    with (their records lack it). may_differ: the uses (USES) for which a checkpoint made
    with another value is still accepted."""
    if not set(may_differ) <= set(USES):
        raise ValueError(f"may_differ names uses of {USES}; got {may_differ}.")
    return field(metadata={"since": since, "may_differ": may_differ})


@dataclass(frozen=True)
class Bundle:
    """Base of the settings bundles: reading from constants and records, comparing with a record."""

    @classmethod
    def from_constants(cls, constants: dict[str, Any]) -> Any:
        """The bundle of a full set of constants (each bundle checks its own ranges)."""
        return cls(**{f.name: constants[f.name.upper()] for f in fields(cls)})

    def record(self) -> dict[str, Any]:
        """{NAME: value}, as written to config.json and checkpoints."""
        return {f.name.upper(): getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_record(cls, record: dict[str, Any], where: str) -> Any:
        """The bundle a record describes; a field the record lacks takes its `since` value.

        JSON turns tuples into lists: they are turned back. A field without a `since` value
        that the record lacks means the record is not one of this code's runs.
        """
        values = {}
        for f in fields(cls):
            name = f.name.upper()
            if name in record:
                value = record[name]
                values[f.name] = tuple(value) if isinstance(value, list) else value
            elif f.metadata.get("since", MISSING) is not MISSING:
                values[f.name] = f.metadata["since"]
            else:
                raise InputError(f"{where} lacks the setting {name}; it was not written by this project's main.py.")
        return cls(**values)

    @classmethod
    def element_types(cls) -> dict[str, type]:
        """{NAME: element type} of the tuple fields, so that `--seeds=1,2` parses as integers even
        though the constant's default, (), has no element to take the type from."""
        return {name.upper(): typing.get_args(hint)[0] for name, hint in typing.get_type_hints(cls).items()
                if typing.get_origin(hint) is tuple}

    def conflicts(self, recorded: Bundle, use: str) -> list[str]:
        """'NAME recorded -> asked' for each field that differs from `recorded` and may not for `use`."""
        return [f"{f.name.upper()} {getattr(recorded, f.name)!r} -> {getattr(self, f.name)!r}"
                for f in fields(self)
                if use not in f.metadata.get("may_differ", ()) and getattr(recorded, f.name) != getattr(self, f.name)]


def parse_value(name: str, text: str, default: Any, element: type | None = None) -> Any:
    """Convert `text` to the type of the constant's default value (a list's items to `element`,
    else to the type of its first item)."""
    if isinstance(default, bool):
        if text.lower() in TRUE + FALSE:
            return text.lower() in TRUE
        raise InputError(f"--{name} expects True or False, got {text!r}.")
    if isinstance(default, (tuple, list)):
        items = [item.strip() for item in text.split(",") if item.strip()]
        example = element() if element is not None else default[0] if default else ""
        return tuple(parse_value(name, item, example) for item in items)
    if default is None or isinstance(default, str):
        return None if text.lower() == "none" else text
    try:
        return type(default)(text)
    except ValueError:
        kind = "an integer" if isinstance(default, int) else "a number"
        raise InputError(f"--{name} expects {kind}, got {text!r}.") from None


def parse_overrides(constants: dict[str, Any], argv: list[str], elements: dict[str, type] | None = None
                    ) -> dict[str, Any]:
    """The `--name=value` arguments as {NAME: value}, each of its constant's type (lists' items of
    the type `elements` gives, Bundle.element_types).

    A bare `--name` sets a True/False constant to True. Lists are comma-separated.
    An unknown name, a name given twice or a value of the wrong type raises InputError.
    """
    overrides = {}
    valid = sorted(name.lower() for name in constants)
    for argument in argv:
        name, has_value, text = argument.removeprefix("--").partition("=")
        key = name.upper()
        if not argument.startswith("--") or key not in constants:
            raise InputError(f"Unknown option {argument!r}; valid options are --{', --'.join(valid)}.")
        if key in overrides:
            raise InputError(f"--{name.lower()} is given twice; give it once.")
        if not has_value:
            if not isinstance(constants[key], bool):
                raise InputError(f"--{name} needs a value: --{name}=...")
            text = "true"
        overrides[key] = parse_value(name, text, constants[key], (elements or {}).get(key))
    return overrides


def check(rules: list[tuple[bool, str]]) -> None:
    """Raise InputError with the message of the first (holds, message) rule that does not hold."""
    for ok, message in rules:
        if not ok:
            raise InputError(f"{message}.")


def _assignments(text: str) -> list[ast.Assign]:
    """The module-level assignments of one UPPER_CASE name."""
    return [node for node in ast.parse(text).body
            if isinstance(node, ast.Assign) and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name) and node.targets[0].id.isupper()]


def read_constants(source: Path) -> dict[str, Any]:
    """The UPPER_CASE literal constants of a Python file, read without running it (a benchmark
    reads main.py's this way: importing main.py would run it)."""
    values = {}
    for node in _assignments(source.read_text()):
        try:
            values[node.targets[0].id] = ast.literal_eval(node.value)
        except ValueError:  # not a literal (CONSTANTS itself)
            pass
    return values


def described_constants(source: Path, names: set[str]) -> str:
    """The constants `names` of a Python file with their values and comments, under the section
    comments between them, for --help: read from the constants' own lines, not sliced from the file."""
    text = source.read_text()
    tokens = [token for token in tokenize.generate_tokens(io.StringIO(text).readline) if token.type == tokenize.COMMENT]
    sections = {token.start[0]: token.string for token in tokens if token.line.lstrip().startswith("#")}
    comments = {token.start[0]: token.string for token in tokens if not token.line.lstrip().startswith("#")}
    lines = []
    for node in _assignments(text):
        if node.targets[0].id not in names:
            continue
        section = sections.get(node.lineno - 1, "")
        if section.startswith("# ") and not section.startswith("# ---"):
            lines.append(f"\n{section.removeprefix('# ')}:")
        value = ast.get_source_segment(text, node.value)
        comment = comments.get(node.end_lineno, "").removeprefix("#").strip()
        lines.append(f"  --{node.targets[0].id.lower()}={value}" + (f"  # {comment}" if comment else ""))
    return "\n".join(lines)


def usage(doc: str, source: Path, constants: dict[str, Any], demo: dict[str, Any], presets: dict[str, dict]) -> str:
    """--help: the program's docstring, every constant of `source` with its value and comment, what
    --demo sets and what each preset (METHODS, DATASETS) sets."""
    listed = "\n".join(f"  {name}: {preset or '(the constants above)'}" for name, preset in presets.items())
    return (f"{doc}\n{described_constants(source, set(constants))}\n\n"
            f"What --demo sets:\n  {demo}\n\nWhat each --method and --dataset sets:\n{listed}\n")
