"""ExpertBank and AdaptedLinear against slow per-expert references of the methods of the MoRE
(arXiv 2505.22694) and HiLo (arXiv 2502.03884) papers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from rankmix.layers import (
    AdaptedLinear,
    ExpertBank,
    RoutingContext,
    SharedRouter,
    TaskRankSelector,
    TaskRouter,
)

# The bank's `mix` buffer is built in float32 and then cast, so scales such as alpha/3 or (j/5)^2
# carry float32 rounding even in a float64 bank: compare with a tolerance just above that.
TOL = {"rtol": 1e-6, "atol": 1e-9}
# With linear scaling the products s * (j/R)^2 are rounded to float32 in `mix` (relative error ~6e-8 per
# component), which shows up at ~1e-6 absolute on outputs of size ~20: still far below any real error.
LS_TOL = {"rtol": 1e-5, "atol": 1e-6}


def make_bank(seed, n_experts, d_in, d_out, *, nested=False, linear_scaling=False, dropout=0.0, max_rank=5):
    """A float64 bank with random ranks, random (float32-exact) scales and a random (non-zero) lora_B."""
    g = torch.Generator().manual_seed(seed)
    ranks = torch.randint(1, max_rank + 1, (n_experts,), generator=g).tolist()
    scales = (torch.rand(n_experts, generator=g) * 3 + 0.25).tolist()
    bank = ExpertBank(
        d_in, d_out, ranks, scales, nested=nested, linear_scaling=linear_scaling, dropout=dropout
    ).double()
    with torch.no_grad():
        bank.lora_A.copy_(torch.randn(bank.lora_A.shape, generator=g, dtype=torch.float64))
        bank.lora_B.copy_(torch.randn(bank.lora_B.shape, generator=g, dtype=torch.float64))
    return bank, ranks, scales


def expert_slices(bank, ranks, scales, linear_scaling=False):
    """Per expert (A_e, B_e, s_e) cut by hand from the raw lora_A / lora_B, linear scaling applied to
    each component j (1-based) of A and of B as c_j = (j / S)^p, p = linear_scaling (True: 1)."""
    size = bank.lora_A.shape[0]
    out, offset = [], 0
    for r, s in zip(ranks, scales, strict=True):
        lo = 0 if bank.nested else offset
        a = bank.lora_A[lo : lo + r]
        b = bank.lora_B[:, lo : lo + r]
        if linear_scaling:
            c = (torch.arange(lo + 1, lo + r + 1, dtype=a.dtype) / size) ** float(linear_scaling)
            a = a * c[:, None]
            b = b * c[None, :]
        out.append((a, b, s))
        offset += r
    return out


def reference_forward(bank, ranks, scales, x, gates, linear_scaling=False):
    """sum_e gates_e * s_e * B_e A_e x, one expert at a time."""
    total = 0
    for e, (a, b, s) in enumerate(expert_slices(bank, ranks, scales, linear_scaling)):
        y = s * ((x @ a.t()) @ b.t())
        total = total + (y if gates is None else gates[..., e : e + 1] * y)
    return total


def random_gates(kind, g, batch, seq, n_experts):
    """Gate tensors of the shapes and sparsity patterns the routers produce."""
    if kind == "dense":
        return F.softmax(torch.randn(batch, seq, n_experts, generator=g, dtype=torch.float64), -1)
    if kind == "topk":
        probs = F.softmax(torch.randn(batch, seq, n_experts, generator=g, dtype=torch.float64), -1)
        vals, idx = probs.topk(min(2, n_experts), dim=-1)
        return torch.zeros_like(probs).scatter(-1, idx, vals / vals.sum(-1, keepdim=True))
    if kind == "per_example":
        return F.softmax(torch.randn(batch, 1, n_experts, generator=g, dtype=torch.float64), -1)
    if kind == "onehot_per_example":
        idx = torch.randint(0, n_experts, (batch,), generator=g)
        return F.one_hot(idx, n_experts).double().view(batch, 1, n_experts)
    if kind == "signed":  # arbitrary real weights, not a distribution
        return torch.randn(batch, seq, n_experts, generator=g, dtype=torch.float64)
    if kind == "broadcast":
        return torch.rand(n_experts, generator=g, dtype=torch.float64)
    raise AssertionError(kind)


GATE_KINDS = ["dense", "topk", "per_example", "onehot_per_example", "signed", "broadcast"]
SHAPES = [(2, 3, 7, 5, 3), (4, 1, 16, 9, 5), (1, 6, 5, 12, 2), (3, 5, 8, 8, 1)]


@pytest.mark.parametrize("nested", [False, True])
@pytest.mark.parametrize("kind", GATE_KINDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_bank_matches_per_expert_loop(nested, kind, shape, seed):
    """The fused two-matmul bank equals the per-expert loop, in output and in the gradients w.r.t.
    lora_A, lora_B, x and gates, for disjoint and nested experts and every gate layout routers give."""
    batch, seq, d_in, d_out, n_experts = shape
    bank, ranks, scales = make_bank(seed, n_experts, d_in, d_out, nested=nested)
    g = torch.Generator().manual_seed(100 + seed)
    x = torch.randn(batch, seq, d_in, generator=g, dtype=torch.float64, requires_grad=True)
    gates = random_gates(kind, g, batch, seq, n_experts).requires_grad_()
    upstream = torch.randn(batch, seq, d_out, generator=g, dtype=torch.float64)

    out = bank(x, gates)
    ref = reference_forward(bank, ranks, scales, x, gates)
    assert out.shape == (batch, seq, d_out)
    torch.testing.assert_close(out, ref, **TOL)

    inputs = (bank.lora_A, bank.lora_B, x, gates)
    got = torch.autograd.grad((out * upstream).sum(), inputs)
    want = torch.autograd.grad((ref * upstream).sum(), inputs)
    for name, a, b in zip(["lora_A", "lora_B", "x", "gates"], got, want, strict=True):
        torch.testing.assert_close(a, b, **TOL, msg=lambda m, n=name: f"grad {n}: {m}")


@pytest.mark.parametrize("nested", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bank_two_dim_input_and_no_gates(nested, seed):
    """2-D input (tokens, d_in) with (tokens, E) gates works, and gates=None means every expert at
    weight 1 (the single-LoRA case)."""
    bank, ranks, scales = make_bank(seed, 4, 6, 5, nested=nested)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(10, 6, generator=g, dtype=torch.float64)
    gates = torch.rand(10, 4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(bank(x, gates), reference_forward(bank, ranks, scales, x, gates), **TOL)
    torch.testing.assert_close(bank(x, None), reference_forward(bank, ranks, scales, x, None), **TOL)
    torch.testing.assert_close(bank(x, None), bank(x, torch.ones(4, dtype=torch.float64)), **TOL)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bank_shape_and_mix_layout(seed):
    """lora_A / lora_B sizes are S = sum(ranks) for disjoint and max(ranks) for nested; mix is
    (n_experts, S) with expert e's scale on exactly its own components."""
    for nested in (False, True):
        bank, ranks, scales = make_bank(seed, 5, 7, 3, nested=nested)
        size = max(ranks) if nested else sum(ranks)
        assert bank.lora_A.shape == (size, 7)
        assert bank.lora_B.shape == (3, size)
        assert bank.mix.shape == (5, size)
        assert bank.n_experts == 5
        offset = 0
        for e, (r, s) in enumerate(zip(ranks, scales, strict=True)):
            lo = 0 if nested else offset
            expected = torch.zeros(size, dtype=torch.float64)
            expected[lo : lo + r] = s
            torch.testing.assert_close(bank.mix[e], expected, **TOL)
            offset += r


def test_fresh_bank_adds_nothing():
    """lora_B starts at zero, so a new bank outputs exactly zero (the adapted model starts as the base)."""
    bank = ExpertBank(6, 4, [2, 3], [1.0, 2.0])
    assert torch.count_nonzero(bank.lora_B) == 0
    assert torch.count_nonzero(bank.lora_A) > 0
    assert torch.count_nonzero(bank(torch.randn(3, 6), torch.rand(3, 2))) == 0


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("linear_scaling", [False, True, 0.5])
def test_nested_experts_are_prefixes(seed, linear_scaling):
    """Nested (MoRE) expert e is the rank-r_e prefix A[:r_e], B[:, :r_e]: factors() under a one-hot
    gate returns exactly that prefix, scale s_e (and (j/R)^2 under linear scaling) folded into B."""
    bank, ranks, scales = make_bank(seed, 6, 9, 7, nested=True, linear_scaling=linear_scaling, max_rank=8)
    big = max(ranks)
    for e, (r, s) in enumerate(zip(ranks, scales, strict=True)):
        a, b = bank.factors(F.one_hot(torch.tensor(e), 6).double())
        assert a.shape == (r, 9) and b.shape == (7, r)
        torch.testing.assert_close(a, bank.lora_A[:r], rtol=0, atol=0)
        weight = torch.full((r,), s, dtype=torch.float64)
        if linear_scaling:
            weight = weight * (torch.arange(1, r + 1, dtype=torch.float64) / big) ** (
                2 * float(linear_scaling)
            )
        torch.testing.assert_close(b, bank.lora_B[:, :r] * weight, **TOL)


@pytest.mark.parametrize("power", [True, 0.5])
@pytest.mark.parametrize("kind", ["dense", "topk", "per_example", "signed"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_linear_scaling_matches_formula(kind, seed, power):
    """MoRE linear scaling: component j of A and of B times j/R, so the fused bank equals the loop that
    scales each raw component, in output and gradients; without it the output is different."""
    bank, ranks, scales = make_bank(seed, 5, 8, 6, nested=True, linear_scaling=power, max_rank=8)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 4, 8, generator=g, dtype=torch.float64, requires_grad=True)
    gates = random_gates(kind, g, 3, 4, 5).requires_grad_()
    out = bank(x, gates)
    ref = reference_forward(bank, ranks, scales, x, gates, linear_scaling=power)
    torch.testing.assert_close(out, ref, **LS_TOL)
    inputs = (bank.lora_A, bank.lora_B, x, gates)
    upstream = torch.randn(out.shape, generator=g, dtype=torch.float64)
    got = torch.autograd.grad((out * upstream).sum(), inputs)
    want = torch.autograd.grad((ref * upstream).sum(), inputs)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, **LS_TOL)
    unscaled = reference_forward(bank, ranks, scales, x, gates, linear_scaling=False)
    assert not torch.allclose(out, unscaled)


@pytest.mark.parametrize("nested", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_factors_reproduce_bank(nested, seed):
    """factors(g) is a plain LoRA: B_t A_t x equals bank(x, g) for fixed gates g, and its rank is the
    number of components in use: r_e for one-hot gates, S for soft gates over all experts."""
    n_experts = 4
    bank, ranks, _ = make_bank(seed, n_experts, 7, 6, nested=nested, linear_scaling=nested)
    size = bank.lora_A.shape[0]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(5, 7, generator=g, dtype=torch.float64)

    cases = [(F.one_hot(torch.tensor(e), n_experts).double(), ranks[e]) for e in range(n_experts)]
    soft = F.softmax(torch.randn(n_experts, generator=g, dtype=torch.float64), -1)
    cases.append((soft, size))
    cases.append((None, size))
    pair = torch.zeros(n_experts, dtype=torch.float64)
    pair[[0, 2]] = torch.tensor([0.3, 0.7], dtype=torch.float64)
    cases.append((pair, max(ranks[0], ranks[2]) if nested else ranks[0] + ranks[2]))

    for gates, rank in cases:
        a, b = bank.factors(gates)
        assert a.shape == (rank, 7) and b.shape == (6, rank)
        torch.testing.assert_close((x @ a.t()) @ b.t(), bank(x, gates), **TOL)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_factors_disjoint_one_hot_is_that_expert(seed):
    """A one-hot gate over disjoint experts picks expert e's own block of rows/columns, scaled by s_e."""
    bank, ranks, scales = make_bank(seed, 4, 5, 3)
    for e, (a_e, b_e, s_e) in enumerate(expert_slices(bank, ranks, scales)):
        a, b = bank.factors(F.one_hot(torch.tensor(e), 4).double())
        torch.testing.assert_close(a, a_e, rtol=0, atol=0)
        torch.testing.assert_close(b, s_e * b_e, **TOL)


@pytest.mark.parametrize("nested", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dropout_train_and_eval(nested, seed):
    """Dropout hits the input once, in training only: train output equals the no-dropout bank applied to
    F.dropout(x) under the same RNG state and differs from eval; eval equals the no-dropout bank."""
    p = 0.5
    bank, ranks, scales = make_bank(seed, 3, 12, 4, nested=nested, dropout=p)
    plain = ExpertBank(12, 4, ranks, scales, nested=nested).double()
    plain.load_state_dict(bank.state_dict())
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 6, 12, generator=g, dtype=torch.float64)
    gates = random_gates("dense", g, 4, 6, 3)

    bank.train()
    torch.manual_seed(1234 + seed)
    train_out = bank(x, gates)
    torch.manual_seed(1234 + seed)
    dropped = F.dropout(x, p, training=True)
    torch.testing.assert_close(train_out, plain(dropped, gates), **TOL)

    bank.eval()
    eval_out = bank(x, gates)
    torch.testing.assert_close(eval_out, plain(x, gates), **TOL)
    assert not torch.allclose(train_out, eval_out)


@pytest.mark.parametrize("ranks", [[], [0], [-1], [2, 0, 3], [4, -2]])
def test_invalid_ranks_raise(ranks):
    """Empty, zero or negative ranks are rejected."""
    with pytest.raises(ValueError, match="rank"):
        ExpertBank(4, 4, ranks, [1.0] * len(ranks))


def test_invalid_configs_raise():
    """One scale per expert is required; linear scaling only makes sense for nested experts."""
    with pytest.raises(ValueError, match="scale"):
        ExpertBank(4, 4, [2, 3], [1.0])
    with pytest.raises(ValueError, match="nested"):
        ExpertBank(4, 4, [2, 3], [1.0, 1.0], linear_scaling=True)
    ExpertBank(4, 4, [2, 3], [1.0, 1.0], nested=True, linear_scaling=True)  # the valid combination


# ---------------------------------------------------------------- AdaptedLinear


def merged_output(base, weight_delta, x, fan_in_fan_out):
    """The base layer's computation with its weight replaced by weight + delta."""
    if fan_in_fan_out:
        return x @ (base.weight + weight_delta) + base.bias
    return F.linear(x, base.weight + weight_delta, base.bias)


ROUTERS = ["hard_task", "soft_task", "selector", "shared"]


def build_layer(router_kind, seed, fan_in_fan_out, n_tasks=3, d_in=8, d_out=6):
    torch.manual_seed(seed)
    nested = router_kind == "selector"
    n_experts = 4 if router_kind == "selector" else (1 if router_kind == "shared" else n_tasks)
    bank, _, _ = make_bank(seed, n_experts, d_in, d_out, nested=nested, linear_scaling=nested, dropout=0.1)
    if router_kind == "hard_task":
        router = TaskRouter(n_tasks, n_experts)
    elif router_kind == "soft_task":
        router = TaskRouter(n_tasks, n_experts, embedding_dim=5)
    elif router_kind == "selector":
        router = TaskRankSelector(d_in, n_tasks, n_experts)
        with torch.no_grad():  # spread the selections so the tasks differ
            router.gate.bias.copy_(torch.randn(n_experts) * 3)
            router.task_embedding.normal_()
    else:
        router = SharedRouter()
    base = Conv1D(d_out, d_in) if fan_in_fan_out else nn.Linear(d_in, d_out)  # GPT-2's: weight (d_in, d_out)
    if fan_in_fan_out:
        nn.init.normal_(base.bias)
    context = RoutingContext()
    layer = AdaptedLinear(base, bank, router, context).double().eval()
    assert layer.fan_in_fan_out == fan_in_fan_out  # the base layer's kind says how its weight is stored
    return layer, context, n_tasks


@pytest.mark.parametrize("fan_in_fan_out", [False, True])
@pytest.mark.parametrize("router_kind", ROUTERS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_merged_weight_equals_unmerged(router_kind, fan_in_fan_out, seed):
    """For every task, base weight + delta_weight(task) (in the base layer's own layout, including
    fan_in_fan_out Conv1D) gives the same output as the unmerged adapted layer: per-task merging
    without extra inference cost (MoRE defect 5 must not recur)."""
    layer, context, n_tasks = build_layer(router_kind, seed, fan_in_fan_out)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 5, 8, generator=g, dtype=torch.float64)
    with torch.no_grad():
        for task in range(n_tasks):
            context.task_ids = torch.full((3,), task)
            unmerged = layer(x)
            delta = layer.delta_weight(task)
            assert delta.shape == layer.base_layer.weight.shape
            merged = merged_output(layer.base_layer, delta, x, fan_in_fan_out)
            torch.testing.assert_close(merged, unmerged, **TOL)
            assert not torch.allclose(unmerged, layer.base_layer(x))


@pytest.mark.parametrize("router_kind", ["hard_task", "soft_task", "selector"])
@pytest.mark.parametrize("seed", [0, 1])
def test_mixed_task_batch_and_task_factors(router_kind, seed):
    """A batch mixing tasks routes each example by its own task: row b equals the merged layer of task
    task_ids[b]; task_factors(t) is the plain LoRA whose product is delta_weight(t)."""
    layer, context, _ = build_layer(router_kind, seed, fan_in_fan_out=False)
    g = torch.Generator().manual_seed(seed)
    task_ids = torch.tensor([2, 0, 1, 2, 0])
    x = torch.randn(5, 4, 8, generator=g, dtype=torch.float64)
    context.task_ids = task_ids
    with torch.no_grad():
        out = layer(x)
        for b, t in enumerate(task_ids.tolist()):
            a, bb = layer.task_factors(t)
            torch.testing.assert_close(bb @ a, layer.delta_weight(t), **TOL)
            want = merged_output(layer.base_layer, layer.delta_weight(t), x[b], False)
            torch.testing.assert_close(out[b], want, **TOL)


def test_selector_task_factors_rank_is_selected_rank():
    """For MoRE, the merged per-task LoRA has exactly the rank of the selected nested expert."""
    layer, _, n_tasks = build_layer("selector", 0, fan_in_fan_out=False)
    chosen = layer.router.selected().tolist()
    for t in range(n_tasks):
        a, _ = layer.task_factors(t)
        assert a.shape[0] == layer.bank.ranks[chosen[t]]


def test_context_collects_aux_losses():
    """With context.collect on, the layer appends its router's aux losses (kind, tensor) to context.aux;
    with it off, nothing is recorded."""
    layer, context, _ = build_layer("selector", 0, fan_in_fan_out=False)
    x = torch.randn(2, 3, 8, dtype=torch.float64)
    context.task_ids = torch.tensor([0, 1])
    layer(x)
    assert context.aux == []
    context.collect = True
    layer(x)
    layer(x)
    assert [kind for kind, _ in context.aux] == ["contrastive", "contrastive"]
    _, aux = layer.router(x, context.task_ids)
    torch.testing.assert_close(context.aux[0][1], aux["contrastive"])


def test_context_expands_task_ids_for_beams():
    """Generation may expand the batch (beams): each task id is repeated for its example's copies;
    a non-multiple batch size is an error, and so is a 2-D input whose rows are not examples
    (e.g. gathered tokens), which could otherwise be silently misrouted."""
    context = RoutingContext(task_ids=torch.tensor([1, 0]))
    assert context.task_ids_for(torch.zeros(2, 5, 4)).tolist() == [1, 0]
    assert context.task_ids_for(torch.zeros(2, 4)).tolist() == [1, 0]
    assert context.task_ids_for(torch.zeros(6, 5, 4)).tolist() == [1, 1, 1, 0, 0, 0]
    with pytest.raises(ValueError, match="task_ids"):
        context.task_ids_for(torch.zeros(3, 5, 4))
    with pytest.raises(ValueError, match="one row per example"):
        context.task_ids_for(torch.zeros(8, 4))
    assert RoutingContext().task_ids_for(torch.zeros(4, 5, 4)) is None
