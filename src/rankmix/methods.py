"""The method registry: for each config class, the router it builds, the options of its expert banks and
its traits. Code above this module asks a config's `Method` what to do; nothing else compares method
names. Adding a method is one config class in config.py (listed in `CONFIGS`, which maps the names
recipes use to classes) and one `register(...)` call here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .config import (
    AdapterConfig,
    HiLoConfig,
    LoRAConfig,
    MoELoRAConfig,
    MoLAConfig,
    MoREConfig,
    MultiLoRAConfig,
    config_class,
)
from .layers import Router, SharedRouter, TaskRankSelector, TaskRouter, TokenRouter

# (config, d_in of the adapted layer, number of experts) -> the layer's router
RouterFactory = Callable[[Any, int, int], Router]


@dataclass(frozen=True)
class Method:
    """What a method builds and what it is.

    task_routed: the gates depend on the task id (so every forward needs `task_ids`, the method takes
        the run's task list, and each task has its own LoRA to inspect, merge and export);
    token_routed: the gates depend on each token; its routers count expert load (`Router.record`, into
        `load` and `tokens`, as `TokenRouter` does) for statistics and plots;
    mergeable: one plain LoRA per task (or one for all) reproduces the adapter exactly;
    nested: the experts are prefixes of one max-rank LoRA (MoRE) rather than disjoint blocks.
    """

    config: type[AdapterConfig]
    make_router: RouterFactory
    task_routed: bool = False
    token_routed: bool = False
    mergeable: bool = True
    nested: bool = False
    linear_scaling: Callable[[Any], float] = lambda config: 0.0  # the power p of MoRE's (j/R)^p; 0: none

    def bank_options(self, config: AdapterConfig) -> dict[str, Any]:
        """Keyword options of `ExpertBank` for this method."""
        return {
            "nested": self.nested,
            "linear_scaling": self.linear_scaling(config),
            "dropout": config.dropout,
        }


METHODS: dict[type[AdapterConfig], Method] = {}


def register(method: Method) -> Method:
    if method.token_routed and method.mergeable:
        raise ValueError(f"{method.config.__name__}: token-routed experts cannot be merged per task")
    METHODS[method.config] = method
    return method


def method_of(config: AdapterConfig) -> Method:
    """The registered method of `config` (its exact class)."""
    try:
        return METHODS[type(config)]
    except KeyError:
        raise ValueError(
            f"{type(config).__name__} is not a registered method; register it with rankmix.methods.register"
        ) from None


def method_named(name: str) -> Method:
    """The registered method a recipe names ('more', 'hilo', ...)."""
    return METHODS[config_class(name)]


def _token_router(config: MoLAConfig | HiLoConfig, d_in: int, n_experts: int) -> Router:
    return TokenRouter(d_in, n_experts, config.top_k, config.top_p)


register(Method(LoRAConfig, lambda config, d_in, n: SharedRouter()))
register(Method(MultiLoRAConfig, lambda config, d_in, n: TaskRouter(len(config.tasks), n), task_routed=True))
register(
    Method(
        MoELoRAConfig,
        lambda config, d_in, n: TaskRouter(len(config.tasks), n, embedding_dim=config.task_embedding_dim),
        task_routed=True,
    )
)
register(Method(MoLAConfig, _token_router, token_routed=True, mergeable=False))
register(Method(HiLoConfig, _token_router, token_routed=True, mergeable=False))
register(
    Method(
        MoREConfig,
        lambda config, d_in, n: TaskRankSelector(
            d_in,
            len(config.tasks),
            n,
            config.temperature,
            config.pooling,
            config.task_embedding_std,
            config.zero_gate_bias,
            config.learn_selection,
            config.start_at_max_rank,
        ),
        task_routed=True,
        nested=True,
        linear_scaling=lambda config: config.linear_scaling_power if config.linear_scaling else 0.0,
    )
)
