"""Tokenize text sources into calibration and evaluation windows.

Protocol (after the Wanda/SparseGPT code): text is tokenized with the tokenizer's default
special-token handling, so a tokenizer that adds a BOS adds it once, at the start of the
stream, and windows cut from the stream do not each get their own BOS. With a BOS per window
(``--bos-per-window``; ``auto`` turns it on for tokenizers that add a BOS by default, which
models such as Gemma are trained to always see first), the stream is tokenized without special
tokens and every window is a BOS followed by seqlen − 1 tokens of text; every text token is
still predicted once.
"""

from __future__ import annotations

import random
from typing import Any, Literal

import torch

from hyperprune.data.sources import TextSource
from hyperprune.errors import HyperpruneError

BOS_PER_WINDOW = False  # the default for tokenizers that add no BOS (the embedded SmolLM2's)
BosMode = Literal["auto", "on", "off"]
DOCUMENT_SEPARATOR = "\n\n"  # wikitext2 protocol: "\n\n".join(test["text"])
C4_MAX_DRAWS = 10_000  # consecutive too-short documents before giving up


def source_text(source: TextSource) -> str:
    """The whole source as one string, documents separated by a blank line."""
    return DOCUMENT_SEPARATOR.join(source.documents)


def tokenize_stream(tokenizer: Any, text: str, add_special_tokens: bool = True) -> torch.Tensor:
    """Token ids of ``text`` as one 1-D LongTensor, in a single tokenizer call.

    ``verbose=False`` silences the "sequence length is longer than the
    specified maximum" warning: long streams are cut into windows afterwards.
    """
    encoded = tokenizer(text, return_tensors="pt", add_special_tokens=add_special_tokens, verbose=False)
    return encoded["input_ids"][0].to(torch.long)


def bos_per_window(tokenizer: Any, mode: BosMode) -> bool:
    """Resolve ``--bos-per-window``: ``auto`` is on when the tokenizer adds a BOS by default."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if mode == "off":
        return False
    if mode == "on":
        if bos is None:
            raise HyperpruneError("--bos-per-window on: the tokenizer has no BOS token; use auto or off")
        return True
    if bos is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return len(ids) > 0 and ids[0] == bos


def _with_bos(windows: torch.Tensor, bos: int) -> torch.Tensor:
    return torch.cat([torch.full((windows.shape[0], 1), bos, dtype=windows.dtype), windows], dim=1)


def calibration_windows(
    tokenizer: Any, source: TextSource, nsamples: int, seqlen: int, seed: int, bos: bool = False
) -> torch.Tensor:
    """``nsamples`` random windows of ``seqlen`` tokens, shape [nsamples, seqlen].

    ``c4`` follows the Wanda/SparseGPT ``get_c4`` protocol exactly (one random
    long-enough document per sample); any other source is tokenized as one
    stream and windows start uniformly at random (they may overlap).
    """
    _check_positive(nsamples=nsamples, seqlen=seqlen)
    _check_room_for_bos(seqlen, bos)
    content = seqlen - 1 if bos else seqlen
    if source.name == "c4":
        windows = _c4_windows(tokenizer, source, nsamples, content, seed, add_special_tokens=not bos)
    else:
        ids = _stream_or_explain(tokenizer, source, "calibration", add_special_tokens=not bos)
        if ids.numel() < content:
            raise HyperpruneError(
                f"calibration text from {source.name!r} has only {ids.numel()} tokens, "
                f"fewer than --seqlen {seqlen}; give a longer text or a smaller --seqlen"
            )
        starts = random_starts(ids.numel(), content, nsamples, seed)
        windows = torch.stack([ids[s : s + content] for s in starts])
    return _with_bos(windows, tokenizer.bos_token_id) if bos else windows


def random_starts(ntokens: int, seqlen: int, nsamples: int, seed: int) -> list[int]:
    """Window starts drawn uniformly from [0, ntokens - seqlen], reproducibly."""
    rng = random.Random(seed)
    return [rng.randint(0, ntokens - seqlen) for _ in range(nsamples)]


def _c4_windows(
    tokenizer: Any, source: TextSource, nsamples: int, seqlen: int, seed: int, add_special_tokens: bool = True
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
        ids = _draw_long_document(tokenizer, documents, seqlen, rng, source.name, add_special_tokens)
        start = rng.randint(0, ids.numel() - seqlen - 1)
        windows.append(ids[start : start + seqlen])
    return torch.stack(windows)


def _draw_long_document(
    tokenizer: Any, documents: list[str], seqlen: int, rng: random.Random, name: str, add_special_tokens: bool = True
) -> torch.Tensor:
    """Tokens of the first randomly drawn document longer than ``seqlen`` tokens."""
    for _ in range(C4_MAX_DRAWS):
        i = rng.randint(0, len(documents) - 1)
        ids = tokenize_stream(tokenizer, documents[i], add_special_tokens)
        if ids.numel() > seqlen:
            return ids
    raise HyperpruneError(
        f"calibration text from {name!r}: none of {C4_MAX_DRAWS} randomly drawn documents "
        f"is longer than --seqlen {seqlen} tokens; use a smaller --seqlen"
    )


def evaluation_windows(
    tokenizer: Any, source: TextSource, seqlen: int, max_windows: int | None = None, bos: bool = False
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
    _check_room_for_bos(seqlen, bos)
    ids = _stream_or_explain(tokenizer, source, "evaluation", add_special_tokens=not bos)
    content = seqlen - 1 if bos else seqlen
    nwin = ids.numel() // content if content > 0 else 0
    if nwin < 1:
        raise HyperpruneError(
            f"evaluation text from {source.name!r} has only {ids.numel()} tokens, "
            f"fewer than one --seqlen {seqlen} window; give a longer text or a smaller --seqlen"
        )
    windows = ids[: nwin * content].view(nwin, content)
    if max_windows is not None and max_windows < nwin:
        windows = windows[spread_indices(nwin, max_windows)]
    return _with_bos(windows, tokenizer.bos_token_id) if bos else windows


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


def _stream_or_explain(tokenizer: Any, source: TextSource, purpose: str, add_special_tokens: bool = True) -> torch.Tensor:
    """Tokenize a whole source, refusing text that is empty or only whitespace."""
    text = source_text(source)
    if not text.strip():
        raise _empty_error(source, purpose)
    ids = tokenize_stream(tokenizer, text, add_special_tokens)
    if ids.numel() == 0:
        raise _empty_error(source, purpose)
    return ids


def _empty_error(source: TextSource, purpose: str) -> HyperpruneError:
    return HyperpruneError(
        f"{purpose} text from {source.name!r} is empty; give a source that contains text"
    )


def _check_room_for_bos(seqlen: int, bos: bool) -> None:
    if bos and seqlen < 2:
        raise HyperpruneError(f"--seqlen {seqlen} leaves no room for text after the BOS of each window; use at least 2")


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise HyperpruneError(f"--{name} must be at least 1, got {value}")
