"""Dotted config keys looked up in the schema: which keys exist, what each one holds, its default.

The loader names the allowed keys when a file or `--set` has a typo; a search space checks each
searched key and value against the key's type. Both ask here, so the schema is walked in one place.
"""

from __future__ import annotations

import functools
from pathlib import Path
from types import NoneType, UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from harness.config.schema import Config

__all__ = [
    "known_keys",
    "key_problem",
    "field_of",
    "normalise",
    "value_problem",
    "default_of",
    "number_type",
    "type_name",
    "leaf_keys",
    "describe_type",
    "default_text",
]


def _section_model(section: str) -> type[BaseModel] | None:
    model: type[BaseModel] = Config
    for part in filter(None, section.split(".")):
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def known_keys(section: str = "") -> list[str]:
    """Field names of a section (`""` for the top level, `"train"`, `"optim.scheduler"`...); [] for a leaf."""
    model = _section_model(section)
    return list(model.model_fields) if model else []


def key_problem(key: str) -> str | None:
    """Why `key` is not a leaf of the config schema, or None when it is one."""
    prefix = ""
    for part in key.split("."):
        allowed = known_keys(prefix)
        if part not in allowed:
            here = f"under '{prefix}'" if prefix else "at the top level"
            return f"'{key}' must be a config key, but '{part}' is unknown; allowed {here}: {', '.join(allowed)}"
        prefix = f"{prefix}.{part}" if prefix else part
    if known_keys(key):
        return f"'{key}' must be a config key, but it names a section; choose one of its keys: {', '.join(known_keys(key))}"
    return None


def field_of(key: str) -> FieldInfo:
    """The schema field of a leaf key (check it with `key_problem` first)."""
    *sections, leaf = key.split(".")
    model = _section_model(".".join(sections))
    if model is None or leaf not in model.model_fields:
        raise KeyError(key)
    return model.model_fields[leaf]


@functools.cache  # a pure function of the (immutable) schema, so the cache holds no state
def _adapter(key: str) -> TypeAdapter:
    info = field_of(key)
    annotation = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
    return TypeAdapter(annotation)


def normalise(key: str, value: Any) -> Any:
    """The value as the schema holds it (e.g. '3e-4' -> 0.0003 for a float key), or as given if it refuses it.

    Only the key's own type and bounds are applied; rules across keys are `Config`'s.
    """
    try:
        return _adapter(key).validate_python(value)
    except ValidationError:
        return value


def value_problem(key: str, value: Any) -> str | None:
    """Why the schema refuses `value` for `key` on its own, or None."""
    try:
        _adapter(key).validate_python(value)
    except ValidationError as exc:
        return f"{key} must be valid for the schema, but got {value!r} ({exc.errors()[0]['msg']})"
    return None


def default_of(key: str) -> Any:
    return field_of(key).get_default(call_default_factory=True)


def number_type(key: str) -> type | None:
    """int or float when the key holds that kind of number (or null), else None."""
    return _number_type(field_of(key).annotation)


def _number_type(annotation: Any) -> type | None:
    if get_origin(annotation) is Annotated:
        return _number_type(get_args(annotation)[0])
    if get_origin(annotation) in (Union, UnionType):
        members = [a for a in get_args(annotation) if a is not NoneType]
        return _number_type(members[0]) if len(members) == 1 else None
    return annotation if annotation in (int, float) else None


def type_name(key: str) -> str:
    """The key's type as a reader would write it: `float`, `Literal['mean', 'attention']`."""
    annotation = field_of(key).annotation
    if get_origin(annotation) is None:
        return getattr(annotation, "__name__", str(annotation))
    return str(annotation).replace("typing.", "")



def leaf_keys(section: str = "") -> list[str]:
    """Every leaf key under a section (`""`: the whole config), in schema order."""
    keys = []
    for name in known_keys(section):
        key = f"{section}.{name}" if section else name
        keys.extend(leaf_keys(key) if known_keys(key) else [key])
    return keys


_BOUNDS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))


def _readable(annotation: Any, metadata: tuple[Any, ...] = ()) -> str:
    origin = get_origin(annotation)
    if origin is Annotated:
        inner, *more = get_args(annotation)
        return _readable(inner, (*metadata, *more))
    if origin in (Union, UnionType):
        members = [a for a in get_args(annotation) if a is not NoneType]
        text = " | ".join(_readable(m, metadata) for m in members)
        return f"{text} or null" if len(members) < len(get_args(annotation)) else text
    if origin is Literal:
        return "|".join(str(a) for a in get_args(annotation))
    if annotation is Path:
        name = "path"
    elif origin is None:
        name = getattr(annotation, "__name__", str(annotation))
    else:
        name = str(annotation).replace("typing.", "")
    bounds = [f"{sign} {getattr(m, attr)}" for m in metadata for attr, sign in _BOUNDS if getattr(m, attr, None) is not None]
    return " ".join([name, ", ".join(bounds)]) if bounds else name


def describe_type(key: str) -> str:
    """The key's type as a config file's reader needs it: `float > 0`, `mean|attention`, `int > 0 or null`."""
    info = field_of(key)
    return _readable(info.annotation, tuple(info.metadata))


def default_text(key: str) -> str:
    """The key's default as a config file would write it: `0.001`, `null`, `[0.2, 0.2]`, `runs`."""
    value = _adapter(key).dump_python(default_of(key), mode="json")
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()
