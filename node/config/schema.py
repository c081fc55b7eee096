"""What the settings dataclasses say about themselves: each field's docstring and resolved type,
and pydantic's check of one value against that type.

Types are checked by pydantic (TOML, manifests, environment) and flags are made with argparse
(node/config/flags.py); both read the dataclasses of node/config/settings.py and their docstrings.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from functools import cache
from typing import Any, Literal, get_args, get_origin, get_type_hints

from node.errors import SwarmtrainError


@cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass, read from its source."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
        ):
            docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


@cache
def type_hints(cls: type) -> dict[str, Any]:
    """Field name -> resolved annotation (the settings use postponed annotations)."""
    return get_type_hints(cls)


def type_name(kind: Any) -> str:
    """A short name of an annotation for messages: int, list[str], 'lora' | 'none'..."""
    if isinstance(kind, type):
        return kind.__name__
    if is_choice(kind):
        return " | ".join(repr(a) for a in get_args(kind))
    return str(kind).replace("typing.", "")


def is_choice(kind: Any) -> bool:
    """Is this annotation a Literal: a setting that takes one of a fixed set of values?"""
    return get_origin(kind) is Literal


def choices(kind: Any) -> str:
    """The values a Literal allows, for a message: 'auto', 'text', 'json'."""
    return ", ".join(repr(a) for a in get_args(kind))


@cache
def _adapter(kind: Any):
    """pydantic's validator for one annotation (Literal, Optional, list, dict, Path, ... included)."""
    from pydantic import TypeAdapter

    return TypeAdapter(kind)


def check_value(value: Any, kind: Any, where: str) -> Any:
    """Check one TOML / manifest value against its annotation, strictly (pydantic strict mode: no
    "80" for an int; an int is fine for a float). `where` names the file, table and field."""
    from pydantic import ValidationError

    try:
        return _adapter(kind).validate_python(value, strict=True)
    except ValidationError:
        if is_choice(kind):
            raise SwarmtrainError(
                f"{where} must be one of {type_name(kind)}, got {value!r}", f"use one of {choices(kind)}"
            ) from None
        raise SwarmtrainError(
            f"{where} must be of type {type_name(kind)}, got {value!r}", f"write a {type_name(kind)} there"
        ) from None


def parse_env(raw: str, kind: Any, var: str) -> Any:
    """An environment string -> the field's type (pydantic's lax mode: "80" is an int, "yes" a bool).
    Lists are separated by commas or spaces; an empty boolean is false."""
    from pydantic import ValidationError

    if get_origin(kind) is list:
        raw = [p for p in raw.replace(",", " ").split() if p]
    elif kind is bool and not raw.strip():
        return False
    try:
        return _adapter(kind).validate_python(raw)
    except ValidationError:
        if is_choice(kind):
            raise SwarmtrainError(
                f"environment variable {var}={raw!r} is not one of {type_name(kind)}",
                f"set it to one of {choices(kind)}, or unset it",
            ) from None
        name = type_name(kind)
        raise SwarmtrainError(
            f"environment variable {var}={raw!r} is not a valid {name}", f"set it to a {name} or unset it"
        ) from None
