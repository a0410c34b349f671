"""The one config loader's machinery: typed dataclass sections built from YAML mappings with errors that name
the file, section and field; how a setting enters a fingerprint (field markers); ``--set`` overrides.

The sections themselves live in :mod:`core.config.index` (what ``indexer/`` reads), :mod:`core.config.serving`
(``engine/``) and :mod:`core.config.training` (``finetune/``, ``eval/``); :mod:`core.config` ties them into one
:class:`~core.config.Config` and loads it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from core.types import EcomsearchError


class ConfigError(EcomsearchError, ValueError):
    """A config file is missing, malformed or names an unknown field."""


# how a setting enters a fingerprint (field metadata, one key per fingerprint; unmarked settings always do):
# Config.index_fingerprint ("index") and a trained model's settings hash ("train", finetune.job)
NOT_INDEXED = {"index": "never"}  # it does not change what an index holds
INDEXED_WHEN_SET = {"index": "when_set"}  # added after indexes existed: only a non-default value counts, so an
# index built before the setting stays current
NOT_TRAINED = {"train": "never"}  # it does not change the trained model (wall time, where events are stored)
TRAINED_WHEN_SET = {"train": "when_set"}  # added after models existed: a model trained before stays current


def marked_settings(section, key: str) -> dict:
    """A config section's settings as they enter the fingerprint ``key`` (``index``, ``train``; see
    :data:`NOT_INDEXED`, :data:`NOT_TRAINED`)."""
    out = {}
    for f in dataclasses.fields(section):
        how = f.metadata.get(key)
        value = getattr(section, f.name)
        if how == "never" or (how == "when_set" and value == f.default):
            continue
        out[f.name] = jsonable(value)
    return out


def jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj


_PATH_FIELDS = {
    "path",
    "rejects_path",
    "user_dict",
    "stopwords",
    "queries",
    "trim_queries",
    "train",
    "dev",
    "out_dir",
    "distill_from",
    "init_from",
    "models",  # recs.models
    "log",  # suggest.log
    "blocklist",  # suggest.blocklist
    "rules_file",  # serve.rules_file
}


def section_mapping(data, where: str) -> dict:
    """A config section as a dict (missing: empty); anything but a mapping is an error naming it."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of settings, got {type(data).__name__} {str(data)[:60]}")
    return dict(data)


def build_section(cls, data: dict | None, where: str, root: Path):
    data = section_mapping(data, where)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(known)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}; known: {sorted(known)}")
    for name, value in list(data.items()):
        if name in _PATH_FIELDS and value is not None:
            if not isinstance(value, str):
                raise ConfigError(f"{where}.{name}: expected a path (a string), got {type(value).__name__} {value!r}")
            p = Path(value)
            data[name] = p if p.is_absolute() else (root / p).resolve()
    hints = typing.get_type_hints(cls)
    for name, value in list(data.items()):
        if isinstance(value, str) and _has_type(1.0, hints[name]) and not _has_type(value, hints[name]):
            try:  # YAML 1.1 reads 5e-4 (no dot) as a string; a float field takes it as the number it spells
                data[name] = value = float(value)
            except ValueError:
                pass
        if not _has_type(value, hints[name]):
            raise ConfigError(
                f"{where}.{name}: expected {_type_name(hints[name])}, got {type(value).__name__} {value!r}"
            )
    try:
        return cls(**data)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None


def _has_type(value: Any, tp: Any) -> bool:
    """Whether a YAML value fits a field's annotation (int for a float; never a bool for a number)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, a) for a in args)
    if tp is type(None):
        return value is None
    if tp is Any:
        return True
    if origin is list:
        return isinstance(value, list) and (not args or all(_has_type(v, args[0]) for v in value))
    if origin is dict:
        return isinstance(value, dict) and (
            not args or all(_has_type(k, args[0]) and _has_type(v, args[1]) for k, v in value.items())
        )
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is Path:
        return isinstance(value, (str, Path))
    if dataclasses.is_dataclass(tp):
        return isinstance(value, (dict, tp))
    return isinstance(value, tp) if isinstance(tp, type) else True


def _type_name(tp: Any) -> str:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if tp is type(None):
        return "null"
    if args:
        return f"{typing.get_origin(tp).__name__}[{', '.join(_type_name(a) for a in args)}]"
    return "a path" if tp is Path else getattr(tp, "__name__", str(tp))


def merge(base: dict, over: dict) -> dict:
    """``base`` with ``over``'s values, nested mappings merged key by key."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_overrides(items: list[str]) -> dict[str, dict]:
    """``["rerank.weight=0.6", "finetune.crossencoder.max_steps=900"]`` -> nested overrides for
    :func:`load_config` (values read as YAML scalars)."""
    out: dict[str, dict] = {}
    for item in items:
        key, sep, value = item.partition("=")
        parts = key.split(".")
        if not sep or len(parts) < 2 or not all(parts):
            raise ConfigError(f"--set {item!r}: expected SECTION.FIELD=VALUE")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part} is set twice")
        node[parts[-1]] = yaml.safe_load(value)
    return out
