"""The shared hypernetwork h_θ with its layer and component embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hyperprune.config import HyperPruneOptions
from hyperprune.models.architectures import COMPONENTS


class HyperNetwork(nn.Module):
    """An MLP from a group's features plus context (e_ℓ, t) to C(m, n) pattern logits.

    One network serves every layer and component. The context enters only the first
    linear layer, so its contribution W_e·[e_ℓ; t] is one bias vector per (layer,
    component), computed once per step instead of concatenated to every group.
    """

    def __init__(self, in_features: int, num_patterns: int, num_layers: int, options: HyperPruneOptions,
                 generator: torch.Generator | None = None, num_components: int = len(COMPONENTS)) -> None:
        super().__init__()
        width, dim = options.hidden_dim, options.embed_dim
        self.first = nn.Linear(in_features, width)
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(options.depth - 2))
        self.last = nn.Linear(width, num_patterns)
        self.activation = nn.GELU()
        self.layer_embedding = self.layer_projection = None
        self.component_embedding = self.component_projection = None
        if options.layer_embedding:
            self.layer_embedding = nn.Parameter(_embedding_init(num_layers, dim, options.embed_init, generator))
            self.layer_projection = nn.Linear(dim, width, bias=False)
        if options.component_embedding:
            self.component_embedding = nn.Parameter(_embedding_init(num_components, dim, options.embed_init, generator))
            self.component_projection = nn.Linear(dim, width, bias=False)
        for layer in [self.first, *self.hidden]:
            nn.init.kaiming_uniform_(layer.weight, a=5**0.5, generator=generator)
            nn.init.zeros_(layer.bias)
        # Zero projections: with one-hot embeddings each new block selects a projection column
        # no step has trained yet; a random column would shift the whole network at every block.
        for layer in [self.layer_projection, self.component_projection]:
            if layer is not None:
                nn.init.zeros_(layer.weight)
        # Zero output: the first logits are uniform, so training starts from the prior.
        nn.init.zeros_(self.last.weight)
        nn.init.zeros_(self.last.bias)

    def embedding_parameters(self) -> list[nn.Parameter]:
        return [p for p in (self.layer_embedding, self.component_embedding) if p is not None]

    def network_parameters(self) -> list[nn.Parameter]:
        embeddings = {id(p) for p in self.embedding_parameters()}
        return [p for p in self.parameters() if id(p) not in embeddings]

    def context_bias(self, layer: torch.Tensor, component: torch.Tensor) -> torch.Tensor:
        """W_e·[e_ℓ; t] for index tensors ``layer`` and ``component`` (same shape)."""
        # F.embedding, not ``table[index]``: on the CPU the backward of advanced indexing with
        # repeated indices (the continual cache's thousands of rows) accumulates in parallel in
        # no fixed order, so the same run could train a different network (issue 14).
        bias = torch.zeros(*layer.shape, self.first.out_features, device=self.first.weight.device)
        if self.layer_embedding is not None:
            bias = bias + self.layer_projection(F.embedding(layer, self.layer_embedding))
        if self.component_embedding is not None:
            bias = bias + self.component_projection(F.embedding(component, self.component_embedding))
        return bias

    def forward(self, features: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """Logits ``[G, P]`` for ``features`` ``[G, F]``; ``bias`` is ``[hidden]`` or ``[G, hidden]``."""
        hidden = self.activation(self.first(features) + bias)
        for layer in self.hidden:
            hidden = self.activation(layer(hidden))
        return self.last(hidden)


def _embedding_init(count: int, dim: int, kind: str, generator: torch.Generator | None) -> torch.Tensor:
    """Gaussian with variance 0.01, or one-hot plus that noise (paper, App. D.4).

    One-hot needs count ≤ dim (a model deeper than the embedding would reuse columns); beyond
    that, rows are random unit vectors instead, nearly orthogonal in high dimension.
    """
    noise = torch.randn(count, dim, generator=generator) * 0.1
    if kind == "gaussian":
        return noise
    if count > dim:
        rows = torch.randn(count, dim, generator=generator)
        return rows / rows.norm(dim=1, keepdim=True) + noise * 0.1
    onehot = torch.zeros(count, dim)
    onehot[torch.arange(count), torch.arange(count)] = 1.0
    return onehot + noise * 0.1
