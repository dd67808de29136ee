"""Typed settings: dataclasses with defaults, loadable from YAML, overridable on the command line.

Each field's ``metadata["help"]`` is its ``--help`` text. :func:`add_arguments` turns a config class
into argparse options (``field_name`` -> ``--field-name``) and :func:`from_args` builds the config
back, so the CLI never restates a default.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin

import yaml

T = TypeVar("T")


def setting(default: Any, help: str, choices: tuple | None = None, flag: str | None = None) -> Any:
    """A config field with its help text (and optional fixed choices / explicit flag name)."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices, "flag": flag})


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(the scalar type, whether None is allowed) of an annotation like ``float | None``."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        return args[0], len(args) < len(get_args(tp))
    if origin is typing.Literal:
        return str, False
    return tp, False


def add_arguments(parser: argparse.ArgumentParser, cls: type, prefix: str = "") -> None:
    """Add one ``--option`` per field of the dataclass ``cls`` (defaults shown in --help)."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(f"{cls.__name__} settings")
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if "help" not in meta:
            continue
        flag = meta.get("flag") or "--" + prefix + f.name.replace("_", "-")
        tp, optional = _base_type(hints[f.name])
        default = f.default
        choices = meta.get("choices")
        if get_origin(hints[f.name]) is typing.Literal:
            choices = get_args(hints[f.name])
        help_text = f"{meta['help']} (default: {default})"
        dest = prefix.replace("-", "_") + f.name
        if tp is bool:
            group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            conv = _converter(tp, optional)
            group.add_argument(
                flag,
                dest=dest,
                type=conv,
                default=None,
                choices=choices,
                help=help_text,
                metavar=None if choices else f.name.upper(),
            )


def _converter(tp: Any, optional: bool):
    def conv(text: str) -> Any:
        if optional and text.lower() in ("none", "null", ""):
            return None
        if tp in (int, float, str):
            return tp(text)
        if tp is Path:
            return Path(text)
        return text

    conv.__name__ = getattr(tp, "__name__", "value")
    return conv


def from_args(cls: type[T], args: argparse.Namespace, base: T | None = None, prefix: str = "") -> T:
    """``base`` (or the defaults) with every option the user gave on the command line applied."""
    obj = base if base is not None else cls()
    changes = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, prefix.replace("-", "_") + f.name, None)
        if value is not None:
            changes[f.name] = value
    return dataclasses.replace(obj, **changes)


def load_yaml(cls: type[T], path: str | Path, section: str | None = None) -> T:
    """A config from a YAML file (optionally one top-level ``section`` of it); unknown keys are errors."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    if section is not None:
        data = data.get(section, {}) or {}
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{path}: unknown {cls.__name__} settings {unknown}; known: {sorted(names)}")
    return cls(**data)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-friendly dict of a config (paths as strings)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()}
