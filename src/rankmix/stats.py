"""What a RankMixModel reports about itself: per-task ranks, parameter counts, router statistics."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from .allocation import layer_index

if TYPE_CHECKING:
    from .model import RankMixModel


def allocation(model: RankMixModel) -> dict[str, list[int]]:
    """{module: the ranks of its experts} (of every group of tasks, in order, in a grown adapter)."""
    return {name: [r for part in m.parts() for r in part.bank.ranks] for name, m in model.adapted_modules()}


def by_layer(per_module: dict[str, Any]) -> dict[int | None, list[Any]]:
    """Group per-module values by the layer index in the module names, in layer order."""
    layers: dict[int | None, list[Any]] = {}
    for name, value in per_module.items():
        layers.setdefault(layer_index(name), []).append(value)
    return dict(sorted(layers.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)))


def selected_ranks(model: RankMixModel) -> dict[str, dict[str, int]]:
    """{task: {module: rank}}: the rank of the LoRA each task uses in each module (the selector's choice
    for MoRE; the expert rank, or all experts' ranks for MoELoRA's dense mix)."""
    tasks = model.adapter_config.task_names
    if not model.method.task_routed:
        raise ValueError(
            f"{type(model.adapter_config).__name__} is not task-routed: it has no per-task ranks"
        )
    with torch.no_grad():
        return {
            task: {name: m.task_factors(t)[0].shape[0] for name, m in model.adapted_modules()}
            for t, task in enumerate(tasks)
        }


def mean_selected_ranks(model: RankMixModel) -> dict[str, float] | None:
    """Mean selected rank over modules for each task; None for methods that are not task-routed."""
    if not model.method.task_routed:
        return None
    return {task: sum(r.values()) / len(r) for task, r in selected_ranks(model).items()}


def parameter_counts(model: RankMixModel) -> dict[str, int]:
    """trainable, adapter (all LoRA factors), router, active_per_token (LoRA parameters one token uses:
    top-k experts, the task's rank, ...; an upper bound for top-p), total."""
    lora = router = 0
    active = 0.0
    for _, m in model.adapted_modules():
        for part in m.parts():
            lora += sum(p.numel() for p in part.bank.parameters())
            router += sum(p.numel() for p in part.router.parameters())
        active += m.active_rank() * (m.bank.lora_A.shape[1] + m.bank.lora_B.shape[0])
    return {
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "adapter": lora,
        "router": router,
        "active_per_token": round(active),
        "total": sum(p.numel() for p in model.parameters()),
    }


def router_stats(model: RankMixModel, reset: bool = False) -> dict[str, Any]:
    """Per-module expert load (share of routed assignments per expert, and mean experts per token) since
    the last reset, for token routing; the per-task rank per module for task routing."""
    result: dict[str, Any] = {}
    if model.method.token_routed:
        load = {}
        for name, m in model.adapted_modules():
            if m.router.tokens > 0:
                counts = m.router.load
                load[name] = {
                    "share": (counts / counts.sum()).tolist(),
                    "experts_per_token": float(counts.sum() / m.router.tokens),
                }
                if reset:
                    m.router.reset_stats()
        if load:
            result["expert_load"] = load
    if model.method.task_routed:
        result["selected_ranks"] = selected_ranks(model)
    return result
