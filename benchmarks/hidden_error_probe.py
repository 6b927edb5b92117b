"""Per-block error to the dense model's hidden states, on a copy of the model cut to its first
blocks: where does a pruning setting leave the dense trajectory? It separates the first token of
each window (where SmolLM2-135M's block 11 writes a massive activation) from the rest.

    python benchmarks/hidden_error_probe.py --blocks 12 --nsamples 16 --targets pruned,dense

Each target prunes the cut model with SparseGPT 2:4 (``--target`` as named), then both the
held-out windows (``brown-test``) and the calibration windows are run through the dense and the
pruned copy; the relative error ‖h − h_dense‖ / ‖h_dense‖ is printed after every block.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from hyperprune.api import calibration_ids, load_for, prune
from hyperprune.config import PruneConfig
from hyperprune.data import load_text_source
from hyperprune.models.loading import load_model


def block_outputs(model, windows: torch.Tensor) -> list[torch.Tensor]:
    out: dict[int, torch.Tensor] = {}
    hooks = [layer.register_forward_hook(lambda mod, a, o, i=i: out.__setitem__(i, (o[0] if isinstance(o, tuple) else o).detach()))
             for i, layer in enumerate(model.model.layers)]
    try:
        with torch.no_grad():
            model(windows)
    finally:
        for hook in hooks:
            hook.remove()
    return [out[i] for i in range(len(out))]


def relative(error: torch.Tensor, reference: torch.Tensor) -> float:
    return float(error.norm() / reference.norm())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--blocks", type=int, default=12)
    parser.add_argument("--nsamples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--targets", default="pruned,dense")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        cut_dir = Path(tmp) / "cut"
        loaded = load_model(args.model)
        model, tokenizer = loaded.model, loaded.tokenizer
        model.model.layers = model.model.layers[: args.blocks]
        model.config.num_hidden_layers = args.blocks
        if getattr(model.config, "layer_types", None):
            model.config.layer_types = model.config.layer_types[: args.blocks]
        model.save_pretrained(cut_dir)
        tokenizer.save_pretrained(cut_dir)

        ids = tokenizer("\n\n".join(load_text_source("brown-test").documents), return_tensors="pt").input_ids[0]
        stride = args.seqlen + 88
        held_out = torch.stack([ids[i * stride : i * stride + args.seqlen] for i in range(6)])
        config = PruneConfig(model=str(cut_dir), method="sparsegpt", nsamples=args.nsamples, seqlen=args.seqlen)
        calib = calibration_ids(load_for(config)[0], config, args.seqlen)[:8]
        windows = {"held-out": held_out, "calibration": calib}
        reference = {name: block_outputs(model, w) for name, w in windows.items()}

        for target in args.targets.split(","):
            out_dir = Path(tmp) / f"out-{target}"
            prune(config.model_copy(update={"fit_target": target}), output=out_dir, progress=False)
            pruned = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32)
            for name, w in windows.items():
                print(f"--target {target}, {name} windows: block, error all / first token / rest, first-token max |h|")
                for i, (h, r) in enumerate(zip(block_outputs(pruned, w), reference[name])):
                    e = h - r
                    print(f"  {i:2d}  {relative(e, r):.3f} / {relative(e[:, 0], r[:, 0]):.3f} / "
                          f"{relative(e[:, 1:], r[:, 1:]):.3f}  {float(h[:, 0].abs().max()):.1f} (dense {float(r[:, 0].abs().max()):.1f})")


if __name__ == "__main__":
    main()
