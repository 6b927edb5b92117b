"""Is HyperPrune's end-to-end gradient signal? Agreement between the gradients of two disjoint sets
of windows, for the shared network's parameters and, side by side on the same windows and loss,
for per-group pattern logits (MaskLLM's parametrization) (issue 27, route B).

    OMP_NUM_THREADS=1 python benchmarks/hypernet_gradient_agreement.py --nsamples 8 --seqlen 256 \
        --hyperprune-steps 30 --grad-seqlen 512 --sizes 1,4,8 --seed 0 \
        --json benchmarks/results/hyperprune-end-to-end/gradient-agreement-seed0.json

First the layer-wise pass (``hyperprune``, frozen weights, the flags' options) trains the network
and keeps every layer's features. Then, at the network's hard masks, the straight-through gradient
of KL(dense ‖ pruned) is taken on windows [0, k) and [k, 2k) of the evaluation-free calibration
text (another seed than the layer-wise pass's windows), for each size k. Both parametrizations get
the same ∂L/∂M: the network's gradient sums it over every group of every layer through the shared
parameters; the per-group logits' gradient is one small vector per group, initialized at the
network's own logits. Cosine and same-sign share as in ``maskllm_gradient_snr.py``.
"""

from __future__ import annotations

import sys

import torch
from maskllm_gradient_snr import agreement
from variants import base_config, variant_parser

from hyperprune.api import calibration_ids, load_for, write_json
from hyperprune.cli.options import print_table
from hyperprune.engine import run_layerwise
from hyperprune.masks import nm_patterns
from hyperprune.methods.hyperprune.network_finetune import accumulate_network_gradient, hard_keeps, kl_and_weight_gradients
from hyperprune.methods.hyperprune.method import HyperPrune
from hyperprune.report import environment, library_versions
from hyperprune.utils import resolve_device


def per_group_logit_gradient(network, layer, weight_grads, patterns, tau) -> torch.Tensor:
    """The same straight-through gradient for one layer's table of per-group logits, at the
    network's values."""
    mask_grad = (weight_grads[layer.name].float() * layer.values).reshape(-1, patterns.shape[1])
    with torch.no_grad():
        bias = network.context_bias(torch.tensor(layer.block), torch.tensor(layer.component))
        logits = torch.cat([network(layer.features[s : s + 65536].float(), bias)
                            for s in range(0, layer.features.shape[0], 65536)])
    logits.requires_grad_(True)
    soft = torch.softmax(logits / tau, dim=1) @ patterns
    (grad,) = torch.autograd.grad((soft * mask_grad).sum(), logits)
    return grad.reshape(-1)


class StreamingAgreement:
    """:func:`agreement` of two long vectors given piece by piece (the per-group gradients of a
    whole model would not fit twice in memory in float64)."""

    def __init__(self) -> None:
        self.dot = self.norm_a = self.norm_b = 0.0
        self.same = self.both = 0

    def add(self, a: torch.Tensor, b: torch.Tensor) -> None:
        a, b = a.double(), b.double()
        self.dot += float(a @ b)
        self.norm_a += float(a @ a)
        self.norm_b += float(b @ b)
        both = (a != 0) & (b != 0)
        self.both += int(both.sum())
        self.same += int(((a > 0) == (b > 0))[both].sum())

    def result(self) -> dict[str, float]:
        cosine = self.dot / max(1e-300, (self.norm_a * self.norm_b) ** 0.5)
        return {"cosine": cosine, "sign_agreement": self.same / self.both if self.both else float("nan")}


def main(argv: list[str] | None = None) -> int:
    parser = variant_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,4,16", help="comma-separated window-set sizes k")
    parser.add_argument("--grad-seqlen", type=int, default=512, help="tokens per gradient window")
    parser.add_argument("--tau", type=float, default=0.5, help="temperature of the relaxed mask in the backward")
    args = parser.parse_args(argv)
    config = base_config(args, "hyperprune")
    sizes = sorted({int(s) for s in args.sizes.split(",")})
    device = resolve_device(config.device)
    loaded, seqlen = load_for(config)
    model = loaded.model
    calib = calibration_ids(loaded, config, seqlen)
    method = HyperPrune(config)
    method.collect_network_layers = True
    run_layerwise(model, loaded.layout, method, calib, device, config.engine_settings(), progress=not args.quiet)
    network, layers = method.network.cpu(), method.network_layers
    patterns = nm_patterns(config.target.pattern.n, config.target.pattern.m)
    grad_config = config.model_copy(update={"nsamples": 2 * sizes[-1], "seed": config.seed + 1000})
    windows = calibration_ids(loaded, grad_config, args.grad_seqlen)
    keeps = hard_keeps(network, layers, patterns)
    sums: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
    losses = []
    model.requires_grad_(False)
    for window in range(2 * sizes[-1]):
        loss, grads = kl_and_weight_gradients(model, layers, keeps, windows[window : window + 1])
        losses.append(loss)
        for k in sizes:
            half = window // k
            if half < 2:
                total = sums.setdefault((k, half), {})
                for name, grad in grads.items():
                    total[name] = grad.float().clone() if name not in total else total[name].add_(grad.float())
        print(f"window {window}: KL {loss:.4f}", file=sys.stderr, flush=True)
    rows = []
    for k in sizes:
        row = {"windows_per_set": k, "tokens_per_set": k * args.grad_seqlen}
        row["network"] = agreement(*(_network_flat(network, layers, sums[k, half], patterns, args.tau) for half in (0, 1)))
        logits = StreamingAgreement()
        for layer in layers:
            logits.add(*(per_group_logit_gradient(network, layer, sums[k, half], patterns, args.tau) for half in (0, 1)))
        row["per_group_logits"] = logits.result()
        for label in ("network", "per_group_logits"):
            cos = row[label]["cosine"]
            row[label]["windows_for_cosine_0.5"] = k * (1 - cos) / cos if cos > 0 else None
        del sums[k, 0], sums[k, 1]  # 0.4 GB each
        rows.append(row)
    out = {"config": config.model_dump(mode="json"), "seqlen": seqlen, "grad_seqlen": args.grad_seqlen, "tau": args.tau,
           "network_parameters": sum(p.numel() for p in network.parameters()),
           "groups": sum(layer.features.shape[0] for layer in layers), "kl_per_window": losses, "sets": rows,
           "versions": library_versions(), "environment": environment()}
    if args.json:
        write_json(args.json, out)
    print_table(["windows per set", "tokens", "network cosine", "network same sign", "logits cosine", "logits same sign"],
                [[r["windows_per_set"], r["tokens_per_set"], f"{r['network']['cosine']:.4f}",
                  f"{r['network']['sign_agreement']:.4f}", f"{r['per_group_logits']['cosine']:.4f}",
                  f"{r['per_group_logits']['sign_agreement']:.4f}"] for r in rows])
    return 0


def _network_flat(network, layers, weight_grads, patterns, tau) -> torch.Tensor:
    network.zero_grad(set_to_none=True)
    accumulate_network_gradient(network, layers, weight_grads, patterns, tau)
    return torch.cat([p.grad.reshape(-1).clone() for p in network.parameters() if p.grad is not None])


if __name__ == "__main__":
    sys.exit(main())
