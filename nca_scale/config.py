"""Typed configs: dataclasses filled from YAML files and `key=value` overrides.

Every component has a small dataclass config. `load(cls, path, overrides)` builds one from a YAML file plus
dotted `key=value` overrides; an unknown key, a wrong type or an unreadable file raises `UserError` naming the
key and where it came from. A dataclass-typed field may also be given as a path to its own YAML file, found
relative to the YAML file that names it or a folder above it (nearest first), then in the project's configs/
(`find_nested`).

Versions: a class with a `CONFIG_VERSION` (TrainConfig) is written with it (`to_dict`: `config_version`), and its
`upgrade(data, source)` brings a mapping of any version to today's keys before `from_dict` reads it; its
`KEY_ALIASES` (old top-level key -> `section.key`) does the same for `key=value` overrides (`renamed_overrides`),
with one deprecation warning per key (nca_scale/train/config_versions.py holds the table and the migrations).
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from nca_scale.errors import UserError

log = logging.getLogger(__name__)

# the shipped configs (a source checkout); nested config paths fall back to it
PROJECT_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


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


# the nested config files the latest top-level `load` chose: "key in SOURCE" -> the file (run_folder records
# them in OUT/config.yaml)
NESTED_FILES: dict[str, str] = {}


def find_nested(value: str, key: str, source: str) -> Path:
    """The YAML file a key names (`model: configs/model/cpu-tiny.yaml`): relative to the folder of the YAML that
    names it (the current directory for the command line) and then to each folder above it, nearest first, so a
    copy of configs/ beside an experiment wins over the shipped one; then the project's configs/ folder (or its
    parent, for paths written configs/...), then the current directory. The choice is logged and recorded
    (NESTED_FILES)."""
    path = Path(value).expanduser()
    naming = (Path(source).parent if Path(source).is_file() else Path.cwd()).absolute()
    bases = [] if path.is_absolute() else [naming, *naming.parents, PROJECT_CONFIGS, PROJECT_CONFIGS.parent, Path.cwd()]
    tried = [base / path for base in bases] or [path]
    for candidate in tried:
        if candidate.is_file():
            shipped = candidate.resolve().is_relative_to(PROJECT_CONFIGS.resolve())
            users = Path(source).is_file() and not Path(source).resolve().is_relative_to(PROJECT_CONFIGS.resolve())
            if not shipped or users:  # said unless a shipped file is named by a shipped config or a command line
                log.info(f"{source}: {key}: {value} -> {candidate}{' (shipped)' if shipped else ''}")
            NESTED_FILES[f"{key} in {source}"] = str(candidate)
            return candidate
    raise UserError(f"{source}: key '{key}' names the config file {value}, which is not in {naming} or a folder "
                    f"above it, nor in {PROJECT_CONFIGS}; give a path to a YAML file (see configs/)")


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) in (list, tuple, dict) and get_args(tp):
        return f"{get_origin(tp).__name__}[{', '.join(_type_name(a) for a in get_args(tp))}]"
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "null")


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check `value` against the annotation `tp`, converting only where lossless (int -> float, '1e-4' -> float)."""
    origin = get_origin(tp)
    bad = UserError(f"{source}: key '{key}' expects {_type_name(tp)}, got {value!r}")
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        return _coerce_union(value, get_args(tp), key, source)
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise UserError(f"{source}: key '{key}' must be one of {', '.join(repr(a) for a in get_args(tp))}, got {value!r}")
    if origin in (list, tuple):
        return _coerce_sequence(value, tp, key, source, bad)
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, str):
            path = find_nested(value, key, source)
            return from_dict(tp, read_yaml(path), source=str(path))
        if isinstance(value, dict):
            return from_dict(tp, value, source=source, prefix=f"{key}.")
        if isinstance(value, tp):
            return value
        raise bad
    if tp in _SCALARS and not (isinstance(value, bool) and tp in (int, float)):
        converted = _SCALARS[tp](value)
        if converted is not None:
            return converted
    raise bad


def _coerce_union(value: Any, options: tuple, key: str, source: str) -> Any:
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


def _coerce_sequence(value: Any, tp: Any, key: str, source: str, bad: UserError) -> list | tuple:
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value) if value.startswith("[") else [v for v in value.split(",") if v]
        except yaml.YAMLError:  # e.g. transfer.layers=[ : a half-typed list
            raise bad from None
    if not isinstance(value, (list, tuple)):
        raise bad
    args = get_args(tp)
    item_tp = args[0] if args else Any
    items = [_coerce(v, item_tp, f"{key}[{i}]", source) for i, v in enumerate(value)]
    return tuple(items) if get_origin(tp) is tuple else items


# scalar converters: the value, or None where it does not convert losslessly (bools are never numbers)
def _to_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
        return value.lower() in ("true", "yes", "1")
    return None


def _to_int(value: Any) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            f = float(value.replace("_", ""))
        except ValueError:
            return None
        return int(f) if f.is_integer() else None
    return None


def _to_float(value: Any) -> float | None:
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _to_str(value: Any) -> str | None:
    return None if isinstance(value, (dict, list)) else str(value)


_SCALARS = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str}


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


# ---- deprecated key names: an old top-level key -> its new dotted `section.key` ----------------------------------
_WARNED: set[str] = set()


def _deprecated(old: str, new: str) -> None:
    if old not in _WARNED:  # once per key per process
        _WARNED.add(old)
        log.warning(f"{old} is deprecated: use {new} (the flat name works until the next release)")


def rename_aliases(data: dict, aliases: dict[str, str], *, source: str, warn: bool = True) -> dict:
    """`data` with every old top-level key moved to its section (a copy; `data` is not changed). An old key and its
    new one both given is an error naming both."""
    if not any(k in aliases for k in data):
        return data
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for old in [k for k in data if k in aliases]:
        section, _, leaf = aliases[old].partition(".")
        target = out.setdefault(section, {})
        if not isinstance(target, dict):
            raise UserError(f"{source}: '{old}' is the old name of '{aliases[old]}', but '{section}' is given as "
                            f"{target!r}; write {section}: {{{leaf}: ...}} instead")
        if leaf in target:
            raise _both_given(source, old, aliases[old])
        if warn:
            _deprecated(old, aliases[old])
        target[leaf] = out.pop(old)
    return out


def _both_given(source: str, old: str, new: str) -> UserError:
    return UserError(f"{source}: both '{old}' and '{new}' are given; keep only '{new}' ('{old}' is its deprecated name)")


def renamed_overrides(cls, overrides: list[tuple[str, str]], source: str = "command line") -> list[tuple[str, str]]:
    """`key=value` overrides with each old key of `cls.KEY_ALIASES` renamed (one deprecation warning per key).
    Overrides apply in order, so a later one would silently win: an old key with its new one is refused."""
    aliases = getattr(cls, "KEY_ALIASES", {})
    keys = {k for k, _ in overrides}
    for old in sorted(keys & aliases.keys()):
        if aliases[old] in keys:
            raise _both_given(source, old, aliases[old])
    for old in [k for k, _ in overrides if k in aliases]:
        _deprecated(old, aliases[old])
    return [(aliases.get(k, k), v) for k, v in overrides]


def from_dict(cls, data: dict, *, source: str, prefix: str = ""):
    """Build dataclass `cls` from a mapping (of any version: `cls.upgrade`); unknown keys and wrong types are
    errors naming key and source."""
    hints = _hints(cls)
    if hasattr(cls, "upgrade"):
        data = cls.upgrade(data, source)
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
    """Apply one `a.b.c=value` override to a (nested) dataclass instance, returning a new instance (old key names:
    `renamed_overrides` first)."""
    head, _, rest = dotted.partition(".")
    names = {f.name for f in dataclasses.fields(obj) if f.init}
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
    """The mapping a config file holds, which from_dict reads back: the fields a config sets (init fields; a
    value resolved from elsewhere is not one), nested configs as mappings, and first `config_version` for a class
    with a CONFIG_VERSION."""
    version = getattr(type(obj), "CONFIG_VERSION", None)
    out = {} if version is None else {"config_version": version}
    return {**out, **{f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}}


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_dict(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


# ---- help: every key of a config tree, generated from the dataclasses --------------------------------------------
def _comments(cls) -> dict[str, str]:
    """field -> its comment in the class source: `metadata["help"]`, else the comment on the field's line, else
    the first sentence of the comment block right above it. Comments sit next to the code they describe, so the
    help cannot drift from it."""
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("class "))
    body = [line for line in lines[start + 1:] if line.strip()]
    indent = min(len(line) - len(line.lstrip()) for line in body) if body else 0
    found, above = {}, []
    for line in lines[start + 1:]:
        text = line.strip()
        if text.startswith("#"):
            above.append(text.lstrip("#").strip())
            continue
        m = re.match(r"(\w+)\s*:", text)
        if m and len(line) - len(line.lstrip()) == indent:
            trailing = line.partition("  # ")[2].strip() if "  # " in line else ""
            block = " ".join(above)
            found[m.group(1)] = trailing or re.split(r"(?<=[.;])\s", block, maxsplit=1)[0].rstrip(".;")
        above = []
    return found


def describe_keys(cls, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, meaning) of every leaf key of dataclass `cls`, nested configs flattened."""
    hints, comments = _hints(cls), _comments(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints[f.name]
        meaning = f.metadata.get("help") or comments.get(f.name, "")
        if dataclasses.is_dataclass(tp):
            rows += describe_keys(tp, f"{prefix}{f.name}.")
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        rows.append((prefix + f.name, _type_name(tp), "(required)" if default is dataclasses.MISSING else
                     yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("\n...").strip(), meaning))
    return rows


def load(cls, path: str | Path | None, overrides: list[tuple[str, str]] = (), validate: bool = True):
    """A `cls` from YAML file `path` (or defaults when None) with dotted overrides applied, then validated (unless
    `validate=False`: the caller validates, e.g. with the world size)."""
    overrides = renamed_overrides(cls, list(overrides))
    NESTED_FILES.clear()
    obj = from_dict(cls, read_yaml(path), source=str(path)) if path else cls()
    for key, value in overrides:
        obj = set_key(obj, key, value)
    if validate and hasattr(obj, "validate"):
        obj.validate()
    return obj
