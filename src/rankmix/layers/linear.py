"""AdaptedLinear: a frozen base linear layer plus an expert bank and its router."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn

from .base import base_layer_kind, supported
from .experts import ExpertBank
from .routers import Router, require_task_ids


@dataclass
class RoutingContext:
    """Per-forward state shared by all adapted layers of one model: the batch's task ids and attention
    mask, and the auxiliary losses the layers report while `collect` is on."""

    task_ids: torch.Tensor | None = None
    token_mask: torch.Tensor | None = None
    active: bool = False  # inside the model's forward or generate (not a recomputation after it)
    collect: bool = False
    aux: list[tuple[str, torch.Tensor]] = field(default_factory=list)
    # a task-inference pass (task_inference.py): each layer shows it its input and adds nothing
    observer: Callable[[AdaptedLinear, torch.Tensor, torch.Tensor | None], None] | None = None

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


class Part(NamedTuple):
    """The experts and router that serve the tasks [start, end) of an adapted layer."""

    bank: ExpertBank
    router: Router
    start: int
    end: float  # math.inf: every task from start on


class TaskGroup(nn.Module):
    """The experts and router of the tasks [start, start + n_tasks), added to a trained adapter with
    frozen growth (growth.py): rows of those tasks go through them and through nothing else."""

    def __init__(self, bank: ExpertBank, router: Router, start: int, n_tasks: int) -> None:
        super().__init__()
        self.bank, self.router = bank, router
        self.start, self.n_tasks = start, n_tasks


class AdaptedLinear(nn.Module):
    """`base_layer(x) + bank(x, router gates)`, over any kind of base layer that `BASE_LAYERS` knows (its
    kind reads the layer's shape and merges into it). `grown`: groups of tasks added later, each with its
    own experts and router (`bank` and `router` then serve the tasks before the first group)."""

    def __init__(
        self,
        base_layer: nn.Module,
        bank: ExpertBank,
        router: Router,
        context: RoutingContext,
        grown: Sequence[TaskGroup] = (),
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
        self.grown = nn.ModuleList(grown)
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

    def parts(self) -> list[Part]:
        """The experts and router of each group of tasks, in task order (one part until tasks are added
        with frozen growth; it serves every task)."""
        if not self.grown:
            return [Part(self.bank, self.router, 0, math.inf)]
        first = Part(self.bank, self.router, 0, self.grown[0].start)
        return [first] + [Part(g.bank, g.router, g.start, g.start + g.n_tasks) for g in self.grown]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        token_mask = self._context.token_mask_for(x)
        if self._context.observer is not None:  # the base alone: the pass that infers the tasks
            self._context.observer(self, x, token_mask)
            return result
        xa = x.to(self.bank.lora_A.dtype)
        task_ids = self._context.task_ids_for(x)
        if not self.grown:
            return result + self._adapt(self.bank, self.router, xa, task_ids, token_mask).to(result.dtype)
        task_ids = require_task_ids(task_ids)
        delta = result.new_zeros(result.shape)
        for bank, router, start, end in self.parts():  # each row through its own group's experts
            rows = ((task_ids >= start) & (task_ids < end)).nonzero().squeeze(-1)
            if rows.numel():
                mask = None if token_mask is None else token_mask[rows]
                out = self._adapt(bank, router, xa[rows], task_ids[rows] - start, mask)
                delta = delta.index_copy(0, rows, out.to(result.dtype))  # autocast: the bank's may differ
            elif torch.is_grad_enabled() and bank.lora_A.requires_grad:
                # a group that trains and has no row here still joins the graph, with zero gradient, as
                # the experts of absent tasks in one bank do: DDP reduces every trained parameter
                unused = sum(p.sum() for p in (*bank.parameters(), *router.parameters()))
                delta = delta + 0.0 * unused.to(result.dtype)
        return result + delta

    def _adapt(
        self,
        bank: ExpertBank,
        router: Router,
        xa: torch.Tensor,
        task_ids: torch.Tensor | None,
        token_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        context = self._context
        gates, aux = router(xa, task_ids, token_mask)
        if context.active:  # gradient checkpointing recomputes this after the forward: count once
            router.record(gates, token_mask)
        if context.collect:
            context.aux.extend(aux.items())
        return bank(xa, gates)

    def task_factors(self, task: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(A_t, B_t): the plain LoRA this layer computes for `task`, scaling folded into B_t."""
        part = next(p for p in self.parts() if p.start <= task < p.end)
        return part.bank.factors(part.router.task_gates(task - part.start))

    def delta_weight(self, task: int) -> torch.Tensor:
        """The weight update for `task`, in the base layer's weight layout."""
        a, b = self.task_factors(task)
        delta = b @ a
        return delta.t() if self.fan_in_fan_out else delta

    def active_rank(self) -> float:
        """The rank one token uses (a mean over tasks where it varies, groups weighted by their tasks)."""
        if not self.grown:
            return self.router.active_rank(self.bank.ranks)
        parts = self.parts()
        total = sum(p.router.active_rank(p.bank.ranks) * (p.end - p.start) for p in parts)
        return total / parts[-1].end
