"""Shared pieces of the pydantic schemas of suite files: one-line errors and dataclass-derived models.

A suite file is validated by pydantic models (``bench.config.SuiteSchema``, ``bench.analysis.Analysis``,
each objective's hyperparameters). pydantic reports every problem in a multi-line dump; a user of the
benchmark gets one line instead: what is wrong, where (file and key path), a did-you-mean for an
unknown key with the keys that are known there, and what to write instead (:func:`one_line`).

Settings declared as frozen dataclasses with string annotations (``bench.config.TrainConfig``, an
objective's ``Params``) get a model with the same fields (:func:`dataclass_model`); the dataclass
stays the resolved, hashed form, the model only checks the YAML values that build it.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, StrictFloat, ValidationError, create_model
from pydantic_core import PydanticCustomError

from bench.errors import ConfigError
from bench.registry import did_you_mean

#: Suite-file blocks: unknown keys are errors; no type is guessed from another (a bool is not an int,
#: "1" is not a number), an int is accepted where a float is expected, and nan/inf are not numbers.
STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def _sequence(value):
    if not isinstance(value, (list, tuple)):  # a YAML list; not a set, a mapping or a string
        raise PydanticCustomError("list_type", "Input should be a valid list")
    return tuple(value)  # a tuple is what the strict check below accepts


#: ``tuple`` fields of settings dataclasses: a YAML list of finite numbers, kept as a tuple of floats.
Numbers = Annotated[tuple[StrictFloat, ...], BeforeValidator(_sequence)]

#: field annotation (as written in the dataclass) -> the type pydantic checks
FIELD_TYPES: dict[str, Any] = {"float": float, "int": int, "str": str, "bool": bool, "tuple": Numbers}


def type_name(annotation) -> str:
    """A dataclass field's annotation as its short name: ``float``, ``int``, ``str``, ``bool`` or ``tuple``."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    text = text.strip()
    return "tuple" if text.startswith("tuple") else text


def dataclass_model(cls, name: str | None = None, *, optional: bool = False) -> type[BaseModel]:
    """A strict pydantic model with the fields of the dataclass ``cls``.

    ``optional``: every field may be left out (a block of overrides, e.g. ``train:``); else a field
    without a default is required. An explicit ``null`` is never a value of a field.
    """
    fields = {}
    for f in dataclasses.fields(cls):
        kind = type_name(f.type)
        if kind not in FIELD_TYPES:
            raise TypeError(f"{cls.__qualname__}.{f.name}: unsupported settings type {f.type!r}; "
                            f"use one of {', '.join(FIELD_TYPES)}")
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        fields[f.name] = (FIELD_TYPES[kind], None if optional or has_default else ...)
    return create_model(name or cls.__name__, __config__=STRICT, **fields)


# --------------------------------------------------------------------------- one-line errors


def location(loc, prefix: tuple = ()) -> str:
    """``('grids', 0, 'recipe')`` -> ``grids[0].recipe``."""
    out = ""
    for part in (*prefix, *loc):
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _unwrap(ann):
    while typing.get_origin(ann) is Annotated:
        ann = typing.get_args(ann)[0]
    return ann


def _step(ann, part):
    """The type found one key (``part``) below a value of type ``ann``, or None."""
    ann = _unwrap(ann)
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        field = keys_of(ann).get(str(part))
        return field.annotation if field is not None else None
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is dict:
        return args[1] if len(args) == 2 else None
    if origin in (list, tuple, set, frozenset):
        return args[0] if args else None
    if origin in (typing.Union, types.UnionType):
        return next((s for s in (_step(a, part) for a in args if a is not type(None)) if s is not None), None)
    return None


def _model(ann) -> type[BaseModel] | None:
    ann = _unwrap(ann)
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        return next((m for m in map(_model, typing.get_args(ann)) if m is not None), None)
    return None


def keys_of(model: type[BaseModel]) -> dict:
    """The keys a model accepts (aliases where set) -> their fields."""
    return {(f.alias or name): f for name, f in model.model_fields.items()}


def _members(ann) -> list:
    ann = _unwrap(ann)
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(ann) if a is not type(None)]
    return []


def _tag_of(member) -> set[str]:
    """The names pydantic gives a member of a union in an error's location (``list[str]``, a model's name)."""
    member = _unwrap(member)
    return {str(member).replace("typing.", "").replace(" ", ""), getattr(member, "__name__", "")}


def _walk(root: type[BaseModel], loc) -> tuple[tuple, tuple | None, Any]:
    """Follow an error's ``loc`` down from ``root``: the key path without the names pydantic inserts
    for the members of a union, the key path of the (first) union it went through (or None), and
    the type found at its end (or None)."""
    ann, out, union = root, [], None
    for part in loc:
        members = _members(ann)
        member = next((m for m in members if isinstance(part, str) and part in _tag_of(m)), None) \
            if len(members) > 1 else None
        if member is not None:
            ann, union = member, (tuple(out) if union is None else union)
            continue
        out.append(part)
        ann = _step(ann, part) if ann is not None else None
    return tuple(out), union, ann


_KINDS = {  # pydantic error type -> what the value must be
    "int_type": "an int", "int_parsing": "an int", "int_from_float": "an int",
    "float_type": "a number", "float_parsing": "a number", "finite_number": "a finite number",
    "string_type": "a str", "bool_type": "a bool", "bool_parsing": "a bool",
    "list_type": "a list", "tuple_type": "a list", "set_type": "a list",
    "dict_type": "a mapping", "model_type": "a mapping", "model_attributes_type": "a mapping",
    "dataclass_type": "a mapping",
}


def _shown(value, limit: int = 120) -> str:
    text = repr(value)  # one line: repr escapes newlines
    return text if len(text) <= limit else text[: limit - 3] + "..."


def one_line(exc: ValidationError, root: type[BaseModel], where: str, prefix: tuple = ()) -> ConfigError:
    """The first problem of ``exc`` (raised validating ``root`` at ``prefix`` in file ``where``) as one line.

    An unknown key comes first: it explains a "missing" one next to it (a typo of a required key).
    """
    errors = exc.errors()
    err = sorted(errors, key=lambda e: e["type"] != "extra_forbidden")[0]
    loc, union, _ = _walk(root, err["loc"])
    if union is not None:  # a value that fits no member of a union: the member it fits best went deepest
        walked = [(_walk(root, e["loc"])[0], e) for e in errors if _walk(root, e["loc"])[1] == union]
        loc, err = max(walked, key=lambda w: len(w[0]))
    path = location(loc, prefix)
    if err["type"] == "extra_forbidden":
        model = _model(_walk(root, err["loc"][:-1])[2])  # the model that owns the keys here
        known = list(keys_of(model)) if model else []
        listing = f"; known keys here: {', '.join(known)}" if known else ""
        return ConfigError(f"{where}: unknown key '{path}'{did_you_mean(str(loc[-1]), known)}{listing}")
    if err["type"] == "missing":
        return ConfigError(f"{where}: '{path}' is required")
    value = err.get("input")
    if err["type"] in _KINDS:
        kinds = [_KINDS[err["type"]]]
        if union == loc:  # the value itself fits no member: say every kind it may be
            same = [e["type"] for e in errors if _walk(root, e["loc"])[0] == loc and e["type"] in _KINDS]
            kinds = list(dict.fromkeys(_KINDS[t] for t in same))
        return ConfigError(f"{where}: '{path}' must be {' or '.join(kinds)}, got {_shown(value)}")
    msg = " ".join(str(err["msg"]).split())
    return ConfigError(f"{where}: '{path}': {msg} (got {_shown(value)})")


def check(model: type[BaseModel], data, where: str, prefix: tuple = ()) -> BaseModel:
    """``model.model_validate(data)`` with its first problem raised as a one-line :class:`ConfigError`."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise one_line(exc, model, where, prefix) from None
