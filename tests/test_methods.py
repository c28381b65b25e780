"""The method registry: every config class is registered, with traits that match what its routers do."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from rankmix.config import (
    CONFIGS,
    AdapterConfig,
    HiLoConfig,
    LoRAConfig,
    MoELoRAConfig,
    MoLAConfig,
    MoREConfig,
    MultiLoRAConfig,
)
from rankmix.layers import Router, TokenRouter
from rankmix.methods import METHODS, method_of

TASKS = ["rte", "mrpc", "cola"]


def test_every_config_is_registered():
    assert set(METHODS) == set(CONFIGS.values())


@pytest.mark.parametrize(
    ("cfg", "needs"),
    [
        (MoREConfig(tasks=TASKS), True),
        (MultiLoRAConfig(tasks=TASKS), True),
        (MoELoRAConfig(tasks=TASKS), True),
        (LoRAConfig(), False),
        (MoLAConfig(), False),
        (HiLoConfig(), False),
    ],
    ids=lambda v: type(v).__name__ if dataclasses.is_dataclass(v) else str(v),
)
def test_task_routed_methods_need_task_ids(cfg, needs):
    """Task-routed methods need task ids; token-routed and plain LoRA do not."""
    assert method_of(cfg).task_routed is needs


@pytest.mark.parametrize(
    "cfg",
    [
        MoREConfig(tasks=TASKS),
        MultiLoRAConfig(tasks=TASKS),
        MoELoRAConfig(tasks=TASKS),
        LoRAConfig(),
        MoLAConfig(experts=3),
        HiLoConfig(experts=3, ranks=4),
    ],
    ids=lambda c: type(c).__name__,
)
def test_router_meets_the_protocol_and_traits(cfg):
    """The router a method builds is a Router; token routers are exactly the non-mergeable methods, and
    a mergeable method's router gives fixed gates for every task."""
    method = method_of(cfg)
    n = len(cfg.expert_ranks(0, 1))
    router = method.make_router(cfg, 16, n)
    assert isinstance(router, Router) and isinstance(router, torch.nn.Module)
    assert isinstance(router, TokenRouter) is method.token_routed is (not method.mergeable)
    x = torch.randn(2, 5, 16)
    ids = torch.tensor([0, 1]) if method.task_routed else None
    gates, _ = router(x, ids)
    assert gates is None or gates.shape[-1] == n
    if method.mergeable:
        for t in range(max(len(cfg.task_names), 1)):
            fixed = router.task_gates(t)
            assert fixed is None or fixed.shape == (n,)
    else:
        with pytest.raises(ValueError, match="token"):
            router.task_gates(0)


def test_bank_options():
    """Only MoRE nests its experts; its linear scaling power follows the config (0: none)."""

    def options(cfg):
        return method_of(cfg).bank_options(cfg)

    assert options(MoREConfig(tasks=TASKS))["nested"] is True
    assert options(MoREConfig(tasks=TASKS))["linear_scaling"] == 0  # the default, BENCHMARKS.md: MoRE study
    assert options(MoREConfig(tasks=TASKS, linear_scaling=True))["linear_scaling"] == 1.0
    assert (
        options(MoREConfig(tasks=TASKS, linear_scaling=True, linear_scaling_power=0.5))["linear_scaling"]
        == 0.5
    )
    assert (
        options(MoREConfig(tasks=TASKS, linear_scaling=False, linear_scaling_power=0.5))["linear_scaling"]
        == 0
    )
    assert not options(LoRAConfig(dropout=0.2))["nested"]
    assert options(LoRAConfig(dropout=0.2))["dropout"] == 0.2
    assert options(HiLoConfig())["linear_scaling"] == 0


def test_unregistered_config_is_refused():
    @dataclasses.dataclass
    class Unknown(LoRAConfig):
        pass

    assert issubclass(Unknown, AdapterConfig)
    with pytest.raises(ValueError, match="not a registered method"):
        method_of(Unknown())
