"""docs/cli.md is generated from the parser; this fails when a flag changed and the file did not."""

from pathlib import Path

from hyperprune.cli.reference import reference

CLI_MD = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def test_the_cli_reference_is_current():
    assert CLI_MD.read_text() == reference(), "regenerate: python -m hyperprune.cli.reference > docs/cli.md"


def test_the_reference_documents_every_command_and_method_group():
    text = reference()
    for command in ("prune", "eval", "verify", "compare", "distill", "bench-speed", "export", "apply-masks",
                    "make-random-model"):
        assert f"\n## hyperprune {command}\n" in text
    assert "hyperprune options (also hyperprune+refit):" in text and "--hyperprune-steps STEPS" in text
