"""Scale benchmark: prune random-weight models with LLaMA-2-7B's shapes by streaming.

Makes (if missing) a 32-block and an 8-block bf16 checkpoint with `hyperprune
make-random-model`, prunes each with the given methods in separate processes, and records
each process's whole-life peak RSS (VmHWM) and the time per block from report.json.

    python benchmarks/scale.py --workdir /path/with/30GB --methods magnitude,wanda
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

PEAK = """
import sys
from hyperprune.cli import main
from hyperprune.engine.memory import lifetime_peak_rss_bytes
code = main(sys.argv[1:])
print("PEAK", lifetime_peak_rss_bytes())
sys.exit(code)
"""


def run_cli(args: list[str]) -> int:
    proc = subprocess.run([sys.executable, "-c", PEAK, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"failed: hyperprune {' '.join(args)}\n{proc.stderr[-2000:]}")
    return int(proc.stdout.split("PEAK")[-1].split()[0])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--like", default="llama-2-7b")
    parser.add_argument("--layers", default="8,32")
    parser.add_argument("--methods", default="magnitude,wanda")
    parser.add_argument("--nsamples", default="4")
    parser.add_argument("--seqlen", default="256")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/scale/scale-llama-2-7b.json"))
    parser.add_argument("--extra", default="", help="more prune flags, e.g. '--steps 5' for hyperprune")
    args = parser.parse_args()

    rows = []
    for layers in [int(x) for x in args.layers.split(",")]:
        model = args.workdir / f"{args.like}-random-{layers}l"
        make_peak = None
        if not (model / "config.json").is_file():
            make_peak = run_cli(["make-random-model", "--like", args.like, "--dtype", "bfloat16", "--layers", str(layers),
                                 "--output", str(model), "--quiet"])
        for method in args.methods.split(","):
            out = args.workdir / f"{args.like}-{layers}l-{method}"
            peak = run_cli(["prune", "--model", str(model), "--method", method, "--nsamples", args.nsamples,
                            "--seqlen", args.seqlen, "--output", str(out), "--overwrite", "--quiet", *args.extra.split()])
            report = json.loads((out / "report.json").read_text())
            per_block = [b["seconds"] for b in report["blocks"]]
            rows.append({
                "layers": layers, "method": method, "peak_rss_bytes": peak, "make_peak_rss_bytes": make_peak,
                "median_block_seconds": statistics.median(per_block), "prune_seconds": report["prune_seconds"],
                "wall_seconds": report["wall_seconds"], "nm_valid": report["nm_valid"], "streamed": report["streamed"],
                "checkpoint_bytes": sum(p.stat().st_size for p in model.glob("*.safetensors")),
                "extra": args.extra,
                # Where a block's time goes, for methods that report it (HyperPrune): medians over blocks.
                "block_timing": {key: statistics.median(b["info"].get(key, 0.0) for b in report["blocks"])
                                 for key in sorted({k for b in report["blocks"] for k in b["info"] if k.endswith("_s")})},
            })
            print(json.dumps(rows[-1]))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"like": args.like, "nsamples": args.nsamples, "seqlen": args.seqlen, "rows": rows}, indent=2))
    print("| layers | method | peak RSS | median s/block | prune s | n:m valid |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['layers']} | {r['method']} | {r['peak_rss_bytes'] / 2**30:.2f} GiB | {r['median_block_seconds']:.1f} | "
              f"{r['prune_seconds']:.0f} | {r['nm_valid']} |")


if __name__ == "__main__":
    main()
