"""Typed YAML: a mapping read from YAML becomes a dataclass of the annotated types, or one `ConfigError`
naming the key path (`arms.ngpt.optim.lr: expected a number, got 'fast'`). Generic: nothing here knows
the experiment schema (training/config.py) beyond the `choices` it is given.

Also the pieces every loader needs: reading a YAML file, `--set KEY.PATH=VALUE` overrides, deep merge,
"did you mean" hints.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration problem; its message starts with the key path. The runner prints it as one line
    and exits with code 2."""


def type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def convert(value: Any, tp: Any, path: str) -> Any:
    """Convert a YAML value to the annotated type, or raise ConfigError naming the key path."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return convert(value, args[0], path)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        return [convert(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true or false, got {value!r}")
    if tp in (int, float):
        number = value
        if isinstance(value, str):  # YAML reads 1e6 and 2_000_000 as strings in some spellings
            try:
                number = float(value.replace("_", ""))
            except ValueError:
                raise ConfigError(f"{path}: expected {type_name(tp)}, got {value!r}") from None
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise ConfigError(f"{path}: expected {type_name(tp)}, got {value!r}")
        if not math.isfinite(number):
            raise ConfigError(f"{path}: expected a finite number, got {value!r}")
        if tp is int:
            if float(number) != int(number):
                raise ConfigError(f"{path}: expected an integer, got {value!r}")
            return int(number)
        return float(number)
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool) and path.endswith(".compile"):  # `compile: true` reads naturally
            return "on" if value else "off"
        raise ConfigError(f"{path}: expected a string, got {value!r}")
    raise ConfigError(f"{path}: unsupported type {tp}")  # pragma: no cover - schema bug


def build(cls: type, raw: Any, path: str, choices: dict[str, tuple] | None = None) -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and wrong types. `choices` maps
    "section.key" (the last part of `path`, then the key) to the values allowed."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for key, value in raw.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]}?)" if close else f" (known keys: {', '.join(names)})"
            raise ConfigError(f"{path}.{key}: unknown key{hint}")
        kwargs[key] = convert(value, hints[key], f"{path}.{key}")
    for key, value in kwargs.items():
        allowed = (choices or {}).get(f"{path.split('.')[-1]}.{key}")
        if allowed and value not in allowed:
            raise ConfigError(f"{path}.{key}: must be one of {', '.join(allowed)}; got {value!r}")
    try:
        return cls(**kwargs)
    except ValueError as err:  # ModelConfig validates itself; its messages start with the field
        field_name, sep, rest = str(err).partition(":")
        if sep and field_name.strip() in names:
            raise ConfigError(f"{path}.{field_name.strip()}:{rest}") from None
        raise ConfigError(f"{path}: {err}") from None


def positive(path: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{path}: must be {'non-negative' if allow_zero else 'positive'}, got {value!r}")


def did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f" (did you mean {close[0]}?)" if close else f" (arms: {', '.join(map(str, choices))})"


def merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.tokens=1e6` -> (["train", "tokens"], 1000000.0); the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text}: expected KEY.PATH=VALUE")
    key, _, raw_value = text.partition("=")
    parts = [p for p in key.strip().split(".")]
    if not key.strip() or any(not p for p in parts):
        raise ConfigError(f"--set {text}: expected KEY.PATH=VALUE")
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else None
    except yaml.YAMLError:
        value = raw_value
    return parts, value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    raw = copy.deepcopy(raw)
    for text in overrides:
        parts, value = parse_override(text)
        node = raw
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text}: {'.'.join(parts[:i + 1])} is not a mapping")
            node = child
        node[parts[-1]] = value
    return raw


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such experiment file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the document must be a mapping of keys (name, arms, ...), "
                          f"got {type(raw).__name__}")
    return raw
