"""Typed YAML -> dataclass conversion with clear errors, and dotted command-line overrides.

Every config section is a dataclass. ``from_mapping(cls, data, where)`` checks each key
against the dataclass fields (an unknown key lists the valid ones and the closest match),
converts each value to the field's annotated type (int, float, bool, str, Literal, Optional,
list/tuple, dict, nested dataclasses) and finally calls the dataclass's ``validate(where)``
hook for range and cross-field checks. Messages name the dotted path (``engine.zero_stage``)
and the fix.

Renamed keys: a dataclass may list ``config_aliases = {"old_key": "new.dotted.key"}`` (a ClassVar);
an old key still works, is moved to its new place and gives a one-line :class:`DeprecatedKeyWarning`
naming the new key. An old key wins over the new one (an old-name command-line override of a
config written with the new names must take effect); the warning then says so.

``Overrides[SomeConfig]`` types a mapping of *some* fields of a dataclass (a model preset's
overrides): every key is checked and every value converted like a field of ``SomeConfig``, and
only the given keys are kept (the preset supplies the rest).

YAML 1.1 (PyYAML) reads ``1e-4`` as a string; float fields accept such numeric strings.

Why hand-written: OmegaConf (2.4) and pydantic were evaluated; both would replace ``coerce`` but not
the messages users and tests rely on (dotted path + fix + closest key), and OmegaConf's structured
configs reject ``Literal`` annotations, which every recipe uses.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
import warnings
from typing import Any, Generic, Literal, Mapping, Sequence, TypeVar, Union

import yaml

from .errors import ConfigError

T = TypeVar("T")


class DeprecatedKeyWarning(FutureWarning):
    """An old config key was used (it still works): the message names the new key."""


class Overrides(dict, Generic[T]):  # type: ignore[type-arg]
    """A mapping of some fields of dataclass ``T``, typed like them (see the module docstring)."""


def _closest(name: str, choices: Sequence[str], renamed: Mapping[str, str] | None = None) -> str:
    """' (did you mean ...?)' for the closest of ``choices`` or of the old names in ``renamed``
    (which suggest their new name)."""
    renamed = renamed or {}
    match = difflib.get_close_matches(name, list(choices) + list(renamed), n=1)
    if not match:
        return ""
    return f" (did you mean {renamed.get(match[0], match[0])!r}?)"


def aliases_of(cls: type) -> dict[str, str]:
    """The renamed keys of dataclass ``cls``: old name -> new dotted name."""
    return dict(getattr(cls, "config_aliases", None) or {})


def _move_renamed(cls: type, data: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    """``data`` with old keys of ``cls`` moved to their new dotted place (one warning each)."""
    aliases = aliases_of(cls)
    if not any(key in aliases for key in data):
        return data
    out = dict(data)
    for old, new in aliases.items():
        if old not in out:
            continue
        value = out.pop(old)
        *parents, leaf = new.split(".")
        node = out
        for i, part in enumerate(parents):
            child = node.get(part)
            if child is not None and not isinstance(child, Mapping):
                raise ConfigError(f"{where}.{'.'.join(parents[:i + 1])} must be a mapping (it receives "
                                  f"{where}.{old}, now {where}.{new})")
            node[part] = child = dict(child or {})
            node = child
        replaced = f" (its value {value!r} replaces {where}.{new}={node[leaf]!r})" \
            if leaf in node and node[leaf] != value else ""
        warnings.warn(f"{where}.{old} is deprecated: use {where}.{new}{replaced}", DeprecatedKeyWarning,
                      stacklevel=4)
        node[leaf] = value
    return out


def field_names(cls: type) -> list[str]:
    """The init fields of a dataclass, in declaration order."""
    return [f.name for f in dataclasses.fields(cls) if f.init]


def from_mapping(cls: type[T], data: Any, where: str, validate: bool = True) -> T:
    """Build dataclass ``cls`` from a mapping (None means all defaults); see the module docstring.
    ``validate=False`` skips ``cls.validate`` (types are still checked): for reading a recorded config
    whose training-time requirements need not hold where it is read."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a mapping of {', '.join(field_names(cls))}; got {type(data).__name__} "
                          f"{data!r}")
    data = _move_renamed(cls, data, where)
    kwargs = _typed_fields(cls, data, where)
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if validate and callable(check):
        check(where)
    return obj


def _typed_fields(cls: type, data: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The given keys of ``data``, each checked against the fields of ``cls`` and converted to its type."""
    valid = field_names(cls)
    for key in data:
        if key not in valid:
            raise ConfigError(f"unknown key {where}.{key}{_closest(str(key), valid, aliases_of(cls))}; valid keys "
                              f"of {where}: {', '.join(valid)}")
    hints = typing.get_type_hints(cls)
    return {name: coerce(data[name], hints[name], f"{where}.{name}") for name in valid if name in data}


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert ``value`` to annotation ``tp`` or raise ConfigError naming ``where``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Overrides:
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}={value!r} must be a mapping of {', '.join(field_names(args[0]))}")
        return Overrides(_typed_fields(args[0], value, where))
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return from_mapping(tp, value, where)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else
                          f"{where}={value!r} is not a valid {_type_name(tp)}")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{where}={value!r} is not allowed: use one of {', '.join(repr(a) for a in args)}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}={value!r} must be true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}={value!r} must be an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}={value!r} must be a number")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}={value!r} must be a string")
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}={value!r} must be a list")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}={value!r} must have exactly {len(args)} entries")
            return tuple(coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or tp is tuple else items
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}={value!r} must be a mapping")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    raise TypeError(f"config field {where} has an unsupported annotation {tp!r}")  # programming error


def to_plain(obj: Any) -> Any:
    """Dataclasses/tuples -> dicts/lists that yaml.safe_dump and json can write."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


def parse_override(text: str) -> tuple[list[str], Any]:
    """``engine.zero_stage=3`` -> (["engine", "zero_stage"], 3); the value is read as YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} must look like section.key=value (e.g. engine.zero_stage=3)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({exc})") from None
    return key.split("."), value


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply dotted ``key=value`` overrides to a nested dict (in place; also returned)."""
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {'.'.join(path[:i + 1])} is a value, not a section")
            node = child
        node[path[-1]] = value
    return raw


def require(condition: bool, message: str) -> None:
    """Raise ConfigError(message) unless ``condition``."""
    if not condition:
        raise ConfigError(message)
