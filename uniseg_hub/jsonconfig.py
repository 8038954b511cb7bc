"""One small base for the JSON-serialisable config dataclasses (``UniSegConfig``, ``TrainConfig``, ...).

:class:`JsonConfig` gives every config the same behaviour:

* ``to_dict`` / ``from_dict`` / ``to_json`` / ``from_json`` / ``replace``;
* ``from_dict`` refuses unknown fields (naming them and the known ones) and builds nested configs from dicts;
* every field is type-checked against its annotation when the object is built, so a wrong value in a JSON
  file or on the command line is refused with the field's name (``TrainConfig.epochs must be an integer, got
  2.5``) instead of failing later with an unrelated error. Integers are accepted where floats are expected;
  ``bool`` is never accepted as a number; numpy scalars are converted to Python numbers.

Subclasses are ``@dataclass`` classes that call ``self.check_types()`` first in ``__post_init__``.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import os
import types
import typing
from typing import Any, TypeVar, Union

from .atomic import atomic_write_text

__all__ = ["JsonConfig", "ConfigError"]

T = TypeVar("T", bound="JsonConfig")


class ConfigError(ValueError):
    """A config field has a wrong type or value (a ``ValueError``: the CLI reports it in one line)."""


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return f"a list of {_type_name(args[0])}" if args else "a list"
    if origin is dict:
        args = typing.get_args(tp)
        return f"an object of {_type_name(args[1])}" if args else "an object"
    names = {int: "an integer", float: "a number", bool: "true/false", str: "a string"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _check(value: Any, tp: Any, where: str) -> Any:
    """``value`` checked (and normalised: numpy scalars, tuples → lists, dicts → nested configs) against ``tp``."""
    if tp is Any or tp is object:
        return value
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        errors = []
        for alt in typing.get_args(tp):
            try:
                return _check(value, alt, where)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"{where} must be {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{where} must be null, got {value!r}")
    if tp is bool:
        if isinstance(value, bool) or (hasattr(value, "dtype") and getattr(value, "dtype", None) == bool):
            return bool(value)
        raise ConfigError(f"{where} must be true or false, got {value!r} ({type(value).__name__})")
    if tp is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
        raise ConfigError(f"{where} must be an integer, got {value!r} ({type(value).__name__})")
    if tp is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where} must be a number, got {value!r} ({type(value).__name__})")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where} must be a string, got {value!r} ({type(value).__name__})")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be {_type_name(tp)}, got {value!r} ({type(value).__name__})")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        return [_check(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be {_type_name(tp)}, got {value!r} ({type(value).__name__})")
        args = typing.get_args(tp)
        kt, vt = args if args else (Any, Any)
        return {_check(k, kt, f"{where} key"): _check(v, vt, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(tp, type) and issubclass(tp, JsonConfig):
        if isinstance(value, tp):
            return value
        if isinstance(value, dict):
            return tp.from_dict(value, _where=where)
        raise ConfigError(f"{where} must be a {tp.__name__} or an object of its fields, got {value!r}")
    return value


class JsonConfig:
    """Mixin for ``@dataclass`` configs: typed fields, JSON round trip, unknown-field check, ``replace``."""

    def check_types(self) -> None:
        """Check and normalise every field against its annotation (raise :class:`ConfigError` naming the field)."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            object.__setattr__(self, f.name, _check(value, hints.get(f.name, Any), f"{type(self).__name__}.{f.name}"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any], *, _where: str | None = None) -> T:
        where = _where or cls.__name__
        if not isinstance(data, dict):
            raise ConfigError(f"{where} must be an object of {cls.__name__} fields, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} field(s) {unknown} in {where}; known fields: {sorted(known)}")
        try:
            return cls(**data)
        except TypeError as e:  # e.g. a required field missing
            raise ConfigError(f"{where}: {e}") from None

    def to_json(self, path: str | os.PathLike | None = None, indent: int = 2) -> str:
        """The JSON text; with ``path``, also written there (atomically: temporary file, then rename)."""
        text = json.dumps(self.to_dict(), indent=indent)
        if path is not None:
            atomic_write_text(path, text + "\n")
        return text

    @classmethod
    def from_json(cls: type[T], text_or_path: str | os.PathLike) -> T:
        """Build from a JSON string or a JSON file (errors name the file)."""
        text, where = str(text_or_path), cls.__name__
        if not text.lstrip().startswith("{"):
            where = str(text_or_path)
            with open(text_or_path, encoding="utf-8") as fh:
                text = fh.read()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{where}: not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a JSON object of {cls.__name__} fields, found {type(data).__name__}")
        return cls.from_dict(data, _where=where)

    def replace(self: T, **changes: Any) -> T:
        """A copy with some fields changed (checked and validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]
