"""How alike are the n:m masks of several prune runs, and how alike is each to the magnitude mask
of the original weights? Used to test a reading of the ProxSparse row of the baselines table
(that its read-off mask, after a short training, is close to a magnitude mask).

    python benchmarks/mask_overlap.py --model smollm2-135m \
        proxsparse=runs/overlap/proxsparse sparsegpt=runs/overlap/sparsegpt --json out.json

Each LABEL=DIR is a ``hyperprune prune --output`` directory (its ``masks.safetensors`` and
``report.json`` give the masks and the pattern). The magnitude mask is computed here from the
model's own weights with the library's scoring (ties toward the lower column, as the engine
does). For every pair it prints the fraction of groups of m whose kept set is identical, and the
fraction of kept weights the two masks share (for two n:m masks of equal density, the latter is
the share of each mask's kept set found in the other). Two independent random 2:4 masks agree
on 1/6 of the groups and share half their kept weights. Per-role figures show where they differ.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import torch

from hyperprune.export.mask_files import MASKS_FILE, REPORT_FILE, load_masks
from hyperprune.masks import nm_mask_from_scores
from hyperprune.models import load_model, prunable_weight_names


def role_of(name: str) -> str:
    """``model.layers.3.self_attn.q_proj.weight`` → ``q_proj``."""
    return name.rsplit(".", 2)[-2]


def agreement(first: torch.Tensor, second: torch.Tensor, m: int) -> tuple[int, int, int, int]:
    """(groups identical, groups, kept weights shared, kept weights of ``first``)."""
    same_group = (first == second).view(-1, m).all(dim=1)
    return int(same_group.sum()), same_group.numel(), int((first & second).sum()), int(first.sum())


def compare_masks(masks: dict[str, dict[str, torch.Tensor]], m: int) -> dict[str, dict]:
    """Overall and per-role agreement of every pair of labelled mask sets (same weight names)."""
    out = {}
    for a, b in itertools.combinations(masks, 2):
        totals = [0, 0, 0, 0]
        by_role: dict[str, list[int]] = {}
        for name, keep in masks[a].items():
            counts = agreement(keep, masks[b][name], m)
            totals = [t + c for t, c in zip(totals, counts)]
            sums = by_role.setdefault(role_of(name), [0, 0, 0, 0])
            by_role[role_of(name)] = [t + c for t, c in zip(sums, counts)]
        out[f"{a} vs {b}"] = {
            "groups_identical": totals[0] / totals[1],
            "kept_shared": totals[2] / totals[3],
            "by_role": {r: {"groups_identical": v[0] / v[1], "kept_shared": v[2] / v[3]} for r, v in by_role.items()},
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="LABEL=DIR of a prune --output")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args()

    masks: dict[str, dict[str, torch.Tensor]] = {}
    patterns = set()
    for spec in args.runs:
        label, _, directory = spec.partition("=")
        report = json.loads((Path(directory) / REPORT_FILE).read_text())
        patterns.add(report["pattern"])
        masks[label] = {k: v.bool() for k, v in load_masks(Path(directory) / MASKS_FILE).items()}
    if len(patterns) != 1:
        raise SystemExit(f"the runs have different patterns {sorted(patterns)}; compare runs of one pattern")
    n, m = (int(x) for x in patterns.pop().split(":"))

    loaded = load_model(args.model)
    params = dict(loaded.model.named_parameters())
    names = prunable_weight_names(loaded.model, loaded.layout)
    for label, found in masks.items():
        if sorted(found) != sorted(names):
            raise SystemExit(f"{label}'s masks do not name the prunable weights of {args.model}")
    with torch.no_grad():
        masks = {"magnitude": {name: nm_mask_from_scores(params[name].detach().abs().float(), n, m) for name in names}} | masks
    result = {"model": args.model, "pattern": f"{n}:{m}", "runs": dict(r.partition("=")[::2] for r in args.runs),
              "pairs": compare_masks(masks, m)}
    for pair, figures in result["pairs"].items():
        roles = ", ".join(f"{r} {v['groups_identical']:.3f}" for r, v in figures["by_role"].items())
        print(f"{pair:32s} groups identical {figures['groups_identical']:.3f}  kept shared {figures['kept_shared']:.3f}"
              f"  (groups identical by role: {roles})")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
