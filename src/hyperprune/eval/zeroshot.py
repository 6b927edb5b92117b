"""Zero-shot accuracy of an in-memory model through lm-evaluation-harness.

The model is wrapped with lm-eval's ``HFLM`` and scored by lm-eval's evaluator, so the numbers
are lm-eval's. We add what a comparison needs: the number of documents, the binomial standard
error of each accuracy, the chance level, and throughput.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import time
import warnings
from typing import Any

import torch

from hyperprune.config import ZeroShotOptions
from hyperprune.data.task_data import ZEROSHOT_TASKS, zeroshot_task_file
from hyperprune.errors import HyperpruneError
from hyperprune.eval.tasks import EVAL_EXTRA_HINT, TaskSpec, import_lm_eval, lm_eval_task, load_jsonl_task, parse_tasks

log = logging.getLogger(__name__)


def binomial_stderr(p: float, n: int) -> float:
    """Sampling error of an accuracy p measured on n documents: sqrt(p(1-p)/n)."""
    return math.sqrt(p * (1.0 - p) / n) if n else float("nan")


def mean_accuracy(tasks: dict[str, dict[str, Any]], names: list[str] | None = None) -> float | None:
    """Unweighted mean of acc over tasks (the paper's Table 1 'Mean')."""
    values = [tasks[n]["acc"] for n in (names if names is not None else tasks)]
    return sum(values) / len(values) if values else None


def informative_tasks(dense_tasks: dict[str, dict[str, Any]], margin: float = 0.02) -> list[str]:
    """Tasks on which the dense model is more than ``margin`` above chance: only these can separate methods."""
    # Rounded so that exactly `margin` above chance counts as "within" it.
    return [name for name, r in dense_tasks.items() if round(r["acc"] - r["chance"], 9) > margin]


def resolve_tasks(options: ZeroShotOptions) -> list[TaskSpec]:
    """Parse and check every task up front (data built, JSONL read), before any long work."""
    import_lm_eval()
    specs = parse_tasks(list(options.tasks), options.field_map)
    for spec in specs:
        if spec.kind == "packaged":
            zeroshot_task_file(spec.source)
        elif spec.kind == "jsonl":
            load_jsonl_task(spec.source, spec.field_map)
    return specs


def run_zeroshot(model, tokenizer, specs: list[TaskSpec], options: ZeroShotOptions, device: torch.device,
                 progress: bool = True) -> dict[str, Any]:
    return evaluate_tasks(model, tokenizer, specs, device, limit=options.limit, batch_size=options.batch_size, progress=progress)


def evaluate_tasks(
    model,
    tokenizer,
    specs: list[TaskSpec],
    device: torch.device,
    *,
    limit: int | None = None,
    batch_size: int = 8,
    progress: bool = True,
    per_doc: bool = False,
) -> dict[str, Any]:
    """Score ``specs`` on ``model``; ``limit`` takes the first N documents of each task."""
    if limit is not None and limit <= 0:
        raise HyperpruneError(f"--limit {limit} must be a positive number of documents")
    if batch_size <= 0:
        raise HyperpruneError(f"--batch-size {batch_size} must be positive")
    lm_eval = import_lm_eval()
    from lm_eval.tasks import TaskManager

    logging.getLogger("lm_eval").setLevel(logging.INFO if progress else logging.ERROR)
    for noisy in ("lm_eval.api.task", "lm_eval.models.huggingface", "lm_eval.evaluator"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    tasks = [lm_eval_task(spec) for spec in specs]
    model.to(device)
    lm = _wrap(model, tokenizer, device, batch_size, progress)
    start = time.perf_counter()
    # lm-eval draws progress bars of its own while it builds requests; --quiet silences them.
    silenced = contextlib.nullcontext() if progress else contextlib.redirect_stderr(io.StringIO())
    try:
        with torch.no_grad(), silenced, warnings.catch_warnings(), _quiet_git_hash():
            # HFLM passes a legacy cache argument that transformers 5 warns about on every call.
            warnings.filterwarnings("ignore", message="Both `past_key_values` and `cache` are set")
            output = lm_eval.simple_evaluate(
                model=lm, tasks=tasks, limit=limit, bootstrap_iters=0, log_samples=True,
                task_manager=TaskManager(), verbosity=None,
            )
    except (ConnectionError, OSError) as exc:
        hub = [s.source for s in specs if s.kind == "hub"]
        if hub:
            raise HyperpruneError(f"lm-eval task(s) {', '.join(hub)} need the Hugging Face hub, which is unreachable "
                                  f"({type(exc).__name__}); use the packaged tasks ({', '.join(ZEROSHOT_TASKS)}) "
                                  "or a .jsonl file") from None
        raise
    seconds = time.perf_counter() - start
    results: dict[str, Any] = {}
    requests = 0
    for spec in specs:
        key = _result_key(output, spec)
        samples = output["samples"][key]
        metrics = output["results"][key]
        n = len(samples)
        acc = float(metrics["acc,none"])
        acc_norm = metrics.get("acc_norm,none")
        choices = [len(s["arguments"]) for s in samples]
        requests += sum(choices)
        entry: dict[str, Any] = {
            "acc": acc,
            "acc_norm": float(acc_norm) if acc_norm is not None else None,
            "n": n,
            "acc_stderr": binomial_stderr(acc, n),
            "acc_norm_stderr": binomial_stderr(float(acc_norm), n) if acc_norm is not None else None,
            # Expected accuracy of a uniform guess over each document's choices.
            "chance": sum(1.0 / c for c in choices) / n,
            "documents_in_split": output["n-samples"][key]["original"],
        }
        if per_doc:
            entry["docs"] = [
                {"doc_id": s["doc_id"], "target": s["target"], "loglikelihoods": [float(r[0]) for r in s["filtered_resps"]],
                 "acc": s.get("acc"), "acc_norm": s.get("acc_norm")}
                for s in sorted(samples, key=lambda s: s["doc_id"])
            ]
        results[spec.name] = entry
    return {
        "tasks": results,
        "mean_acc": mean_accuracy(results),
        "limit": limit,
        "batch_size": batch_size,
        "requests": requests,
        "seconds": seconds,
        "requests_per_second": requests / seconds if seconds > 0 else None,
        "lm_eval_version": output.get("lm_eval_version"),
    }


def _result_key(output: dict[str, Any], spec: TaskSpec) -> str:
    key = spec.source if spec.kind == "hub" else spec.name
    if key not in output["results"] or key not in output["samples"]:
        raise HyperpruneError(f"lm-eval returned no accuracy for task '{spec.name}' (a group, or not multiple choice?); "
                              "give multiple-choice tasks one by one")
    if "acc,none" not in output["results"][key]:
        raise HyperpruneError(f"task '{spec.name}' has no 'acc' metric; only multiple-choice tasks are supported")
    return key


def _wrap(model, tokenizer, device: torch.device, batch_size: int, progress: bool):
    try:
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        raise HyperpruneError(f"lm-eval's Hugging Face backend is missing; {EVAL_EXTRA_HINT}") from None

    class _QuietableHFLM(HFLM):
        # lm-eval's evaluator always asks for a progress bar over requests; honour --quiet.
        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm or not progress)

    return _QuietableHFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(device))


@contextlib.contextmanager
def _quiet_git_hash():
    """lm-eval records the git commit of the working directory by running ``git describe``, whose
    "fatal: not a git repository" outside one reaches our stderr: ask git the same, quietly."""
    import subprocess

    import lm_eval.evaluator as evaluator

    def quiet() -> str | None:
        try:
            done = subprocess.run(["git", "describe", "--always"], capture_output=True, text=True, check=False)
        except OSError:
            return None
        return done.stdout.strip() or None

    original = getattr(evaluator, "get_git_commit_hash", None)
    if original is None:
        yield
        return
    evaluator.get_git_commit_hash = quiet
    try:
        yield
    finally:
        evaluator.get_git_commit_hash = original
