"""AdaptedLinear: a frozen base linear layer plus an expert bank and its router."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .base import base_layer_kind, supported
from .experts import ExpertBank
from .routers import Router


@dataclass
class RoutingContext:
    """Per-forward state shared by all adapted layers of one model: the batch's task ids and attention
    mask, and the auxiliary losses the layers report while `collect` is on."""

    task_ids: torch.Tensor | None = None
    token_mask: torch.Tensor | None = None
    active: bool = False  # inside the model's forward or generate (not a recomputation after it)
    collect: bool = False
    aux: list[tuple[str, torch.Tensor]] = field(default_factory=list)

    def task_ids_for(self, x: torch.Tensor) -> torch.Tensor | None:
        """Task ids for the rows of `x`. A (batch, seq, ...) input may come from a batch that generation
        expanded (beams, several samples per prompt): each id then repeats for its example's copies.
        A 2-D input must have one row per example (rows that are tokens cannot be told apart)."""
        ids, rows = self.task_ids, x.shape[0]
        if ids is None or ids.shape[0] == rows:
            return ids
        if x.dim() >= 3 and rows % ids.shape[0] == 0:
            return ids.repeat_interleave(rows // ids.shape[0])
        raise ValueError(
            f"task_ids has {ids.shape[0]} entries but an adapted layer sees an input of shape "
            f"{tuple(x.shape)}; "
            "pass one task id per example (task routing needs layers that see one row per example)"
        )

    def token_mask_for(self, x: torch.Tensor) -> torch.Tensor | None:
        """The attention mask, where it describes the positions of `x` (not, e.g., a T5 decoder's)."""
        mask = self.token_mask
        return mask if mask is not None and tuple(mask.shape) == tuple(x.shape[:-1]) else None


class AdaptedLinear(nn.Module):
    """`base_layer(x) + bank(x, router gates)`, over any kind of base layer that `BASE_LAYERS` knows (its
    kind reads the layer's shape and merges into it)."""

    def __init__(
        self, base_layer: nn.Module, bank: ExpertBank, router: Router, context: RoutingContext
    ) -> None:
        super().__init__()
        kind = base_layer_kind(base_layer)
        if kind is None:
            raise ValueError(
                f"rankmix cannot adapt a {type(base_layer).__module__}.{type(base_layer).__name__}; it "
                f"adapts {supported()} layers"
            )
        self.base_layer = base_layer
        self.bank = bank
        self.router = router
        self.kind = kind
        self._context = context  # shared, not a submodule

    @property
    def fan_in_fan_out(self) -> bool:
        """Whether the base layer stores its weight as (d_in, d_out), like GPT-2's Conv1D."""
        return self.kind.fan_in_fan_out

    @property
    def weight(self) -> torch.Tensor:
        """The base weight, for model code that reads `layer.weight` (e.g. T5 checks its dtype)."""
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return getattr(self.base_layer, "bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        xa = x.to(self.bank.lora_A.dtype)
        context = self._context
        token_mask = context.token_mask_for(x)
        gates, aux = self.router(xa, context.task_ids_for(x), token_mask)
        if context.active:  # gradient checkpointing recomputes this after the forward: count once
            self.router.record(gates, token_mask)
        if context.collect:
            context.aux.extend(aux.items())
        return result + self.bank(xa, gates).to(result.dtype)

    def task_factors(self, task: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(A_t, B_t): the plain LoRA this layer computes for `task`, scaling folded into B_t."""
        return self.bank.factors(self.router.task_gates(task))

    def delta_weight(self, task: int) -> torch.Tensor:
        """The weight update for `task`, in the base layer's weight layout."""
        a, b = self.task_factors(task)
        delta = b @ a
        return delta.t() if self.fan_in_fan_out else delta

    def active_rank(self) -> float:
        return self.router.active_rank(self.bank.ranks)
