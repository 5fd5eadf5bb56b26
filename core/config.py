"""Typed configs: YAML files loaded into dataclasses, with dotted ``key=value`` overrides.

Every key is checked against the dataclass schema: an unknown key or a value of the wrong type
stops with a ConfigError naming the key and the closest valid one, and every value against the
rules of core/schema_rules.py (a misspelt name, a zero where a count is needed, a mean of 2 numbers).
Fields typed ``dict`` hold free-form blocks (component ``args``), which the registry validates
when it builds them.
"""
from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple, Type, TypeVar, Union

import yaml

from core.errors import ConfigError
from core.files import atomic_write_text
from core.registry import load_plugins
from core.schema_rules import value_problem
from core.suggest import did_you_mean

T = TypeVar("T")

BOOL_TAG = "tag:yaml.org,2002:bool"
INT_TAG = "tag:yaml.org,2002:int"
FLOAT_TAG = "tag:yaml.org,2002:float"
TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
# YAML 1.1 reads far more as numbers and dates than a person means: 2024_05 (digit groups), 0755
# (octal), 12:30 (base 60) and 2024-05-01 (a date). These are YAML 1.2's core forms only.
_YAML11_SCALARS = (BOOL_TAG, INT_TAG, FLOAT_TAG, TIMESTAMP_TAG)
_INT = re.compile(r"^(?:[-+]?(?:0|[1-9][0-9]*)|0x[0-9a-fA-F]+)$")
_FLOAT = re.compile(r"""^(?:[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?
                      |[-+]?[0-9]+[eE][-+]?[0-9]+
                      |[-+]?\.(?:inf|Inf|INF)
                      |\.(?:nan|NaN|NAN))$""", re.X)


class _Loader(yaml.SafeLoader):
    """YAML 1.2 core scalars: booleans are only true/false (YAML 1.1 also reads yes/no/on/off, which
    would turn `train.mixed_precision=no` into False), numbers are plain decimal (or hexadecimal) and
    there are no implicit dates."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _YAML11_SCALARS]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Loader.add_implicit_resolver(INT_TAG, _INT, list("-+0123456789"))
_Loader.add_implicit_resolver(FLOAT_TAG, _FLOAT, list("-+.0123456789"))


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`, converting where it is lossless."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Union:
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"'{key}' must be {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"'{key}' must be a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if origin in (list, List, Sequence) or tp is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"'{key}' must be a list, got {value!r}")
        item_tp = args[0] if args else Any
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"'{key}' must be a mapping, got {value!r}")
        val_tp = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(v, val_tp, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"'{key}' must be true or false, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads '3e-4' (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"'{key}' must be a number, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):  # '1_000' and '0755' stay text in YAML 1.2; as an integer they are decimal
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"'{key}' must be an integer, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"'{key}' must be a string, got {value!r}")
    if isinstance(value, tp):
        return value
    raise ConfigError(f"'{key}' must be {_type_name(tp)}, got {value!r}")


def _field_types(cls: type) -> Dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def from_dict(cls: Type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Build dataclass `cls` from a mapping, rejecting unknown keys, wrong types and bad values."""
    types = _field_types(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in types:
            valid = [prefix + name for name in types]
            raise ConfigError(f"unknown config key '{prefix}{key}'{did_you_mean(prefix + key, valid)}")
        kwargs[key] = _coerce(value, types[key], f"{prefix}{key}")
    try:
        cfg = cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"config section '{prefix.rstrip('.') or cls.__name__}': {err}") from err
    problem = value_problem(cfg, prefix)
    if problem:
        raise ConfigError(problem)
    return cfg


def to_dict(cfg: Any) -> Dict[str, Any]:
    return dataclasses.asdict(cfg)


def split_override(text: str) -> Tuple[str, str]:
    """'train.lr=3e-4' -> ('train.lr', '3e-4'): the key and the value's text as typed."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key=value (e.g. train.lr=3e-4)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}' has an empty key")
    return key, raw


def parse_override(text: str) -> tuple:
    """'train.lr=3e-4' -> ('train.lr', 0.0003); values are parsed as YAML ('[a,b]' is a list)."""
    key, raw = split_override(text)
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def _declared_type(cls: type, key: str) -> Any:
    """The annotation of the dotted `key` in the dataclass `cls`, through sections and the values of
    mappings; None when `key` names no field (from_dict then reports it)."""
    tp: Any = cls
    for part in key.split("."):
        if dataclasses.is_dataclass(tp):
            tp = _field_types(tp).get(part)
        elif typing.get_origin(tp) in (dict, Dict, Mapping):
            args = typing.get_args(tp)
            tp = args[1] if len(args) == 2 else Any
        else:
            return None
        if tp is None:
            return None
    return tp


def typed_override(cls: type, text: str) -> tuple:
    """`parse_override`, except that a key the schema types `str` keeps its value as typed:
    `output_dir=2024_05` is the folder 2024_05, not a number. A quoted value is unquoted."""
    key, raw = split_override(text)
    if _declared_type(cls, key) is not str:
        return parse_override(text)
    if raw.strip()[:1] in ("'", '"'):
        try:
            quoted = load_yaml(raw)
        except yaml.YAMLError:
            quoted = None
        if isinstance(quoted, str):
            return key, quoted
    return key, raw


def _set_dotted(tree: Dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def _merge(base: Dict[str, Any], update: Mapping[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        # A component's `args` belong to its `name`: a recipe that sets them replaces the base's.
        if key != "args" and isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: Union[str, Path]) -> Dict[str, Any]:
    """A recipe's mapping, the files it names as `base:` merged under it."""
    return _read_recipe(Path(path), ())


def _read_recipe(path: Path, chain: Tuple[Path, ...]) -> Dict[str, Any]:
    """`chain`: the files that named this one as base, so that a loop is one error, not a recursion."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}" + (f" (the base of {chain[-1]})" if chain else ""))
    here = path.resolve()
    if here in chain:
        loop = " -> ".join(str(p) for p in (*chain[chain.index(here):], here))
        raise ConfigError(f"config files name each other as base in a loop: {loop}")
    try:
        data = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config sections")
    # A recipe may build on another: `base: ../other.yaml`, resolved relative to this file.
    base = data.pop("base", None)
    if base:
        data = _merge(_read_recipe(path.parent / str(base), (*chain, here)), data)
    return data


def load_config(cls: Type[T], path: Union[str, Path, None] = None, overrides: Sequence[str] = ()) -> T:
    """Defaults of `cls`, then the YAML file, then `key=value` overrides, validated as a whole."""
    data = to_dict(cls())
    if path:
        data = _merge(data, read_yaml(path))
    for text in overrides:
        key, value = typed_override(cls, text)
        _set_dotted(data, key, value)
    # A user's own components register before the names they add are checked.
    plugins = data.get("plugins") or []
    load_plugins(plugins if isinstance(plugins, list) else [])
    return from_dict(cls, data)


def save_config(cfg: Any, path: Union[str, Path]) -> None:
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
