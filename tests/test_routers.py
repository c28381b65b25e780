"""Routers against slow per-token / per-task references of the methods of the MoRE (arXiv 2505.22694) and
HiLo (arXiv 2502.03884) papers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rankmix.layers import (
    AdaptedLinear,
    ExpertBank,
    RoutingContext,
    SharedRouter,
    TaskRankSelector,
    TaskRouter,
    TokenRouter,
)

# TokenRouter computes its softmax in float32 whatever the input dtype.
F32_TOL = {"rtol": 1e-5, "atol": 1e-6}


def token_router(seed, d_in, n_experts, top_k, top_p=None):
    torch.manual_seed(seed)
    return TokenRouter(d_in, n_experts, top_k, top_p=top_p).double()


def reference_token_gates(router, x, top_p=None):
    """One token at a time: softmax of the gate logits, sort, keep the top k (or, with top_p, add experts in
    descending order until their mass reaches p, at most k), renormalize over the kept experts."""
    weight = router.gate.weight.detach()
    flat = x.reshape(-1, x.shape[-1])
    out = torch.zeros(flat.shape[0], weight.shape[0], dtype=torch.float64)
    probs_all = torch.zeros_like(out)
    for t in range(flat.shape[0]):
        logits = [float(weight[i] @ flat[t]) for i in range(weight.shape[0])]
        top = max(logits)
        exps = [math.exp(v - top) for v in logits]
        probs = [v / sum(exps) for v in exps]
        order = sorted(range(len(probs)), key=lambda i: -probs[i])
        kept, mass = [], 0.0
        for i in order[: router.top_k]:
            kept.append(i)
            mass += probs[i]
            if top_p is not None and mass >= top_p:
                break
        total = sum(probs[i] for i in kept)
        for i in kept:
            out[t, i] = probs[i] / total
        probs_all[t] = torch.tensor(probs, dtype=torch.float64)
    shape = (*x.shape[:-1], weight.shape[0])
    return out.view(shape), probs_all.view(shape)


def reference_balance(gates, probs):
    """Switch-style N * sum_i f_i P_i with explicit loops: f_i = share of token-expert assignments that go
    to expert i, P_i = mean router probability of expert i over tokens."""
    gates = gates.reshape(-1, gates.shape[-1])
    probs = probs.reshape(-1, probs.shape[-1])
    n_tokens, n_experts = gates.shape
    assignments = [[int(gates[t, i] > 0) for i in range(n_experts)] for t in range(n_tokens)]
    total = sum(sum(row) for row in assignments)
    value = 0.0
    for i in range(n_experts):
        f_i = sum(assignments[t][i] for t in range(n_tokens)) / total
        p_i = sum(float(probs[t, i]) for t in range(n_tokens)) / n_tokens
        value += f_i * p_i
    return n_experts * value


TOKEN_SHAPES = [(2, 5, 6, 8, 2), (3, 4, 16, 4, 1), (1, 9, 10, 6, 3), (4, 3, 5, 8, 8)]


@pytest.mark.parametrize("shape", TOKEN_SHAPES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_token_router_top_k_matches_loop(shape, seed):
    """Top-k gates equal the per-token loop reference; exactly k non-zeros per token; rows sum to 1;
    gates keep x's leading dims."""
    batch, seq, d_in, n_experts, top_k = shape
    router = token_router(seed, d_in, n_experts, top_k)
    x = torch.randn(batch, seq, d_in, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    gates, aux = router(x, None)
    want, _ = reference_token_gates(router, x)
    assert gates.shape == (batch, seq, n_experts)
    torch.testing.assert_close(gates.double(), want, **F32_TOL)
    assert torch.equal(gates > 0, want > 0)
    assert ((gates > 0).sum(-1) == top_k).all()
    torch.testing.assert_close(gates.sum(-1).double(), torch.ones(batch, seq, dtype=torch.float64), **F32_TOL)
    assert set(aux) == {"balance"}


@pytest.mark.parametrize("top_p", [0.3, 0.5, 0.8, 0.95])
@pytest.mark.parametrize("top_k", [2, 4])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_token_router_top_p_matches_loop(top_p, top_k, seed):
    """Dynamic top-p gates equal the loop reference (smallest prefix of experts whose mass reaches p, at
    most k, renormalized); between 1 and k experts per token; rows sum to 1."""
    router = token_router(seed, 12, 8, top_k, top_p=top_p)
    x = 2 * torch.randn(3, 7, 12, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    gates, _ = router(x, None)
    want, _ = reference_token_gates(router, x, top_p=top_p)
    torch.testing.assert_close(gates.double(), want, **F32_TOL)
    assert torch.equal(gates > 0, want > 0)
    counts = (gates > 0).sum(-1)
    assert (counts >= 1).all() and (counts <= top_k).all()
    torch.testing.assert_close(gates.sum(-1).double(), torch.ones(3, 7, dtype=torch.float64), **F32_TOL)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_top_p_activates_fewer_experts_than_top_k(seed):
    """HiLo's dynamic mode lowers the active parameters: with p=0.5, k=4 of 8 experts and peaked router
    logits, top-p uses clearly fewer experts per token on average than top-k, and never more than k."""
    top_k = 4
    dense = token_router(seed, 16, 8, top_k)
    dynamic = token_router(seed, 16, 8, top_k, top_p=0.5)
    dynamic.load_state_dict(dense.state_dict())
    x = 3 * torch.randn(8, 32, 16, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    k_gates, p_gates = dense(x, None)[0], dynamic(x, None)[0]
    dense.record(k_gates, None)
    dynamic.record(p_gates, None)
    k_counts, p_counts = (k_gates > 0).sum(-1).double(), (p_gates > 0).sum(-1).double()
    assert (k_counts == top_k).all()
    assert (p_counts <= top_k).all()
    assert p_counts.mean() < top_k - 1
    assert dynamic.load.sum() < dense.load.sum()


@pytest.mark.parametrize("top_k", [1, 3, 5])
@pytest.mark.parametrize("seed", [0, 1])
def test_top_p_one_equals_top_k(top_k, seed):
    """top_p=1.0 never stops before k experts, so it reproduces plain top-k exactly."""
    dense = token_router(seed, 10, 6, top_k)
    dynamic = token_router(seed, 10, 6, top_k, top_p=1.0)
    dynamic.load_state_dict(dense.state_dict())
    x = torch.randn(4, 5, 10, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    assert torch.equal(dense(x, None)[0], dynamic(x, None)[0])


@pytest.mark.parametrize("top_p", [None, 0.6])
@pytest.mark.parametrize("shape", TOKEN_SHAPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_balance_loss_matches_formula(top_p, shape, seed):
    """The balance aux loss equals N * sum_i f_i P_i computed directly, and carries gradient to the gate
    (through P_i)."""
    batch, seq, d_in, n_experts, top_k = shape
    router = token_router(seed, d_in, n_experts, top_k, top_p=top_p)
    x = torch.randn(batch, seq, d_in, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    gates, aux = router(x, None)
    want_gates, probs = reference_token_gates(router, x, top_p=top_p)
    assert torch.equal(gates > 0, want_gates > 0)
    assert aux["balance"].item() == pytest.approx(reference_balance(want_gates, probs), rel=1e-5)
    aux["balance"].backward()
    assert router.gate.weight.grad is not None and router.gate.weight.grad.abs().sum() > 0


def test_balance_loss_uniform_routing_is_one():
    """Perfectly balanced routing gives exactly 1: tokens c*e_i against an identity gate are each routed
    to their own expert (f uniform) and their probabilities are permutations of one another (P uniform).
    Zero gate weights (uniform probabilities, tied top-k) also give 1, since P alone is uniform."""
    n = 4
    router = TokenRouter(n, n, top_k=1).double()
    with torch.no_grad():
        router.gate.weight.copy_(torch.eye(n, dtype=torch.float64))
    x = 3.0 * torch.eye(n, dtype=torch.float64).repeat(5, 1)  # 20 tokens, 5 per expert
    gates, aux = router(x, None)
    assert torch.equal(gates.argmax(-1), torch.arange(n).repeat(5))
    assert aux["balance"].item() == pytest.approx(1.0, abs=1e-6)

    flat = TokenRouter(6, 5, top_k=2).double()
    with torch.no_grad():
        flat.gate.weight.zero_()
    _, aux = flat(torch.randn(3, 4, 6, dtype=torch.float64), None)
    assert aux["balance"].item() == pytest.approx(1.0, abs=1e-6)


def test_balance_loss_collapsed_routing_is_large():
    """When every token goes to the same expert the loss is N * p_max > 1: it penalizes imbalance."""
    n = 4
    router = TokenRouter(n, n, top_k=1).double()
    with torch.no_grad():
        router.gate.weight.copy_(torch.eye(n, dtype=torch.float64))
    x = torch.zeros(10, n, dtype=torch.float64)
    x[:, 2] = 3.0
    _, aux = router(x, None)
    p_max = math.exp(3.0) / (math.exp(3.0) + n - 1)
    assert aux["balance"].item() == pytest.approx(n * p_max, rel=1e-5)
    assert aux["balance"].item() > 2.0


@pytest.mark.parametrize("top_p", [None, 0.5])
@pytest.mark.parametrize("seed", [0, 1])
def test_load_counters_accumulate_and_reset(top_p, seed):
    """`load` counts token-expert assignments per expert and `tokens` counts tokens, summed over the
    forwards recorded (`record`: the adapted layer's call in a real forward); reset_stats() zeroes both."""
    router = token_router(seed, 8, 6, 3, top_p=top_p)
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(2, 5, 8, generator=g, dtype=torch.float64), torch.randn(7, 8, generator=g).double()]
    load = torch.zeros(6, dtype=torch.float64)
    tokens = 0
    for x in xs:
        gates, _ = reference_token_gates(router, x, top_p=top_p)
        router.record(router(x, None)[0], None)
        load += (gates.reshape(-1, 6) > 0).sum(0)
        tokens += gates.reshape(-1, 6).shape[0]
        torch.testing.assert_close(router.load.double(), load, rtol=0, atol=0)
        assert router.tokens.item() == tokens
    if top_p is None:
        assert router.load.sum().item() == 3 * tokens
    router.reset_stats()
    assert torch.count_nonzero(router.load) == 0 and router.tokens.item() == 0


def test_token_router_cannot_be_merged():
    """Token routing depends on each token, so per-task gates (and merging) are refused."""
    with pytest.raises(ValueError, match="token"):
        TokenRouter(4, 3, 2).task_gates(0)


@pytest.mark.parametrize(("n_experts", "top_k"), [(4, 0), (4, 5), (1, 2), (3, -1)])
def test_token_router_invalid_top_k(n_experts, top_k):
    """top_k must lie in 1..n_experts."""
    with pytest.raises(ValueError, match="top_k"):
        TokenRouter(8, n_experts, top_k)


@pytest.mark.parametrize("top_p", [0.0, -0.2, 1.0001, 2.0])
def test_token_router_invalid_top_p(top_p):
    """top_p must lie in (0, 1]."""
    with pytest.raises(ValueError, match="top_p"):
        TokenRouter(8, 4, 2, top_p=top_p)


# ---------------------------------------------------------------- MoRE rank selector


def selector(seed, d_in=6, n_tasks=3, n_experts=4, **kwargs):
    torch.manual_seed(seed)
    sel = TaskRankSelector(d_in, n_tasks, n_experts, **kwargs).double()
    with torch.no_grad():  # make tasks select different experts
        sel.gate.bias.copy_(torch.randn(n_experts, dtype=torch.float64) * 2)
        sel.task_embedding.normal_()
    return sel


def reference_contrastive(x, embedding, task_ids, tau, pooling):
    """CE(normalize(pooled x) @ normalize(E)^T / tau, task), one example at a time."""
    losses = []
    for b in range(x.shape[0]):
        pooled = x[b] if x.dim() == 2 else (x[b, 0] if pooling == "first" else x[b].mean(0))
        z = pooled / pooled.norm()
        logits = [float(z @ (e / e.norm())) / tau for e in embedding]
        losses.append(math.log(sum(math.exp(v) for v in logits)) - logits[int(task_ids[b])])
    return sum(losses) / len(losses)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_selector_gates_exact_one_hot(seed):
    """Forward gates are exactly one-hot (weight 1.0 on argmax of the task's probs, exact zeros elsewhere)
    and shaped (B, 1, E) per example; task_gates/selected agree with the same argmax."""
    sel = selector(seed)
    task_ids = torch.tensor([0, 2, 1, 1, 0])
    x = torch.randn(5, 4, 6, dtype=torch.float64)
    gates, aux = sel(x, task_ids)
    probs = sel.probs().detach()
    assert probs.shape == (3, 4)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, dtype=torch.float64))
    expected = F.one_hot(probs[task_ids].argmax(-1), 4).double().view(5, 1, 4)
    assert gates.shape == (5, 1, 4)
    assert torch.equal(gates.detach(), expected)
    assert torch.equal(sel.selected(), probs.argmax(-1))
    for t in range(3):
        assert torch.equal(sel.task_gates(t), F.one_hot(probs[t].argmax(), 4).float())
    assert set(aux) == {"contrastive"}
    gates_2d, _ = sel(x[:, 0], task_ids)
    assert torch.equal(gates_2d.detach(), expected.view(5, 4))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_selector_straight_through_gradient(seed):
    """The straight-through estimator: a loss through an ExpertBank gives gradient to gate.weight,
    gate.bias and task_embedding, equal to backpropagating dL/dgates through the softmax probs p."""
    sel = selector(seed)
    bank = ExpertBank(6, 5, [1, 2, 3, 4], [1.0, 0.5, 2.0, 0.25], nested=True, linear_scaling=True).double()
    with torch.no_grad():
        bank.lora_B.normal_()
    task_ids = torch.tensor([0, 1, 2, 1])
    x = torch.randn(4, 3, 6, dtype=torch.float64)
    target = torch.randn(4, 3, 5, dtype=torch.float64)
    params = [sel.gate.weight, sel.gate.bias, sel.task_embedding]

    gates, _ = sel(x, task_ids)
    loss = ((bank(x, gates) - target) ** 2).sum()
    d_gates = torch.autograd.grad(loss, gates, retain_graph=True)[0]
    got = torch.autograd.grad(loss, params)
    for grad in got:
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0

    p = sel.probs()[task_ids].view(4, 1, 4)
    want = torch.autograd.grad((d_gates.detach() * p).sum(), params)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("pooling", ["first", "mean"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_contrastive_loss_matches_formula(pooling, seed):
    """The contrastive aux loss equals CE(normalize(pooled x) @ normalize(E)^T / tau, task_ids) with the
    first token ("first") or the sequence mean ("mean"); 2-D inputs are used as they are."""
    sel = selector(seed, pooling=pooling, temperature=0.1 * (seed + 1))
    task_ids = torch.tensor([2, 0, 1, 0, 2, 1])
    x = torch.randn(6, 5, 6, dtype=torch.float64)
    _, aux = sel(x, task_ids)
    want = reference_contrastive(x, sel.task_embedding.detach(), task_ids, sel.temperature, pooling)
    assert aux["contrastive"].item() == pytest.approx(want, rel=1e-5)
    _, aux_2d = sel(x[:, 1], task_ids)
    want_2d = reference_contrastive(x[:, 1], sel.task_embedding.detach(), task_ids, sel.temperature, pooling)
    assert aux_2d["contrastive"].item() == pytest.approx(want_2d, rel=1e-5)
    aux["contrastive"].backward()
    assert sel.task_embedding.grad.abs().sum() > 0


def test_contrastive_pooling_modes_differ():
    """ "first" and "mean" pooling really read different positions (guards against one mode ignoring it)."""
    first = selector(0, pooling="first")
    mean = selector(0, pooling="mean")
    x = torch.randn(4, 6, 6, dtype=torch.float64)
    ids = torch.tensor([0, 1, 2, 0])
    assert first(x, ids)[1]["contrastive"].item() != pytest.approx(mean(x, ids)[1]["contrastive"].item())


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_more_selector_trains_and_selection_changes(optimizer):
    """MoRE defect 1 (the official selector never trains) must not recur: with frozen nested experts
    (ranks 1..8, orthogonal components) and a target that equals base + the rank-4 expert exactly, a
    selector initialised to pick rank 8 (rank 4 second) and trained on MSE alone moves to rank 4, and
    the loss falls to zero."""
    d = 8
    ranks = list(range(1, 9))
    torch.manual_seed(0)
    bank = ExpertBank(d, d, ranks, [1.0] * 8, nested=True).double()
    with torch.no_grad():
        bank.lora_A.copy_(torch.eye(d, dtype=torch.float64))
        bank.lora_B.copy_(torch.eye(d, dtype=torch.float64))
    bank.requires_grad_(False)
    base = nn.Linear(d, d).double().requires_grad_(False)
    sel = TaskRankSelector(d, 1, 8).double()
    with torch.no_grad():
        sel.gate.weight.zero_()
        sel.gate.bias.copy_(torch.tensor([0, 0, 0, 1.0, 0, 0, 0, 2.0], dtype=torch.float64))
    context = RoutingContext(task_ids=torch.zeros(16, dtype=torch.long))
    layer = AdaptedLinear(base, bank, sel, context)

    x = torch.randn(16, 5, d, dtype=torch.float64)
    with torch.no_grad():
        target = base(x) + bank(x, F.one_hot(torch.tensor(3), 8).double())
    trainable = [sel.gate.weight, sel.gate.bias, sel.task_embedding]
    assert sorted(n for n, p in layer.named_parameters() if p.requires_grad) == [
        "router.gate.bias",
        "router.gate.weight",
        "router.task_embedding",
    ]
    opt = torch.optim.Adam(trainable, lr=0.05) if optimizer == "adam" else torch.optim.SGD(trainable, lr=1.0)

    assert sel.selected().item() == 7  # rank 8
    first_loss = None
    for _ in range(60):
        loss = F.mse_loss(layer(x), target)
        first_loss = loss.item() if first_loss is None else first_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    final_loss = F.mse_loss(layer(x), target).item()
    assert sel.selected().item() == 3  # rank 4
    assert ranks[sel.selected().item()] == 4
    assert first_loss > 0.1
    assert final_loss < 1e-12 * first_loss
    torch.testing.assert_close(layer.delta_weight(0), bank.lora_B[:, :4] @ bank.lora_A[:4], rtol=0, atol=0)


# ---------------------------------------------------------------- task routers


@pytest.mark.parametrize("n", [1, 3, 5])
def test_task_router_hard_is_one_hot(n):
    """Hard task routing (Multi-LoRA) sends task t to expert t with weight exactly 1, per example."""
    router = TaskRouter(n, n)
    task_ids = torch.randint(0, n, (7,), generator=torch.Generator().manual_seed(n))
    x = torch.randn(7, 3, 4, dtype=torch.float64)
    gates, aux = router(x, task_ids)
    assert aux == {}
    assert gates.shape == (7, 1, n) and gates.dtype == x.dtype
    for b, t in enumerate(task_ids.tolist()):
        row = torch.zeros(n, dtype=torch.float64)
        row[t] = 1.0
        assert torch.equal(gates[b, 0], row)
    for t in range(n):
        assert torch.equal(router.task_gates(t), torch.eye(n)[t])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_task_router_soft_matches_softmax(seed):
    """Soft task routing (MoELoRA): each example's gates are softmax(W e_t + b) of its task embedding,
    summing to 1; task_gates(t) is the same row, detached; the gate and embeddings get gradient."""
    torch.manual_seed(seed)
    router = TaskRouter(4, 3, embedding_dim=5).double()
    with torch.no_grad():
        router.task_embedding.normal_()
    task_ids = torch.tensor([3, 0, 2, 2, 1])
    x = torch.randn(5, 2, 7, dtype=torch.float64)
    gates, _ = router(x, task_ids)
    assert gates.shape == (5, 1, 3)
    w, bias, emb = router.gate.weight.detach(), router.gate.bias.detach(), router.task_embedding.detach()
    for b, t in enumerate(task_ids.tolist()):
        logits = [float(w[i] @ emb[t] + bias[i]) for i in range(3)]
        norm = sum(math.exp(v) for v in logits)
        want = torch.tensor([math.exp(v) / norm for v in logits], dtype=torch.float64)
        torch.testing.assert_close(gates[b, 0].detach(), want)
        torch.testing.assert_close(router.task_gates(t), want)
    torch.testing.assert_close(gates.sum(-1).detach(), torch.ones(5, 1, dtype=torch.float64))
    assert not router.task_gates(0).requires_grad
    (gates * torch.randn(5, 1, 3, dtype=torch.float64)).sum().backward()
    assert router.gate.weight.grad.abs().sum() > 0 and router.task_embedding.grad.abs().sum() > 0


def test_task_router_hard_needs_one_expert_per_task():
    """Hard routing with n_tasks != n_experts is a configuration error."""
    with pytest.raises(ValueError, match="expert"):
        TaskRouter(3, 4)
    TaskRouter(3, 4, embedding_dim=8)  # soft routing has no such constraint


def test_shared_router():
    """The shared router (plain LoRA) returns no gates and no aux losses, and merges with gates None."""
    gates, aux = SharedRouter()(torch.randn(2, 3, 4), None)
    assert gates is None and aux == {}
    assert SharedRouter().task_gates(0) is None


@pytest.mark.parametrize(
    "router",
    [TaskRouter(2, 2), TaskRouter(2, 3, embedding_dim=4), TaskRankSelector(4, 2, 3)],
    ids=["hard", "soft", "selector"],
)
def test_task_routers_require_task_ids(router):
    """Routers that route by task fail loudly, naming task_ids, when none are given."""
    with pytest.raises(ValueError, match="task_ids"):
        router(torch.randn(2, 3, 4), None)


@pytest.mark.parametrize("top_p", [None, 0.6])
def test_token_mask_keeps_padding_out_of_balance_and_load(top_p):
    """With a token mask, the balance loss and the load counters are those of the real tokens alone
    (the same router run on just those tokens); the gates of every position are unchanged."""
    router = token_router(3, 8, 4, 2, top_p=top_p)
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    gates, aux = router(x, None, mask)
    router.record(gates, mask)
    load, tokens = router.load.clone(), router.tokens.clone()
    router.reset_stats()
    real_gates, real_aux = router(x[mask.bool()], None)
    router.record(real_gates, None)
    torch.testing.assert_close(aux["balance"], real_aux["balance"])
    torch.testing.assert_close(load, router.load)
    assert tokens == router.tokens == mask.sum()
    torch.testing.assert_close(gates[mask.bool()], real_gates)
    torch.testing.assert_close(gates, router(x, None)[0])


def test_rank_selector_initialisation_options():
    """zero_gate_bias starts the gate without a preferred rank; embedding_std scales the task embeddings;
    with large embeddings and no bias, tasks start on different ranks."""
    torch.manual_seed(0)
    paper = TaskRankSelector(64, 8, 8)
    assert paper.gate.bias.abs().sum() > 0 and paper.task_embedding.std() < 0.02
    torch.manual_seed(0)
    spread = TaskRankSelector(64, 8, 8, embedding_std=1.0, zero_gate_bias=True)
    assert torch.equal(spread.gate.bias, torch.zeros(8))
    assert 0.8 < spread.task_embedding.std() < 1.2
    assert len(set(spread.selected().tolist())) > 1


def test_rank_selector_starting_at_the_largest_rank_can_leave_it():
    """start_at_max_rank: every task first selects the largest expert, whatever its embedding; the
    straight-through gradient can then move a task to another rank."""
    torch.manual_seed(0)
    sel = TaskRankSelector(16, 3, 4, start_at_max_rank=True)
    assert sel.selected().tolist() == [3, 3, 3]
    optimizer = torch.optim.SGD(sel.parameters(), lr=1.0)
    x, ids = torch.randn(6, 5, 16), torch.tensor([0, 1, 2, 0, 1, 2])
    for _ in range(3):  # a loss that rewards expert 1's gate for task 0
        gates, _ = sel(x, ids)
        optimizer.zero_grad()
        (-gates[ids == 0, ..., 1].sum()).backward()
        optimizer.step()
    assert sel.selected()[0] == 1


def test_rank_selector_without_learned_selection_keeps_its_first_choice():
    """learn_selection=False (the official code's effective behaviour): the first random task-to-rank map
    is used in every forward pass, no gradient reaches the gate, while the contrastive loss still trains
    the task embeddings."""
    torch.manual_seed(0)
    sel = TaskRankSelector(16, 3, 4, embedding_std=1.0, zero_gate_bias=True, learn_selection=False)
    first = sel.selected().clone()
    x = torch.randn(6, 5, 16)
    ids = torch.tensor([0, 1, 2, 0, 1, 2])
    gates, aux = sel(x, ids)
    assert torch.equal(gates.squeeze(1), F.one_hot(first[ids], 4).float())
    (gates.sum() + aux["contrastive"]).backward()
    assert sel.gate.weight.grad is None and sel.task_embedding.grad is not None
    with torch.no_grad():
        sel.gate.weight.add_(torch.randn_like(sel.gate.weight) * 10)  # training the gate changes nothing
    assert torch.equal(sel.selected(), first)
    assert torch.equal(sel.task_gates(1), F.one_hot(first[1], 4).float())
