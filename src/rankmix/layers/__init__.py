"""Pure-torch building blocks: expert banks, routers and the adapted linear layer."""

from .experts import ExpertBank
from .linear import AdaptedLinear, RoutingContext, TaskGroup
from .routers import Router, SharedRouter, TaskRankSelector, TaskRouter, TokenRouter

__all__ = [
    "AdaptedLinear",
    "ExpertBank",
    "Router",
    "RoutingContext",
    "SharedRouter",
    "TaskGroup",
    "TaskRankSelector",
    "TaskRouter",
    "TokenRouter",
]
