"""Shared command-line helpers, below every command: flags generated from options classes (each
field becomes a flag with the field's default and description, so defaults and help live only in
``config.py`` and the methods' registrations), method option groups, the refusal of flags that
belong to methods not being run, and the table printer."""

from __future__ import annotations

import argparse
import types
import typing
from typing import Any

from pydantic import BaseModel

from hyperprune.config import first_validation_error
from hyperprune.errors import HyperpruneError

# Where generated method flags put their values: <prefix><options key>__<field>.
_METHOD_DEST = "opt__"
_HESSIAN_DEST = "hessian__"
_REFIT_DEST = "refit__"


def first_error(exc: ValueError) -> str:
    """One line from a pydantic (or plain) error, for the CLI's ``error:`` line."""
    return first_validation_error(exc)


def _flag_type(annotation: Any) -> tuple[Any, list | None]:
    """argparse's ``type`` and ``choices`` for a field annotation (Optional, Literal and tuples understood)."""
    if typing.get_origin(annotation) is typing.Literal:
        return None, list(typing.get_args(annotation))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _flag_type(inner[0])
    if typing.get_origin(annotation) is tuple:  # comma-separated on the command line
        return str, None
    return annotation, None


def _shown(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def add_option_flags(group, options: type[BaseModel], flag_prefix: str, dest_prefix: str, skip: tuple[str, ...] = (),
                     legacy: dict[str, tuple[str, ...]] | None = None, suppress_defaults: bool = False) -> list[str]:
    """``--{flag_prefix}{field}`` for every field of ``options`` (underscores become dashes), with the
    field's description and default as help. ``legacy``: older spellings per field, kept working as
    hidden aliases (a ``--no-x`` alias of a boolean sets it False). With ``suppress_defaults``, a
    flag not given leaves nothing in the namespace, so the options class supplies the default and
    a caller can tell which flags were given. Returns the dests."""
    legacy = legacy or {}
    dests = []
    for name, field in options.model_fields.items():
        if name in skip:
            continue
        dest = f"{dest_prefix}{name}"
        dests.append(dest)
        flag = f"--{flag_prefix}{name.replace('_', '-')}"
        kind, choices = _flag_type(field.annotation)
        default = argparse.SUPPRESS if suppress_defaults else field.default
        shown = "" if field.default is None else f" (default: {_shown(field.default)})"
        aliases = legacy.get(name, ())
        also = f"; also {', '.join(aliases)}" if aliases else ""
        text = f"{field.description or name.replace('_', ' ')}{shown}{also}"
        if kind is bool:  # --x / --no-x, never --x False (which argparse would read as True)
            group.add_argument(flag, dest=dest, default=default, action=argparse.BooleanOptionalAction, help=text)
        else:
            group.add_argument(flag, dest=dest, default=default, type=kind, choices=choices,
                               metavar=None if choices else name.upper(), help=text)
        for alias in aliases:
            if kind is bool:
                group.add_argument(alias, dest=dest, default=default, action="store_const",
                                   const=not alias.startswith("--no-"), help=argparse.SUPPRESS)
            else:
                group.add_argument(alias, dest=dest, default=default, type=kind, choices=choices, help=argparse.SUPPRESS)
    return dests


def options_from_args(args: argparse.Namespace, options: type[BaseModel], dest_prefix: str, **extra: Any) -> BaseModel:
    values = {name: getattr(args, f"{dest_prefix}{name}") for name in options.model_fields if hasattr(args, f"{dest_prefix}{name}")}
    return options(**values, **extra)


def given_values(args: argparse.Namespace, dest_prefix: str) -> dict[str, Any]:
    """The flags under ``dest_prefix`` that were given on the command line (generated with
    ``suppress_defaults``), by field name."""
    return {key[len(dest_prefix):]: value for key, value in vars(args).items() if key.startswith(dest_prefix)}


def add_method_option_groups(parser: argparse.ArgumentParser) -> None:
    """One group per registered method that declares options, and the shared Hessian group; every
    flag's default is left to the options class (see ``method_options_from_args``)."""
    from hyperprune.config import HessianOptions, RefitOptions
    from hyperprune.methods import METHODS

    users = sorted(entry.name for entry in METHODS.values() if entry.cls.uses_hessian)
    group = parser.add_argument_group(f"Hessian options (methods {', '.join(users)})")
    add_option_flags(group, HessianOptions, "", _HESSIAN_DEST, suppress_defaults=True)
    users = sorted(entry.name for entry in METHODS.values() if entry.cls.uses_refit)
    group = parser.add_argument_group(f"Exact refit options (methods {', '.join(users)})",
                                      "how the least-squares refit of the kept weights is solved")
    add_option_flags(group, RefitOptions, "refit-", _REFIT_DEST, suppress_defaults=True)
    for name, entry in METHODS.items():
        cls = entry.cls
        if entry.is_preset or cls.options_class is None:
            continue
        presets = [e for e in METHODS.values() if e.is_preset and e.cls is cls]
        title = f"{name} options" + (f" (also {', '.join(e.name for e in presets)})" if presets else "")
        described = " ".join([entry.summary or ""] + [
            f"{e.name} defaults to " + ", ".join(f"--{cls.flag_prefix}-{k.replace('_', '-')} {_shown(v)}" for k, v in e.defaults.items()) + "."
            for e in presets if e.defaults]).strip()
        add_option_flags(parser.add_argument_group(title, described or None), cls.options_class,
                         f"{cls.flag_prefix}-", f"{_METHOD_DEST}{name}__", legacy=cls.legacy_flags, suppress_defaults=True)


def method_settings_from_args(args: argparse.Namespace, methods: list[str], refuse_unused: bool = True) -> dict[str, Any]:
    """``options`` and ``hessian`` for PruneConfig from the method flags given. A flag of a method
    not among ``methods`` is refused in one line, naming the flag as it was typed."""
    from hyperprune.methods import METHODS, get_method

    entries = [get_method(name) for name in methods if name != "dense"]
    run_keys = {entry.cls.name for entry in entries}
    options: dict[str, dict[str, Any]] = {}
    for key, value in vars(args).items():
        if not key.startswith(_METHOD_DEST):
            continue
        owner, field = key[len(_METHOD_DEST):].split("__", 1)
        if refuse_unused and owner not in run_keys:
            flag = _typed_flag(args, key, f"--{METHODS[owner].cls.flag_prefix}-{field.replace('_', '-')}")
            raise HyperpruneError(f"{flag} is an option of method {owner}, which this run does not use "
                                  f"({_methods_phrase(methods)}); drop it or run {owner}")
        options.setdefault(owner, {})[field] = value
    shared = {}
    for dest, flag_prefix, uses, what in ((_HESSIAN_DEST, "--", "uses_hessian", "use the Hessian"),
                                          (_REFIT_DEST, "--refit-", "uses_refit", "refit the kept weights")):
        shared[dest] = given = given_values(args, dest)
        if refuse_unused and given and not any(getattr(entry.cls, uses) for entry in entries):
            first = next(iter(given))
            flag = _typed_flag(args, f"{dest}{first}", flag_prefix + first.replace("_", "-"))
            users = sorted(e.name for e in METHODS.values() if getattr(e.cls, uses))
            raise HyperpruneError(f"{flag} applies to methods that {what} ({', '.join(users)}), not to "
                                  f"{_methods_phrase(methods)}; drop it")
    return {"options": options, "hessian": shared[_HESSIAN_DEST], "refit": shared[_REFIT_DEST]}


def _methods_phrase(methods: list[str]) -> str:
    return f"--method {methods[0]}" if len(methods) == 1 else f"--methods {','.join(methods)}"


def _typed_flag(args: argparse.Namespace, dest: str, canonical: str) -> str:
    """The spelling the user typed for ``dest`` (an alias, if that is what they used)."""
    return getattr(args, "typed_flags", {}).get(dest, canonical)


def typed_flags(parser: argparse.ArgumentParser, argv: list[str]) -> dict[str, str]:
    """dest -> the option string used for it in ``argv``, for errors that quote the user."""
    by_string = {option: action.dest for action in parser._actions for option in action.option_strings}
    typed = {}
    for token in argv:
        option = token.split("=", 1)[0]
        if option in by_string:
            typed.setdefault(by_string[option], option)
    return typed


def gib(nbytes: int | None) -> str:
    return f"{nbytes / 2**30:.2f} GiB" if nbytes else "-"


def print_table(headers: list[str], rows: list[list[Any]]) -> None:
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for k, row in enumerate(cells):
        if k == 0 and not any(headers):  # a key-value table has no header row
            continue
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip())
        if k == 0 and any(headers):
            print("  ".join("-" * w for w in widths))
