"""Every command in the README and docs/ runs as written: each `hyperprune ...` line parses with
today's parser (flags that exist, values they accept), each `python benchmarks/X.py` and
`python tools/X.py` script exists, each `make X` target exists; and the README's quick start
runs, end to end."""

import re
import shlex
from pathlib import Path

import pytest

from hyperprune.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]
# docs/cli.md is the parser's own help (generated and checked by test_cli_reference.py).
DOCS = [ROOT / "README.md", ROOT / "benchmarks" / "README.md",
        *sorted(p for p in (ROOT / "docs").rglob("*.md") if p.name != "cli.md")]


def fenced_commands(markdown: str) -> list[str]:
    """Shell lines inside ``` blocks, continuation lines joined, comments and env assignments dropped."""
    commands, inside, pending = [], False, ""
    for line in markdown.splitlines():
        if line.startswith("```"):
            inside = not inside
            continue
        if not inside:
            continue
        line = pending + line.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        line = line.split(" # ")[0].strip()
        line = re.sub(r"^(?:[A-Z_]+=\S+\s+)+", "", line)  # OMP_NUM_THREADS=1 ...
        if line and not line.startswith("#"):
            commands.append(line)
    return commands


def all_commands() -> list[tuple[str, str]]:
    return [(str(path.relative_to(ROOT)), command) for path in DOCS for command in fenced_commands(path.read_text())]


def hyperprune_argv(command: str) -> list[str] | None:
    first = command.split(maxsplit=1)[0] if command.split() else ""
    if Path(first).name != "hyperprune":
        return None
    return shlex.split(command)[1:]


def test_the_docs_hold_commands_to_check():
    commands = [c for _, c in all_commands() if hyperprune_argv(c) is not None]
    assert len(commands) > 20


@pytest.mark.parametrize("where,command", [(w, c) for w, c in all_commands() if hyperprune_argv(c) is not None
                                           and "$" not in c])
def test_every_documented_hyperprune_command_parses(where, command):
    parser = build_parser()
    try:
        parser.parse_args(hyperprune_argv(command))
    except SystemExit as exc:
        pytest.fail(f"{where}: `{command}` does not parse (exit {exc.code})")


def test_every_documented_script_and_make_target_exists():
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.M))
    missing = []
    for where, command in all_commands():
        words = command.split()
        if len(words) > 1 and words[0] in ("python", "python3", ".venv/bin/python") and words[1].endswith(".py"):
            if not (ROOT / words[1]).is_file():
                missing.append(f"{where}: {words[1]}")
        if words and words[0] == "make":
            missing += [f"{where}: make {t}" for t in words[1:] if not t.startswith("-") and "=" not in t
                        and t not in targets]
    assert missing == []


def test_the_readme_quick_start_runs_as_written(tmp_path, monkeypatch, capsys):
    """The README's three quick-start commands, in a scratch directory, exactly as printed there."""
    from hyperprune.cli import main

    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start")[1].split("\n## ")[0]
    commands = [hyperprune_argv(c) for c in fenced_commands(section)]
    assert [argv[0] for argv in commands] == ["make-random-model", "prune", "verify"]
    monkeypatch.chdir(tmp_path)
    for argv in commands:
        assert main([*argv, "--quiet"] if argv[0] != "verify" else argv) == 0, capsys.readouterr().err
    assert "OK: 14/14 matrices are exactly 2:4" in capsys.readouterr().out

