"""rankmix: multi-task PEFT with mixtures of low-rank experts (MoRE, HiLo and baselines)."""

from .config import (
    HiLoConfig,
    LoRAConfig,
    MoELoRAConfig,
    MoLAConfig,
    MoREConfig,
    MultiLoRAConfig,
    load_config,
)
from .model import RankMixModel, get_model
from .version import __version__

__all__ = [
    "HiLoConfig",
    "LoRAConfig",
    "MoELoRAConfig",
    "MoLAConfig",
    "MoREConfig",
    "MultiLoRAConfig",
    "RankMixModel",
    "__version__",
    "get_model",
    "load_config",
]
