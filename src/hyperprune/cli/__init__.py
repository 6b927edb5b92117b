"""The command line: ``hyperprune COMMAND``. ``main`` is the console entry point."""

from hyperprune.cli.main import COMMANDS, build_parser, main

__all__ = ["COMMANDS", "build_parser", "main"]
