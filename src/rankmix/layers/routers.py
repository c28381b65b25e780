"""Routers: map a module's input and the batch's task ids to per-expert gate weights.

Every router meets the `Router` protocol below; `SharedRouter` (LoRA), `TaskRouter` (Multi-LoRA, MoELoRA),
`TaskRankSelector` (MoRE) and `TokenRouter` (MoLA, MixLoRA, HiLo) are the four kinds.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from ..config import AuxLoss


@runtime_checkable
class Router(Protocol):
    """The contract between an adapted layer and its router (every router is also an `nn.Module`)."""

    def __call__(
        self, x: torch.Tensor, task_ids: torch.Tensor | None, token_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """(gates, aux): gates broadcast against x's leading dimensions (None: every expert at weight 1);
        aux holds unweighted auxiliary losses by kind (possibly none). `token_mask` (x's leading shape,
        1 for real tokens) keeps padding out of token statistics."""
        ...

    def task_gates(self, task: int) -> torch.Tensor | None:
        """The fixed gates `task` uses, so the layer can be merged; token routers raise ValueError."""
        ...

    def active_rank(self, ranks: list[int]) -> float:
        """The LoRA rank one token uses, given the experts' ranks (a mean over tasks where it varies)."""
        ...

    def record(self, gates: torch.Tensor | None, token_mask: torch.Tensor | None) -> None:
        """Count the experts a forward used (token routers keep `load` and `tokens` for statistics; the
        others keep nothing). The adapted layer calls it in the model's forward, never in gradient
        checkpointing's recomputation of it, so every token counts once."""
        ...

    def reset_stats(self) -> None:
        """Forget what `record` counted."""
        ...


class _Uncounted(nn.Module):
    """A router whose gates follow the task (or nothing): no statistics to keep."""

    def record(self, gates: torch.Tensor | None, token_mask: torch.Tensor | None) -> None:
        return None

    def reset_stats(self) -> None:
        return None


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(batch, d): each row of x (batch, positions, d) averaged over the positions `mask` marks."""
    weights = mask.to(x.dtype).unsqueeze(-1)
    return (x * weights).sum(1) / weights.sum(1).clamp(min=1)


def _per_example(gates: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(batch, E) -> (batch, 1, ..., 1, E) so that one gate row serves every position of an example."""
    return gates.view(gates.shape[0], *([1] * (x.dim() - 2)), gates.shape[-1])


def require_task_ids(task_ids: torch.Tensor | None) -> torch.Tensor:
    if task_ids is None:
        raise ValueError(
            "this adapter routes by task: pass task_ids (one int per example) to the forward call"
        )
    return task_ids


class SharedRouter(_Uncounted):
    """A single expert used by every token and task (plain LoRA)."""

    def forward(
        self, x: torch.Tensor, task_ids: torch.Tensor | None, token_mask: torch.Tensor | None = None
    ) -> tuple[None, dict]:
        return None, {}

    def task_gates(self, task: int) -> None:
        return None

    def active_rank(self, ranks: list[int]) -> float:
        return float(sum(ranks))


class TaskRouter(_Uncounted):
    """Gates from the task alone: hard (expert t for task t, Multi-LoRA) or a soft softmax gate over a
    learned task embedding (MoELoRA)."""

    def __init__(self, n_tasks: int, n_experts: int, embedding_dim: int | None = None) -> None:
        super().__init__()
        self.n_experts = n_experts
        self.soft = embedding_dim is not None
        if self.soft:
            self.task_embedding = nn.Parameter(torch.randn(n_tasks, embedding_dim) * 0.01)
            self.gate = nn.Linear(embedding_dim, n_experts)
        elif n_tasks != n_experts:
            raise ValueError(
                f"hard task routing needs one expert per task: {n_tasks} tasks, {n_experts} experts"
            )

    def table(self) -> torch.Tensor:
        """(n_tasks, n_experts) gate weights of every task."""
        if self.soft:
            return F.softmax(self.gate(self.task_embedding), dim=-1)
        return torch.eye(self.n_experts)

    def forward(
        self, x: torch.Tensor, task_ids: torch.Tensor | None, token_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict]:
        task_ids = require_task_ids(task_ids)
        if self.soft:
            return _per_example(self.table()[task_ids], x), {}
        return _per_example(F.one_hot(task_ids, self.n_experts).to(x.dtype), x), {}

    def task_gates(self, task: int) -> torch.Tensor:
        return self.table()[task].detach()

    def active_rank(self, ranks: list[int]) -> float:
        return float(sum(ranks)) if self.soft else sum(ranks) / len(ranks)


MAX_RANK_HEAD_START = 0.1


class TaskRankSelector(_Uncounted):
    """MoRE's adaptive rank selector: per-task embedding, softmax gate over nested experts, top-1 with a
    straight-through estimator (forward uses weight exactly 1 on the chosen expert, gradient reaches the
    gate and embeddings), and a contrastive loss that ties each task embedding to its inputs."""

    def __init__(
        self,
        d_in: int,
        n_tasks: int,
        n_experts: int,
        temperature: float = 0.05,
        pooling: str = "first",
        embedding_std: float = 0.01,
        zero_gate_bias: bool = False,
        learn_selection: bool = True,
        start_at_max_rank: bool = False,
    ) -> None:
        super().__init__()
        if pooling not in ("first", "mean"):
            raise ValueError(f"pooling must be 'first' or 'mean', got {pooling!r}")
        self.task_embedding = nn.Parameter(torch.randn(n_tasks, d_in) * embedding_std)
        self.gate = nn.Linear(d_in, n_experts)
        if zero_gate_bias or start_at_max_rank:  # no built-in preference: the task embeddings decide
            nn.init.zeros_(self.gate.bias)
        if start_at_max_rank:  # ahead of every gate logit the embeddings give at initialisation (~0.01)
            with torch.no_grad():
                self.gate.bias[-1] = MAX_RANK_HEAD_START
        self.temperature = temperature
        self.pooling = pooling
        if not learn_selection:  # the official code's effective behaviour: the first random choice, kept
            self.register_buffer("frozen_choice", self.probs().argmax(dim=-1).detach())

    def probs(self) -> torch.Tensor:
        """(n_tasks, n_experts) selection probabilities, in full precision even under autocast, so that
        mixed-precision training selects the expert that evaluation and merging select."""
        with torch.autocast(self.task_embedding.device.type, enabled=False):
            return F.softmax(self.gate(self.task_embedding), dim=-1)

    def selected(self) -> torch.Tensor:
        """Index of the chosen expert for every task."""
        if hasattr(self, "frozen_choice"):
            return self.frozen_choice
        return self.probs().argmax(dim=-1)

    def forward(
        self, x: torch.Tensor, task_ids: torch.Tensor | None, token_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict]:
        task_ids = require_task_ids(task_ids)
        if hasattr(self, "frozen_choice"):  # no straight-through path: the gate gets no gradient
            gates = F.one_hot(self.frozen_choice[task_ids], self.gate.out_features).to(x.dtype)
        else:
            p = self.probs()[task_ids]
            hard = F.one_hot(p.argmax(dim=-1), p.shape[-1]).to(p.dtype)
            gates = p - p.detach() + hard
        return _per_example(gates, x), {AuxLoss.CONTRASTIVE: self.contrastive_loss(x, task_ids)}

    def contrastive_loss(self, x: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.task_logits(x), task_ids)

    def task_logits(self, x: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, n_tasks): how much each example's pooled input looks like each task's embedding, the
        cosine over the temperature (what the contrastive loss trains; task_inference.py reads it).
        `token_mask` (task inference): pool the real tokens only (the first real one, or their mean),
        so that an example's tasks do not depend on the padding of its batch."""
        if x.dim() == 2:
            pooled = x  # one vector per example already
        elif token_mask is not None and self.pooling == "first":
            pooled = x[torch.arange(x.shape[0], device=x.device), token_mask.argmax(dim=1)]
        elif token_mask is not None:
            pooled = masked_mean(x, token_mask)
        elif self.pooling == "first":
            pooled = x[:, 0].clone()  # a copy, so autograd does not keep the whole input alive
        else:
            pooled = x.mean(dim=1)
        z = F.normalize(pooled.float(), dim=-1)
        u = F.normalize(self.task_embedding.float(), dim=-1)
        return z @ u.t() / self.temperature

    def task_gates(self, task: int) -> torch.Tensor:
        return F.one_hot(self.selected()[task], self.gate.out_features).float()

    def active_rank(self, ranks: list[int]) -> float:
        chosen = self.selected().tolist()
        return sum(ranks[k] for k in chosen) / len(chosen)


class TokenRouter(nn.Module):
    """Token-level router (MoLA, MixLoRA, HiLo): softmax over experts, then top-k renormalized, or
    dynamic top-p: the smallest set of top experts whose mass reaches p, at most k. Returns the
    Switch-style balance loss N * sum_i f_i P_i and counts how often each expert is used."""

    def __init__(self, d_in: int, n_experts: int, top_k: int, top_p: float | None = None) -> None:
        super().__init__()
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"top_k must be in 1..{n_experts} (the number of experts), got {top_k}")
        if top_p is not None and not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        self.gate = nn.Linear(d_in, n_experts, bias=False)
        self.top_k = top_k
        self.top_p = top_p
        self.register_buffer("load", torch.zeros(n_experts), persistent=False)
        self.register_buffer("tokens", torch.zeros(()), persistent=False)

    def forward(
        self, x: torch.Tensor, task_ids: torch.Tensor | None, token_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict]:
        probs = F.softmax(self.gate(x).float(), dim=-1)
        top_vals, top_idx = probs.topk(self.top_k, dim=-1)
        if self.top_p is not None and self.top_p < 1.0:
            mass_before = top_vals.cumsum(dim=-1) - top_vals
            top_vals = top_vals * (mass_before < self.top_p)
        top_vals = top_vals / top_vals.sum(dim=-1, keepdim=True)
        gates = torch.zeros_like(probs).scatter(-1, top_idx, top_vals)
        chosen = (gates > 0).to(probs.dtype).reshape(-1, probs.shape[-1])
        flat = probs.reshape(-1, probs.shape[-1])
        if token_mask is not None:  # padding neither counts as load nor pulls on the balance
            keep = token_mask.reshape(-1).bool()
            chosen, flat = chosen[keep], flat[keep]
        fraction = chosen.sum(0) / chosen.sum().clamp(min=1)
        balance = probs.shape[-1] * (fraction * flat.sum(0) / max(flat.shape[0], 1)).sum()
        return gates, {AuxLoss.BALANCE: balance}

    @torch.no_grad()
    def record(self, gates: torch.Tensor | None, token_mask: torch.Tensor | None) -> None:
        chosen = (gates > 0).reshape(-1, gates.shape[-1])
        if token_mask is not None:  # padding is no load
            chosen = chosen[token_mask.reshape(-1).bool()]
        self.load += chosen.sum(0)
        self.tokens += chosen.shape[0]

    def task_gates(self, task: int) -> torch.Tensor:
        raise ValueError("token-routed experts depend on each token: there are no fixed gates per task")

    def active_rank(self, ranks: list[int]) -> float:
        return float(sum(sorted(ranks)[-self.top_k :]))

    def reset_stats(self) -> None:
        self.load.zero_()
        self.tokens.zero_()
