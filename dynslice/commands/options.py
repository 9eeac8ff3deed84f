"""Command-line options generated from the pydantic configuration, so a one-shot command and a flow share one
set of fields: the same defaults, choices, bounds, descriptions and error messages.

`add(parser, Model, {"field": "--flag"})` adds one option per field (its help is the field's description);
`build(Model, args, {...})` validates what was given (a missing option keeps the field's default) and names
the flag in the error.
"""

from __future__ import annotations

import argparse
import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from dynslice.errors import ConfigError

Flags = dict[str, str]  # field name -> option, e.g. {"source": "--model"}


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _scalar(annotation) -> tuple[Any, bool]:
    """(the type argparse converts to, whether it is a list) of a field's annotation (None-able peeled off)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _scalar(args[0])
    if origin is list:
        return _scalar(typing.get_args(annotation)[0])[0], True
    return annotation, False


def _nullable(text: str, convert):
    return None if text.lower() in ("null", "none") else convert(text)


def add(parser: argparse.ArgumentParser, model: type[BaseModel], flags: Flags) -> None:
    for name, flag in flags.items():
        info = model.model_fields[name]
        kind, is_list = _scalar(info.annotation)
        default = info.get_default(call_default_factory=True)
        nullable = type(None) in typing.get_args(info.annotation)
        help_text = f"{info.description or name} (default: {default})"
        kwargs: dict[str, Any] = {"dest": _dest(flag), "default": argparse.SUPPRESS, "help": help_text}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is typing.Literal:
            kwargs["choices"] = list(typing.get_args(kind))
        elif kind in (int, float):
            kwargs["type"] = (lambda t, k=kind: _nullable(t, k)) if nullable else kind
            kwargs["metavar"] = kind.__name__.upper()
        if is_list:
            kwargs["nargs"] = "*"
        parser.add_argument(flag, **kwargs)


def given(args: argparse.Namespace, flags: Flags) -> dict[str, Any]:
    """{field: value} for the options present on the command line."""
    return {name: getattr(args, _dest(flag)) for name, flag in flags.items() if hasattr(args, _dest(flag))}


def build(model: type[BaseModel], args: argparse.Namespace, flags: Flags, **fixed) -> BaseModel:
    """The validated config from the options given (plus `fixed` values); ConfigError naming the flag."""
    values = {**given(args, flags), **fixed}
    try:
        return model(**values)
    except ValidationError as exc:
        messages = [f"{flags.get(str(e['loc'][0]), e['loc'][0]) if e['loc'] else 'options'}: "
                    f"{e['msg'].removeprefix('Value error, ')}" for e in exc.errors()]
        raise ConfigError("; ".join(messages)) from None
