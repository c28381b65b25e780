"""Per-task heads for encoder models: one shared adapted body, one small head per task."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers.utils import ModelOutput

from .layers.routers import masked_mean
from .model import RankMixModel
from .tasks.base import Task


class MultiTaskHeads(nn.Module):
    """Mean-pooled body output -> a Linear head per task, as wide as its kind says (labels; 1 for a
    score or a multiple-choice option), trained with its kind's loss. An example may bring several
    encoded rows (`choices`: the options of a multiple-choice row, one logit each); its logits are then
    its rows' outputs side by side. Logits are padded to the widest example with -inf so one tensor
    serves a mixed batch."""

    def __init__(self, body: RankMixModel, tasks: Sequence[Task]) -> None:
        super().__init__()
        self.body = body
        hidden = body.base_model.config.hidden_size
        self.heads = nn.ModuleList(nn.Linear(hidden, t.kind.head_size(t)) for t in tasks)
        self.losses = [t.kind.head_loss for t in tasks]

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        task_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        choices: torch.Tensor | None = None,
        route_ids: torch.Tensor | None = None,
        **inputs,
    ) -> ModelOutput:
        """Logits per example for its task's head (and the loss, given labels); the body routes each
        example by `route_ids` where given (task-free evaluation: the inferred tasks), else by its task.
        The inputs are named so that transformers' Trainer keeps those dataset columns."""
        if task_ids is None or attention_mask is None:
            raise ValueError("pass task_ids and attention_mask: each example goes to its task's head")
        examples = task_ids.shape[0]
        counts = torch.ones_like(task_ids) if choices is None else choices.to(task_ids.device)
        owner = torch.arange(examples, device=task_ids.device).repeat_interleave(counts)  # example of a row
        position = torch.arange(owner.shape[0], device=owner.device) - (counts.cumsum(0) - counts)[owner]
        row_tasks = task_ids[owner]
        body_inputs = {"input_ids": input_ids, "token_type_ids": token_type_ids} | inputs
        body_inputs = {k: v for k, v in body_inputs.items() if v is not None}
        routes = row_tasks if route_ids is None else route_ids[owner]
        out = self.body(**body_inputs, attention_mask=attention_mask, task_ids=routes)
        hidden = out.last_hidden_state
        pooled = masked_mean(hidden, attention_mask)
        widths = torch.tensor([h.out_features for h in self.heads], device=task_ids.device)
        width = int((counts * widths[task_ids]).max())
        logits = pooled.new_full((examples, width), float("-inf"))
        losses = []
        for t in task_ids.unique().tolist():
            rows = (row_tasks == t).nonzero().squeeze(-1)
            n = self.heads[t].out_features
            columns = position[rows, None] * n + torch.arange(n, device=rows.device)
            logits[owner[rows, None], columns] = self.heads[t](pooled[rows]).to(logits.dtype)
            if labels is not None:
                mine = (task_ids == t).nonzero().squeeze(-1)
                task_width = int(counts[mine].max()) * n
                losses.append(self.losses[t](logits[mine, :task_width], labels[mine]))
        result = ModelOutput(logits=logits)
        if losses:
            result["loss"] = torch.stack(losses).sum() / examples + out.get("aux_loss", 0.0)
        if "aux_losses" in out:
            result["aux_losses"] = out["aux_losses"]
        return result
