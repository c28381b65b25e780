"""Adding tasks to a trained adapter. The new tasks come after the trained ones, in the same order of
ids, and the adapter grows in one of two ways:

- `joint`: the task tables grow (task embeddings and selectors, Multi-LoRA's one expert per task); what
  was trained is loaded into their leading rows, the new rows start as a fresh adapter's do, and
  everything trains on, old tasks and new together.
- `frozen`: the trained adapter is loaded as it was and stops training; the new tasks get a group of
  their own (`task_groups` in the config): experts and a router in every adapted layer that serve them
  and nothing else (for MoRE a nested bank of its own, for Multi-LoRA their own experts). Every old
  task's rows still go through exactly the old weights, so its outputs and merged weights stay what
  they were, bit for bit. A task-free method (LoRA, MoLA, HiLo) has no per-task part to add: there the
  adapter is frozen and only the new tasks' heads (encoders) train.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from .config import AdapterConfig
from .methods import method_of
from .model import RankMixModel

GROW_MODES = ("joint", "frozen")


def grown_config(trained: AdapterConfig, tasks: list[str], mode: str) -> AdapterConfig:
    """The config of `trained` grown to `tasks` (its own tasks first, in its order, then the new ones)."""
    if mode not in GROW_MODES:
        raise ValueError(f"grow must be one of {GROW_MODES}, got {mode!r}")
    if not method_of(trained).task_routed:
        return trained  # one adapter for every task: its config names none
    old = trained.task_names
    if list(tasks[: len(old)]) != old:
        raise ValueError(
            f"the trained adapter's tasks {old} must come first in the task list, in that order, then the "
            f"new ones; got {list(tasks)}"
        )
    added = len(tasks) - len(old)
    groups = trained.task_groups or [len(old)]
    if mode == "frozen":
        groups = [*groups, added] if added else groups
    else:  # the new tasks join the last group, which trains on
        groups = [*groups[:-1], groups[-1] + added]
    return dataclasses.replace(trained, tasks=list(tasks), task_groups=groups if len(groups) > 1 else None)


@torch.no_grad()
def load_grown(
    model: RankMixModel, trained: AdapterConfig, tensors: dict[str, torch.Tensor], mode: str
) -> None:
    """Load the `tensors` of an adapter trained with config `trained` into `model`, built from
    `grown_config(trained, ...)`: a tensor of the same shape is copied; a task table that grew (along one
    dimension) gets the trained rows as its leading ones. `frozen`: every parameter loaded stops
    training. Nothing is copied unless every tensor fits."""
    expected = grown_config(trained, model.adapter_config.task_names, mode)
    if expected.to_dict() != model.adapter_config.to_dict():
        raise ValueError(
            f"the model's adapter ({model.adapter_config.to_dict()}) is not the trained one grown {mode} to "
            f"its tasks ({expected.to_dict()}): build it with rankmix.growth.grown_config"
        )
    own = model.adapter_tensors()
    plan = []
    for key, value in tensors.items():
        target = own.get(key)
        if target is None:
            raise ValueError(f"the trained adapter's {key} has no place in the grown adapter")
        same_rank = value.dim() == target.dim()
        grew = [d for d in range(value.dim()) if same_rank and value.shape[d] != target.shape[d]]
        if not same_rank or len(grew) > 1 or any(value.shape[d] > target.shape[d] for d in grew):
            raise ValueError(
                f"{key} has shape {tuple(value.shape)} in the trained adapter and {tuple(target.shape)} in "
                "the grown one: only task tables grow, along one dimension"
            )
        plan.append((target if not grew else target.narrow(grew[0], 0, value.shape[grew[0]]), value))
    for target, value in plan:
        target.copy_(value)
    if mode == "frozen":
        for key in tensors:
            if isinstance(own[key], nn.Parameter):
                own[key].requires_grad_(False)
