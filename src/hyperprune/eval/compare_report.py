"""``hyperprune compare --plot DIR``: PNG plots and a markdown report of a comparison.

Reads only the comparison's result dict (as written by ``--json``), so a saved JSON can be
plotted again with :func:`write_compare_report`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from hyperprune.errors import HyperpruneError

PLOTS = {
    "ppl": "ppl.png",
    "block_error": "block_error.png",
    "zeroshot": "zeroshot.png",
    "cost": "cost.png",
}
# A log axis once the largest value is this many times the smallest.
LOG_SCALE_RATIO = 5.0


def check_plot_dependencies() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise HyperpruneError("--plot needs matplotlib; pip install 'hyperprune[eval]'") from None


def write_compare_report(result: dict[str, Any], directory: str | Path, command: str | None = None) -> Path:
    """Write the PNGs and ``report.md`` into ``directory``; return the report's path."""
    check_plot_dependencies()
    import matplotlib

    matplotlib.use("Agg")
    out = Path(directory)
    if out.exists() and not out.is_dir():
        raise HyperpruneError(f"--plot {out} is a file; give a directory")
    out.mkdir(parents=True, exist_ok=True)
    written = {"ppl": plot_ppl(result, out / PLOTS["ppl"]), "cost": plot_cost(result, out / PLOTS["cost"])}
    if any("blocks" in r for r in result["methods"].values()):
        written["block_error"] = plot_block_error(result, out / PLOTS["block_error"])
    if any("tasks" in r for r in result["methods"].values()):
        written["zeroshot"] = plot_zeroshot(result, out / PLOTS["zeroshot"])
    report = out / "report.md"
    report.write_text(markdown_report(result, {k: v.name for k, v in written.items()}, command))
    return report


def _bar_positions(groups: int, series: int, width: float = 0.8) -> tuple[list[list[float]], float]:
    bar = width / max(series, 1)
    return [[g - width / 2 + bar * (s + 0.5) for g in range(groups)] for s in range(series)], bar


def _figure(width: float, height: float):
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height), layout="constrained")


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_ppl(result: dict[str, Any], path: Path) -> Path:
    methods = list(result["methods"])
    texts = list(result["evals"])
    fig, ax = _figure(min(13.0, max(6.0, 0.4 * len(methods) * max(1, len(texts)) + 3.0)), 4.5)
    positions, bar = _bar_positions(len(methods), len(texts))
    values = [[result["methods"][m]["ppl_by_eval"][t] for m in methods] for t in texts]
    for k, text in enumerate(texts):
        bars = ax.bar(positions[k], values[k], bar, label=text)
        ax.bar_label(bars, fmt="%.0f", fontsize=7, padding=1)
    flat = [v for row in values for v in row]
    if max(flat) / min(flat) > LOG_SCALE_RATIO:
        ax.set_yscale("log")
    ax.set_xticks(range(len(methods)), methods, rotation=20, ha="right")
    ax.set_ylabel("perplexity (lower is better)" + (", log scale" if ax.get_yscale() == "log" else ""))
    ax.set_title(f"Perplexity per method and text ({result['pattern']}, {result['model']})")
    ax.legend(title="text", fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.margins(y=0.15)
    return _save(fig, path)


def plot_block_error(result: dict[str, Any], path: Path) -> Path:
    fig, ax = _figure(7.5, 4.2)
    for name, entry in result["methods"].items():
        if "blocks" not in entry:
            continue
        blocks = entry["blocks"]
        ax.plot([b["block"] for b in blocks], [b["rel_update_error"] for b in blocks], marker="o", markersize=3, label=name)
    from matplotlib.ticker import MaxNLocator

    ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("block (depth)")
    ax.set_ylabel("‖f′(x) − f(x)‖² / ‖f(x) − x‖²  (log scale)")
    ax.set_title("Per-block reconstruction error on the calibration set")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_zeroshot(result: dict[str, Any], path: Path) -> Path:
    methods = [m for m, r in result["methods"].items() if "tasks" in r]
    tasks = list(result["methods"][methods[0]]["tasks"])
    pruned = [m for m in methods if m != "dense"] or methods
    fig, ax = _figure(min(14.0, max(7.0, 0.35 * len(tasks) * max(1, len(pruned)) + 3.0)), 5.0)
    positions, bar = _bar_positions(len(tasks), len(pruned))
    for k, name in enumerate(pruned):
        rows = [result["methods"][name]["tasks"][t] for t in tasks]
        ax.bar(positions[k], [100 * r["acc"] for r in rows], bar, label=name,
               yerr=[100 * r["acc_stderr"] for r in rows], error_kw={"elinewidth": 0.8, "capsize": 2})
    first = result["methods"][methods[0]]["tasks"]
    for g, task in enumerate(tasks):
        span = (g - 0.45, g + 0.45)
        ax.plot(span, [100 * first[task]["chance"]] * 2, color="grey", linestyle=":", linewidth=1.2,
                label="chance" if g == 0 else None)
        if "dense" in result["methods"] and "dense" != pruned[0]:
            ax.plot(span, [100 * result["methods"]["dense"]["tasks"][task]["acc"]] * 2, color="black", linewidth=1.8,
                    label="dense" if g == 0 else None)
    ax.set_xticks(range(len(tasks)), tasks, rotation=20, ha="right")
    ax.set_ylabel("accuracy (%), ± 1 binomial s.e.")
    n = first[tasks[0]]["n"]
    limit = result.get("zeroshot", {}).get("limit")
    ax.set_title(f"Zero-shot accuracy ({'first ' + str(limit) if limit else 'all'} documents per task; e.g. n = {n})")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_ylim(0, 100)
    return _save(fig, path)


def plot_cost(result: dict[str, Any], path: Path) -> Path:
    import matplotlib.pyplot as plt

    methods = list(result["methods"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(max(8.0, 1.4 * len(methods) + 3), 3.8), layout="constrained")
    seconds = [result["methods"][m]["prune_seconds"] for m in methods]
    gib = [(result["methods"][m]["peak_rss_bytes"] or 0) / 2**30 for m in methods]
    bars = left.bar(methods, seconds, color="tab:blue")
    left.bar_label(bars, labels=[f"{s:.0f}" if s >= 10 else f"{s:.2g}" for s in seconds], fontsize=7, padding=1)
    positive = [s for s in seconds if s > 0]
    if positive and max(positive) / min(positive) > LOG_SCALE_RATIO:
        left.set_yscale("log")
    left.set_ylabel("prune time (s)" + (", log scale" if left.get_yscale() == "log" else ""))
    left.set_title("Prune time")
    bars = right.bar(methods, gib, color="tab:orange")
    right.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    right.set_ylabel("peak RSS of the process (GiB)")
    right.set_title("Peak memory")
    for ax in (left, right):
        ax.tick_params(axis="x", rotation=25)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
        ax.margins(y=0.15)
    return _save(fig, path)


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def markdown_report(result: dict[str, Any], images: dict[str, str], command: str | None) -> str:
    texts = list(result["evals"])
    lines = [f"# hyperprune compare: {result['model']}, {result['pattern']}", ""]
    if command:
        lines += ["```bash", command, "```", ""]
    lines += [
        f"Calibration: {result['nsamples']} × {result['seqlen']} tokens of `{result['calib']}` (seed {result['seed']}). "
        "Evaluation: " + ", ".join(f"`{t}` ({e['windows']} windows, {e['tokens']} tokens)" for t, e in result["evals"].items()) + ".",
        "",
        "## Perplexity, time and memory",
        "",
        "| method | " + " | ".join(f"PPL `{t}`" for t in texts) + " | block err | prune s | peak RSS (GiB) |",
        "|---|" + "---|" * (len(texts) + 3),
    ]
    for name, r in result["methods"].items():
        lines.append(f"| {name} | " + " | ".join(_fmt(r["ppl_by_eval"][t]) for t in texts)
                     + f" | {_fmt(r.get('mean_block_rel_update_error'), 4)} | {_fmt(r['prune_seconds'], 1)} | "
                     f"{_fmt((r['peak_rss_bytes'] or 0) / 2**30)} |")
    lines += ["", f"![perplexity]({images['ppl']})", ""]
    if "block_error" in images:
        lines += ["## Reconstruction error by depth", "", f"![block error]({images['block_error']})", ""]
    if "zeroshot" in images:
        lines += _zeroshot_section(result, images["zeroshot"])
    lines += ["## Cost", "", f"![cost]({images['cost']})", "",
              "## Versions and environment", "", "```json",
              json.dumps({"versions": result.get("versions"), "environment": result.get("environment")}, indent=2), "```", "",
              "## Full configuration", "", "```json", json.dumps(result.get("config"), indent=2), "```", ""]
    return "\n".join(lines)


def _zeroshot_section(result: dict[str, Any], image: str) -> list[str]:
    methods = {m: r for m, r in result["methods"].items() if "tasks" in r}
    tasks = list(next(iter(methods.values()))["tasks"])
    informative = result.get("informative_tasks")
    limit = result.get("zeroshot", {}).get("limit")
    lines = ["## Zero-shot accuracy", "",
             f"acc (%) on the first {limit} documents of each task" if limit else "acc (%) on all documents of each task",
             "(acc_norm in brackets where lm-eval defines it); ± is one binomial standard error.", "",
             "| method | " + " | ".join(tasks) + " | mean |" + (" mean (informative) |" if informative is not None else ""),
             "|---|" + "---|" * (len(tasks) + 1 + (informative is not None))]
    for name, r in methods.items():
        cells = []
        for t in tasks:
            x = r["tasks"][t]
            cell = f"{100 * x['acc']:.1f} ± {100 * x['acc_stderr']:.1f}"
            if x["acc_norm"] is not None:
                cell += f" ({100 * x['acc_norm']:.1f})"
            cells.append(cell)
        row = f"| {name} | " + " | ".join(cells) + f" | {100 * r['mean_acc']:.1f} |"
        if informative is not None:
            row += f" {_fmt(100 * r['mean_acc_informative'] if r.get('mean_acc_informative') is not None else None, 1)} |"
        lines.append(row)
    first = next(iter(methods.values()))["tasks"]
    lines += ["", "Documents per task: " + ", ".join(f"{t} {first[t]['n']}" for t in tasks) + ". Chance: "
              + ", ".join(f"{t} {100 * first[t]['chance']:.1f}" for t in tasks) + "."]
    if informative is not None:
        left_out = [t for t in tasks if t not in informative]
        lines.append("Informative tasks (dense more than 2 points above chance): " + (", ".join(informative) or "none")
                     + ("; left out of that mean: " + ", ".join(left_out) if left_out else "") + ".")
    lines += ["", f"![zero-shot accuracy]({image})", ""]
    return lines
