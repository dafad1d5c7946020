"""Typed configuration: frozen dataclasses built from dicts / TOML, unknown keys rejected.

One generic converter, :func:`from_dict`, turns a nested dict into a (nested) frozen
dataclass, checking every key and coercing scalars to the declared type; so a typo in a
TOML file or a ``--set`` override fails loudly instead of being ignored (RecBole #1147).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import math
import numbers
import os
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from metarec.types import MetarecError

T = TypeVar("T")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    # a config's resolved annotations, once per class: every config built now checks its
    # fields (coerce_fields), and resolving them each time made ModelConfig() cost ~3 ms
    return typing.get_type_hints(cls)


def _numpy_bool(value: Any) -> bool:
    # numpy's bool without importing numpy (the CLI starts on the standard library alone)
    return type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        if (
            type(None) in args
            and str not in args
            and isinstance(value, str)
            and value.strip().lower() in ("none", "null")
        ):
            # TOML has no null: a config file unsets an optional number or table with
            # "none", as --set does (a recorded config with pca_dim = null had no file form)
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except MetarecError as e:
                errors.append(str(e))
        raise MetarecError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            allowed = ", ".join(repr(a) for a in typing.get_args(tp))
            raise MetarecError(f"{where}: {value!r} is not one of {allowed}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise MetarecError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise MetarecError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(
            _coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise MetarecError(f"{where}: expected a table, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value):
            return value
        if not isinstance(value, dict):
            raise MetarecError(f"{where}: expected a table, got {value!r}")
        return from_dict(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if _numpy_bool(value):  # from an array or a comparison
            return bool(value)
        if isinstance(value, int) and value in (0, 1):  # --set refit=1, as "1" already was
            return bool(value)
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise MetarecError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise MetarecError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, numbers.Integral) and not _numpy_bool(value):
            return int(value)  # numpy's integers (a seed drawn with numpy)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise MetarecError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise MetarecError(f"{where}: expected a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise MetarecError(f"{where}: expected a number, got {value!r}") from None
        if not math.isfinite(number):
            # no setting means anything at nan or inf: a learning rate of nan only failed
            # once training had started, a ridge target of nan never did
            raise MetarecError(f"{where}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise MetarecError(f"{where}: expected a string, got {value!r}")
    if tp is os.PathLike:
        # a path: `items = 5` in an experiment's data options reached open() (a TypeError)
        if isinstance(value, str | os.PathLike):
            return value
        raise MetarecError(f"{where}: expected a path (a string), got {value!r}")
    return value


def from_dict(cls: type[T], data: dict, where: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and type mismatches raise."""
    if not isinstance(data, dict):
        raise MetarecError(f"{where or cls.__name__}: expected a table, got {data!r}")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields))
        # a typo's nearest key first: the whole list alone left "inner_stpes" to the eye
        close = difflib.get_close_matches(str(unknown[0]), list(fields), n=1, cutoff=0.75)
        hint = f"did you mean {'.'.join(filter(None, [where, close[0]]))!r}? " if close else ""
        raise MetarecError(
            f"unknown config key {'.'.join(filter(None, [where, unknown[0]]))!r} "
            f"({hint}known: {known})"
        )
    required = [
        name
        for name, f in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [name for name in required if name not in data]
    if missing:
        raise MetarecError(
            f"{where or cls.__name__}: missing required key(s) {', '.join(map(repr, missing))}"
        )
    kwargs = {
        name: _coerce(value, hints[name], ".".join(filter(None, [where, name])))
        for name, value in data.items()
    }
    try:
        return cls(**kwargs)
    except MetarecError as err:
        # a range check inside the class ("MetaConfig: inner_lr > 0") names the class, not
        # which of its tables (meta or rank_meta) holds the bad value
        if where and not str(err).startswith(where):
            raise MetarecError(f"{where}: {err}") from None
        raise


def check_field_types(obj: Any) -> None:
    """Refuse a dataclass built directly (not through :func:`from_dict`) with a table where
    a nested config belongs, or a non-string where a string belongs: the constructor does
    not coerce, and ``ModelConfig(train={"steps": 3})`` otherwise failed in ``fit`` with
    ``'dict' object has no attribute 'seed'``."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        value, tp = getattr(obj, f.name), hints[f.name]
        args = (
            typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else ()
        )
        if value is None and type(None) in args:
            continue
        kinds = [a for a in args if a is not type(None)] or [tp]
        name = f"{type(obj).__name__}.{f.name}"
        for kind in kinds:
            if dataclasses.is_dataclass(kind) and isinstance(kind, type):
                if not isinstance(value, kind):
                    raise MetarecError(
                        f"{name}: expected a {kind.__name__}, got {type(value).__name__} "
                        "(ModelConfig.from_dict builds a config from tables)"
                    )
            elif kind is str and not isinstance(value, str):
                raise MetarecError(f"{name}: expected a string, got {value!r}")
    coerce_fields(obj)


def coerce_fields(obj: Any, skip: tuple[str, ...] = ()) -> None:
    """Check and convert a frozen config's fields as :func:`from_dict` does its tables, in
    place: a config built directly got no checks at all, so ``ModelConfig(refit="no")``
    was taken as true, ``seed=1.5`` failed deep inside numpy and ``ridge_target=nan`` was
    accepted. The same leniency as a table's (``"3"`` and ``3.0`` for the integer 3; an
    int for a float); nested configs check their own fields when they are built."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        # ``skip``: fields the class checks itself, in its own words (or where a value
        # from_dict would refuse means something, as an infinite cache TTL does)
        if not f.init or f.name in skip:
            continue
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            continue
        coerced = _coerce(value, hints[f.name], f"{type(obj).__name__}.{f.name}")
        if coerced is not value:
            object.__setattr__(obj, f.name, coerced)


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain JSON-able dict (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"meta.inner_steps=5"`` -> (["meta", "inner_steps"], 5); the value is parsed as TOML."""
    if "=" not in text:
        raise MetarecError(f"--set {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise MetarecError(f"--set {text!r}: empty key")
    path = [p.strip() for p in key.strip().split(".")]
    if not all(path):
        # "train..steps" and "train.steps." used to pass as train.steps
        raise MetarecError(f"--set {text!r}: malformed key {key.strip()!r}")
    if raw.strip().lower() in NONE_WORDS:
        # TOML has no null: a bare none/null is how an optional setting is unset
        # (text.pca_dim=none: raw vectors); it used to be the string "None" or an error
        return path, None
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()  # a bare word: keep it as a string
    return path, value


NONE_WORDS = ("none", "null")


def set_path(data: dict, path: list[str], value: Any) -> dict:
    """A copy of ``data`` with ``value`` at ``path``; a table given for a table is merged
    into it key by key (``train={steps=5}`` is ``train.steps=5``: given whole, it reset
    every other key of the table to its class default, not to ModelConfig's own)."""
    out = copy.deepcopy(data)
    node = out
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise MetarecError(f"{'.'.join(path)}: {part!r} is not a table")
    last = path[-1]
    if isinstance(value, dict) and isinstance(node.get(last), dict):
        node[last] = deep_merge(node[last], value)
    else:
        node[last] = value
    return out


def deep_merge(base: dict, over: dict) -> dict:
    """``base`` with ``over`` laid on it: tables merge key by key, anything else replaces."""
    out = dict(base)
    for k, v in over.items():
        out[k] = (
            deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Return a copy of the nested dict ``data`` with ``key.path=value`` overrides applied."""
    out = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        try:
            out = set_path(out, path, value)
        except MetarecError as err:
            raise MetarecError(f"--set {text!r}: {err}") from None
    return out


def load_toml(path: str | Path) -> dict:
    p = Path(path)
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise MetarecError(f"config file not found: {p}") from None
    except tomllib.TOMLDecodeError as err:
        raise MetarecError(f"{p}: invalid TOML: {err}") from None
    except UnicodeDecodeError as err:
        # TOML is UTF-8; the message named no file ("cannot decode input (utf-8)")
        raise MetarecError(
            f"{p}: invalid TOML: not UTF-8 ({err.reason} at byte {err.start})"
        ) from None
    except IsADirectoryError:
        raise MetarecError(f"{p}: is a folder, not a config file") from None
