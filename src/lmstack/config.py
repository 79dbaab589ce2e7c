"""Dataclass configs: defaults that work, TOML files, `--set key=value` overrides, strict validation.

A config is any (possibly nested) dataclass. `load_config(Cls, toml_path, ["a.b=3"])` builds it from
defaults, then the file, then the overrides; an unknown key or a value of the wrong type is a
`ConfigError` that names the key and the fix. The same config is printed at start and saved with
every artifact (`to_dict` / `from_dict`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

from lmstack.errors import LmstackError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

T = TypeVar("T")


class ConfigError(LmstackError):
    """A user-caused configuration problem; the message names the key and the fix."""


def _field_types(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _unquoted(item: str) -> str:
    return item[1:-1] if len(item) >= 2 and item[0] == item[-1] and item[0] in "'\"" else item


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check (and for strings from the command line, parse) `value` against `annotation`."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        options = get_args(annotation)
        # TOML has no null: `--set seed=none` (or -T n=none) is how a command line unsets an optional setting
        if type(None) in options and (value is None or (isinstance(value, str) and value.lower() in ("none", "null"))):
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"config key '{key}': cannot be {value!r}")
    if origin is typing.Literal:
        allowed = get_args(annotation)
        if value not in allowed:
            raise ConfigError(f"config key '{key}': {value!r} is not one of {list(allowed)}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):  # a,b or [a, b] or ["a", 'b'] (YAML's and Inspect's -T forms)
            inner = value.strip()
            inner = inner[1:-1] if inner.startswith("[") and inner.endswith("]") else inner
            value = [_unquoted(v.strip()) for v in inner.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        (item_type, *_) = get_args(annotation) or (Any,)
        items = [_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a table of settings, got {value!r}")
        return from_dict(annotation, value, prefix=f"{key}.")
    if annotation is Any:
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"config key '{key}': expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(float(value)) if "e" in value.lower() and float(value).is_integer() else int(value)
            except ValueError:
                pass
        raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
    if isinstance(annotation, type) and isinstance(value, annotation):
        return value
    raise ConfigError(f"config key '{key}': cannot use {value!r} as {annotation}")


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass `cls` from a dict; unknown keys and wrong types are errors."""
    hints = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0]}'; valid keys here are: "
            + ", ".join(f"{prefix}{n}" for n in sorted(names))
        )
    kwargs = {name: _coerce(value, hints[name], prefix + name) for name, value in data.items()}
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def apply_overrides(data: dict[str, Any], overrides: list[str], cls: type) -> dict[str, Any]:
    """Apply `a.b=value` strings onto a nested dict, checking each key exists in `cls`."""
    data = json.loads(json.dumps(data))  # deep copy of plain data
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set '{item}': expected key=value, e.g. --set lr=3e-4")
        key, raw = item.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        node, node_cls = data, cls
        for depth, part in enumerate(parts):
            fields = {f.name: f for f in dataclasses.fields(node_cls)}
            if part not in fields:
                where = ".".join(parts[:depth]) or "the top level"
                raise ConfigError(
                    f"--set {key}: unknown config key '{part}' in {where}; valid keys: "
                    + ", ".join(sorted(fields))
                )
            hint = _field_types(node_cls)[part]
            if depth == len(parts) - 1:
                value = _parse_cli_value(raw)
                # A name that reads as a number (run_name=123, 1e3) or a boolean is still the name it was typed as
                node[part] = raw.strip() if _is_text(hint) and not isinstance(value, str) else value
            else:
                if not dataclasses.is_dataclass(hint):
                    raise ConfigError(f"--set {key}: '{part}' is not a table of settings")
                node = node.setdefault(part, {})
                node_cls = hint
    return data


def _is_text(annotation: Any) -> bool:
    """A `str` setting, optional or not."""
    if get_origin(annotation) in (Union, types.UnionType):
        return {a for a in get_args(annotation) if a is not type(None)} == {str}
    return annotation is str


def _parse_cli_value(raw: str) -> Any:
    """Command-line values are TOML-ish: numbers, booleans, quoted strings; anything else is a string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> T:
    """Defaults <- `base` dict <- TOML file <- `--set` overrides, validated into `cls`."""
    if isinstance(overrides, str):  # else read letter by letter: "--set 'l': expected key=value"
        raise ConfigError(f"overrides must be a list of 'key=value' strings, got the string {overrides!r}; "
                          f"e.g. overrides=[{overrides!r}]")
    data: dict[str, Any] = dict(base or {})
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file '{path}' does not exist; pass an existing TOML file to --config")
        try:
            file_data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"config file '{path}' is not valid TOML: {err}") from None
        data = _merge(data, file_data)
    data = apply_overrides(data, overrides or [], cls)
    return from_dict(cls, data)


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def format_config(obj: Any) -> str:
    """The config as TOML-like text, printed at the start of a run."""
    return json.dumps(to_dict(obj), indent=2, sort_keys=False)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The config flags every configurable command shares."""
    parser.add_argument("--config", metavar="FILE.toml", help="TOML file with settings (overridden by --set)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting, e.g. --set model.n_layer=6 (repeatable)")
