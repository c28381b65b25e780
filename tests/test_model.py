"""Tests for rankmix.model: merge, PEFT export, save/load, mixed batches, generation, losses, counts,
errors."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from rankmix import (
    HiLoConfig,
    LoRAConfig,
    MoELoRAConfig,
    MoLAConfig,
    MoREConfig,
    MultiLoRAConfig,
    RankMixModel,
    get_model,
)
from rankmix.layers import AdaptedLinear, TaskRankSelector, TokenRouter

ARCHS = ("llama", "bert", "t5", "gpt2")
TASKS = ["rte", "mrpc", "cola"]
TASK_METHODS = ("more", "multilora", "moelora", "lora")
ATOL = RTOL = 1e-5


def method_config(method: str, **kw):
    """A small config of `method` on every linear layer of the blocks."""
    if method == "more":
        return MoREConfig(tasks=TASKS, max_rank=8, alpha=32, **kw)
    if method == "multilora":
        return MultiLoRAConfig(tasks=TASKS, r=4, **kw)
    if method == "moelora":
        return MoELoRAConfig(tasks=TASKS, experts=3, rank=4, task_embedding_dim=8, **kw)
    if method == "lora":
        return LoRAConfig(r=4, **kw)
    if method == "hilo":
        return HiLoConfig(experts="24", ranks="48", top_k=2, **kw)
    raise ValueError(method)


def build(tiny, arch: str, method: str, layers: int = 2, **kw):
    """(pristine base copy, adapted model in eval mode with randomized adapters)."""
    base = tiny.base(arch, layers=layers)
    pristine = copy.deepcopy(base)
    torch.manual_seed(7)
    model = get_model(base, method_config(method, **kw)).eval()
    tiny.randomize(model)
    return pristine, model


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, atol=ATOL, rtol=RTOL)


def per_task_ids(model, task: int, n: int):
    """task_ids for a batch of `n` examples of `task`, or None for task-agnostic methods."""
    return [task] * n if model.adapter_config.task_names else None


def expected_ranks(model, task: str) -> dict[str, int]:
    """Each module's rank for `task`: the selected rank, or the LoRA rank for task-agnostic LoRA."""
    if model.adapter_config.task_names:
        return model.selected_ranks()[task]
    return {name: model.adapter_config.r for name, _ in model.adapted_modules()}


task_cases = pytest.mark.parametrize(("arch", "method"), [(a, m) for a in ARCHS for m in TASK_METHODS])


# -- per-task equivalences -------------------------------------------------------------------------


def test_more_tasks_select_different_ranks(tiny):
    """The randomized MoRE selectors give tasks different ranks (so the per-task tests are not vacuous)."""
    _, model = build(tiny, "llama", "more")
    ranks = model.selected_ranks()
    assert set(ranks) == set(TASKS)
    assert ranks["rte"] != ranks["mrpc"] and ranks["mrpc"] != ranks["cola"]
    assert all(1 <= r <= 8 for per_task in ranks.values() for r in per_task.values())


@task_cases
def test_merged_equals_unmerged(tiny, arch, method):
    """merge_and_unload(task=t) gives a plain model with the adapted model's outputs for task t."""
    pristine, model = build(tiny, arch, method)
    batch = tiny.batch(arch)
    n = batch["input_ids"].shape[0]
    with torch.no_grad():
        base_out = tiny.output(pristine(**batch))
        for t, task in enumerate(TASKS):
            expected = tiny.output(model(**batch, task_ids=per_task_ids(model, t, n)))
            merged = copy.deepcopy(model).merge_and_unload(task=task)
            assert type(merged) is type(pristine)
            assert not any(isinstance(m, AdaptedLinear) for m in merged.modules())
            got = tiny.output(merged(**batch))
            assert close(got, expected), (task, (got - expected).abs().max())
            assert not close(got, base_out), "the adapter should change the output"


@task_cases
def test_export_lora_loads_in_stock_peft(tiny, arch, method, tmp_path):
    """export_lora(task) writes a PEFT LoRA whose outputs match: each module holds the task's rank, zero-
    padded to the largest one, with one lora_alpha equal to r (no rank or alpha pattern, which vLLM
    would ignore)."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    pristine, model = build(tiny, arch, method)
    batch = tiny.batch(arch)
    n = batch["input_ids"].shape[0]
    names = [name for name, _ in model.adapted_modules()]
    for t, task in enumerate(TASKS):
        folder = model.export_lora(task=task, path=tmp_path / task)
        ranks = expected_ranks(model, task)
        tensors = load_file(folder / "adapter_model.safetensors")
        assert len(tensors) == 2 * len(names)
        config = json.loads((folder / "adapter_config.json").read_text())
        top = max(ranks.values())
        assert config["r"] == config["lora_alpha"] == top
        assert not config.get("rank_pattern") and not config.get("alpha_pattern")
        for name, module in model.adapted_modules():
            a = tensors[f"base_model.model.{name}.lora_A.weight"]
            b = tensors[f"base_model.model.{name}.lora_B.weight"]
            d_out, d_in = module.bank.lora_B.shape[0], module.bank.lora_A.shape[1]
            assert a.shape == (top, d_in) and b.shape == (d_out, top), name
            assert not a[ranks[name] :].any() and not b[:, ranks[name] :].any(), name  # the padding

        peft_model = PeftModel.from_pretrained(copy.deepcopy(pristine), folder).eval()
        loaded = {
            name.removeprefix("base_model.model."): m.r["default"]
            for name, m in peft_model.named_modules()
            if isinstance(m, LoraLayer)
        }
        assert loaded == dict.fromkeys(ranks, top)
        with torch.no_grad():
            expected = tiny.output(model(**batch, task_ids=per_task_ids(model, t, n)))
            got = tiny.output(peft_model(**batch))
        assert close(got, expected), (task, (got - expected).abs().max())


@pytest.mark.parametrize(("arch", "method"), [(a, m) for a in ARCHS for m in (*TASK_METHODS, "hilo")])
def test_save_load_round_trip(tiny, arch, method, tmp_path):
    """save_pretrained then from_pretrained onto a pristine base copy reproduces the outputs."""
    pristine, model = build(tiny, arch, method)
    batch = tiny.batch(arch)
    ids = torch.tensor([0, 2, 1, 0]) if model.adapter_config.task_names else None
    model.save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    assert meta["format_version"] == 1 and meta["adapter"]["method"] == type(model.adapter_config).method

    loaded = RankMixModel.from_pretrained(copy.deepcopy(pristine), tmp_path).eval()
    assert loaded.adapter_config == model.adapter_config
    assert [n for n, _ in loaded.adapted_modules()] == [n for n, _ in model.adapted_modules()]
    if model.adapter_config.task_names:
        assert loaded.selected_ranks() == model.selected_ranks()
    with torch.no_grad():
        expected = tiny.output(model(**batch, task_ids=ids))
        got = tiny.output(loaded(**batch, task_ids=ids))
        base_out = tiny.output(pristine(**batch))
    assert torch.equal(got, expected)
    assert not close(got, base_out)


@pytest.mark.parametrize("is_trainable", [False, True])
def test_from_pretrained_is_trainable(tiny, tmp_path, is_trainable):
    """from_pretrained freezes the loaded adapter unless is_trainable=True; the base stays frozen."""
    pristine, model = build(tiny, "llama", "more")
    model.save_pretrained(tmp_path)
    loaded = RankMixModel.from_pretrained(pristine, tmp_path, is_trainable=is_trainable)
    adapter = [p for _, m in loaded.adapted_modules() for p in (*m.bank.parameters(), *m.router.parameters())]
    assert adapter and all(p.requires_grad == is_trainable for p in adapter)
    assert loaded.parameter_counts()["trainable"] == (sum(p.numel() for p in adapter) if is_trainable else 0)
    frozen = [p for p in loaded.base_model.parameters() if all(p is not q for q in adapter)]
    assert frozen and not any(p.requires_grad for p in frozen)


@task_cases
def test_mixed_batch_equals_per_task(tiny, arch, method):
    """A batch mixing tasks gives each example the output of a batch of its task alone."""
    _, model = build(tiny, arch, method)
    batch = tiny.batch(arch)
    n = batch["input_ids"].shape[0]
    mixed = [0, 2, 1, 0]
    with torch.no_grad():
        out = tiny.output(model(**batch, task_ids=torch.tensor(mixed)))
        for t, task in enumerate(TASKS):
            rows = [i for i, x in enumerate(mixed) if x == t]
            alone = tiny.output(model(**tiny.rows(batch, rows), task_ids=[task] * len(rows)))
            assert close(out[rows], alone), (task, (out[rows] - alone).abs().max())
        first = tiny.output(model(**batch, task_ids=[0] * n))
        second = tiny.output(model(**batch, task_ids=[1] * n))
    if model.adapter_config.task_names:
        assert not close(first, second), "tasks should be routed differently"
    else:
        assert torch.equal(first, second), "task-agnostic LoRA must ignore task ids"


# -- generation ------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "t5"])
@pytest.mark.parametrize("num_beams", [1, 2])
def test_generate_matches_merged(tiny, arch, num_beams):
    """Greedy and beam generate with task_ids equal the merged model's, also for mixed-task batches."""
    pristine, model = build(tiny, arch, "more")
    batch = tiny.batch(arch, batch_size=3, seq_len=5)
    batch.pop("decoder_input_ids", None)
    kw = {
        "max_new_tokens": 6,
        "min_new_tokens": 6,
        "do_sample": False,
        "num_beams": num_beams,
        "pad_token_id": 0,
    }
    n = batch["input_ids"].shape[0]
    merged = {t: copy.deepcopy(model).merge_and_unload(task=t).eval() for t in range(len(TASKS))}
    with torch.no_grad():
        from_merged = {t: m.generate(**batch, **kw) for t, m in merged.items()}
        base_seq = pristine.generate(**batch, **kw)
    for t in range(len(TASKS)):
        got = model.generate(**batch, task_ids=[t] * n, **kw)
        assert torch.equal(got, from_merged[t]), t
    assert any(not torch.equal(seq, base_seq) for seq in from_merged.values())
    mixed = [2, 0, 1]
    got = model.generate(**batch, task_ids=mixed, **kw)
    for i, t in enumerate(mixed):
        assert torch.equal(got[i], from_merged[t][i]), (i, t)


# -- losses and gradients --------------------------------------------------------------------------


def lm_cross_entropy(arch: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The task loss recomputed from logits (shifted for decoder-only models)."""
    if arch != "t5":
        logits, labels = logits[:, :-1], labels[:, 1:]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1))


def capture_inputs(model):
    """Record each adapted module's input during the next forward; returns (records, hook handles)."""
    records: list[tuple[AdaptedLinear, torch.Tensor, str]] = []
    handles = [
        m.register_forward_hook(lambda mod, args, out, name=name: records.append((mod, args[0], name)))
        for name, m in model.adapted_modules()
    ]
    return records, handles


@pytest.mark.parametrize("arch", ["llama", "t5"])
def test_more_loss_adds_weighted_contrastive_term(tiny, arch):
    """out.loss = task CE + contrastive_weight * mean over all modules (decoder included) of L_cl."""
    _, model = build(tiny, arch, "more", contrastive_weight=0.7)
    batch = tiny.batch(arch, labels=True)
    task_ids = torch.tensor([0, 1, 2, 1])
    records, handles = capture_inputs(model)
    out = model(**batch, task_ids=task_ids)
    for h in handles:
        h.remove()
    assert set(out.aux_losses) == {"contrastive"}
    aux = out.aux_losses["contrastive"]
    assert aux > 0
    with torch.no_grad():
        per_module = [mod.router.contrastive_loss(x, task_ids) for mod, x, _ in records]
    assert len(per_module) == len(list(model.adapted_modules()))
    if arch == "t5":
        assert any(name.startswith("decoder.") for _, _, name in records)
    assert torch.allclose(aux, torch.stack(per_module).mean(), atol=ATOL)
    ce = lm_cross_entropy(arch, out.logits, batch["labels"])
    assert torch.allclose(out.loss, ce + 0.7 * aux, atol=ATOL)


def test_hilo_loss_adds_weighted_balance_term(tiny):
    """out.loss = task CE + balance_weight * mean over modules of the Switch balance loss."""
    _, model = build(tiny, "llama", "hilo", balance_weight=0.5)
    batch = tiny.batch("llama", labels=True)
    records, handles = capture_inputs(model)
    out = model(**batch)
    for h in handles:
        h.remove()
    assert set(out.aux_losses) == {"balance"}
    aux = out.aux_losses["balance"]
    with torch.no_grad():
        per_module = [mod.router(x, None)[1]["balance"] for mod, x, _ in records]
    assert torch.allclose(aux, torch.stack(per_module).mean(), atol=ATOL)
    assert aux >= 1.0 - 1e-6  # N * sum f_i P_i is at least 1 for top-k routing
    ce = lm_cross_entropy("llama", out.logits, batch["labels"])
    assert torch.allclose(out.loss, ce + 0.5 * aux, atol=ATOL)


def test_an_aux_loss_no_config_weighs_is_an_error_not_dropped(tiny, monkeypatch):
    """A router reporting a loss under a name its config does not weigh (a typo) fails the forward."""
    _, model = build(tiny, "llama", "hilo")
    router = next(m.router for _, m in model.adapted_modules())
    forward = type(router).forward
    monkeypatch.setattr(router, "forward", lambda *a: (forward(router, *a)[0], {"balanse": torch.ones(())}))
    with pytest.raises(ValueError, match=r"auxiliary losses \['balanse'\] that hilo does not weigh"):
        model(**tiny.batch("llama", labels=True))


def test_more_backward_reaches_selector(tiny):
    """The loss gradient reaches every selector gate and task embedding (STE), and no base weight."""
    _, model = build(tiny, "llama", "more")
    batch = tiny.batch("llama", labels=True)
    model(**batch, task_ids=["rte", "mrpc", "cola", "rte"]).loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    for suffix in ("router.gate.weight", "router.task_embedding", "bank.lora_A", "bank.lora_B"):
        found = [g for name, g in grads.items() if name.endswith(suffix)]
        assert len(found) == len(list(model.adapted_modules())), suffix
        assert all(g is not None and g.abs().sum() > 0 for g in found), suffix
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


# -- structure and parameter counts ----------------------------------------------------------------


def llama_projections(config) -> dict[str, tuple[int, int]]:
    """(d_in, d_out) of the 7 projections of a Llama block, from the config's sizes."""
    h, i = config.hidden_size, config.intermediate_size
    head_dim = h // config.num_attention_heads
    q, kv = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    return {
        "q_proj": (h, q),
        "k_proj": (h, kv),
        "v_proj": (h, kv),
        "o_proj": (q, h),
        "gate_proj": (h, i),
        "up_proj": (h, i),
        "down_proj": (i, h),
    }


def closed_form_counts(config, experts: list[int], ranks: list[int], top_k: int, base_params: int) -> dict:
    """Counts for token-routed experts (bias-free routers) or, with top_k=0 and one expert, plain LoRA."""
    adapter = router = active = 0
    for e, r in zip(experts, ranks, strict=True):
        for d_in, d_out in llama_projections(config).values():
            adapter += e * r * (d_in + d_out)
            router += e * d_in if top_k else 0
            active += (top_k or 1) * r * (d_in + d_out)
    return {
        "trainable": adapter + router,
        "adapter": adapter,
        "router": router,
        "active_per_token": active,
        "total": base_params + adapter + router,
    }


def check_banks(model, config, experts: list[int], ranks: list[int], routed: bool) -> None:
    """Every projection of layer l has experts[l] experts of rank ranks[l] (and a matching router)."""
    projections = llama_projections(config)
    seen = set()
    for name, m in model.adapted_modules():
        parts = name.split(".")
        layer, proj = int(parts[2]), parts[-1]
        seen.add((layer, proj))
        d_in, d_out = projections[proj]
        e, r = experts[layer], ranks[layer]
        assert m.bank.ranks == [r] * e, name
        assert m.bank.lora_A.shape == (e * r, d_in) and m.bank.lora_B.shape == (d_out, e * r), name
        if routed:
            assert m.router.gate.weight.shape == (e, d_in) and m.router.gate.bias is None, name
    assert seen == {(layer, p) for layer in range(len(experts)) for p in projections}


@pytest.mark.parametrize(
    ("layers", "experts"),
    [(8, [2, 2, 4, 4, 6, 6, 8, 8]), (6, [2, 2, 4, 4, 6, 8])],  # 6 layers: groups of 2, 2, 1, 1
)
def test_hilo_2468_structure_and_counts(tiny, layers, experts):
    """HiLo experts/ranks "2468" spread over layer groups; counts match the closed form."""
    base = tiny.base("llama", layers=layers)
    base_params = sum(p.numel() for p in base.parameters())
    model = get_model(base, HiLoConfig(experts="2468", ranks="2468", top_k=2, target_modules="all-linear"))
    check_banks(model, base.config, experts, experts, routed=True)
    assert model.parameter_counts() == closed_form_counts(base.config, experts, experts, 2, base_params)


def test_mola_and_lora_counts(tiny):
    """MoLA "2468" rank 8 and LoRA r=8 on an 8-layer model match the closed-form counts."""
    experts = [2, 2, 4, 4, 6, 6, 8, 8]
    base = tiny.base("llama", layers=8)
    base_params = sum(p.numel() for p in base.parameters())
    mola = get_model(copy.deepcopy(base), MoLAConfig(experts="2468", rank=8, top_k=2))
    check_banks(mola, base.config, experts, [8] * 8, routed=True)
    assert mola.parameter_counts() == closed_form_counts(base.config, experts, [8] * 8, 2, base_params)
    lora = get_model(base, LoRAConfig(r=8))
    check_banks(lora, base.config, [1] * 8, [8] * 8, routed=False)
    assert lora.parameter_counts() == closed_form_counts(base.config, [1] * 8, [8] * 8, 0, base_params)


def test_more_counts(tiny):
    """MoRE: one rank-R LoRA plus a selector (T x d_in embedding, d_in x R gate with bias) per module;
    active parameters per token use each module's mean selected rank."""
    pristine, model = build(tiny, "llama", "more")
    base_params = sum(p.numel() for p in pristine.parameters())
    projections = llama_projections(pristine.config)
    ranks = model.selected_ranks()
    adapter = router = 0
    active = 0.0
    for name, _ in model.adapted_modules():
        d_in, d_out = projections[name.rsplit(".", 1)[-1]]
        adapter += 8 * (d_in + d_out)
        router += len(TASKS) * d_in + 8 * d_in + 8
        active += sum(ranks[t][name] for t in TASKS) / len(TASKS) * (d_in + d_out)
    assert model.parameter_counts() == {
        "trainable": adapter + router,
        "adapter": adapter,
        "router": router,
        "active_per_token": round(active),
        "total": base_params + adapter + router,
    }


# -- token routing statistics ----------------------------------------------------------------------


def test_router_stats_top_k_and_top_p(tiny):
    """Expert load shares sum to 1; top-k uses exactly k experts per token, top-p (same weights) fewer."""
    base = tiny.base("llama", layers=4)
    torch.manual_seed(3)
    top_k = get_model(copy.deepcopy(base), HiLoConfig(experts="24", ranks="24", top_k=2)).eval()
    tiny.randomize(top_k)
    top_p = get_model(base, HiLoConfig(experts="24", ranks="24", top_k=2, top_p=0.5)).eval()
    with torch.no_grad():
        pairs = zip(top_k.adapted_modules(), top_p.adapted_modules(), strict=True)
        for (name_k, m_k), (name_p, m_p) in pairs:
            assert name_k == name_p
            m_p.load_state_dict(m_k.state_dict())
    assert top_k.router_stats() == {}
    batch = tiny.batch("llama", batch_size=4, seq_len=9)
    n_tokens = 4 * 9
    with torch.no_grad():
        top_k(**batch)
        top_p(**batch)
    stats_k = top_k.router_stats()["expert_load"]
    stats_p = top_p.router_stats()["expert_load"]
    assert set(stats_k) == set(stats_p) == {name for name, _ in top_k.adapted_modules()}
    for stats in (stats_k, stats_p):
        for name, s in stats.items():
            n_experts = top_k.get_submodule(name).bank.n_experts
            assert len(s["share"]) == n_experts
            assert abs(sum(s["share"]) - 1.0) < 1e-6 and min(s["share"]) >= 0, name
    assert all(s["experts_per_token"] == 2.0 for s in stats_k.values())
    assert all(1.0 <= stats_p[n]["experts_per_token"] <= 2.0 for n in stats_p)
    mean_k = sum(s["experts_per_token"] for s in stats_k.values()) / len(stats_k)
    mean_p = sum(s["experts_per_token"] for s in stats_p.values()) / len(stats_p)
    assert mean_p < mean_k
    router = next(m.router for _, m in top_k.adapted_modules())
    assert isinstance(router, TokenRouter) and router.tokens == n_tokens
    top_k.router_stats(reset=True)
    assert top_k.router_stats() == {}


def test_padding_is_not_routed_load(tiny):
    """With an attention mask, padded positions are not counted as routed tokens (the balance loss
    uses the same mask: test_routers checks its value against the real tokens alone)."""
    torch.manual_seed(5)
    model = get_model(tiny.base("llama", layers=2), HiLoConfig(experts="4", ranks="2", top_k=2)).eval()
    tiny.randomize(model)
    batch = tiny.batch("llama", batch_size=3, seq_len=6)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1]])
    with torch.no_grad():
        padded = model(input_ids=batch["input_ids"], attention_mask=mask)
    for _, m in model.adapted_modules():
        assert m.router.tokens == mask.sum()
    model.router_stats(reset=True)
    with torch.no_grad():  # the same positions without a mask: every position counts
        model(input_ids=batch["input_ids"])
    assert all(m.router.tokens == mask.numel() for _, m in model.adapted_modules())
    assert padded.aux_losses["balance"] > 0


# -- bad inputs ------------------------------------------------------------------------------------


def test_target_modules_matching_nothing(tiny):
    """Names or a regex that select no linear layer are refused, naming the layers that exist."""
    with pytest.raises(ValueError, match="matches no linear layer"):
        get_model(tiny.base("llama"), LoRAConfig(target_modules=["no_such_proj"]))
    with pytest.raises(ValueError, match="matches no linear layer"):
        get_model(tiny.base("bert"), LoRAConfig(target_modules=r".*\.nothing_here"))
    with pytest.raises(ValueError, match="not a valid regex"):
        get_model(tiny.base("bert"), LoRAConfig(target_modules=r"(unclosed"))


def test_profile_with_more_groups_than_layers(tiny):
    """A profile string with more groups than the model has layers is refused before the model is
    touched: no adapter injected, no parameter frozen."""
    base = tiny.base("llama", layers=4)
    with pytest.raises(ValueError, match="9 groups but the model has only 4 layers"):
        get_model(base, HiLoConfig(experts="123456789", ranks="2", top_k=1))
    assert not any(isinstance(m, AdaptedLinear) for m in base.modules())
    assert all(p.requires_grad for p in base.parameters())


@pytest.mark.parametrize(
    "config",
    [
        HiLoConfig(experts=[2, 2, 2], ranks="2"),
        HiLoConfig(experts="2", ranks=[2, 4, 4, 4, 8]),
        MoLAConfig(experts=[2, 2, 2, 2, 2], rank=4),
    ],
)
def test_per_layer_list_of_wrong_length(tiny, config):
    """A per-layer list must have one entry per layer."""
    with pytest.raises(ValueError, match="one value per layer; the model has 4 layers"):
        get_model(tiny.base("llama", layers=4), config)


@pytest.mark.parametrize("method", ["more", "multilora", "moelora"])
def test_bad_task_ids(tiny, method):
    """Out-of-range ids and unknown names are refused; task-routed methods require task_ids."""
    _, model = build(tiny, "llama", method)
    batch = tiny.batch("llama")
    with pytest.raises(ValueError, match="task id 3 is outside the configured tasks"):
        model(**batch, task_ids=[0, 1, 3, 0])
    with pytest.raises(ValueError, match="task id -1 is outside"):
        model(**batch, task_ids=torch.tensor([0, -1, 1, 0]))
    with pytest.raises(ValueError, match="unknown task 'sst2'"):
        model(**batch, task_ids=["rte", "sst2", "rte", "rte"])
    with pytest.raises(ValueError, match="pass task_ids"):
        model(**batch)
    with pytest.raises(ValueError, match="pass task_ids"):
        model.generate(input_ids=batch["input_ids"], max_new_tokens=2)
    with pytest.raises(ValueError, match="unknown task 'sst2'"):
        copy.deepcopy(model).merge_and_unload(task="sst2")


def test_load_adapter_weights_into_same_configuration(tiny, tmp_path):
    """load_adapter_weights fills an already adapted model of the same configuration (same outputs as
    the saved model) and refuses an adapter saved with another configuration."""
    pristine, model = build(tiny, "llama", "more")
    model.save_pretrained(tmp_path)
    target = get_model(copy.deepcopy(pristine), model.adapter_config).eval()
    target.load_adapter_weights(tmp_path)
    batch = tiny.batch("llama")
    with torch.no_grad():
        assert close(target(**batch, task_ids=[0, 1]).logits, model(**batch, task_ids=[0, 1]).logits)
    other = get_model(copy.deepcopy(pristine), MoREConfig(tasks=model.adapter_config.tasks, max_rank=3))
    with pytest.raises(ValueError, match="another adapter configuration"):
        other.load_adapter_weights(tmp_path)


def test_load_onto_base_with_other_shapes(tiny, tmp_path):
    """An adapter saved on a hidden-32 model does not load onto a hidden-48 one, and the refused
    model is left as it was given: no adapters injected, its trainable flags untouched."""
    _, model = build(tiny, "llama", "more")
    model.save_pretrained(tmp_path)
    other = tiny.base("llama", hidden=48)
    flags = [p.requires_grad for p in other.parameters()]
    with pytest.raises(ValueError, match=r"has shape .* here: the adapter was trained on a base model with"):
        RankMixModel.from_pretrained(other, tmp_path)
    assert not any(isinstance(m, AdaptedLinear) for m in other.modules())
    assert [p.requires_grad for p in other.parameters()] == flags


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupted_weights_file(tiny, tmp_path, damage):
    """Garbage or truncated weights give a clear ValueError, not a safetensors internal error."""
    pristine, model = build(tiny, "llama", "multilora")
    model.save_pretrained(tmp_path)
    weights = tmp_path / "adapter_model.safetensors"
    data = weights.read_bytes()
    garbage = b"\x13\x37 not a safetensors file \xff" * 50
    weights.write_bytes(garbage if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"adapter_model\.safetensors is corrupted or truncated"):
        RankMixModel.from_pretrained(pristine, tmp_path)


def test_token_routed_adapter_cannot_merge_or_export(tiny, tmp_path):
    """HiLo routes per token: merge_and_unload and export_lora refuse and leave the model intact."""
    _, model = build(tiny, "llama", "hilo")
    batch = tiny.batch("llama")
    with torch.no_grad():
        before = model(**batch).logits
    with pytest.raises(ValueError, match=r"token-routed experts .* cannot be merged"):
        model.merge_and_unload()
    with pytest.raises(ValueError, match=r"token-routed experts .* cannot be merged"):
        model.export_lora(task=0, path=tmp_path / "out")
    assert len(list(model.adapted_modules())) == 14
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, before)


def test_more_merge_and_export_need_a_task(tiny, tmp_path):
    """MoRE merges and exports per task: without task=... both refuse and the model is unchanged."""
    _, model = build(tiny, "llama", "more")
    with pytest.raises(ValueError, match="pass task="):
        model.merge_and_unload()
    with pytest.raises(ValueError, match="pass task="):
        model.export_lora(path=tmp_path / "out")
    assert all(isinstance(m, AdaptedLinear) for _, m in model.adapted_modules())
    assert isinstance(next(m.router for _, m in model.adapted_modules()), TaskRankSelector)


def test_frozen_rank_map_is_saved_and_loaded(tiny, tmp_path):
    """MoRE with learn_selection=False saves its frozen task-to-rank map with the adapter, and a model
    loaded from it selects the same ranks (not a fresh random map)."""
    from rankmix import MoREConfig

    config = MoREConfig(tasks=["a", "b", "c"], max_rank=4, learn_selection=False, task_embedding_std=1.0)
    torch.manual_seed(3)
    model = get_model(tiny.base("llama"), config)
    model.save_pretrained(tmp_path)
    torch.manual_seed(4)  # another random state: a map drawn afresh would differ
    loaded = RankMixModel.from_pretrained(tiny.base("llama"), tmp_path)
    assert loaded.selected_ranks() == model.selected_ranks()


@pytest.mark.parametrize("arch", ARCHS)
def test_outputs_with_aux_losses_rebuild_from_their_fields(tiny, arch):
    """torch's pytree takes a ModelOutput apart and builds it again from its fields (DDP with
    find_unused_parameters, as transformers' Trainer uses it for a model that is not a PreTrainedModel):
    the aux losses rankmix adds are fields of the output's class, which stays a subclass of the base's."""
    import torch.utils._pytree as pytree

    base = tiny.base(arch)
    plain_class = type(base(**tiny.batch(arch, labels=True)))
    model = get_model(base, method_config("more"))
    out = model(**tiny.batch(arch, labels=True), task_ids=torch.tensor([0, 1, 2, 0]))
    assert isinstance(out, plain_class) and out.aux_loss is out["aux_loss"]
    leaves, spec = pytree.tree_flatten(out)
    rebuilt = pytree.tree_unflatten(leaves, spec)
    assert list(rebuilt.keys()) == list(out.keys())
    assert all(torch.equal(rebuilt[k], out[k]) for k in ("loss", "aux_loss") if k in out)
