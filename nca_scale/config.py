"""Typed configs: dataclasses filled from YAML files and `key=value` overrides.

Every component has a small dataclass config. `load(cls, path, overrides)` builds one from a YAML file plus
dotted `key=value` overrides; an unknown key, a wrong type or an unreadable file raises `UserError` naming the
key and where it came from. A dataclass-typed field may also be given as a path to its own YAML file.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from nca_scale.errors import UserError


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist; pass a path to a YAML file (see configs/)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}{where}: malformed YAML ({getattr(e, 'problem', e)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of key: value at the top level, got {type(data).__name__}")
    return data


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "null")


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check `value` against the annotation `tp`, converting only where lossless (int -> float, '1e-4' -> float)."""
    origin = get_origin(tp)
    bad = UserError(f"{source}: key '{key}' expects {_type_name(tp)}, got {value!r}")
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key, source)
            except UserError:
                continue
        raise UserError(f"{source}: key '{key}' expects {' or '.join(_type_name(o) for o in options)}, got {value!r}")
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise UserError(f"{source}: key '{key}' must be one of {', '.join(repr(a) for a in get_args(tp))}, got {value!r}")
    if origin in (list, tuple):
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.startswith("[") else [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise bad
        args = get_args(tp)
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{key}[{i}]", source) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, str):
            return from_dict(tp, read_yaml(value), source=value)
        if isinstance(value, dict):
            return from_dict(tp, value, source=source, prefix=f"{key}.")
        if isinstance(value, tp):
            return value
        raise bad
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise bad
    if tp is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value.replace("_", ""))
            except ValueError:
                raise bad from None
            if f.is_integer():
                return int(f)
        raise bad
    if tp is float:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is str:
        if isinstance(value, (dict, list)):
            raise bad
        return str(value)
    raise bad


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_dict(cls, data: dict, *, source: str, prefix: str = ""):
    """Build dataclass `cls` from a mapping; unknown keys and wrong types are errors naming key and source."""
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise UserError(
                f"{source}: unknown key '{prefix}{key}' (valid keys here: {', '.join(prefix + n for n in names)})"
            )
        kwargs[key] = _coerce(value, hints[key], prefix + key, source)
    try:
        obj = cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise UserError(f"{source}: {e}") from None
    return obj


def set_key(obj, dotted: str, raw: str, source: str = "command line", prefix: str = ""):
    """Apply one `a.b.c=value` override to a (nested) dataclass instance, returning a new instance."""
    head, _, rest = dotted.partition(".")
    names = {f.name for f in dataclasses.fields(obj)}
    if head not in names:
        valid = ", ".join(prefix + n for n in sorted(names))
        raise UserError(f"{source}: unknown key '{prefix}{dotted}' (valid keys: {valid})")
    hint = _hints(type(obj))[head]
    current = getattr(obj, head)
    if rest:
        if not dataclasses.is_dataclass(current):
            raise UserError(f"{source}: key '{prefix}{head}' has no sub-keys, so '{prefix}{dotted}' is not a valid key")
        new = set_key(current, rest, raw, source, f"{prefix}{head}.")
    else:
        try:
            value = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError:
            value = raw
        new = _coerce(value, hint, prefix + dotted, source)
    return dataclasses.replace(obj, **{head: new})


def split_overrides(args: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Separate positional arguments from `key=value` overrides."""
    positional, overrides = [], []
    for a in args:
        if "=" in a and not a.startswith("="):
            k, _, v = a.partition("=")
            overrides.append((k.strip(), v))
        else:
            positional.append(a)
    return positional, overrides


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)


def load(cls, path: str | Path | None, overrides: list[tuple[str, str]] = ()):
    """A `cls` from YAML file `path` (or defaults when None) with dotted overrides applied, then validated."""
    obj = from_dict(cls, read_yaml(path), source=str(path)) if path else cls()
    for key, value in overrides:
        obj = set_key(obj, key, value)
    if hasattr(obj, "validate"):
        obj.validate()
    return obj
