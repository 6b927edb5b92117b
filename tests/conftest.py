"""Shared fixtures: tiny random LLaMA-family models and a tokenizer built in the test
process (no downloads)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

from hyperprune.testing import TINY, TOKENIZER_TEXT, tiny_model, tiny_tokenizer  # noqa: F401  (re-exported to tests)


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture
def tiny_llama():
    return tiny_model("llama")


@pytest.fixture
def tiny_model_dir(tmp_path, tokenizer):
    """A saved tiny LLaMA checkpoint with tokenizer, loadable by --model DIR."""
    directory = tmp_path / "tiny-llama"
    tiny_model("llama").save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture
def calib_file(tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text(TOKENIZER_TEXT * 4)
    return path


def load_benchmark(name: str):
    """``benchmarks/NAME.py`` as a module; its imports of the folder's shared helpers resolve."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module
