"""FSDP: a run's model sharded over the processes with torch's `fully_shard` (FSDP2), on any device (gloo
on CPUs, NCCL on GPUs). rankmix shards the model itself, whatever the launcher: accelerate shards only on
GPUs, and its FSDP plugin would wrap the model a second time."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

FSDP_REQUEST = "ACCELERATE_USE_FSDP"  # what `accelerate launch` sets from an FSDP config


def take_fsdp_request() -> bool:
    """Whether the launch asks for FSDP; the request is taken from accelerate, which must not shard too."""
    return os.environ.pop(FSDP_REQUEST, "false").lower() in ("1", "true", "yes")


def shard(model: nn.Module) -> None:
    """fully_shard every transformer block (the classes a transformers model names in `_no_split_modules`),
    then the whole model (embeddings, adapters outside blocks, task heads)."""
    names = {n for m in model.modules() for n in (getattr(m, "_no_split_modules", None) or [])}
    for block in [m for m in model.modules() if type(m).__name__ in names]:
        fully_shard(block)
    fully_shard(model)


def is_sharded(model: nn.Module) -> bool:
    return isinstance(model, FSDPModule)


@contextmanager
def full_parameters(model: nn.Module) -> Iterator[None]:
    """Inside, every process holds the model's full parameters (all-gathered once), so that code which
    reads parameters (saving, statistics) sees whole tensors; nothing happens when it is not sharded.
    Every process must enter it; no forward pass may run inside."""
    groups = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for group in groups:
        group.unshard()
    try:
        yield
    finally:
        for group in groups:
            group.reshard()


def full_tensor(value: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a sharded parameter (a collective: every process calls it), else the tensor."""
    return value.full_tensor() if isinstance(value, DTensor) else value


def load_full(param: torch.Tensor, value: torch.Tensor) -> None:
    """Copy a whole tensor into a parameter, sharded or not (each process keeps its own shard)."""
    if isinstance(param, DTensor):
        value = distribute_tensor(value, param.device_mesh, param.placements, src_data_rank=None)
    with torch.no_grad():
        param.copy_(value)


def optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state dict with whole tensors (gathered from the shards under FSDP: every process
    calls it; the processes hold state for the same parameters, as their gradients are synchronised)."""
    state = optimizer.state_dict()
    state["state"] = {
        i: {k: full_tensor(v) for k, v in per_param.items()} for i, per_param in state["state"].items()
    }
    return state


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a state written by `optimizer_state`: each process keeps its shard of every sharded tensor."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for i, per_param in state["state"].items():
        p = params[i]
        if isinstance(p, DTensor):
            per_param.update(
                {
                    k: distribute_tensor(v, p.device_mesh, p.placements, src_data_rank=None)
                    for k, v in per_param.items()
                    if v.shape == p.shape
                }
            )
    optimizer.load_state_dict(state)
