"""Typed configs: dataclasses are the one source of defaults; dicts from presets, files and
``--set key=value`` are checked against them (unknown keys with a "did you mean", wrong types)."""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from serve.bundle import first_line


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against annotation ``tp`` (allowing int -> float, list -> tuple)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, where)
            except PipelineError:
                continue
        raise PipelineError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if tp is type(None):
        if value is None:
            return None
        raise PipelineError(f"{where}: expected null, got {value!r}")
    if origin is typing.Literal:
        if value in typing.get_args(tp):
            return value
        raise PipelineError(f"{where}: expected one of {list(typing.get_args(tp))}, got {value!r}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise PipelineError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise PipelineError(f"{where}: expected {len(args)} items, got {len(value)}")
            items = [_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            item_tp = args[0] if args else Any
            items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return origin(items)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise PipelineError(f"{where}: expected a table/object, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise PipelineError(f"{where}: expected a table/object, got {value!r}")
        return from_dict(tp, value, where)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):  # NaN and infinities (JSON NaN, Infinity, 1e999) never mean a setting
                raise PipelineError(f"{where}: must be a finite number, got {value!r}")
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp in (str, bool):
        if isinstance(value, tp):
            return value
    else:
        raise TypeError(f"{where}: unsupported annotation {tp!r}")
    raise PipelineError(f"{where}: expected {_type_name(tp)}, got {value!r}")


def unknown_key(key: str, known: typing.Iterable[str], where: str) -> PipelineError:
    known = list(known)
    close = difflib.get_close_matches(key, known, n=1)
    prefix = f"{where}." if where else ""
    hint = f"; did you mean {prefix + close[0]!r}?" if close else f"; known: {', '.join(known)}"
    full = prefix + key
    return PipelineError(f"unknown key {full!r}{hint}")


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise unknown_key(key, names, where)
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}" if where else key)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise PipelineError(f"{where or cls.__name__}: {e}") from None


def to_dict(obj: Any) -> Any:
    """A dataclass (nested) as JSON-ready dicts and lists."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``override`` into a copy of ``base`` (tables merge, everything else replaces)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_value(text: str) -> Any:
    """``--set`` values: JSON where it parses (numbers, true/false, null, [lists]), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text
    except (ValueError, RecursionError) as e:  # a 5,000-digit number, lists nested 100,000 deep
        raise PipelineError(f"--set value {text[:40]!r}... cannot be used: {type(e).__name__}") from None


def parse_sets(items: typing.Sequence[str]) -> dict[str, Any]:
    """``["train.lr=1e-3", "model.name=vit"]`` -> nested dict."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise PipelineError(f"--set expects key=value, got {item!r}")
        *parents, leaf = key.strip().split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise PipelineError(f"--set {key}: {p!r} is set both as a value and as a table")
        node[leaf] = parse_value(value)
    return out


def load_file(path: str | Path) -> dict[str, Any]:
    """A config file: ``.json`` or ``.toml``."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"config file not found: {path}")
    try:
        if path.suffix == ".toml":
            return tomllib.loads(path.read_text())
        if path.suffix == ".json":
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise PipelineError(f"config file {path}: expected a JSON object at the top")
            return data
    except (ValueError, RecursionError, MemoryError) as e:  # TOML/JSON/UTF-8 errors, absurd nesting or numbers
        raise PipelineError(f"config file {path} is not valid {path.suffix[1:].upper()}: {first_line(e)}") from None
    except OSError as e:
        raise PipelineError(f"config file {path} cannot be read: {e.strerror}") from None
    raise PipelineError(f"config file {path}: use a .json or .toml file")
