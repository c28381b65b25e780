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

`probe` (data-driven): a rank-PROBE_RANK LoRA on the same modules trains `probe_steps` steps (AdamW,
PROBE_LR) on the caller's batches, and a layer's score is the sum over those steps of |gradient x
weight| over its LoRA factors (the first-order estimate of how much the loss depends on them, as
AdaLoRA's sensitivity). The pass runs on a forked RNG and the base model comes back unchanged.

Allocation: every layer takes u = clip(round(s * w), lo, hi), w its score over the mean score, with the
largest s whose total (sizing.trainable_by_layer: expert factors and routers) stays within the budget,
then one more where rounding fell furthest below s * w while the budget allows; while the total is still
more than 5% short, one step moves from a layer to another where it costs more (the largest gain that
fits). A total still short, or a budget outside what lo and hi allow, is refused before anything is
built. HiLo
with both fields "auto" grows a layer's experts and rank in turn (`Steps`: u experts of rank u or u + 1;
its paper's profiles grow both together).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from .allocation import layer_index
from .config import AdapterConfig, LoRAConfig
from .layers.base import base_layer_kind
from .model import RankMixModel, find_targets, layer_count
from .sizing import parameter_counts, trainable_by_layer

BETA = 2.5  # AlphaLoRA's exponent from a layer's alpha to its share
TOLERANCE = 0.05  # an allocation spends at least 95% of its budget
DEFAULT_MAX = 16  # the largest per-layer value, unless auto_max says otherwise
PROBE_RANK, PROBE_LR = 8, 1e-3  # the probe allocator's LoRA and its learning rate


def _own_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    return model(**batch).loss


@dataclass
class Probe:
    """What the `probe` allocator trains on: `batches`, model inputs with labels (and task_ids), at least
    `probe_steps` of them; `wrap` puts what the model needs around the adapted model (an encoder's task
    heads), and `loss` turns a batch into the loss to back-propagate (default: the forward's `.loss`)."""

    batches: Iterable[dict]
    loss: Callable[[nn.Module, dict], torch.Tensor] = _own_loss
    wrap: Callable[[RankMixModel], nn.Module] | None = None
    seed: int = 0


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


def probe_scores(model: nn.Module, config: AdapterConfig, probe: Probe) -> dict[int, float]:
    """{layer: |gradient x weight| of a rank-PROBE_RANK LoRA's factors in the layer, summed over the
    probe's steps}; `model` comes back as it was, and so does the global RNG."""
    lora = LoRAConfig(r=PROBE_RANK, target_modules=config.target_modules)
    scores: dict[int, float] = defaultdict(float)
    steps, training = 0, model.training
    gpus = sorted({p.device.index or 0 for p in model.parameters() if p.is_cuda})
    with torch.random.fork_rng(devices=gpus):
        torch.manual_seed(probe.seed)
        adapted = RankMixModel(model, lora)
        try:
            device = next(p.device for p in adapted.parameters() if p.requires_grad)
            trained = (
                probe.wrap(adapted).to(device) if probe.wrap else adapted
            )  # new heads: the body's device
            trained.train()
            parameters = [p for p in trained.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(parameters, lr=PROBE_LR)
            for batch in probe.batches:
                batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                probe.loss(trained, batch).backward()
                for name, module in adapted.adapted_modules():
                    scores[layer_index(name)] += sum(
                        float((p.grad * p.detach()).abs().sum())
                        for p in module.bank.parameters()
                        if p.grad is not None
                    )
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                steps += 1
                if steps == config.probe_steps:
                    break
        finally:
            adapted.unload()
            model.train(training)
    if steps < config.probe_steps:
        raise ValueError(f"the probe allocator needs {config.probe_steps} batches (probe_steps), got {steps}")
    if not all(math.isfinite(v) for v in scores.values()):
        raise ValueError("the probe pass diverged (a NaN or infinite loss); check the batches' labels")
    if not any(scores.values()):
        raise ValueError("the probe pass found no gradient in any adapted layer; check the batches' labels")
    return dict(scores)


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


Cost = Callable[[int, int], int]  # (layer, value) -> trainable parameters of that layer's modules


def check_budget(
    layers: list[int], cost: Cost, budget: int, low: int, high: int, label: Callable[[int], str] = str
) -> None:
    """Refuse a budget below what `low` in every layer takes, or short of what `high` everywhere takes;
    `label` names a value in the message."""
    least = sum(cost(layer, low) for layer in layers)
    most = sum(cost(layer, high) for layer in layers)
    if least > budget:
        raise ValueError(
            f"budget {budget:,} is below the smallest allocation: {label(low)} in every layer already "
            f"takes {least:,} trainable parameters; raise budget or lower auto_min"
        )
    if most < (1 - TOLERANCE) * budget:
        raise ValueError(
            f"budget {budget:,} is above the largest allocation: {label(high)} in every layer takes "
            f"{most:,} trainable parameters; raise auto_max or lower budget"
        )


def solve(weights: dict[int, float], cost: Cost, budget: int, low: int, high: int) -> dict[int, int]:
    """{layer: value} in [low, high], spread as `weights` say, whose total `cost(layer, value)` is within
    TOLERANCE below `budget` (module docstring); ValueError where no allocation can be."""
    layers = sorted(weights)
    check_budget(layers, cost, budget, low, high)
    mean = statistics.fmean(weights.values())
    share = {layer: weights[layer] / mean for layer in layers}

    def at(scale: float) -> dict[int, int]:
        return {layer: min(high, max(low, round(scale * share[layer]))) for layer in layers}

    def total(values: dict[int, int]) -> int:
        return sum(cost(layer, v) for layer, v in values.items())

    below, above = 0.0, high / max(min(share.values()), 1e-9) + 1  # at `above` every layer is at `high`
    for _ in range(60):
        middle = (below + above) / 2
        below, above = (middle, above) if total(at(middle)) <= budget else (below, middle)
    chosen = at(below)
    spent = total(chosen)

    def raise_cost(layer: int) -> int:
        return cost(layer, chosen[layer] + 1) - cost(layer, chosen[layer])

    def lower_saving(layer: int) -> int:
        return cost(layer, chosen[layer]) - cost(layer, chosen[layer] - 1)

    while True:
        growing = [layer for layer in layers if chosen[layer] < high]
        fits = [layer for layer in growing if spent + raise_cost(layer) <= budget]
        if fits:  # top up, where rounding fell furthest below the target
            layer = max(fits, key=lambda x: (below * share[x] - chosen[x], -x))
            spent += raise_cost(layer)
            chosen[layer] += 1
            continue
        if spent >= (1 - TOLERANCE) * budget:
            break
        # still short: move one step from a layer to another where that spends more, within the budget
        moves = [
            (raise_cost(b) - lower_saving(a), a, b)
            for a in layers
            if chosen[a] > low
            for b in growing
            if b != a and 0 < raise_cost(b) - lower_saving(a) <= budget - spent
        ]
        if not moves:
            break
        gain, a, b = max(moves, key=lambda m: (m[0], -m[1], -m[2]))
        chosen[a] -= 1
        chosen[b] += 1
        spent += gain
    if spent < (1 - TOLERANCE) * budget:
        largest = max((raise_cost(layer) for layer in layers if chosen[layer] < high), default=0)
        raise ValueError(
            f"no allocation comes within {TOLERANCE:.0%} below budget {budget:,} (the closest found takes "
            f"{spent:,}): one more in a layer costs up to {largest:,}; raise the budget"
        )
    return chosen


@dataclass(frozen=True)
class Steps:
    """How an allocation's integer step sets the "auto" fields of a layer: one field takes the step
    itself; two (HiLo's experts and ranks) grow in turn, one more rank, then one more expert (step 2u:
    u experts of rank u; 2u + 1: u experts of rank u + 1), half the cost of growing both at once."""

    names: tuple[str, ...]

    def values(self, step: int) -> dict[str, int]:
        if len(self.names) == 1:
            return {self.names[0]: step}
        fewer, more = self.names
        return {fewer: step // 2, more: (step + 1) // 2}

    def index(self, value: int) -> int:
        """The step at which every field equals `value`."""
        return value if len(self.names) == 1 else 2 * value

    def label(self, step: int) -> str:
        return " and ".join(f"{name} {value}" for name, value in self.values(step).items())


def resolve(
    model: nn.Module, config: AdapterConfig, scores: str | None = None, probe: Probe | None = None
) -> AdapterConfig:
    """`config` with its "auto" fields allocated on `model`, as explicit per-layer lists (what get_model
    builds and saves); unchanged when none is "auto". `scores`: the config's allocator, or "uniform"
    (every layer alike: what sizing a recipe before its weights are read needs; a meta skeleton will do).
    The `probe` allocator trains on `probe`'s batches. A budget that cannot be met is refused before any
    score is computed."""
    pending = config.pending()
    if not pending:
        return config
    kind = scores or config.allocator
    if kind == "probe" and probe is None:
        raise ValueError(
            "allocator='probe' trains a short first pass: pass its batches, get_model(model, config, "
            "probe=rankmix.allocators.Probe(batches=...)) (recipes do), or use allocator='spectral'"
        )
    targets = find_targets(model, config.target_modules)
    unplaced = [name for name in targets if layer_index(name) is None]
    if unplaced:
        raise ValueError(
            f"an 'auto' {pending[0]} is allocated per layer, but target module {unplaced[0]!r} has no layer "
            "index in its name; narrow target_modules to modules inside the numbered blocks"
        )
    low, high = bounds(config)
    n_layers = layer_count(model)
    fields = Steps(tuple(pending))
    first, last = fields.index(low), fields.index(high) + 1  # the steps from `low` everywhere to `high`

    def filled(step: int) -> AdapterConfig:
        return dataclasses.replace(config, **{n: [v] * n_layers for n, v in fields.values(step).items()})

    table = {step: trainable_by_layer(model, filled(step)) for step in range(first, last)}
    budget = budget_of(model, config)
    layers = sorted({layer_index(n) for n in targets})

    def cost(layer: int, step: int) -> int:
        return table[step][layer]

    check_budget(layers, cost, budget, first, last - 1, fields.label)  # before any score is computed
    if kind == "spectral":
        weights = spectral_scores(model, targets)
    elif kind == "probe":
        weights = probe_scores(model, config, probe)
    else:
        weights = dict.fromkeys(layers, 1.0)
    # four significant digits: a resumed run and every process of a distributed one allocate again, and
    # must agree where a thread count or a device changes a score's last bits
    weights = {layer: float(f"{w:.4g}") for layer, w in weights.items()}
    chosen = solve(weights, cost, budget, first, last - 1)
    per_layer = [fields.values(chosen.get(layer, first)) for layer in range(n_layers)]
    return dataclasses.replace(config, **{n: [values[n] for values in per_layer] for n in pending})
