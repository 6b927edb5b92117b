"""The CLI reference, generated from the parser so that it cannot drift from the code:
``python -m hyperprune.cli.reference > docs/cli.md`` (a test checks that the file is current)."""

from __future__ import annotations

import argparse
import os
import sys

from hyperprune.cli.main import build_parser

_HEADER = """# CLI reference

Generated from the parser by `python -m hyperprune.cli.reference > docs/cli.md`; do not edit by
hand (`tests/test_cli_reference.py` fails when this file is stale). Every method's options come
from its registration (`docs/adding-a-method.md`). Older flag spellings still work; each is listed
after "also" in the flag it stands for.

"""


def reference() -> str:
    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal; the file must not depend on it
    try:
        return _reference()
    finally:
        if columns is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = columns


def _reference() -> str:
    parser = build_parser()
    parser.prog = "hyperprune"
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    parts = [_HEADER, "## hyperprune\n\n```text\n", parser.format_help(), "```\n"]
    for name, command in sub.choices.items():
        parts += [f"\n## hyperprune {name}\n\n```text\n", command.format_help(), "```\n"]
    return "".join(parts)


def main() -> int:
    sys.stdout.write(reference())
    return 0


if __name__ == "__main__":
    sys.exit(main())
