"""Frozen, typed configs for every entry point: dataclass defaults, then a YAML file, then key=value overrides.

    cfg = load_config(WorldConfig, "experiments/configs/world/tiny.yaml", ["n_users=500", "slot_mix=[0.5,0.3,0.2]"])

A YAML file holds overrides only. Every key is checked against the dataclass's fields and every value against the
field's type, so a typo or a wrong type fails with the dotted key and its source (file or override) instead of being
silently ignored. Values are strict: a str field wants a string (quote `name='2024'`), an int field rejects `true`
and holds a 64-bit integer (10**30 is refused), a float field holds a finite float (1e400, .inf and .nan are refused).
Imports only the stdlib and PyYAML, because every entry point (torch and TensorFlow alike) imports this module.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import re
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config key or value is wrong; the message names the dotted key and where it came from."""


INT_MIN, INT_MAX = -(2**63), 2**63 - 1
FLOAT_MAX = sys.float_info.max


# PyYAML follows YAML 1.1: `1e-3` and `1.0e3` are strings and `2026-01-05` is a date. A config wants a float and a
# string. The dumper gets the same float rule so that it quotes strings which would load back as floats.
_EXP_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads 1e-3 as a float and leaves dates as strings."""


class _Dumper(yaml.SafeDumper):
    """SafeDumper that quotes every string _Loader would read back as something else."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _cls in (_Loader, _Dumper):
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", _EXP_FLOAT, list("-+0123456789."))


def _parse_yaml(text: str, where: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: invalid YAML: {e}") from None


def _fields(cls: type) -> dict[str, Any]:
    """Settable fields of dataclass `cls` and their resolved types (works under `from __future__ import annotations`)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _nested(tp: Any) -> type | None:
    """The dataclass a field holds (also as `X | None`), else None."""
    if _is_union(tp):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = options[0] if len(options) == 1 else None
    return tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None


def _convert(tp: Any, value: Any, key: str, where: str) -> Any:
    """Check `value` against type `tp` and return it as stored: lists become tuples, ints in float fields floats."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)

    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{where}: key '{key}': expected {expected}, got {value!r}")

    if tp is Any:
        return value
    if _is_union(tp):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for option in options:
            try:
                return _convert(option, value, key, where)
            except ConfigError:
                if len(options) == 1:  # the inner message is the precise one
                    raise
        raise bad(" or ".join(getattr(a, "__name__", str(a)) for a in args))
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):  # type check: True is not 1
            return value
        raise bad("one of " + ", ".join(map(repr, args)))
    if tp is bool or tp is str:
        if isinstance(value, tp):
            return value
        raise bad("bool (true/false)" if tp is bool else "str")
    if tp is int or tp is float:
        if not isinstance(value, int if tp is int else (int, float)) or isinstance(value, bool):
            raise bad(tp.__name__)
        if tp is int and not INT_MIN <= value <= INT_MAX:  # no size, count or seed needs more than 64 bits
            raise bad("an int within 64 bits (-2**63 .. 2**63-1)")
        if tp is float and not (abs(value) <= FLOAT_MAX if isinstance(value, int) else math.isfinite(value)):
            raise bad("a finite float")  # 1e400 reads as inf, .nan as NaN: no setting wants either
        return tp(value)
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise bad("a path string")
    if tp in (tuple, list) or origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise bad("a list")
        if origin is tuple and args and args[-1] is not Ellipsis:  # fixed length: tuple[int, str]
            if len(value) != len(args):
                raise bad(f"a list of {len(args)} items")
            return tuple(_convert(a, v, f"{key}[{i}]", where) for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        return tuple(_convert(item, v, f"{key}[{i}]", where) for i, v in enumerate(value))
    if tp is dict or origin is dict:
        if not isinstance(value, Mapping):
            raise bad("a mapping")
        key_type, value_type = args or (Any, Any)
        return {_convert(key_type, k, f"{key} (a key)", where): _convert(value_type, v, f"{key}.{k}", where)
                for k, v in value.items()}
    if _nested(tp):  # a dataclass inside a container, e.g. tuple[Layer, ...]
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise bad(f"a mapping of {tp.__name__} fields")
        tree: dict = {}
        _merge(tp, tree, value, key + ".", where)
        missing: list[str] = []
        built = _build(tp, tree, None, key + ".", missing)
        if missing:
            raise ConfigError(f"{where}: missing required key(s) {', '.join(map(repr, missing))}")
        return built
    raise ConfigError(f"{where}: key '{key}': unsupported field type {tp!r}")


def _set(cls: type, tree: dict, path: list, value: Any, prefix: str, where: str) -> None:
    """Record the checked `value` for `path` (a dotted key, split) below dataclass `cls` in `tree`."""
    fields = _fields(cls)
    name, key = path[0], f"{prefix}{path[0]}"
    if name not in fields:
        close = difflib.get_close_matches(str(name), list(fields), n=1)
        hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
        raise ConfigError(f"{where}: unknown key '{key}' for {cls.__name__}{hint}")
    sub = _nested(fields[name])
    if sub and (len(path) > 1 or isinstance(value, Mapping)):  # merge into the nested config, field by field
        if not isinstance(tree.get(name), dict):
            tree[name] = {}
        if len(path) > 1:
            _set(sub, tree[name], path[1:], value, key + ".", where)
        else:
            _merge(sub, tree[name], value, key + ".", where)
    elif len(path) > 1:
        raise ConfigError(f"{where}: key '{key}' is not a nested config, so '{prefix}{'.'.join(path)}' does not exist")
    else:
        tree[name] = _convert(fields[name], value, key, where)


def _merge(cls: type, tree: dict, mapping: Mapping, prefix: str, where: str) -> None:
    for k, v in mapping.items():
        _set(cls, tree, [k], v, prefix, where)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _build(cls: type, tree: dict, base: Any, prefix: str, missing: list[str]) -> Any:
    """`base` (or `cls`'s defaults) with the values in `tree`; unset required keys go to `missing` (then None)."""
    kwargs = {}
    for f, tp in zip([f for f in dataclasses.fields(cls) if f.init], _fields(cls).values()):
        sub = _nested(tp)
        start = getattr(base, f.name) if base is not None else _default(f)
        if sub and isinstance(tree.get(f.name), dict):
            kwargs[f.name] = _build(sub, tree[f.name], start if isinstance(start, sub) else None,
                                    f"{prefix}{f.name}.", missing)
        elif f.name in tree:
            kwargs[f.name] = tree[f.name]
        elif start is dataclasses.MISSING:
            if sub and not _is_union(tp):  # a required nested config: its own defaults may be enough
                kwargs[f.name] = _build(sub, {}, None, f"{prefix}{f.name}.", missing)
            else:
                missing.append(prefix + f.name)
    if missing:
        return None
    return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)


def _validate(cfg: Any) -> None:
    """Call `validate()` on every nested config, then on `cfg` itself."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            _validate(value)
    if callable(getattr(cfg, "validate", None)):
        cfg.validate()


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """`cls`'s defaults, then the YAML mapping at `path`, then "dotted.key=value" overrides (values read as YAML).

    Raises ConfigError for an unknown key, a wrong type, an unset required field, or a failing `validate()`.
    """
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"load_config wants a dataclass type, got {cls!r}")
    tree: dict = {}
    if path is not None:
        where = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{where}: config file not found") from None
        except OSError as e:
            raise ConfigError(f"{where}: cannot read config file: {e.strerror}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"{where}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); "
                              f"a config is a UTF-8 YAML file") from None
        data = _parse_yaml(text, where)
        if data is None:  # an empty file: nothing to override
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: top level must be a mapping of keys to values, got {type(data).__name__}")
        _merge(cls, tree, data, "", where)
    for item in [overrides] if isinstance(overrides, str) else overrides:
        where = f"override {item!r}"
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{where}: expected dotted.key=value")
        _set(cls, tree, key.strip().split("."), _parse_yaml(text, where), "", where)
    missing: list[str] = []
    cfg = _build(cls, tree, None, "", missing)
    if missing:
        source = f"{path}: " if path is not None else ""
        raise ConfigError(f"{source}missing required key(s) for {cls.__name__}: {', '.join(map(repr, missing))}")
    _validate(cfg)
    return cfg


def check_folder_name(owner: str, key: str, value: str) -> None:
    """ConfigError unless `value` is one plain folder name: a name that a path like data/<name>/ keeps inside its
    parent (no '/', no '\\', not '.', '..' or empty, not hidden: staging folders are hidden siblings)."""
    if not value or value.strip() != value or value.startswith(".") or "/" in value or "\\" in value \
            or "\0" in value:
        raise ConfigError(f"{owner}: '{key}' must be a plain folder name (no '/', '\\' or leading '.', not empty), "
                          f"got {value!r}")


def check_at_least(owner: str, cfg: Any, minimum: int, *keys: str) -> None:
    """ConfigError naming the first field of `cfg` among `keys` whose value is below `minimum` (counts and sizes
    that a negative or zero value would turn into nonsense rather than an error)."""
    for key in keys:
        if getattr(cfg, key) < minimum:
            raise ConfigError(f"{owner}{key} must be >= {minimum}, got {getattr(cfg, key)}")


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return str(value) if isinstance(value, Path) else value


def config_to_dict(cfg: Any) -> dict:
    """`cfg` as plain YAML-safe data: nested configs as dicts, tuples as lists, paths as strings."""
    return _plain(cfg)


def dump_config(cfg: Any, path: str | Path) -> None:
    """Write `cfg` as YAML to `path`; `load_config(type(cfg), path) == cfg`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.dump(config_to_dict(cfg), Dumper=_Dumper, sort_keys=False, allow_unicode=True))


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """Add `--config PATH` and positional `key=value` overrides to an entry point's parser."""
    parser.add_argument("--config", type=Path, metavar="PATH", help="YAML file of overrides to the defaults")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted key=value overrides (values read as YAML), applied after --config")


def config_from_args(cls: type[T], args: argparse.Namespace) -> T:
    """The config for parsed arguments from a parser set up with `add_config_args`."""
    return load_config(cls, args.config, args.overrides)


def exit_on(main: Callable[[], int], *errors: type[Exception]) -> None:
    """Run an entry point's main() and exit with its status; one of `errors` (bad input the entry point names:
    a config key, a column, a file) ends as one line `error: ...` on stderr and exit status 2, no traceback."""
    try:
        sys.exit(main())
    except errors as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
