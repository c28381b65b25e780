"""Per-task heads for encoder models: one shared adapted body, one small head per task."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from .model import RankMixModel


class MultiTaskHeads(nn.Module):
    """Mean-pooled body output -> a Linear head per task (num_labels outputs, 1 for regression).
    Logits are padded to the widest head with -inf so one tensor serves a mixed batch."""

    def __init__(self, body: RankMixModel, num_labels: list[int], regression: list[bool]) -> None:
        super().__init__()
        self.body = body
        hidden = body.base_model.config.hidden_size
        self.heads = nn.ModuleList(nn.Linear(hidden, n) for n in num_labels)
        self.regression = list(regression)
        self.width = max(num_labels)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        task_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **inputs,
    ) -> ModelOutput:
        """Logits per example for its task's head (and the loss, given labels). The inputs are named so
        that transformers' Trainer keeps those dataset columns."""
        if task_ids is None or attention_mask is None:
            raise ValueError("pass task_ids and attention_mask: each example goes to its task's head")
        body_inputs = {"input_ids": input_ids, "token_type_ids": token_type_ids} | inputs
        body_inputs = {k: v for k, v in body_inputs.items() if v is not None}
        out = self.body(**body_inputs, attention_mask=attention_mask, task_ids=task_ids)
        hidden = out.last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        logits = pooled.new_full((pooled.shape[0], self.width), float("-inf"))
        losses = []
        for t in task_ids.unique().tolist():
            rows = (task_ids == t).nonzero().squeeze(-1)
            task_logits = self.heads[t](pooled[rows])
            logits[rows, : task_logits.shape[-1]] = task_logits.to(logits.dtype)
            if labels is not None:
                target = labels[rows]
                if self.regression[t]:
                    losses.append(F.mse_loss(task_logits.squeeze(-1), target.float(), reduction="sum"))
                else:
                    losses.append(F.cross_entropy(task_logits, target.long(), reduction="sum"))
        result = ModelOutput(logits=logits)
        if losses:
            result["loss"] = torch.stack(losses).sum() / task_ids.shape[0] + out.get("aux_loss", 0.0)
        if "aux_losses" in out:
            result["aux_losses"] = out["aux_losses"]
        return result
