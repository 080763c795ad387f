"""Strict config loading: YAML → frozen dataclasses through pydantic, unknown keys are errors.

Every YAML config (funnel, channels' and rankers' params, experiments, simulation, CTR
evaluation) is built by `from_dict`. The config classes stay plain frozen dataclasses, since
code constructs them directly; `from_dict` validates a dict against a pydantic model that
mirrors the dataclass field by field, then calls the dataclass (so its `__post_init__` checks
run) with the keys that were given — absent keys keep the dataclass's own defaults.

Scalars are strict: an int field takes only ints (not 2.0, "2" or true), a float field takes
ints and floats (not true or "1.5"), bool and str fields take only their own type. Lists and
tuples take either. Errors are one line naming the key path from the config root:

    >>> from dataclasses import dataclass, field
    >>> @dataclass(frozen=True)
    ... class C:
    ...     k: int = 10
    ...     dims: list[int] = field(default_factory=list)
    >>> from_dict(C, {"k": 5, "dims": [4, 8]})
    C(k=5, dims=[4, 8])
    >>> from_dict(C, {"kk": 5})
    Traceback (most recent call last):
    ...
    funnelrec.core.errors.ConfigError: unknown key 'kk' in C; known: k, dims
    >>> from_dict(C, {"dims": [4, "x"]}, "my config")
    Traceback (most recent call last):
    ...
    funnelrec.core.errors.ConfigError: my config: dims[1]: expected an integer, got 'x'
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

import pydantic
import yaml
from pydantic_core import PydanticCustomError

from funnelrec.core.errors import ConfigError, FunnelrecError

T = TypeVar("T")

__all__ = ["from_dict", "load_yaml"]


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"malformed YAML in {p}{where}: {getattr(e, 'problem', e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping, got {type(data).__name__}")
    return data


def from_dict(cls: type[T], data: dict[str, Any], where: str | None = None, *, path: str = "") -> T:
    """Build dataclass `cls` from `data`, rejecting unknown keys and mistyped values.

    `where` names the config in errors (default: the class name); `path` is where `data` sits
    inside it (e.g. "rank.params" for a ranker's config inside the funnel config), so errors
    read "funnel config: rank.params.embedding_dim: expected an integer, got 'x'".
    """
    where = where or cls.__name__
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: {path + ': ' if path else ''}expected a mapping, got {data!r}")
    try:
        return _adapter(cls).validate_python(data)
    except pydantic.ValidationError as e:
        raise ConfigError(_one_line(e.errors()[0], where, path)) from None


# ---------------------------------------------------------------- dataclass → pydantic model

_STRICT = pydantic.Strict()
_SCALARS: dict[Any, Any] = {t: Annotated[t, _STRICT] for t in (int, float, bool, str)}


@functools.cache
def _adapter(cls: type) -> pydantic.TypeAdapter:
    return pydantic.TypeAdapter(_validated(cls))


def _validated(tp: Any) -> Any:
    """The pydantic type that checks a YAML value for dataclass field type `tp`."""
    if tp is Any or tp is type(None):
        return tp
    if tp in _SCALARS:
        return _SCALARS[tp]
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _dataclass_type(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return tp
    if origin in (typing.Union, types.UnionType):
        return typing.Union[tuple(_validated(a) for a in args)]  # noqa: UP007 (built from a tuple)
    if origin is list:
        return list[_validated(args[0]) if args else Any]
    if origin is tuple:
        if not args:
            return tuple[Any, ...]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple[_validated(args[0]), ...]
        return tuple[tuple(_validated(a) for a in args)]
    if origin is dict:
        kt, vt = args or (Any, Any)
        return dict[_validated(kt), _validated(vt)]
    if tp is list or tp is tuple or tp is dict:
        return tp
    return tp  # any other class: pydantic's own check (an isinstance check for plain classes)


@functools.cache
def _dataclass_type(cls: type) -> Any:
    """A pydantic model mirroring dataclass `cls`, wrapped so that validation yields `cls`.

    Fields that have a default in the dataclass are optional here and, when absent, are not
    passed on: the dataclass applies its own default (and default_factory) itself.
    """
    hints = typing.get_type_hints(cls)
    init = [f for f in dataclasses.fields(cls) if f.init]
    names = [f.name for f in init]
    required = {f.name for f in init if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    # model attributes are f0, f1, … with the real names as aliases, so no config key can
    # clash with a BaseModel attribute ("schema", "copy", "json", …)
    model = pydantic.create_model(
        f"{cls.__name__}Keys",
        __config__=pydantic.ConfigDict(extra="forbid", arbitrary_types_allowed=True, protected_namespaces=()),
        **{f"f{i}": (_validated(hints[n]), pydantic.Field(... if n in required else None, alias=n))
           for i, n in enumerate(names)},
    )

    def validate(value: Any, handler: Any) -> Any:
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            for key in value:
                if key not in names:
                    # raised here rather than left to extra="forbid" so the message can list the known keys
                    raise PydanticCustomError("unknown_key", "unknown key", {"key": key, "known": ", ".join(names)})
        m = handler(value)
        try:
            given = m.model_fields_set
            return cls(**{n: getattr(m, f"f{i}") for i, n in enumerate(names) if f"f{i}" in given})
        except FunnelrecError as e:
            raise PydanticCustomError("config_error", "config error", {"reason": str(e)}) from None
        except (TypeError, ValueError) as e:
            raise PydanticCustomError("invalid", "invalid", {"reason": str(e)}) from None

    return Annotated[model, pydantic.WrapValidator(validate)]


# ---------------------------------------------------------------- one-line errors

_EXPECTED = {
    "int_type": "an integer", "int_from_float": "an integer", "int_parsing": "an integer",
    "float_type": "a number", "float_parsing": "a number",
    "bool_type": "true/false", "bool_parsing": "true/false",
    "string_type": "a string",
    "list_type": "a list", "tuple_type": "a list",
    "dict_type": "a mapping", "model_type": "a mapping", "model_attributes_type": "a mapping",
    "dataclass_type": "a mapping",
}


def _key_path(loc: tuple[Any, ...], prefix: str = "") -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _one_line(err: Any, where: str, path: str) -> str:
    kind, ctx, loc = err["type"], err.get("ctx") or {}, tuple(err["loc"])
    if kind == "missing":
        at = _key_path(loc[:-1], path)
        msg = f"{where}: {at + ': ' if at else ''}missing required key {loc[-1]!r}"
    elif kind == "unknown_key":
        at = _key_path(loc, path)
        msg = f"unknown key {ctx['key']!r} in {where}{'.' + at if at else ''}; known: {ctx['known']}"
    else:
        at = _key_path(loc, path)
        if kind in _EXPECTED:
            detail = f"expected {_EXPECTED[kind]}, got {err['input']!r}"
        elif kind == "literal_error":
            detail = f"{err['input']!r} is not one of {ctx['expected']}"
        elif kind in ("invalid", "config_error"):
            detail = ctx["reason"]
            if kind == "config_error" and at and detail.startswith(at):
                at = ""  # the dataclass's own message already names its key ("rerank.method 'x'; …")
        else:
            detail = err["msg"]
        msg = f"{where}: {at + ': ' if at else ''}{detail}"
    return msg.replace("\n", " ")
