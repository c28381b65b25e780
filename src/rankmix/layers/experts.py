"""ExpertBank: LoRA experts of any ranks in one layer, run with two matrix products.

All experts' A factors are stacked into one `lora_A` (S x d_in) and all B factors into one
`lora_B` (d_out x S). Disjoint experts own consecutive blocks of the S rank components;
nested experts (MoRE) are prefixes of one max-rank LoRA, so S = max rank. A fixed `mix`
matrix (n_experts x S) maps per-expert gate weights to per-component weights (scaling and
MoRE's linear scaling folded in), so any routing is `B @ ((A @ x) * (gates @ mix))`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


def components(ranks: Sequence[int], nested: bool) -> int:
    """Rank components S of a bank: nested experts share one max-rank LoRA, disjoint ones stack."""
    return max(ranks) if nested else sum(ranks)


class ExpertBank(nn.Module):
    def __init__(
        self,
        d_in: int,
        d_out: int,
        ranks: Sequence[int],
        scales: Sequence[float],
        *,
        nested: bool = False,
        linear_scaling: float = 0.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not ranks or any(r <= 0 for r in ranks):
            raise ValueError(f"expert ranks must be positive integers, got {list(ranks)}")
        if len(scales) != len(ranks):
            raise ValueError(f"one scale per expert expected: {len(ranks)} ranks, {len(scales)} scales")
        if linear_scaling and not nested:
            raise ValueError("linear_scaling applies to nested experts only (MoRE)")
        self.ranks = list(ranks)
        self.nested = nested
        size = components(ranks, nested)
        self.lora_A = nn.Parameter(torch.empty(size, d_in))
        self.lora_B = nn.Parameter(torch.zeros(d_out, size))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

        component = torch.arange(1, size + 1, dtype=torch.float32)
        # MoRE's linear scaling: A's and B's component j times (j/R)^p, p = linear_scaling (0: none)
        coeff = (component / size) ** (2 * float(linear_scaling))
        mix = torch.zeros(len(ranks), size)
        start = 0
        for e, (r, s) in enumerate(zip(ranks, scales, strict=True)):
            lo = 0 if nested else start
            mix[e, lo : lo + r] = s * coeff[lo : lo + r]
            start += r
        self.register_buffer("mix", mix, persistent=False)

    @property
    def n_experts(self) -> int:
        return len(self.ranks)

    def forward(self, x: torch.Tensor, gates: torch.Tensor | None) -> torch.Tensor:
        """Adapter output. `gates` (..., n_experts) broadcasts against x's leading dims; None means
        every expert at weight 1 (the single-LoRA case)."""
        h = self.dropout(x) @ self.lora_A.t()
        return (h * self._component_weights(gates).to(h.dtype)) @ self.lora_B.t()

    def factors(self, gates: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """A plain LoRA (A_t, B_t) equal to this bank under fixed gates (n_experts,), scaling folded
        into B_t; its rank is the number of components the gates use."""
        weights = self._component_weights(gates)
        used = weights != 0
        a = self.lora_A[used]
        b = self.lora_B[:, used] * weights[used].to(self.lora_B.dtype)
        return a, b

    def _component_weights(self, gates: torch.Tensor | None) -> torch.Tensor:
        """Per-expert gates -> per-rank-component weights, scaling included."""
        return self.mix.sum(0) if gates is None else gates.to(self.mix) @ self.mix
