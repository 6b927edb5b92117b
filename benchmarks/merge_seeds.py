"""Merge per-seed `hyperprune compare --json` files into one table: mean and spread.

Each input is one compare run (one calibration seed, one process). For every method and
evaluation text this reports the mean PPL over the seeds that ran it, the spread
(half the max − min range, and the sample standard deviation), prune time as a median and
as a ratio to SparseGPT's median, and the largest peak RSS. A method compared with another
counts as a tie when their means differ by less than the larger of their two ranges.

    python benchmarks/merge_seeds.py benchmarks/results/hyperprune-3seed/compare-2of4-hp-seed{0,1,2}.json \
        --json benchmarks/results/hyperprune-3seed/compare-2of4-hp-merged.json --markdown

An input written ``FILE@LABEL`` has `` (LABEL)`` added to its method names, so that runs of one
method under other settings (``--refit-method lstsq``) get rows of their own.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def merge(runs: list[dict], time_seeds: set[int] | None = None) -> dict:
    """``time_seeds``: only these seeds' prune times count (runs that shared the CPU with other
    work measure quality fine but time badly); None counts every seed."""
    methods: dict[str, dict] = {}
    evals = runs[0].get("evals") and list(runs[0]["evals"]) or [runs[0]["eval"]]
    for run in runs:
        for name, entry in run["methods"].items():
            slot = methods.setdefault(name, {"seeds": [], "ppl": {e: [] for e in evals}, "prune_seconds": [],
                                             "peak_rss_bytes": [], "block_err": []})
            slot["seeds"].append(run["seed"])
            for source in evals:
                slot["ppl"][source].append(entry["ppl_by_eval"][source])
            if time_seeds is None or run["seed"] in time_seeds:
                slot["prune_seconds"].append(entry["prune_seconds"])
            slot["peak_rss_bytes"].append(entry["peak_rss_bytes"])
            if "mean_block_rel_update_error" in entry:  # ‖f′(x) − f(x)‖²/‖f(x) − x‖², calibration
                slot["block_err"].append(entry["mean_block_rel_update_error"])
    reference_times = methods.get("sparsegpt", {}).get("prune_seconds")
    reference = statistics.median(reference_times) if reference_times else None
    summary = {}
    for name, slot in methods.items():
        row = {"seeds": slot["seeds"], "ppl": {}, "peak_rss_bytes": max(slot["peak_rss_bytes"])}
        for source, values in slot["ppl"].items():
            row["ppl"][source] = {
                "mean": statistics.fmean(values),
                "half_range": (max(values) - min(values)) / 2,
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "values": values,
            }
        seconds = statistics.median(slot["prune_seconds"]) if slot["prune_seconds"] else None
        row["prune_seconds_median"] = seconds
        row["time_vs_sparsegpt"] = seconds / reference if reference and seconds else None
        row["block_err_mean"] = statistics.fmean(slot["block_err"]) if slot["block_err"] else None
        summary[name] = row
    return {"evals": evals, "methods": summary, "inputs": [r.get("_path") for r in runs],
            "time_seeds": sorted(time_seeds) if time_seeds is not None else "all",
            "config": runs[0].get("config"), "versions": runs[0].get("versions")}


def markdown(merged: dict) -> str:
    evals = merged["evals"]
    head = "| method | seeds | " + " | ".join(f"PPL `{e}`" for e in evals) + " | block err | prune s (median) | × SparseGPT time | peak RSS |"
    lines = [head, "|" + "---|" * (len(evals) + 6)]
    for name, row in merged["methods"].items():
        cells = [f"{row['ppl'][e]['mean']:.2f}" + (f" ± {row['ppl'][e]['half_range']:.2f}" if len(row["seeds"]) > 1 else "")
                 for e in evals]
        err = f"{row['block_err_mean']:.4f}" if row["block_err_mean"] is not None else "–"
        ratio = f"{row['time_vs_sparsegpt']:.2f}" if row["time_vs_sparsegpt"] else "–"
        secs = f"{row['prune_seconds_median']:.0f}" if row["prune_seconds_median"] else "–"
        lines.append(f"| {name} | {len(row['seeds'])} | " + " | ".join(cells)
                     + f" | {err} | {secs} | {ratio} | {row['peak_rss_bytes'] / 2**30:.2f} GiB |")
    return "\n".join(lines)


def load_run(spec: str) -> dict:
    """One compare JSON; ``FILE@LABEL`` labels its methods."""
    path, _, label = spec.partition("@")
    run = json.loads(Path(path).read_text())
    run["_path"] = path
    if label:
        run["methods"] = {f"{name} ({label})": entry for name, entry in run["methods"].items()}
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+")
    parser.add_argument("--json", default=None, help="write the merged summary here")
    parser.add_argument("--markdown", action="store_true", help="print a README table")
    parser.add_argument("--time-seeds", default=None,
                        help="comma-separated seeds whose prune times count (default: all), e.g. the runs that had the CPU to themselves")
    args = parser.parse_args()
    runs = [load_run(spec) for spec in args.inputs]
    time_seeds = {int(s) for s in args.time_seeds.split(",")} if args.time_seeds else None
    merged = merge(runs, time_seeds)
    if args.json:
        Path(args.json).write_text(json.dumps(merged, indent=2))
    print(markdown(merged) if args.markdown else json.dumps(merged, indent=2))


if __name__ == "__main__":
    main()
