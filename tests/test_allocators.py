"""Automatic allocation ("auto" experts, ranks, max_rank): the Hill estimate against a slow reference, the
budget held on several architectures, bounds, determinism, refusals before any work, and adapters that
save and load the allocation they were built with."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from helpers import build_base
from rankmix import HiLoConfig, MoLAConfig, MoREConfig, RankMixModel, get_model
from rankmix.allocators import BETA, TOLERANCE, hill_alpha, resolve, solve
from rankmix.config import LoRAConfig, config_from_dict
from rankmix.layers import AdaptedLinear
from rankmix.model import layer_count
from rankmix.sizing import parameter_counts

TASKS = ["a", "b"]
# (config, the fields it allocates): every method with an "auto" field, and HiLo's three ways
AUTO_CONFIGS = {
    "hilo-experts": (lambda **k: HiLoConfig(experts="auto", ranks="2", **k), ["experts"]),
    "hilo-ranks": (lambda **k: HiLoConfig(experts="3", ranks="auto", **k), ["ranks"]),
    "hilo-both": (lambda **k: HiLoConfig(experts="auto", ranks="auto", **k), ["experts", "ranks"]),
    "mola": (lambda **k: MoLAConfig(experts="auto", rank=2, **k), ["experts"]),
    "more": (lambda **k: MoREConfig(tasks=TASKS, max_rank="auto", **k), ["max_rank"]),
}


def _reference_alpha(weight: torch.Tensor) -> float:
    """The Hill estimate written out: eigenvalues of W^T W by numpy, largest half, a plain loop."""
    w = weight.detach().double().numpy()
    eigenvalues = sorted(np.linalg.eigvalsh(w.T @ w), reverse=True)[: min(w.shape)]
    k = len(eigenvalues) // 2
    total = 0.0
    for i in range(k):
        total += math.log(eigenvalues[i] / eigenvalues[k - 1])
    return 1 + k / total


@pytest.mark.parametrize("shape", [(16, 16), (24, 40), (40, 24)])
def test_hill_alpha_matches_a_slow_reference(shape):
    torch.manual_seed(0)
    weight = torch.randn(shape)
    assert hill_alpha(weight) == pytest.approx(_reference_alpha(weight), rel=1e-6)


def test_a_heavier_tail_gives_a_smaller_alpha():
    """Singular values decaying as a steep power law (a heavy-tailed spectrum, a 'well-trained' layer in
    the theory) estimate smaller than a flat random spectrum."""
    torch.manual_seed(0)
    u, _, v = torch.linalg.svd(torch.randn(32, 32))
    heavy = u @ torch.diag(torch.arange(1, 33, dtype=torch.float) ** -2.0) @ v
    assert hill_alpha(heavy) < hill_alpha(torch.randn(32, 32))


@pytest.mark.parametrize("arch", ["llama", "bert", "t5"])
@pytest.mark.parametrize("name", list(AUTO_CONFIGS))
def test_the_budget_holds_and_the_bounds_too(arch, name):
    """The built model's trainable parameters are within 5% below the budget (LoRA r=8's on the same
    modules), every allocated value lies in [auto_min, auto_max], and get_model saves explicit lists."""
    make, fields = AUTO_CONFIGS[name]
    base = build_base(arch, layers=6, hidden=32)
    budget = parameter_counts(base, LoRAConfig(r=8))["trainable"]
    model = get_model(base, make(budget="lora-r8", auto_min=2, auto_max=12))
    trainable = model.parameter_counts()["trainable"]
    assert (1 - TOLERANCE) * budget <= trainable <= budget
    for field in fields:
        values = getattr(model.adapter_config, field)
        assert isinstance(values, list) and len(values) == layer_count(base)
        assert all(2 <= v <= 12 for v in values)
    assert model.adapter_config.pending() == []


def test_spectral_gives_more_to_the_layer_its_spectrum_calls_less_trained():
    """Layer 0's weights get a steep power-law spectrum (small alpha); the others stay random (large
    alpha): layer 0 gets the fewest experts, and the scores follow the reference alpha ** BETA."""
    base = build_base("llama", layers=6, hidden=32)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, module in base.named_modules():
            if isinstance(module, torch.nn.Linear) and ".layers.0." in name:
                u, _, v = torch.linalg.svd(module.weight, full_matrices=False)
                decay = torch.arange(1, len(_) + 1, dtype=torch.float) ** -2.0
                module.weight.copy_(u @ torch.diag(decay) @ v)
    budget = parameter_counts(base, LoRAConfig(r=8))["trainable"]
    experts = resolve(base, MoLAConfig(experts="auto", rank=2, budget=budget)).experts
    assert experts[0] < min(experts[1:])


def test_allocation_is_deterministic_and_leaves_the_callers_config_alone():
    base = build_base("llama", layers=4, hidden=32)
    config = HiLoConfig(experts="auto", ranks="auto")
    first, second = resolve(base, config), resolve(base, config)
    assert first == second and config.experts == "auto" and config.ranks == "auto"


@pytest.mark.parametrize(
    "options, message",
    [
        ({"budget": 100}, "below the smallest allocation: experts 2 in every layer"),
        ({"budget": 10**9}, "above the largest allocation"),
        ({"budget": "lora-r4", "auto_min": 20, "auto_max": 30}, "below the smallest allocation"),
    ],
)
def test_an_impossible_budget_is_refused_before_anything_is_built(options, message):
    base = build_base("llama", layers=2, hidden=32)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        get_model(base, MoLAConfig(experts="auto", rank=4, **options))
    assert not any(isinstance(m, AdaptedLinear) for m in base.modules())
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())


@pytest.mark.parametrize(
    "options, message",
    [
        ({"budget": 0}, "budget must be"),
        ({"budget": "lora-8"}, "budget must be"),
        ({"allocator": "magic"}, "allocator must be"),
        ({"auto_min": 5, "auto_max": 3}, "auto_min"),
        ({"auto_min": 1, "top_k": 2}, "top_k=2 is larger"),
        ({"auto_max": 1, "top_k": 2}, "top_k=2 is larger than auto_max=1"),
        ({"allocator": "probe", "probe_steps": 1}, "probe_steps must be at least 2"),
    ],
)
def test_bad_allocation_options_are_refused_at_construction(options, message):
    with pytest.raises(ValueError, match=message):
        MoLAConfig(experts="auto", **options)


def test_an_unresolved_config_says_how_to_resolve_it():
    with pytest.raises(ValueError, match="get_model allocates it"):
        HiLoConfig(ranks="auto").expert_ranks(0, 4)


def test_solve_spends_the_budget_in_proportion_to_the_weights():
    """Linear costs: values follow the weights' order, the total is within the tolerance."""
    weights = {0: 1.0, 1: 2.0, 2: 4.0, 3: 4.0}
    values = solve(weights, lambda layer, v: 100 * v, budget=2000, low=1, high=16)
    assert 0.95 * 2000 <= sum(100 * v for v in values.values()) <= 2000
    assert values[0] <= values[1] <= values[2] and values[2] == values[3]


@pytest.mark.parametrize("name", list(AUTO_CONFIGS))
def test_an_allocated_adapter_saves_and_loads_to_the_same_logits(tmp_path, name):
    """The allocation is written into adapter_config.json as per-layer lists, and loading builds the same
    modules without allocating again: same logits on a fresh base."""
    make, fields = AUTO_CONFIGS[name]
    base = build_base("llama", layers=6, hidden=32)
    model = get_model(base, make(budget="lora-r8"))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.1)
    ids = torch.randint(5, 100, (2, 7))
    task_ids = torch.tensor([0, 1])
    model.eval()
    expected = model(input_ids=ids, task_ids=task_ids).logits
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    section = saved.get("adapter", saved)
    assert all(isinstance(section[f], list) for f in fields)
    loaded = RankMixModel.from_pretrained(build_base("llama", layers=6, hidden=32), tmp_path).eval()
    assert torch.allclose(loaded(input_ids=ids, task_ids=task_ids).logits, expected, atol=1e-6)


def test_more_with_a_max_rank_per_layer_scales_each_layer_by_its_own():
    """A per-layer max_rank gives layer l nested experts 1..R_l, each at alpha / R_l (constant scaling)."""
    config = MoREConfig(tasks=TASKS, max_rank=[2, 8], alpha=16)
    assert config.expert_ranks(0, 2) == [1, 2] and config.expert_ranks(1, 2) == list(range(1, 9))
    assert config.expert_scales([1, 2]) == pytest.approx([8.0, 8.0])
    assert config.expert_scales(list(range(1, 9))) == pytest.approx([2.0] * 8)
    assert config.largest_rank() == 8 and config.uses_layer_profile
    one = MoREConfig(tasks=TASKS, max_rank=8, ranks=[2, 4])  # one max_rank: as before
    assert one.expert_scales([2, 4]) == pytest.approx([4.0, 4.0])
    with pytest.raises(ValueError, match="needs one max_rank for every layer"):
        MoREConfig(tasks=TASKS, max_rank=[2, 8], ranks=[1, 2])


def test_older_configs_load_unchanged():
    """A saved config from before allocation (no budget or allocator keys) loads as it was."""
    old = {"method": "hilo", "experts": "2468", "ranks": "2468", "top_k": 2}
    config = config_from_dict(old)
    assert config.pending() == [] and config.expert_ranks(3, 4) == [8] * 8


def test_spectral_scores_follow_the_reference():
    """resolve's weights are the mean reference alpha of a layer's modules to the power BETA: checked
    by the order of two layers whose mean alphas differ clearly."""
    from rankmix.allocators import spectral_scores
    from rankmix.model import find_targets

    base = build_base("llama", layers=2, hidden=32)
    targets = find_targets(base, "all-linear")
    scores = spectral_scores(base, targets)
    for layer in (0, 1):
        names = [n for n in targets if f".layers.{layer}." in n]
        mean = np.mean([_reference_alpha(base.get_submodule(n).weight) for n in names])
        assert scores[layer] == pytest.approx(mean**BETA, rel=1e-5)


# -- the probe allocator -----------------------------------------------------------------------------
def _batches(vocab: int = 100, n: int = 50):
    generator = torch.Generator().manual_seed(3)
    for _ in range(n):
        ids = torch.randint(5, vocab, (4, 9), generator=generator)
        yield {"input_ids": ids, "labels": ids, "task_ids": torch.tensor([0, 1, 0, 1])}


def _reference_probe(base, steps: int, seed: int) -> dict[int, float]:
    """The probe written out: a rank-8 LoRA from the same seed, `steps` AdamW steps, |grad x weight|
    of every lora_A and lora_B summed by the layer index in its name."""
    from rankmix.allocators import PROBE_LR, PROBE_RANK
    from rankmix.model import layer_index

    torch.manual_seed(seed)
    model = get_model(base, LoRAConfig(r=PROBE_RANK))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=PROBE_LR)
    scores: dict[int, float] = {}
    for _, batch in zip(range(steps), _batches(), strict=False):
        model(**batch).loss.backward()
        for name, p in model.named_parameters():
            if p.grad is not None:
                layer = layer_index(name)
                scores[layer] = scores.get(layer, 0.0) + float((p.grad * p).abs().sum())
        optimizer.step()
        optimizer.zero_grad()
    model.unload()
    return scores


def test_probe_scores_match_a_slow_reference_and_leave_the_model_and_rng_alone():
    from rankmix.allocators import Probe, probe_scores

    base = build_base("llama", layers=3, hidden=32)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    rng = torch.get_rng_state()
    config = MoLAConfig(experts="auto", rank=2, allocator="probe", probe_steps=4)
    scores = probe_scores(base, config, Probe(_batches(), seed=7))
    assert torch.equal(torch.get_rng_state(), rng)
    assert not any(isinstance(m, AdaptedLinear) for m in base.modules())
    assert base.state_dict().keys() == before.keys()
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
    reference = _reference_probe(build_base("llama", layers=3, hidden=32), steps=4, seed=7)
    assert scores.keys() == reference.keys()
    for layer in scores:
        assert scores[layer] == pytest.approx(reference[layer], rel=1e-4)


def test_the_probe_allocator_holds_the_budget_and_is_deterministic():
    from rankmix.allocators import Probe

    config = MoLAConfig(experts="auto", rank=2, allocator="probe", budget="lora-r8")
    first = get_model(build_base("llama", layers=6, hidden=32), config, probe=Probe(_batches()))
    second = get_model(build_base("llama", layers=6, hidden=32), config, probe=Probe(_batches()))
    assert first.adapter_config.experts == second.adapter_config.experts
    budget = parameter_counts(build_base("llama", layers=6, hidden=32), LoRAConfig(r=8))["trainable"]
    assert 0.95 * budget <= first.parameter_counts()["trainable"] <= budget


def test_the_probe_allocator_without_batches_says_what_to_pass():
    base = build_base("llama", layers=2, hidden=32)
    with pytest.raises(ValueError, match=r"Probe\(batches=\.\.\.\)"):
        get_model(base, MoLAConfig(experts="auto", allocator="probe"))
    assert not any(isinstance(m, AdaptedLinear) for m in base.modules())


def test_the_probe_needs_as_many_batches_as_steps():
    from rankmix.allocators import Probe

    base = build_base("llama", layers=6, hidden=32)
    config = MoLAConfig(experts="auto", rank=2, allocator="probe", probe_steps=10)
    with pytest.raises(ValueError, match="needs 10 batches"):
        get_model(base, config, probe=Probe(_batches(n=3)))


@pytest.mark.parametrize("name", list(AUTO_CONFIGS))
def test_allocating_does_not_move_the_seeded_initialisation(name):
    """From the same seed, an "auto" config and the explicit config it resolves to build the same
    adapter weights: counting parameters for the budget draws nothing from the global RNG."""
    make, _ = AUTO_CONFIGS[name]
    torch.manual_seed(5)
    auto = get_model(build_base("llama", layers=6, hidden=32, seed=None), make(budget="lora-r8"))
    torch.manual_seed(5)
    explicit = get_model(build_base("llama", layers=6, hidden=32, seed=None), auto.adapter_config)
    a, b = auto.adapter_state_dict(), explicit.adapter_state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_probe_leaves_the_models_mode_as_it_was():
    from rankmix.allocators import Probe, probe_scores

    base = build_base("llama", layers=3, hidden=32)  # eval mode
    probe_scores(
        base, MoLAConfig(experts="auto", rank=2, allocator="probe", probe_steps=2), Probe(_batches())
    )
    assert not base.training and not any(m.training for m in base.modules())
