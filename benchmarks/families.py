"""Every supported model family on a tiny random model: pass-through error, Wanda and SparseGPT
2:4 prunes verified and reloaded; and the cost of layout discovery on the embedded model.

    python benchmarks/families.py --json benchmarks/results/families/families.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from hyperprune.testing import DISCOVERED, FAMILIES, TOKENIZER_TEXT, discovered_model, family_model, ids, tiny_tokenizer  # noqa: E402

from hyperprune.api import write_json  # noqa: E402
from hyperprune.cli import main as cli  # noqa: E402
from hyperprune.config import EngineSettings, PruneConfig  # noqa: E402
from hyperprune.engine import run_layerwise  # noqa: E402
from hyperprune.engine.capture import capture_block_inputs  # noqa: E402
from hyperprune.engine.layerwise import discover_input_groups  # noqa: E402
from hyperprune.methods import get_method  # noqa: E402
from hyperprune.models import ARCHITECTURES, discover_layout, layout_of, load_model  # noqa: E402

CPU = torch.device("cpu")


def pass_through_error(model) -> float:
    layout = layout_of(model)
    with torch.no_grad():
        expected = model(input_ids=ids(), use_cache=False).logits
    result = run_layerwise(model, layout, get_method("dense")(PruneConfig(method="dense")), ids(), CPU, EngineSettings(), progress=False)
    with torch.no_grad():
        got = model.get_output_embeddings()(model.get_submodule(layout.final_norm or "model.norm")(result.final_hidden))
    return float((got - expected).abs().max())


def prune_and_verify(model, workdir: Path, calib: Path) -> dict[str, bool]:
    directory = workdir / "model"
    model.save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    verified = {}
    for method in ("wanda", "sparsegpt"):
        out = workdir / method
        ok = cli(["prune", "--model", str(directory), "--method", method, "--calib", str(calib), "--nsamples", "4",
                  "--seqlen", "32", "--output", str(out), "--quiet"]) == 0
        verified[method] = ok and cli(["verify", str(out)]) == 0
        from transformers import AutoModelForCausalLM

        AutoModelForCausalLM.from_pretrained(out)  # reloads
    return verified


def discovery_cost(nsamples: int, seqlen: int) -> dict[str, float]:
    """Seconds to discover the embedded model's layout and shared inputs, as if it were unknown."""
    loaded = load_model("smollm2-135m")
    start = time.perf_counter()
    layout = discover_layout(loaded.model)
    layout_s = time.perf_counter() - start
    calib = torch.randint(0, loaded.model.config.vocab_size, (nsamples, seqlen), generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    captured = capture_block_inputs(loaded.model, layout, calib[:1], CPU, CPU)
    capture_s = time.perf_counter() - start
    block = loaded.model.get_submodule(layout.layers)[0]
    start = time.perf_counter()
    with torch.no_grad():
        groups = discover_input_groups(block, layout, lambda h: block(h, **captured.for_block(0)), captured.hidden[0:1])
    groups_s = time.perf_counter() - start
    return {"discover_layout_s": layout_s, "record_block_arguments_s": capture_s, "input_groups_s": groups_s,
            "groups": [list(g) for g in groups], "components": layout.components}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None)
    parser.add_argument("--skip-embedded", action="store_true", help="skip the discovery cost on the embedded model")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        calib = Path(tmp) / "calib.txt"
        calib.write_text(TOKENIZER_TEXT * 4)
        for model_type in [*sorted(FAMILIES), *sorted(DISCOVERED)]:
            make = family_model if model_type in FAMILIES else discovered_model
            error = pass_through_error(make(model_type))
            workdir = Path(tmp) / model_type
            workdir.mkdir()
            verified = prune_and_verify(make(model_type), workdir, calib)
            rows.append({"model_type": model_type, "layout": "table" if model_type in ARCHITECTURES else "discovered",
                         "roles": list(layout_of(make(model_type)).components), "pass_through_max_abs_logit_diff": error,
                         **{f"{m}_2of4_verified": ok for m, ok in verified.items()}})
            print(f"| {model_type} | {rows[-1]['layout']} | {', '.join(rows[-1]['roles'])} | {error:.1e} | "
                  f"{'OK' if verified['wanda'] else 'FAIL'} | {'OK' if verified['sparsegpt'] else 'FAIL'} |")
    result = {"families": rows, "torch": torch.__version__}
    if not args.skip_embedded:
        result["embedded_discovery"] = discovery_cost(32, 512)
        print(json.dumps({k: v for k, v in result["embedded_discovery"].items() if k.endswith("_s")}))
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
