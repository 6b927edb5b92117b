"""Per layer: how often HyperPrune's learned mask beats its prior's mask after the same refit
(issue 27's per-layer target: "winning in at least half the layers"), from compare JSON files
(``hyperprune compare --json``, whose rows keep each layer's numbers).

    python benchmarks/layer_wins.py benchmarks/results/hyperprune-route-a/compare-2of4-route-a-seed{1,2}.json

For every ``hyperprune*`` row with a refit, a layer counts as a win when the learned mask's
refit error (``learned_refit_error``) is below the prior's (``prior_refit_error``) by more than
``--margin`` (relative), both on the same layer inputs; ``refit_error`` / ``prior_refit_error``
is what the row-by-row choice of the two ended at.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def layer_wins(layers: list[dict], margin: float) -> dict | None:
    pairs = [(layer["info"]["learned_refit_error"], layer["info"]["prior_refit_error"], layer["info"].get("refit_error"))
             for layer in layers if {"learned_refit_error", "prior_refit_error"} <= set(layer.get("info", {}))]
    if not pairs:
        return None
    wins = sum(learned < prior * (1 - margin) for learned, prior, _ in pairs)
    losses = sum(learned > prior * (1 + margin) for learned, prior, _ in pairs)
    chosen = [final / prior for _, prior, final in pairs if final is not None and prior > 0]
    return {"layers": len(pairs), "wins": wins, "losses": losses, "ties": len(pairs) - wins - losses,
            "learned_over_prior_median": statistics.median(learned / prior for learned, prior, _ in pairs if prior > 0),
            "chosen_over_prior_median": statistics.median(chosen) if chosen else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+")
    parser.add_argument("--margin", type=float, default=1e-4, help="relative difference below which a layer is a tie")
    args = parser.parse_args(argv)
    print(f"{'file':50s} {'row':22s} layers  wins  losses  ties  learned/prior  chosen/prior (medians)")
    for file in args.files:
        run = json.loads(Path(file).read_text())
        for name, entry in run["methods"].items():
            summary = layer_wins(entry.get("layers", []), args.margin) if name.startswith("hyperprune") else None
            if summary is None:
                continue
            chosen = summary["chosen_over_prior_median"]
            print(f"{Path(file).name:50s} {name:22s} {summary['layers']:6d} {summary['wins']:5d} {summary['losses']:7d} "
                  f"{summary['ties']:5d}  {summary['learned_over_prior_median']:13.4f}  "
                  f"{'-' if chosen is None else f'{chosen:.4f}':>12s}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
