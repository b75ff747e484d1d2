"""Configs are dataclasses: defaults in the code, then a YAML file, then ``key=value`` overrides from the CLI.

Every method's config is a plain dataclass whose field defaults are the paper's values. :func:`load_config`
layers a YAML file and command-line overrides over those defaults, checking each key and type so that a typo
gets a one-line error naming the valid keys; :func:`save_config` writes the resolved config next to the outputs.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from selfevolve.errors import SelfEvolveError
from selfevolve.io import write_text

T = TypeVar("T")


def _coerce(value: Any, kind: Any, key: str) -> Any:
    """``value`` checked against the annotation ``kind`` (ints widen to floats, lists to tuples)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                return _coerce(value, option, key)
            except SelfEvolveError:
                continue
        raise SelfEvolveError(f"config key {key!r}: {value!r} is not a valid {kind}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise SelfEvolveError(f"config key {key!r}: {value!r} is not one of {', '.join(map(repr, args))}")
    if kind is type(None):
        if value is None:
            return None
    elif dataclasses.is_dataclass(kind):
        if isinstance(value, kind):
            return value
        if isinstance(value, Mapping):
            return _build(kind, value, prefix=f"{key}.")
    elif kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif kind is int or kind is str or kind is bool:
        if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
            return value
    elif origin in (list, tuple, Sequence) or kind in (list, tuple):
        if isinstance(value, list | tuple):
            item = args[0] if args else Any
            items = [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
            return tuple(items) if (origin or kind) is tuple else items
    elif origin is dict or kind is dict:
        if isinstance(value, Mapping):
            return dict(value)
    else:
        return value
    raise SelfEvolveError(f"config key {key!r}: expected {getattr(kind, '__name__', kind)}, got {value!r}")


def _default(spec: dataclasses.Field) -> Any:
    if spec.default_factory is not dataclasses.MISSING:
        return spec.default_factory()
    return None if spec.default is dataclasses.MISSING else spec.default


def _build(cls: type[T], values: Mapping[str, Any], prefix: str = "", base: Any = None) -> T:
    """``cls`` from ``values`` over ``base`` (an instance) or its defaults. A nested config given as a mapping
    is layered over the default its parent sets (``train.epochs=3`` keeps the other ``train`` values that
    the parent chose, not those of ``TrainingConfig`` itself)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise SelfEvolveError(
            f"unknown config key(s) {', '.join(prefix + k for k in unknown)} for {cls.__name__}; "
            f"valid keys: {', '.join(prefix + k for k in fields)}"
        )
    kwargs = {} if base is None else {name: getattr(base, name) for name in fields}
    for name, value in values.items():
        current = getattr(base, name) if base is not None else _default(fields[name])
        if isinstance(value, Mapping) and dataclasses.is_dataclass(current) and not isinstance(current, type):
            kwargs[name] = _build(type(current), value, f"{prefix}{name}.", base=current)
        else:
            kwargs[name] = _coerce(value, hints[name], prefix + name)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise SelfEvolveError(f"invalid {cls.__name__} config: {err}") from err


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = tree.setdefault(part, {})
        if not isinstance(node, dict):
            raise SelfEvolveError(f"override {dotted!r}: {part!r} is not a nested config")
        tree = node
    tree[leaf] = value


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """``["lr=1e-4", "lora.rank=8"]`` as a nested dict; values are parsed as YAML scalars (``true``, ``3``, ``[1,2]``)."""
    tree: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise SelfEvolveError(f"override {item!r} is not key=value; write e.g. learning_rate=1e-4")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as err:
            raise SelfEvolveError(f"override {item!r}: the value is not valid YAML ({err.problem})") from err
        _set_dotted(tree, key.strip(), value)
    return tree


def _merge(base: dict, extra: Mapping) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from ``path``; a missing file or another shape is a one-line error."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as err:
        raise SelfEvolveError(f"config file {path} does not exist") from err
    except yaml.YAMLError as err:
        raise SelfEvolveError(f"config file {path} is not valid YAML: {err}".splitlines()[0]) from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SelfEvolveError(
            f"config file {path} must hold a mapping of keys to values, got {type(data).__name__}"
        )
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Build ``cls`` from its defaults, then the YAML file at ``path``, then ``key=value`` overrides."""
    values = read_yaml(path) if path is not None else {}
    return _build(cls, _merge(values, parse_overrides(overrides)))


def config_to_dict(config: Any) -> dict[str, Any]:
    """A dataclass config as plain YAML-safe data (tuples become lists)."""

    def plain(value: Any) -> Any:
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


def save_config(config: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML, atomically, so a run's outputs always say how they were made."""
    return write_text(path, yaml.safe_dump(config_to_dict(config), sort_keys=False))


def import_callable(spec: str, what: str, hint: str = "point at a function") -> Callable:
    """The callable a user's ``module:function`` spec names (a judge, a reward, a committee member), with the
    current directory importable as under ``python -m``; a one-line error names ``what`` and the fix."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise SelfEvolveError(f"{what} {spec!r} must look like module:function, e.g. mypkg.mymodule:fn")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())  # a console script does not look in the current directory by itself
    try:
        target = importlib.import_module(module_name)
    except ImportError as err:
        raise SelfEvolveError(
            f"cannot import {what} {spec!r} ({err}); check PYTHONPATH and the module name"
        ) from None
    for part in attr.split("."):
        if not hasattr(target, part):
            raise SelfEvolveError(
                f"cannot import {what} {spec!r}: module {module_name!r} has no attribute {attr!r}; check the spec"
            )
        target = getattr(target, part)
    if not callable(target):
        raise SelfEvolveError(f"{what} {spec!r} is not callable; {hint}")
    return target
