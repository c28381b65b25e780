"""Adapter configurations, one dataclass per method, validated on construction; JSON/YAML in and out."""

from __future__ import annotations

import abc
import collections.abc
import dataclasses
import enum
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from .allocation import Profile, parse_profile, per_layer
from .files import check_name, parse_json, read_utf8, read_yaml, write_json, write_yaml
from .hints import did_you_mean


class AuxLoss(enum.StrEnum):
    """The auxiliary losses routers report and configs weigh, by name: one spelling for both sides."""

    BALANCE = "balance"  # token routing: Switch-style load balance
    CONTRASTIVE = "contrastive"  # MoRE: each task's embedding against its inputs


SCALINGS = ("rank", "rslora", "constant")

AUTO = "auto"  # a field whose per-layer values get_model allocates (allocators.py)
ALLOCATORS = ("spectral", "probe")


POOLINGS = ("first", "mean")


@dataclass
class AdapterConfig(abc.ABC):
    """Fields every method accepts. `method` is the name recipes and saved configs use; what a method
    builds (its router, its kind of experts) is registered in methods.py."""

    method: ClassVar[str] = ""
    auto_fields: ClassVar[tuple[str, ...]] = ()  # the fields that may be "auto" (AutoAllocation)

    target_modules: str | list[str] = field(
        default="all-linear",
        metadata={"help": "module names (suffix match), a regex (full match), or 'all-linear'"},
    )
    alpha: float = field(default=16.0, metadata={"help": "LoRA alpha; see `scaling`"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the adapter input"})
    scaling: str = field(
        default="rank",
        metadata={
            "help": "'rank': alpha/r per expert; 'rslora': alpha/sqrt(r); "
            "'constant': alpha/largest rank for every expert (MoRE's alpha/R, HiLo's alpha=2r style)"
        },
    )

    def __post_init__(self) -> None:
        self.validate()

    # -- validation -------------------------------------------------------------------------------
    def validate(self) -> None:
        if isinstance(self.target_modules, (list, tuple)):
            if not self.target_modules or not all(isinstance(t, str) and t for t in self.target_modules):
                raise ValueError(
                    f"target_modules must be a non-empty list of module names, got {self.target_modules!r}"
                )
            self.target_modules = list(self.target_modules)
        elif not isinstance(self.target_modules, str) or not self.target_modules:
            raise ValueError(
                f"target_modules must be names, a regex or 'all-linear', got {self.target_modules!r}"
            )
        if not self.alpha > 0:
            raise ValueError(f"alpha must be positive, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.scaling not in SCALINGS:
            raise ValueError(f"scaling must be one of {SCALINGS}, got {self.scaling!r}")

    # -- what the model builder asks ----------------------------------------------------------------
    @property
    def task_names(self) -> list[str]:
        return list(getattr(self, "tasks", []))

    @property
    def uses_layer_profile(self) -> bool:
        """True when experts or ranks vary by layer, so every adapted module needs a layer index."""
        return False

    def group_configs(self) -> list[AdapterConfig]:
        """The configs of the adapter's groups of tasks (TaskList): itself, where tasks were never added
        with frozen growth."""
        return [self]

    def pending(self) -> list[str]:
        """The fields still "auto": get_model allocates them before building (allocators.py)."""
        return [name for name in self.auto_fields if getattr(self, name) == AUTO]

    @property
    def probing(self) -> bool:
        """Whether get_model needs training batches: a field still "auto" under the probe allocator."""
        return bool(self.pending()) and getattr(self, "allocator", None) == "probe"

    def _check_resolved(self) -> None:
        if self.pending():
            raise ValueError(
                f"{' and '.join(self.pending())} of {type(self).__name__} is 'auto': get_model allocates it "
                "(rankmix.allocators.resolve); build the model with get_model before asking for experts"
            )

    @abc.abstractmethod
    def expert_ranks(self, layer: int | None, n_layers: int) -> list[int]:
        """The rank of each expert in the module at `layer` (of `n_layers`)."""

    @abc.abstractmethod
    def largest_rank(self) -> int:
        """The largest expert rank anywhere (the R of constant scaling alpha/R)."""

    def expert_scales(self, ranks: list[int]) -> list[float]:
        if self.scaling == "rank":
            return [self.alpha / r for r in ranks]
        if self.scaling == "rslora":
            return [self.alpha / math.sqrt(r) for r in ranks]
        return [self.alpha / self.scale_rank(ranks) for _ in ranks]

    def scale_rank(self, ranks: list[int]) -> int:
        """The R of constant scaling alpha/R for a module with experts of `ranks`: the largest rank
        anywhere (a layer's own largest where the largest rank itself varies by layer: MoRE's max_rank)."""
        return self.largest_rank()

    def aux_weights(self) -> dict[AuxLoss, float]:
        """Weights of the auxiliary losses this method adds to the task loss."""
        return {}

    # -- serialization ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, **dataclasses.asdict(self)}

    def save(self, path: str | Path) -> None:
        """Write the config as YAML (.yaml/.yml) or JSON, atomically."""
        write = write_yaml if Path(path).suffix in (".yaml", ".yml") else write_json
        write(path, self.to_dict())


@dataclass
class AutoAllocation:
    """Options of an automatic allocation, read where a field of `auto_fields` is "auto": get_model
    chooses that field's per-layer values under `budget`, from a score per layer (`allocator`), and the
    config it builds (and saves) holds them as explicit per-layer lists."""

    budget: int | str = field(
        default="lora-r8",
        metadata={
            "help": "trainable parameters of an 'auto' allocation: a number, or 'lora-r<N>' (LoRA r=N's)"
        },
    )
    allocator: str = field(
        default="spectral",
        metadata={
            "help": "'spectral': more capacity where the weights' spectra say a layer is less trained; "
            "'probe': where a short first pass of LoRA training finds the largest |gradient x weight|"
        },
    )
    probe_steps: int = field(default=10, metadata={"help": "training steps of the 'probe' allocator's pass"})
    auto_min: int | None = field(
        default=None, metadata={"help": "smallest per-layer value of an 'auto' field (default: top_k or 1)"}
    )
    auto_max: int | None = field(
        default=None, metadata={"help": "largest per-layer value of an 'auto' field (default: 16)"}
    )

    def _check_allocation(self) -> None:
        budget = self.budget
        if isinstance(budget, bool) or not (
            (isinstance(budget, int) and budget > 0)
            or (isinstance(budget, str) and re.fullmatch(r"lora-r[1-9]\d*", budget))
        ):
            raise ValueError(
                f"budget must be a positive number of parameters or 'lora-r<N>' (e.g. lora-r8), got "
                f"{budget!r}"
            )
        if self.allocator not in ALLOCATORS:
            raise ValueError(f"allocator must be one of {ALLOCATORS}, got {self.allocator!r}")
        _check_positive("probe_steps", self.probe_steps)
        if self.probe_steps < 2:  # at the first step lora_B is zero, so every |gradient x weight| is too
            raise ValueError(f"probe_steps must be at least 2, got {self.probe_steps}")
        for name in ("auto_min", "auto_max"):
            if getattr(self, name) is not None:
                _check_positive(name, getattr(self, name))
        if self.auto_min is not None and self.auto_max is not None and self.auto_min > self.auto_max:
            raise ValueError(f"auto_min ({self.auto_min}) is larger than auto_max ({self.auto_max})")


@dataclass
class TaskList:
    """The tasks of a task-routed method, in the order of their ids, and how adding tasks with frozen
    growth split them (growth.py): `task_groups`, the number of tasks of each group in order; each group
    has experts and a router of its own, and the first group's are the adapter's as first trained."""

    tasks: list[str] = field(default_factory=list)
    task_groups: list[int] | None = field(
        default=None,
        metadata={"help": "tasks per group of own experts, written by frozen growth (default: one group)"},
    )

    def _check_task_list(self) -> None:
        tasks = self.tasks
        if isinstance(tasks, str) or not tasks or not all(isinstance(t, str) and t for t in tasks):
            raise ValueError(
                f"tasks must be a non-empty list of task names, e.g. ['rte', 'mrpc'], got {tasks!r}"
            )
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"tasks must be distinct, got {tasks!r}")
        self.tasks = [check_name(t, "task name") for t in tasks]
        groups = self.task_groups
        if groups is not None:
            if not groups or any(isinstance(n, bool) or not isinstance(n, int) or n <= 0 for n in groups):
                raise ValueError(f"task_groups must be a list of positive task counts, got {groups!r}")
            if sum(groups) != len(self.tasks):
                raise ValueError(
                    f"task_groups {groups} count {sum(groups)} tasks, and tasks lists {len(self.tasks)}"
                )
            self.task_groups = list(groups)

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        if data["task_groups"] is None:  # the adapters of releases before task groups read the file
            del data["task_groups"]
        return data

    def group_configs(self) -> list[AdapterConfig]:
        """One config per group of tasks, each with its own tasks only: what the group builds."""
        if not self.task_groups or len(self.task_groups) == 1:
            return [self]
        starts = [sum(self.task_groups[:g]) for g in range(len(self.task_groups))]
        return [
            dataclasses.replace(self, tasks=self.tasks[start : start + n], task_groups=None)
            for start, n in zip(starts, self.task_groups, strict=True)
        ]


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass
class LoRAConfig(AdapterConfig):
    """One LoRA shared by all tasks."""

    method: ClassVar[str] = "lora"
    r: int = 8

    def validate(self) -> None:
        super().validate()
        _check_positive("r", self.r)

    def expert_ranks(self, layer: int | None, n_layers: int) -> list[int]:
        return [self.r]

    def largest_rank(self) -> int:
        return self.r


@dataclass
class MultiLoRAConfig(TaskList, AdapterConfig):
    """One LoRA per task, chosen by the task id."""

    method: ClassVar[str] = "multilora"
    r: int = 8

    def validate(self) -> None:
        super().validate()
        self._check_task_list()
        _check_positive("r", self.r)

    def expert_ranks(self, layer: int | None, n_layers: int) -> list[int]:
        return [self.r] * len(self.tasks)

    def largest_rank(self) -> int:
        return self.r


@dataclass
class MoELoRAConfig(TaskList, AdapterConfig):
    """E experts mixed by a soft gate over a learned task embedding (dense, task-deterministic)."""

    method: ClassVar[str] = "moelora"
    experts: int = 8
    rank: int = 8
    task_embedding_dim: int = 64

    def validate(self) -> None:
        super().validate()
        self._check_task_list()
        _check_positive("experts", self.experts)
        _check_positive("rank", self.rank)
        _check_positive("task_embedding_dim", self.task_embedding_dim)

    def expert_ranks(self, layer: int | None, n_layers: int) -> list[int]:
        return [self.rank] * self.experts

    def largest_rank(self) -> int:
        return self.rank


@dataclass
class _TokenRoutedConfig(AutoAllocation, AdapterConfig):
    """Experts chosen per token by a router: top-k, or dynamic top-p with at most k experts."""

    auto_fields: ClassVar[tuple[str, ...]] = ("experts",)
    experts: Profile = field(default="2468", metadata={"help": "experts per layer: a profile, or 'auto'"})
    top_k: int = 2
    top_p: float | None = None
    balance_weight: float = 0.01

    def validate(self) -> None:
        super().validate()
        self._check_allocation()
        _check_positive("top_k", self.top_k)
        if isinstance(self.experts, tuple):
            self.experts = list(self.experts)
        if self.experts == AUTO and self.auto_max is not None and self.auto_max < self.top_k:
            raise ValueError(
                f"top_k={self.top_k} is larger than auto_max={self.auto_max}, the most experts a layer may "
                "get; raise auto_max or lower top_k"
            )
        if self.experts == AUTO:
            fewest, given = self.auto_min or self.top_k, f"auto_min={self.auto_min}"
        else:
            fewest, given = min(parse_profile(self.experts, "experts")), f"experts={self.experts!r}"
        if self.top_k > fewest:
            raise ValueError(
                f"top_k={self.top_k} is larger than the number of experts in some layers "
                f"(as few as {fewest} in {given}); lower top_k or give every layer more experts"
            )
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] (or None for plain top-k), got {self.top_p}")
        if not self.balance_weight >= 0:
            raise ValueError(f"balance_weight must be >= 0 (0 disables it), got {self.balance_weight}")

    @property
    def uses_layer_profile(self) -> bool:
        return True

    @abc.abstractmethod
    def layer_rank(self, layer: int, n_layers: int) -> int:
        """The rank of the experts at `layer` (of `n_layers`)."""

    def expert_ranks(self, layer: int | None, n_layers: int) -> list[int]:
        self._check_resolved()
        n = per_layer(self.experts, n_layers, "experts")[layer]
        return [self.layer_rank(layer, n_layers)] * n

    def aux_weights(self) -> dict[AuxLoss, float]:
        return {AuxLoss.BALANCE: self.balance_weight}


@dataclass
class MoLAConfig(_TokenRoutedConfig):
    """MoLA / MixLoRA: per-layer number of experts (a profile, or one int for all), one rank."""

    method: ClassVar[str] = "mola"
    rank: int = 8

    def validate(self) -> None:
        super().validate()
        _check_positive("rank", self.rank)

    def layer_rank(self, layer: int, n_layers: int) -> int:
        return self.rank

    def largest_rank(self) -> int:
        return self.rank


@dataclass
class HiLoConfig(_TokenRoutedConfig):
    """HiLo: per-layer number *and* rank of experts."""

    method: ClassVar[str] = "hilo"
    auto_fields: ClassVar[tuple[str, ...]] = ("experts", "ranks")
    ranks: Profile = field(default="2468", metadata={"help": "expert rank per layer: a profile, or 'auto'"})
    alpha: float = field(
        default=5.66,
        metadata={"help": "scale alpha/sqrt(r): 2 at rank 8, as LoRA r=8 alpha 16 (alpha/r: alpha 16)"},
    )
    scaling: str = field(
        default="rslora",
        metadata={"help": "rslora: alpha/sqrt(r), chosen on dev numbers (BENCHMARKS.md, HiLo study)"},
    )

    def validate(self) -> None:
        super().validate()
        if self.ranks != AUTO:
            parse_profile(self.ranks, "ranks")
        if isinstance(self.ranks, tuple):
            self.ranks = list(self.ranks)

    def layer_rank(self, layer: int, n_layers: int) -> int:
        return per_layer(self.ranks, n_layers, "ranks")[layer]

    def largest_rank(self) -> int:
        self._check_resolved()
        return max(parse_profile(self.ranks, "ranks"))


@dataclass
class MoREConfig(AutoAllocation, TaskList, AdapterConfig):
    """MoRE: nested experts of ranks 1..max_rank, one chosen per task by a trained selector."""

    method: ClassVar[str] = "more"
    auto_fields: ClassVar[tuple[str, ...]] = ("max_rank",)
    max_rank: int | list[int] | str = field(
        default=8,
        metadata={"help": "the largest rank: one for every layer, one per layer (a list), or 'auto'"},
    )
    alpha: float = field(
        default=16.0, metadata={"help": "scale alpha/max_rank; 16 matches LoRA r=8 alpha 16 (paper: 32)"}
    )
    dropout: float = 0.1
    scaling: str = "constant"
    ranks: list[int] | None = field(
        default=None, metadata={"help": "subset of 1..max_rank offered as experts (default: all)"}
    )
    linear_scaling: bool = field(
        default=False,
        metadata={"help": "multiply component j of A and B by j/R (paper: true; BENCHMARKS.md: MoRE study)"},
    )
    linear_scaling_power: float = field(
        default=1.0,
        metadata={
            "help": "with linear_scaling, multiply component j by (j/R)^power: 1 is the paper's, 0.5 gentler"
        },
    )
    contrastive_weight: float = 0.1
    temperature: float = 0.05
    pooling: str = field(
        default="first", metadata={"help": "'first' token (paper) or 'mean' over positions for L_cl"}
    )
    task_embedding_std: float = field(
        default=0.01, metadata={"help": "std of the task embeddings at initialisation (paper: 0.01)"}
    )
    learn_selection: bool = field(
        default=True,
        metadata={
            "help": "false keeps each task's first random rank choice (no straight-through gradient): what "
            "the official code effectively trains; an ablation"
        },
    )
    zero_gate_bias: bool = field(
        default=False,
        metadata={"help": "start the selector's gate bias at zero (paper: PyTorch's default init)"},
    )
    start_at_max_rank: bool = field(
        default=True,
        metadata={
            "help": "every task starts at the largest rank (a gate-bias head start of 0.1, which the "
            "straight-through gradient can overturn; BENCHMARKS.md, MoRE study); false: the random "
            "gate's first choice, as the paper"
        },
    )

    def validate(self) -> None:
        super().validate()
        self._check_allocation()
        self._check_task_list()
        if isinstance(self.max_rank, tuple):
            self.max_rank = list(self.max_rank)
        if isinstance(self.max_rank, list):
            for r in self.max_rank:
                _check_positive("every max_rank of a per-layer list", r)
        elif self.max_rank != AUTO:
            _check_positive("max_rank", self.max_rank)
        if self.ranks is not None and not isinstance(self.max_rank, int):
            raise ValueError(
                "ranks (a subset of 1..max_rank) needs one max_rank for every layer, got "
                f"max_rank={self.max_rank!r}; drop ranks, or give max_rank as one number"
            )
        if self.ranks is not None:
            if (
                not isinstance(self.ranks, (list, tuple))
                or not self.ranks
                or any(isinstance(r, bool) or not isinstance(r, int) for r in self.ranks)
            ):
                raise ValueError(f"ranks must be a list of integers in 1..max_rank, got {self.ranks!r}")
            ranks = sorted(set(self.ranks))
            if ranks[0] <= 0 or ranks[-1] > self.max_rank:
                raise ValueError(
                    f"ranks must lie in 1..max_rank={self.max_rank}, got {self.ranks}; "
                    "raise max_rank or drop the out-of-range ranks"
                )
            self.ranks = ranks
        if not self.contrastive_weight >= 0:
            raise ValueError(f"contrastive_weight must be >= 0, got {self.contrastive_weight}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if not self.linear_scaling_power > 0:
            raise ValueError(f"linear_scaling_power must be positive, got {self.linear_scaling_power}")
        if not self.task_embedding_std > 0:
            raise ValueError(f"task_embedding_std must be positive, got {self.task_embedding_std}")

    @property
    def uses_layer_profile(self) -> bool:
        return not isinstance(self.max_rank, int)

    def expert_ranks(self, layer: int | None, n_layers: int) -> list[int]:
        self._check_resolved()
        if self.ranks is not None:
            return list(self.ranks)
        largest = (
            self.max_rank
            if isinstance(self.max_rank, int)
            else per_layer(self.max_rank, n_layers, "max_rank")[layer]
        )
        return list(range(1, largest + 1))

    def largest_rank(self) -> int:
        self._check_resolved()
        if isinstance(self.max_rank, list):
            return max(self.max_rank)
        return max(self.ranks) if self.ranks is not None else self.max_rank

    def scale_rank(self, ranks: list[int]) -> int:
        """alpha/max_rank, with a per-layer max_rank the layer's own: a layer's experts then span the same
        range of scales (alpha/R_layer for its whole rank) as with one max_rank everywhere."""
        return self.largest_rank() if isinstance(self.max_rank, int) else max(ranks)

    def aux_weights(self) -> dict[AuxLoss, float]:
        return {AuxLoss.CONTRASTIVE: self.contrastive_weight}


CONFIGS: dict[str, type[AdapterConfig]] = {
    c.method: c for c in (LoRAConfig, MultiLoRAConfig, MoELoRAConfig, MoLAConfig, HiLoConfig, MoREConfig)
}


def config_class(method: Any) -> type[AdapterConfig]:
    """The config class of a method name ('more', 'hilo', ...)."""
    if not isinstance(method, str) or method not in CONFIGS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(CONFIGS)}")
    return CONFIGS[method]


def config_from_dict(data: dict[str, Any]) -> AdapterConfig:
    """Build the config named by data['method']; unknown keys get a 'did you mean' error."""
    data = dict(data)
    cls = config_class(data.pop("method", None))
    check_keys(cls, data, f"{cls.__name__} has no option ")
    return cls(**data)


def check_keys(cls: type, data: dict[str, Any], problem: str, prefix: str = "") -> None:
    """Refuse keys that are not fields of dataclass `cls` (suggesting the closest one), and values whose
    type does not fit the field's annotation, before the class's own checks compare or iterate them."""
    known = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if not isinstance(key, str) or key not in known:
            hint = did_you_mean(str(key), known, prefix) or f"; known keys: {sorted(known)}"
            raise ValueError(f"{problem}{prefix + str(key)!r}{hint}")
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        if not _fits(value, hints[key]):
            raise ValueError(f"{prefix}{key} must be {_describe(hints[key])}, got {value!r}")


def _describe(annotation: Any) -> str:
    """An annotation in words, for error messages."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    words = {type(None): "null", bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if annotation in words:
        return words[annotation]
    if origin in (list, tuple, collections.abc.Sequence):
        return f"a list of ({_describe(args[0])})" if args else "a list"
    if origin is dict or dataclasses.is_dataclass(annotation):
        return "a mapping of options"
    return str(annotation)


def _fits(value: Any, annotation: Any) -> bool:
    """Whether a value read from YAML or JSON fits a field annotation (an int fits float; bool fits only
    bool); annotations beyond these simple forms are left to the class's own checks."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin in (list, tuple, collections.abc.Sequence):
        item = args[0] if args else Any
        return isinstance(value, (list, tuple)) and all(_fits(v, item) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    if dataclasses.is_dataclass(annotation):  # a nested section, given as a mapping
        return isinstance(value, (dict, annotation))
    return True


def load_config(path: str | Path) -> AdapterConfig:
    """Read a config written by `AdapterConfig.save` (JSON or YAML)."""
    text = read_utf8(path, "adapter config")
    try:
        data = read_yaml(text, str(path)) if Path(path).suffix in (".yaml", ".yml") else parse_json(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); fix it and run again") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of config options, got {type(data).__name__}")
    return config_from_dict(data)
