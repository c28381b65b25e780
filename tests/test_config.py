"""Tests for rankmix.config: validation, derived facts, and JSON/YAML round trips."""

from __future__ import annotations

import json
import math

import pytest

from rankmix.config import (
    CONFIGS,
    HiLoConfig,
    LoRAConfig,
    MoELoRAConfig,
    MoLAConfig,
    MoREConfig,
    MultiLoRAConfig,
    config_from_dict,
    load_config,
)

TASKS = ["rte", "mrpc", "cola"]


def _examples():
    """One non-default instance of every config class (so a round trip cannot pass by defaults)."""
    return [
        LoRAConfig(r=4, alpha=8.0, dropout=0.05, target_modules=["q", "v"]),
        MultiLoRAConfig(tasks=TASKS, r=2, scaling="rslora", target_modules="q|v"),
        MoELoRAConfig(tasks=["a", "b"], experts=3, rank=4, task_embedding_dim=16, alpha=12.0),
        MoLAConfig(experts="8228", rank=4, top_k=2, top_p=0.7, balance_weight=0.02),
        HiLoConfig(experts=[2, 4, 4, 8], ranks="2,4,16", top_k=1, balance_weight=0.0, scaling="constant"),
        MoREConfig(
            tasks=TASKS,
            max_rank=6,
            ranks=[2, 4, 6],
            linear_scaling=False,
            contrastive_weight=0.3,
            temperature=0.1,
            pooling="mean",
            target_modules=["q", "k", "v", "o"],
        ),
    ]


EXAMPLES = _examples()
IDS = [type(c).__name__ for c in EXAMPLES]


def test_every_method_is_registered():
    """CONFIGS maps each method name to its class."""
    assert {cls.__name__ for cls in CONFIGS.values()} == set(IDS)
    for name, cls in CONFIGS.items():
        assert cls.method == name


# -- serialization ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", EXAMPLES, ids=IDS)
def test_to_dict_round_trip(cfg):
    """to_dict names the method and config_from_dict rebuilds an equal dataclass."""
    data = cfg.to_dict()
    assert data["method"] == cfg.method
    again = config_from_dict(data)
    assert type(again) is type(cfg)
    assert again == cfg
    assert data == cfg.to_dict()  # config_from_dict does not mutate its input


@pytest.mark.parametrize("suffix", [".json", ".yaml", ".yml"])
@pytest.mark.parametrize("cfg", EXAMPLES, ids=IDS)
def test_save_load_round_trip(cfg, suffix, tmp_path):
    """save() then load_config() gives an equal dataclass, for JSON and YAML files."""
    path = tmp_path / f"adapter{suffix}"
    cfg.save(path)
    loaded = load_config(path)
    assert type(loaded) is type(cfg)
    assert loaded == cfg


def test_json_file_is_json_with_method(tmp_path):
    """A .json file is plain JSON carrying the method name."""
    path = tmp_path / "c.json"
    MoREConfig(tasks=TASKS).save(path)
    data = json.loads(path.read_text())
    assert data["method"] == "more"
    assert data["tasks"] == TASKS


def test_load_config_rejects_non_mapping(tmp_path):
    """A file that is not a mapping gives a clear error."""
    path = tmp_path / "c.yaml"
    path.write_text("- lora\n- 8\n")
    with pytest.raises(ValueError, match="mapping"):
        load_config(path)


def test_load_config_handwritten_yaml(tmp_path):
    """A hand-written YAML recipe loads with the given values."""
    path = tmp_path / "recipe.yaml"
    path.write_text("method: hilo\nexperts: '2468'\nranks: '2468'\ntop_k: 2\ntarget_modules: [q, v]\n")
    cfg = load_config(path)
    assert cfg == HiLoConfig(experts="2468", ranks="2468", top_k=2, target_modules=["q", "v"])


def test_load_config_yaml_exponent_float(tmp_path):
    """`balance_weight: 1e-3` (a string to PyYAML) loads as 0.001, or fails with a ValueError naming it."""
    path = tmp_path / "recipe.yaml"
    path.write_text("method: mola\nexperts: '2468'\nbalance_weight: 1e-3\n")
    try:
        cfg = load_config(path)
    except ValueError as err:
        assert "balance_weight" in str(err)
    else:
        assert cfg.balance_weight == pytest.approx(1e-3)


def test_unknown_key_suggests_closest():
    """A misspelt option names the class, the key, and the closest real key."""
    with pytest.raises(ValueError, match="did you mean 'max_rank'") as err:
        config_from_dict({"method": "more", "tasks": TASKS, "max_rnak": 4})
    assert "MoREConfig" in str(err.value)
    assert "'max_rnak'" in str(err.value)


def test_unknown_key_without_close_match_lists_known():
    """A key with no close match lists the known keys."""
    with pytest.raises(ValueError, match="known keys") as err:
        config_from_dict({"method": "lora", "zzzzzz": 1})
    assert "'r'" in str(err.value)


@pytest.mark.parametrize("data", [{"method": "mixlora"}, {"r": 8}])
def test_unknown_or_missing_method_lists_methods(data):
    """An unknown or missing method lists every known method."""
    with pytest.raises(ValueError, match="unknown method") as err:
        config_from_dict(data)
    for name in CONFIGS:
        assert name in str(err.value)


def test_class_facts_are_not_options():
    """Class-level facts (method, routing, nested) are not accepted as dict keys."""
    with pytest.raises(ValueError, match="routing"):
        config_from_dict({"method": "lora", "routing": "task"})


# -- expert_ranks ----------------------------------------------------------------------------------


def test_more_expert_ranks_default_and_subset():
    """MoRE offers ranks 1..max_rank by default, or the given subset (sorted, distinct)."""
    assert MoREConfig(tasks=TASKS, max_rank=8).expert_ranks(None, 0) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert MoREConfig(tasks=TASKS, max_rank=8, ranks=[2, 4, 8]).expert_ranks(3, 12) == [2, 4, 8]
    assert MoREConfig(tasks=TASKS, max_rank=8, ranks=[8, 2, 4, 2]).ranks == [2, 4, 8]


def test_more_expert_ranks_same_for_every_layer():
    """MoRE's experts do not depend on the layer."""
    cfg = MoREConfig(tasks=TASKS, max_rank=4)
    assert all(cfg.expert_ranks(layer, 6) == [1, 2, 3, 4] for layer in range(6))


def test_hilo_expert_ranks_per_layer():
    """HiLo '2468'/'2468' over 8 layers: layer l has n_l experts, each of rank r_l."""
    cfg = HiLoConfig(experts="2468", ranks="2468", top_k=2)
    got = [cfg.expert_ranks(layer, 8) for layer in range(8)]
    assert got == [[2, 2], [2, 2], [4] * 4, [4] * 4, [6] * 6, [6] * 6, [8] * 8, [8] * 8]


def test_hilo_experts_and_ranks_independent():
    """Experts and ranks profiles are spread independently (here 2 groups vs 4)."""
    cfg = HiLoConfig(experts="24", ranks="1234", top_k=2)
    got = [cfg.expert_ranks(layer, 4) for layer in range(4)]
    assert got == [[1, 1], [2, 2], [3, 3, 3, 3], [4, 4, 4, 4]]
    assert cfg.largest_rank() == 4


def test_mola_uniform_rank():
    """MoLA: per-layer expert counts, every expert of the same rank."""
    cfg = MoLAConfig(experts="2468", rank=4)
    got = [cfg.expert_ranks(layer, 4) for layer in range(4)]
    assert got == [[4] * 2, [4] * 4, [4] * 6, [4] * 8]
    assert MoLAConfig(experts=3, rank=5, top_k=2).expert_ranks(2, 5) == [5, 5, 5]


def test_multilora_one_expert_per_task():
    """Multi-LoRA: one rank-r expert per task; LoRA: a single expert."""
    assert MultiLoRAConfig(tasks=TASKS, r=4).expert_ranks(0, 2) == [4, 4, 4]
    assert LoRAConfig(r=6).expert_ranks(0, 2) == [6]
    assert MoELoRAConfig(tasks=TASKS, experts=5, rank=2).expert_ranks(0, 2) == [2] * 5


# -- expert_scales ---------------------------------------------------------------------------------


def test_scales_rank():
    """'rank' scaling: alpha / r per expert."""
    cfg = HiLoConfig(alpha=16.0, scaling="rank")
    assert cfg.expert_scales([2, 4, 8]) == pytest.approx([8.0, 4.0, 2.0])


def test_scales_rslora():
    """'rslora' scaling: alpha / sqrt(r) per expert."""
    cfg = LoRAConfig(alpha=8.0, r=4, scaling="rslora")
    assert cfg.expert_scales([4, 16]) == pytest.approx([4.0, 2.0])
    assert cfg.expert_scales([2]) == pytest.approx([8.0 / math.sqrt(2)])


def test_scales_constant_uses_largest_rank():
    """'constant' scaling: alpha / largest rank for every expert (HiLo: largest of the ranks profile)."""
    cfg = HiLoConfig(alpha=16.0, ranks="2468", scaling="constant")
    assert cfg.expert_scales([2, 4, 6, 8]) == pytest.approx([2.0] * 4)
    mola = MoLAConfig(alpha=12.0, rank=3, scaling="constant")
    assert mola.expert_scales([3, 3]) == pytest.approx([4.0, 4.0])


def test_more_default_scale_is_alpha_over_max_rank():
    """MoRE defaults to constant scaling: alpha / R for every nested expert (16/8 = 2, LoRA r=8's scale;
    paper: 32/8 = 4)."""
    cfg = MoREConfig(tasks=TASKS)
    assert cfg.scaling == "constant"
    assert (cfg.alpha, cfg.max_rank) == (16.0, 8)
    ranks = cfg.expert_ranks(None, 0)
    assert cfg.expert_scales(ranks) == pytest.approx([2.0] * 8)
    sub = MoREConfig(tasks=TASKS, alpha=32.0, max_rank=8, ranks=[2, 4, 8])
    assert sub.expert_scales(sub.expert_ranks(None, 0)) == pytest.approx([4.0] * 3)


def test_hilo_default_scale_is_rslora():
    """HiLo defaults to alpha/sqrt(r) with alpha 5.66: 2 at rank 8 (LoRA r=8 alpha 16), more for its smaller
    experts; alpha/r at alpha 16 (the LoRA style) stays one option away."""
    cfg = HiLoConfig()
    assert (cfg.scaling, cfg.alpha) == ("rslora", 5.66)
    assert cfg.expert_scales([2, 4, 8]) == pytest.approx([4.0, 2.83, 2.0], abs=0.01)
    lora_style = HiLoConfig(scaling="rank", alpha=16)
    assert lora_style.expert_scales([2, 4, 8]) == pytest.approx([8.0, 4.0, 2.0])


def test_more_rank_scaling_option():
    """MoRE with scaling='rank' gives alpha / k for expert k."""
    cfg = MoREConfig(tasks=TASKS, alpha=8.0, max_rank=4, scaling="rank")
    assert cfg.expert_scales(cfg.expert_ranks(None, 0)) == pytest.approx([8.0, 4.0, 8.0 / 3, 2.0])


# -- routing facts and aux losses ------------------------------------------------------------------


def test_aux_weights():
    """MoRE reports its contrastive weight; token-routed methods their balance weight; others none."""
    assert MoREConfig(tasks=TASKS, contrastive_weight=0.25).aux_weights() == {"contrastive": 0.25}
    assert HiLoConfig(balance_weight=0.03).aux_weights() == {"balance": 0.03}
    assert MoLAConfig(balance_weight=0.0).aux_weights() == {"balance": 0.0}
    assert LoRAConfig().aux_weights() == {}
    assert MultiLoRAConfig(tasks=TASKS).aux_weights() == {}


def test_task_names_and_layer_profile():
    """task_names lists the tasks (empty without tasks); only token-routed configs use layer profiles."""
    assert MoREConfig(tasks=TASKS).task_names == TASKS
    assert LoRAConfig().task_names == []
    assert HiLoConfig().uses_layer_profile and MoLAConfig().uses_layer_profile
    assert not any(c.uses_layer_profile for c in (LoRAConfig(), MoREConfig(tasks=TASKS)))


def test_target_modules_tuple_normalised_to_list():
    """A tuple of target modules is stored as a list (so the config round-trips equal)."""
    assert LoRAConfig(target_modules=("q", "v")).target_modules == ["q", "v"]


# -- validation ------------------------------------------------------------------------------------

BAD = [
    # (constructor, kwargs, text the message must contain)
    (LoRAConfig, {"r": 0}, "r must be a positive integer"),
    (LoRAConfig, {"r": -2}, "r must be a positive integer"),
    (LoRAConfig, {"r": 2.0}, "r must be a positive integer"),
    (LoRAConfig, {"r": True}, "r must be a positive integer"),
    (MultiLoRAConfig, {"tasks": TASKS, "r": 0}, "r must be"),
    (MoELoRAConfig, {"tasks": TASKS, "experts": 0}, "experts must be"),
    (MoELoRAConfig, {"tasks": TASKS, "rank": -1}, "rank must be"),
    (MoELoRAConfig, {"tasks": TASKS, "task_embedding_dim": 0}, "task_embedding_dim must be"),
    (MoLAConfig, {"rank": 0}, "rank must be"),
    (MoLAConfig, {"experts": "2068"}, "experts:"),
    (MoLAConfig, {"experts": 0}, "experts:"),
    (MoLAConfig, {"experts": [2, -1]}, "experts:"),
    (HiLoConfig, {"ranks": "2408"}, "ranks:"),
    (HiLoConfig, {"ranks": [0, 2]}, "ranks:"),
    (HiLoConfig, {"experts": "1468", "top_k": 2}, "top_k=2"),
    (MoLAConfig, {"experts": 1, "top_k": 2}, "top_k=2"),
    (HiLoConfig, {"top_k": 0}, "top_k must be"),
    (HiLoConfig, {"top_p": 0.0}, "top_p"),
    (HiLoConfig, {"top_p": -0.5}, "top_p"),
    (HiLoConfig, {"top_p": 1.01}, "top_p"),
    (MoLAConfig, {"balance_weight": -0.01}, "balance_weight"),
    (MoREConfig, {"tasks": []}, "tasks"),
    (MoREConfig, {}, "tasks"),
    (MoREConfig, {"tasks": ["rte", "rte"]}, "tasks must be distinct"),
    (MoREConfig, {"tasks": "rte"}, "tasks must be a non-empty list"),
    (MoREConfig, {"tasks": ["rte", ""]}, "tasks"),
    (MultiLoRAConfig, {"tasks": ["a", "a"]}, "tasks must be distinct"),
    (MultiLoRAConfig, {"tasks": "ab"}, "tasks must be a non-empty list"),
    (MoELoRAConfig, {"tasks": []}, "tasks"),
    (MoREConfig, {"tasks": TASKS, "max_rank": 0}, "max_rank must be"),
    (MoREConfig, {"tasks": TASKS, "max_rank": -8}, "max_rank must be"),
    (MoREConfig, {"tasks": TASKS, "max_rank": 8, "ranks": [2, 4, 16]}, "max_rank=8"),
    (MoREConfig, {"tasks": TASKS, "ranks": [0, 2]}, "ranks must lie"),
    (MoREConfig, {"tasks": TASKS, "ranks": []}, "ranks must be"),
    (MoREConfig, {"tasks": TASKS, "ranks": [2.0, 4.0]}, "ranks must be"),
    (MoREConfig, {"tasks": TASKS, "scaling": "linear"}, "scaling must be one of"),
    (LoRAConfig, {"scaling": "sqrt"}, "scaling must be one of"),
    (LoRAConfig, {"dropout": 1.0}, "dropout"),
    (LoRAConfig, {"dropout": -0.1}, "dropout"),
    (MoREConfig, {"tasks": TASKS, "dropout": 1.5}, "dropout"),
    (LoRAConfig, {"alpha": 0}, "alpha must be positive"),
    (LoRAConfig, {"alpha": -16.0}, "alpha must be positive"),
    (LoRAConfig, {"alpha": float("nan")}, "alpha must be positive"),
    (LoRAConfig, {"target_modules": []}, "target_modules"),
    (LoRAConfig, {"target_modules": ""}, "target_modules"),
    (LoRAConfig, {"target_modules": ["q", ""]}, "target_modules"),
    (HiLoConfig, {"target_modules": None}, "target_modules"),
    (MoREConfig, {"tasks": TASKS, "temperature": 0.0}, "temperature must be positive"),
    (MoREConfig, {"tasks": TASKS, "temperature": -0.05}, "temperature must be positive"),
    (MoREConfig, {"tasks": TASKS, "pooling": "max"}, "pooling must be one of"),
    (MoREConfig, {"tasks": TASKS, "contrastive_weight": -0.1}, "contrastive_weight"),
]


@pytest.mark.parametrize(
    ("cls", "kwargs", "fragment"),
    BAD,
    ids=[f"{c.__name__}-{'-'.join(f'{k}={v!r}' for k, v in kw.items()) or 'defaults'}" for c, kw, _ in BAD],
)
def test_bad_config_raises_naming_field(cls, kwargs, fragment):
    """Invalid values raise ValueError at construction, with a message naming the field."""
    with pytest.raises(ValueError) as err:
        cls(**kwargs)
    assert fragment in str(err.value)


@pytest.mark.parametrize(
    ("cls", "kwargs", "fragment"),
    [
        (MoLAConfig, {"balance_weight": float("nan")}, "balance_weight"),
        (MoREConfig, {"tasks": TASKS, "contrastive_weight": float("nan")}, "contrastive_weight"),
    ],
    ids=["balance_weight-nan", "contrastive_weight-nan"],
)
def test_nan_loss_weights_rejected(cls, kwargs, fragment):
    """A NaN aux-loss weight would silently turn the training loss into NaN: reject it."""
    with pytest.raises(ValueError, match=fragment):
        cls(**kwargs)


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (HiLoConfig, {"experts": 2.5}),
        (MoREConfig, {"tasks": TASKS, "ranks": 4}),
        (MoREConfig, {"tasks": TASKS, "ranks": [2, "4"]}),
    ],
    ids=["experts-float", "more-ranks-int", "more-ranks-mixed"],
)
def test_wrong_types_raise_value_error(cls, kwargs):
    """Wrongly typed profiles / rank lists give a ValueError naming the field, not a TypeError."""
    with pytest.raises(ValueError) as err:
        cls(**kwargs)
    assert next(iter(kwargs.keys() - {"tasks"})) in str(err.value)


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (HiLoConfig, {"experts": "1468", "top_k": 1}),  # top_k equal to the fewest experts is fine
        (HiLoConfig, {"top_p": 1.0}),
        (HiLoConfig, {"top_p": 0.5}),
        (MoLAConfig, {"balance_weight": 0.0}),
        (LoRAConfig, {"dropout": 0.0}),
        (LoRAConfig, {"dropout": 0.99}),
        (MoREConfig, {"tasks": TASKS, "max_rank": 8, "ranks": [8]}),
        (MoREConfig, {"tasks": TASKS, "contrastive_weight": 0.0}),
        (MoLAConfig, {"experts": [2, 4, 4], "top_k": 2}),
        (LoRAConfig, {"target_modules": "all-linear"}),
    ],
)
def test_boundary_values_accepted(cls, kwargs):
    """Values on the valid side of each boundary construct fine and are stored."""
    cfg = cls(**kwargs)
    for key, value in kwargs.items():
        assert getattr(cfg, key) == value
