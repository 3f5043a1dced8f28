"""Build nested dataclasses from plain data (YAML, JSON), checking every key and value type.

Used by :mod:`training.config`: an unknown key fails with the list of valid keys, a value of the wrong type fails
naming the dotted key, and lossless conversions are made (int -> float, list -> tuple, YAML 1.1's "3e-4" string ->
float). Dotted ``a.b=value`` overrides are checked against the same tree; ``dict`` fields accept any sub-key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeVar

import yaml

from engine.errors import InvalidInputError

__all__ = ["ConfigError", "apply_override", "build_dataclass", "coerce_value", "parse_override", "valid_keys"]

T = TypeVar("T")


class ConfigError(InvalidInputError):
    """A training config file or override is invalid; the message names the key and the valid choices."""


def field_types(cls: type) -> dict[str, Any]:
    """Resolved type annotations of a dataclass's fields (postponed annotations evaluated)."""
    return typing.get_type_hints(cls)


def coerce_value(value: Any, annotation: Any, key: str) -> Any:
    """Check ``value`` against a field annotation and convert where lossless (int -> float, list -> tuple)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
        if not isinstance(value, Mapping):
            raise ConfigError(f"Config key '{key}' must be a mapping of {valid_keys(annotation)}.")
        return build_dataclass(annotation, value, key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"Config key '{key}' is {value!r}; choose one of {', '.join(map(repr, args))}.")
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in args:
            if option is type(None):
                if value is None:
                    return None
                continue
            try:
                return coerce_value(value, option, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"Config key '{key}' has value {value!r} that fits none of its types: {'; '.join(errors)}")
    if origin is tuple:
        if not isinstance(value, Sequence) or isinstance(value, str):
            raise ConfigError(f"Config key '{key}' must be a list, got {value!r}.")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce_value(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"Config key '{key}' must be a list of {len(args)} values, got {len(value)}.")
        return tuple(coerce_value(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"Config key '{key}' must be a mapping, got {value!r}.")
        return dict(value)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"Config key '{key}' must be true or false, got {value!r}.")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"Config key '{key}' must be an integer, got {value!r}.")
        return value
    if annotation is float:
        if isinstance(value, str):
            # PyYAML (YAML 1.1) reads "3e-4" as a string; accept any text Python parses as a number.
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"Config key '{key}' must be a number, got {value!r}.") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"Config key '{key}' must be a number, got {value!r}.")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"Config key '{key}' must be a string, got {value!r} (quote it).")
        return value
    raise ConfigError(f"Config key '{key}' has an unsupported type {annotation!r}.")  # pragma: no cover


def valid_keys(cls: type) -> str:
    """The field names of a dataclass, comma-separated, for error messages."""
    return ", ".join(f.name for f in dataclasses.fields(cls))


def build_dataclass(cls: type[T], data: Mapping[str, Any], prefix: str) -> T:
    """Build ``cls`` from a mapping, checking keys and converting values field by field (recursively).

    Args:
        cls: A dataclass type whose fields all have defaults.
        data: Plain data; missing keys keep their defaults.
        prefix: Dotted path of ``data`` in the whole tree, for error messages ("" at the top).

    Raises:
        ConfigError: For an unknown key or a value of the wrong type.
    """
    hints = field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"'{prefix}'" if prefix else "the top level"
        raise ConfigError(
            f"Unknown config key(s) {', '.join(repr(k) for k in unknown)} in {where}; valid keys: {valid_keys(cls)}."
        )
    kwargs = {
        name: coerce_value(value, hints[name], f"{prefix}.{name}" if prefix else name) for name, value in data.items()
    }
    try:
        return cls(**kwargs)
    except TypeError as exc:  # pragma: no cover - every field has a default
        raise ConfigError(f"Config section '{prefix}' is invalid: {exc}") from exc


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``"a.b=value"`` into its key path and YAML-parsed value.

    Raises:
        ConfigError: If there is no ``=`` or no key.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"Override '{text}' must look like section.key=value, e.g. optim.lr=3e-4.")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"Override '{text}' has a value that is not valid YAML: {exc}.") from exc
    return key.split("."), value


def apply_override(root: type, data: dict[str, Any], path: list[str], value: Any, text: str) -> None:
    """Set ``value`` at ``path`` in the nested dict, checking every key against the dataclass tree."""
    cls: Any = root
    node = data
    for depth, part in enumerate(path):
        dotted = ".".join(path[: depth + 1])
        if cls is None:  # inside a free-form mapping: any key is allowed
            if depth == len(path) - 1:
                node[part] = value
            else:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise ConfigError(f"Override '{text}': '{dotted}' is not a mapping.")
            continue
        names = {f.name for f in dataclasses.fields(cls)}
        if part not in names:
            where = ".".join(path[:depth]) or "the top level"
            raise ConfigError(f"Override '{text}': unknown key '{dotted}'; valid keys in {where}: {valid_keys(cls)}.")
        annotation = field_types(cls)[part]
        if depth == len(path) - 1:
            node[part] = value
            return
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"Override '{text}': '{dotted}' is not a mapping.")
        node = child
        if dataclasses.is_dataclass(annotation):
            cls = annotation
        elif typing.get_origin(annotation) is dict:
            cls = None
        else:
            raise ConfigError(f"Override '{text}': '{dotted}' is a value, not a section; set it directly.")
