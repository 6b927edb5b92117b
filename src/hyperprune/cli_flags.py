"""Command-line flags generated from an options class: each field becomes a flag with the
field's default and description, so defaults live only in ``config.py``."""

from __future__ import annotations

import argparse
import types
import typing
from typing import Any

from pydantic import BaseModel


def _flag_type(annotation: Any) -> tuple[Any, list | None]:
    """argparse's ``type`` and ``choices`` for a field annotation (Optional and Literal understood)."""
    if typing.get_origin(annotation) is typing.Literal:
        return None, list(typing.get_args(annotation))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _flag_type(inner[0])
    return annotation, None


def add_option_flags(group, options: type[BaseModel], flag_prefix: str, dest_prefix: str, skip: tuple[str, ...] = ()) -> None:
    """``--{flag_prefix}{field}`` for every field of ``options`` (underscores become dashes)."""
    for name, field in options.model_fields.items():
        if name in skip:
            continue
        kind, choices = _flag_type(field.annotation)
        default = "" if field.default is None else f" (default: {field.default})"
        if kind is bool:  # --x / --no-x, never --x False (which argparse would read as True)
            group.add_argument(f"--{flag_prefix}{name.replace('_', '-')}", dest=f"{dest_prefix}{name}", default=field.default,
                               action=argparse.BooleanOptionalAction, help=f"{field.description}{default}")
            continue
        group.add_argument(f"--{flag_prefix}{name.replace('_', '-')}", dest=f"{dest_prefix}{name}", default=field.default,
                           type=kind, choices=choices, metavar=None if choices else name.upper(),
                           help=f"{field.description}{default}")


def options_from_args(args: argparse.Namespace, options: type[BaseModel], dest_prefix: str, **extra: Any) -> BaseModel:
    values = {name: getattr(args, f"{dest_prefix}{name}") for name in options.model_fields if hasattr(args, f"{dest_prefix}{name}")}
    return options(**values, **extra)
