"""Tokenize text sources into calibration and evaluation windows.

Protocol (fixed for the whole project, after the Wanda/SparseGPT code): text
is tokenized with the tokenizer's default special-token handling, so a
tokenizer that adds a BOS adds it once, at the start of the stream; windows
cut from the stream do not each get their own BOS.
"""

from __future__ import annotations

import random
from typing import Any

import torch

from hyperprune.data.sources import TextSource
from hyperprune.errors import HyperpruneError

BOS_PER_WINDOW = False
DOCUMENT_SEPARATOR = "\n\n"  # wikitext2 protocol: "\n\n".join(test["text"])
C4_MAX_DRAWS = 10_000  # consecutive too-short documents before giving up


def source_text(source: TextSource) -> str:
    """The whole source as one string, documents separated by a blank line."""
    return DOCUMENT_SEPARATOR.join(source.documents)


def tokenize_stream(tokenizer: Any, text: str) -> torch.Tensor:
    """Token ids of ``text`` as one 1-D LongTensor, in a single tokenizer call.

    ``verbose=False`` silences the "sequence length is longer than the
    specified maximum" warning: long streams are cut into windows afterwards.
    """
    encoded = tokenizer(text, return_tensors="pt", add_special_tokens=True, verbose=False)
    return encoded["input_ids"][0].to(torch.long)


def calibration_windows(
    tokenizer: Any, source: TextSource, nsamples: int, seqlen: int, seed: int
) -> torch.Tensor:
    """``nsamples`` random windows of ``seqlen`` tokens, shape [nsamples, seqlen].

    ``c4`` follows the Wanda/SparseGPT ``get_c4`` protocol exactly (one random
    long-enough document per sample); any other source is tokenized as one
    stream and windows start uniformly at random (they may overlap).
    """
    _check_positive(nsamples=nsamples, seqlen=seqlen)
    if source.name == "c4":
        return _c4_windows(tokenizer, source, nsamples, seqlen, seed)
    ids = _stream_or_explain(tokenizer, source, "calibration")
    if ids.numel() < seqlen:
        raise HyperpruneError(
            f"calibration text from {source.name!r} has only {ids.numel()} tokens, "
            f"fewer than --seqlen {seqlen}; give a longer text or a smaller --seqlen"
        )
    starts = random_starts(ids.numel(), seqlen, nsamples, seed)
    return torch.stack([ids[s : s + seqlen] for s in starts])


def random_starts(ntokens: int, seqlen: int, nsamples: int, seed: int) -> list[int]:
    """Window starts drawn uniformly from [0, ntokens - seqlen], reproducibly."""
    rng = random.Random(seed)
    return [rng.randint(0, ntokens - seqlen) for _ in range(nsamples)]


def _c4_windows(
    tokenizer: Any, source: TextSource, nsamples: int, seqlen: int, seed: int
) -> torch.Tensor:
    """Wanda/SparseGPT ``get_c4``: per sample, redraw documents until one is
    longer than ``seqlen`` tokens, then take a random window from it.

    They call ``random.seed(seed)`` and the module-level functions; a private
    ``random.Random(seed)`` yields the identical sequence without disturbing
    the caller's global random state.
    """
    documents = source.documents
    if not documents:
        raise _empty_error(source, "calibration")
    rng = random.Random(seed)
    windows = []
    for _ in range(nsamples):
        ids = _draw_long_document(tokenizer, documents, seqlen, rng, source.name)
        start = rng.randint(0, ids.numel() - seqlen - 1)
        windows.append(ids[start : start + seqlen])
    return torch.stack(windows)


def _draw_long_document(
    tokenizer: Any, documents: list[str], seqlen: int, rng: random.Random, name: str
) -> torch.Tensor:
    """Tokens of the first randomly drawn document longer than ``seqlen`` tokens."""
    for _ in range(C4_MAX_DRAWS):
        i = rng.randint(0, len(documents) - 1)
        ids = tokenize_stream(tokenizer, documents[i])
        if ids.numel() > seqlen:
            return ids
    raise HyperpruneError(
        f"calibration text from {name!r}: none of {C4_MAX_DRAWS} randomly drawn documents "
        f"is longer than --seqlen {seqlen} tokens; use a smaller --seqlen"
    )


def evaluation_windows(
    tokenizer: Any, source: TextSource, seqlen: int, max_windows: int | None = None
) -> torch.Tensor:
    """Consecutive non-overlapping ``seqlen`` windows of the whole stream.

    The remainder after the last full window is dropped. With ``max_windows``
    below the window count, that many windows spread evenly over the stream
    are kept, so a capped evaluation still covers the whole text.
    """
    _check_positive(seqlen=seqlen)
    if max_windows is not None and max_windows < 1:
        raise HyperpruneError(
            f"the evaluation window cap must be at least 1, got {max_windows}; "
            "give a positive number or no cap"
        )
    ids = _stream_or_explain(tokenizer, source, "evaluation")
    nwin = ids.numel() // seqlen
    if nwin < 1:
        raise HyperpruneError(
            f"evaluation text from {source.name!r} has only {ids.numel()} tokens, "
            f"fewer than one --seqlen {seqlen} window; give a longer text or a smaller --seqlen"
        )
    windows = ids[: nwin * seqlen].view(nwin, seqlen)
    if max_windows is not None and max_windows < nwin:
        windows = windows[spread_indices(nwin, max_windows)]
    return windows


def spread_indices(total: int, count: int) -> list[int]:
    """``count`` distinct indices spread evenly over ``range(total)``, ends included.

    Equals ``round(linspace(0, total - 1, count))`` with halves rounded up, in
    integer arithmetic: banker's rounding or float error could map two
    neighbours to the same index.
    """
    if count >= total:
        return list(range(total))
    if count == 1:
        return [0]
    span, steps = total - 1, count - 1
    return [(2 * k * span + steps) // (2 * steps) for k in range(count)]


def _stream_or_explain(tokenizer: Any, source: TextSource, purpose: str) -> torch.Tensor:
    """Tokenize a whole source, refusing text that is empty or only whitespace."""
    text = source_text(source)
    if not text.strip():
        raise _empty_error(source, purpose)
    ids = tokenize_stream(tokenizer, text)
    if ids.numel() == 0:
        raise _empty_error(source, purpose)
    return ids


def _empty_error(source: TextSource, purpose: str) -> HyperpruneError:
    return HyperpruneError(
        f"{purpose} text from {source.name!r} is empty; give a source that contains text"
    )


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise HyperpruneError(f"--{name} must be at least 1, got {value}")
