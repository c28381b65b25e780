"""Automatic allocation: the per-layer values of a config's "auto" fields (MoLA's and HiLo's experts,
HiLo's ranks, MoRE's max_rank), chosen under a budget of trainable parameters from a score per layer.

`spectral` (training-free; after AlphaLoRA, Qing et al. 2024, arXiv:2410.10054): for each adapted weight
W, the eigenvalues l_1 >= ... >= l_n of W^T W (its squared singular values), and the Hill estimate of the
exponent of their power-law tail over the largest half, k = n // 2,

    alpha = 1 + k / sum_{i=1..k} ln(l_i / l_k),

averaged over the layer's adapted modules. Heavy-tailed self-regularisation reads a smaller exponent as
a better-trained layer, so a layer's score is alpha ** BETA (BETA = 2.5, AlphaLoRA's): more capacity
where the spectrum says a layer is less trained. AlphaLoRA picks the tail by a Kolmogorov-Smirnov search;
the fixed half keeps the estimate deterministic and cheap.

Allocation: every layer takes u = clip(round(s * w), lo, hi), w its score over the mean score, with the
largest s whose total (sizing.trainable_by_layer: expert factors and routers) stays within the budget,
then one more where rounding fell furthest below s * w while the budget allows; a total more than 5%
below the budget, or a budget outside what lo and hi allow, is refused before anything is built. HiLo
with both fields "auto" gives a layer u experts of rank u (its paper's profiles grow both together).
"""

from __future__ import annotations

import dataclasses
import statistics
from collections import defaultdict
from collections.abc import Callable

import torch
from torch import nn

from .allocation import layer_index
from .config import AdapterConfig, LoRAConfig
from .layers.base import base_layer_kind
from .model import find_targets, layer_count
from .sizing import parameter_counts, trainable_by_layer

BETA = 2.5  # AlphaLoRA's exponent from a layer's alpha to its share
TOLERANCE = 0.05  # an allocation spends at least 95% of its budget
DEFAULT_MAX = 16  # the largest per-layer value, unless auto_max says otherwise


def hill_alpha(weight: torch.Tensor) -> float:
    """The Hill estimate of the power-law exponent of the largest half of W^T W's eigenvalues."""
    eigenvalues = torch.linalg.svdvals(weight.detach().float()).square().sort(descending=True).values
    k = max(1, len(eigenvalues) // 2)
    tail = eigenvalues[:k].clamp_min(1e-30) / eigenvalues[k - 1].clamp_min(1e-30)
    return 1.0 + k / max(float(tail.log().sum()), 1e-6)  # a flat spectrum: a very large exponent


@torch.no_grad()
def spectral_scores(model: nn.Module, targets: list[str]) -> dict[int, float]:
    """{layer: mean Hill alpha of its adapted weights, to the power BETA}."""
    alphas: dict[int, list[float]] = defaultdict(list)
    for name in targets:
        module = model.get_submodule(name)
        alphas[layer_index(name)].append(hill_alpha(base_layer_kind(module).dense_weight(module)))
    return {layer: statistics.fmean(a) ** BETA for layer, a in alphas.items()}


def budget_of(model: nn.Module, config: AdapterConfig) -> int:
    """The budget in trainable parameters: a number, or 'lora-r<N>', LoRA r=N's on the same targets."""
    if isinstance(config.budget, int):
        return config.budget
    lora = LoRAConfig(r=int(config.budget.removeprefix("lora-r")), target_modules=config.target_modules)
    return parameter_counts(model, lora)["trainable"]


def bounds(config: AdapterConfig) -> tuple[int, int]:
    """(smallest, largest) per-layer value: auto_min, else top_k where experts are allocated (a layer
    needs at least top_k experts) and 1 otherwise; auto_max, else DEFAULT_MAX."""
    low = config.auto_min or (config.top_k if "experts" in config.pending() else 1)
    high = config.auto_max or DEFAULT_MAX
    if low > high:
        raise ValueError(
            f"auto_min ({low}) is larger than auto_max ({high}); lower auto_min or raise auto_max"
        )
    return low, high


def solve(
    weights: dict[int, float], cost: Callable[[int, int], int], budget: int, low: int, high: int
) -> dict[int, int]:
    """{layer: value} in [low, high], spread as `weights` say, whose total `cost(layer, value)` is within
    TOLERANCE below `budget` (module docstring); ValueError where no allocation can be."""
    layers = sorted(weights)
    mean = statistics.fmean(weights.values())
    share = {layer: weights[layer] / mean for layer in layers}

    def at(scale: float) -> dict[int, int]:
        return {layer: min(high, max(low, round(scale * share[layer]))) for layer in layers}

    def total(values: dict[int, int]) -> int:
        return sum(cost(layer, v) for layer, v in values.items())

    least, most = total(dict.fromkeys(layers, low)), total(dict.fromkeys(layers, high))
    if least > budget:
        raise ValueError(
            f"budget {budget:,} is below the smallest allocation: {low} in every layer already takes "
            f"{least:,} trainable parameters; raise budget or lower auto_min"
        )
    if most < (1 - TOLERANCE) * budget:
        raise ValueError(
            f"budget {budget:,} is above the largest allocation: {high} in every layer takes {most:,} "
            "trainable parameters; raise auto_max or lower budget"
        )
    below, above = 0.0, high / min(share.values()) + 1  # at `above` every layer is at `high`
    for _ in range(60):
        middle = (below + above) / 2
        below, above = (middle, above) if total(at(middle)) <= budget else (below, middle)
    chosen = at(below)
    spent = total(chosen)
    while True:  # top up, where rounding fell furthest below the target
        growing = [layer for layer in layers if chosen[layer] < high]
        step = {layer: cost(layer, chosen[layer] + 1) - cost(layer, chosen[layer]) for layer in growing}
        fits = [layer for layer in growing if spent + step[layer] <= budget]
        if not fits:
            break
        layer = max(fits, key=lambda x: (below * share[x] - chosen[x], -x))
        chosen[layer] += 1
        spent += step[layer]
    if spent < (1 - TOLERANCE) * budget:
        raise ValueError(
            f"no allocation comes within {TOLERANCE:.0%} below budget {budget:,} (the closest takes "
            f"{spent:,}): one more in a layer costs up to {max(step.values()):,}; raise the budget"
        )
    return chosen


def resolve(model: nn.Module, config: AdapterConfig, scores: str | None = None) -> AdapterConfig:
    """`config` with its "auto" fields allocated on `model`, as explicit per-layer lists (what get_model
    builds and saves); unchanged when none is "auto". `scores`: the config's allocator, or "uniform"
    (every layer alike: what sizing a recipe before its weights are read needs; a meta skeleton will do)."""
    pending = config.pending()
    if not pending:
        return config
    targets = find_targets(model, config.target_modules)
    unplaced = [name for name in targets if layer_index(name) is None]
    if unplaced:
        raise ValueError(
            f"an 'auto' {pending[0]} is allocated per layer, but target module {unplaced[0]!r} has no layer "
            "index in its name; narrow target_modules to modules inside the numbered blocks"
        )
    kind = scores or config.allocator
    weights = (
        spectral_scores(model, targets) if kind == "spectral" else {layer_index(n): 1.0 for n in targets}
    )
    low, high = bounds(config)
    n_layers = layer_count(model)

    def filled(value: int) -> AdapterConfig:
        return dataclasses.replace(config, **{name: [value] * n_layers for name in pending})

    table = {value: trainable_by_layer(model, filled(value)) for value in range(low, high + 1)}
    chosen = solve(weights, lambda layer, value: table[value][layer], budget_of(model, config), low, high)
    values = [chosen.get(layer, low) for layer in range(n_layers)]
    return dataclasses.replace(config, **{name: values for name in pending})
