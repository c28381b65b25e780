"""get_model() and RankMixModel: inject adapters into any Hugging Face model, route task ids to every
layer, add auxiliary losses to outputs.loss. Statistics, files, and merge/export live in stats.py,
persistence.py and deploy.py; the model keeps thin methods for them (the public API)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import deploy, persistence, stats, task_inference
from .allocation import layer_index
from .config import AdapterConfig, config_from_dict
from .layers import AdaptedLinear, ExpertBank, RoutingContext, TaskGroup
from .layers.base import base_layer_kind, supported
from .methods import method_of

TaskIds = torch.Tensor | Sequence[int] | Sequence[str] | str | None  # str: "auto", inferred


def linear_shape(module: nn.Module) -> tuple[int, int]:
    """(d_in, d_out) of a base layer rankmix can adapt (layers/base.py)."""
    return base_layer_kind(module).shape(module)


def find_targets(model: nn.Module, target_modules: str | list[str]) -> list[str]:
    """Names of the linear layers that `target_modules` selects: names match a module name or its
    dotted suffix; any other string is a regex matched against the whole name; "all-linear" takes every
    linear layer inside the numbered blocks (so output heads and poolers stay frozen)."""
    linear = {name for name, m in model.named_modules() if base_layer_kind(m) is not None}
    if target_modules == "all-linear":
        chosen = [n for n in linear if layer_index(n) is not None]
    else:
        if isinstance(target_modules, str):
            try:
                pattern = re.compile(target_modules)
            except re.error as e:
                raise ValueError(
                    f"target_modules={target_modules!r} is not a valid regex ({e}); "
                    "pass a list of names to match names literally"
                ) from None
            matched = [n for n, _ in model.named_modules() if n and pattern.fullmatch(n)]
        else:
            matched = [
                n
                for n, _ in model.named_modules()
                if n and any(n == t or n.endswith("." + t) for t in target_modules)
            ]
        not_linear = [n for n in matched if n not in linear]
        if not_linear:
            found = [f"{n} ({type(model.get_submodule(n)).__name__})" for n in not_linear[:5]]
            raise ValueError(
                f"target_modules={target_modules!r} matches modules rankmix cannot adapt: "
                f"{', '.join(found)}; it adapts {supported()} layers, so name the linear projections "
                "inside them instead"
            )
        chosen = matched
    if not chosen:
        suffixes = sorted({n.rsplit(".", 1)[-1] for n in linear})
        raise ValueError(
            f"target_modules={target_modules!r} matches no linear layer in {type(model).__name__}; "
            f"its linear layers are named {suffixes} (or use 'all-linear')"
        )
    return sorted(chosen, key=lambda n: [int(p) if p.isdigit() else p for p in n.split(".")])


def layer_count(model: nn.Module) -> int:
    """The number of layers a per-layer profile spans: one past the largest block index in any name."""
    indices = [i for i in (layer_index(n) for n, _ in model.named_modules()) if i is not None]
    return max(indices) + 1 if indices else 0


def adapter_plan(model: nn.Module, config: AdapterConfig) -> dict[str, list[int]]:
    """{name: expert ranks} of every module `config` adapts in `model`, in order: what get_model builds
    (and sizing.py counts, on a meta-device skeleton, without building it)."""
    n_layers = layer_count(model)
    plan = {}
    for name in find_targets(model, config.target_modules):
        layer = layer_index(name)
        if config.uses_layer_profile and layer is None:
            raise ValueError(
                f"{type(config).__name__} sizes experts per layer, but target module {name!r} has no layer "
                "index in its name; narrow target_modules to modules inside the numbered blocks"
            )
        plan[name] = config.expert_ranks(layer, n_layers)
    return plan


def _with_aux(outputs: Any, aux_loss: torch.Tensor, aux_losses: dict[str, torch.Tensor]) -> Any:
    """`outputs` with `aux_loss` and `aux_losses` added: as fields of a subclass of its ModelOutput class,
    so that what rebuilds an output from its fields (torch's pytree: DDP with find_unused_parameters, as
    transformers' Trainer runs a model that is not a PreTrainedModel; torch.compile) rebuilds it whole."""
    if not dataclasses.is_dataclass(outputs):  # a mapping, or a bare ModelOutput: any key is welcome
        outputs["aux_loss"], outputs["aux_losses"] = aux_loss, aux_losses
        return outputs
    return _aux_output_class(type(outputs))(**dict(outputs.items()), aux_loss=aux_loss, aux_losses=aux_losses)


@functools.cache
def _aux_output_class(cls: type) -> type:
    """`cls` (a ModelOutput dataclass) with two more fields, aux_loss and aux_losses."""
    fields = [(name, Any, dataclasses.field(default=None)) for name in ("aux_loss", "aux_losses")]
    return dataclasses.make_dataclass(cls.__name__, fields, bases=(cls,), namespace={"__module__": __name__})


def _added(layer: AdaptedLinear) -> dict[str, torch.Tensor]:
    """What the adapter adds to an adapted layer (banks, routers, grown groups) by state-dict key."""
    return {k: v for k, v in layer.state_dict(keep_vars=True).items() if not k.startswith("base_layer.")}


def _drop_frozen_base(module: RankMixModel, state: dict, prefix: str, local_metadata: dict) -> None:
    own = module.own_state_keys()
    for key in [k for k in state if k.startswith(prefix) and k[len(prefix) :] not in own]:
        del state[key]


def _allow_missing_frozen_base(module: RankMixModel, incompatible: Any) -> None:
    own = module.own_state_keys()
    incompatible.missing_keys[:] = [
        k for k in incompatible.missing_keys if "base_model." not in k or _within(k) in own
    ]


def _within(key: str) -> str:
    """A key of the full model's state dict as RankMixModel names it (from its `base_model.` on)."""
    return "base_model." + key.split("base_model.", 1)[1]


class RankMixModel(nn.Module):
    """A Hugging Face model with rankmix adapters. Call it like the base model, plus `task_ids`.

    Its state dict holds what the adapter adds and trains, not the frozen base weights (those are the
    base model's), and loading one does not ask for them: so a transformers Trainer checkpoint of it
    is the adapter, as for a PEFT model, and tied base weights never reach a file.

    `base_fingerprint` (persistence.base_fingerprint) samples the targeted base weights once, at
    injection: before FSDP shards them and before any merge changes them, so it names the base the
    adapter is trained on; save_pretrained writes it and loading compares it with the saved one."""

    def __init__(self, model: nn.Module, config: AdapterConfig) -> None:
        super().__init__()
        self.base_model = model
        self.adapter_config = config
        self.method = method_of(config)
        self._context = RoutingContext()
        self.task_prototypes: dict[str, torch.Tensor] | None = None  # fit_task_prototypes (not saved)
        # every module's experts are decided before the model is touched, so a bad config changes nothing
        plans = [adapter_plan(model, group) for group in config.group_configs()]
        self.base_fingerprint = persistence.base_fingerprint(model, plans[0])
        self._base_trainable = [p.requires_grad for p in model.parameters()]
        for p in model.parameters():
            p.requires_grad_(False)
        for name in plans[0]:
            self._inject(name, [plan[name] for plan in plans])
        self.register_state_dict_post_hook(_drop_frozen_base)
        self.register_load_state_dict_post_hook(_allow_missing_frozen_base)

    def own_state_keys(self) -> set[str]:
        """The state-dict keys of what the adapter adds (banks, routers) and of any trainable parameter;
        the others are the frozen base model's."""
        own = {n for n, p in self.named_parameters() if p.requires_grad}
        return own | {f"base_model.{name}.{key}" for name, m in self.adapted_modules() for key in _added(m)}

    def _inject(self, name: str, ranks: list[list[int]]) -> None:
        """Adapt module `name`: experts of `ranks[g]` and a router for each group g of tasks."""
        parent_name, _, attr = name.rpartition(".")
        parent = self.base_model.get_submodule(parent_name)
        base = getattr(parent, attr)
        d_in, d_out = linear_shape(base)
        weight = base.weight
        dtype = weight.dtype if weight.dtype in (torch.float32, torch.float64) else torch.float32
        configs = self.adapter_config.group_configs()
        parts = []
        for config, group_ranks in zip(configs, ranks, strict=True):
            bank = ExpertBank(
                d_in,
                d_out,
                group_ranks,
                config.expert_scales(group_ranks),
                **self.method.bank_options(config),
            )
            router = self.method.make_router(config, d_in, len(group_ranks))
            parts.append([m.to(device=weight.device, dtype=dtype) for m in (bank, router)])
        ends = list(itertools.accumulate(len(c.task_names) for c in configs))  # group g's end: g+1's start
        grown = [
            TaskGroup(bank, router, start, len(config.task_names))
            for (bank, router), start, config in zip(parts[1:], ends[:-1], configs[1:], strict=True)
        ]
        setattr(parent, attr, AdaptedLinear(base, *parts[0], self._context, grown))

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":
                raise
            return getattr(self.base_model, name)

    # -- routing ----------------------------------------------------------------------------------
    def adapted_modules(self) -> Iterator[tuple[str, AdaptedLinear]]:
        for name, module in self.base_model.named_modules():
            if isinstance(module, AdaptedLinear):
                yield name, module

    def task_index(self, task: int | str) -> int:
        tasks = self.adapter_config.task_names
        if isinstance(task, str):
            if task not in tasks:
                raise ValueError(f"unknown task {task!r}; this adapter was configured for tasks {tasks}")
            return tasks.index(task)
        if not 0 <= int(task) < len(tasks):
            raise ValueError(
                f"task id {int(task)} is outside the configured tasks {tasks} "
                f"(valid ids: 0..{len(tasks) - 1})"
            )
        return int(task)

    def _task_tensor(self, task_ids: TaskIds) -> torch.Tensor | None:
        config = self.adapter_config
        if task_ids is None:
            if self.method.task_routed:
                raise ValueError(
                    f"{type(config).__name__} routes by task: pass task_ids=... with one task per example "
                    f"(ints 0..{len(config.task_names) - 1} or names from {config.task_names})"
                )
            return None
        if not self.method.task_routed:
            return None  # task-agnostic methods accept and ignore task ids, so one data pipeline serves all
        device = next(self.base_model.parameters()).device
        if isinstance(task_ids, torch.Tensor):
            ids = task_ids.reshape(-1).to(device=device, dtype=torch.long)
            bad = (ids < 0) | (ids >= len(config.task_names))
            if bad.any():
                self.task_index(int(ids[bad][0]))  # raises the error that names the bad id
            return ids
        return torch.tensor([self.task_index(t) for t in task_ids], dtype=torch.long, device=device)

    @contextlib.contextmanager
    def _routing(
        self, task_ids: TaskIds, collect: bool, token_mask: torch.Tensor | None = None
    ) -> Iterator[None]:
        # task_ids stay set after the call, so gradient checkpointing can recompute the forward pass
        self._context.task_ids = self._task_tensor(task_ids)
        self._context.token_mask = token_mask
        self._context.active, self._context.collect = True, collect
        self._context.aux = []
        try:
            yield
        finally:
            self._context.active = self._context.collect = False

    def _check_checkpointing(self) -> None:
        """Refuse reentrant activation checkpointing: it runs each block's forward without autograd and
        keeps only the gradients that flow through the block's outputs, so the auxiliary losses computed
        inside the blocks would train nothing (the non-reentrant variant keeps them: tests)."""
        for module in self.base_model.modules():
            keywords = getattr(getattr(module, "_gradient_checkpointing_func", None), "keywords", {})
            if getattr(module, "gradient_checkpointing", False) and keywords.get("use_reentrant", False):
                raise ValueError(
                    "reentrant activation checkpointing drops the gradients of rankmix's auxiliary losses "
                    "(MoRE's contrastive loss, the routers' balance loss); enable it without reentrancy: "
                    "gradient_checkpointing_enable(gradient_checkpointing_kwargs={'use_reentrant': False}) "
                    "(transformers' default), or train.gradient_checkpointing: true in a recipe"
                )

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *args: Any,
        token_type_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        task_ids: TaskIds = None,
        **kwargs: Any,
    ) -> Any:
        """The base model's forward, routed for `task_ids`. The inputs models commonly take are named, so
        that transformers' Trainer keeps those dataset columns (it drops what forward does not name); the
        ones given reach the base model, the others stay unset."""
        named = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": token_type_ids,
            "inputs_embeds": inputs_embeds,
            "labels": labels,
            "decoder_input_ids": decoder_input_ids,
            "decoder_attention_mask": decoder_attention_mask,
        }
        kwargs.update({k: v for k, v in named.items() if v is not None})
        if isinstance(task_ids, str):
            task_ids = self._auto_task_ids(task_ids, {k: v for k, v in named.items() if k != "labels"})
        if self.training and torch.is_grad_enabled() and any(self.adapter_config.aux_weights().values()):
            self._check_checkpointing()
        with self._routing(task_ids, collect=True, token_mask=attention_mask):
            outputs = self.base_model(*args, **kwargs)
            aux = self._context.aux
            self._context.aux = []
        if not aux:
            return outputs
        if not hasattr(outputs, "keys"):
            raise ValueError(
                "rankmix adds auxiliary losses to a ModelOutput: call the model with return_dict=True"
            )
        by_kind: dict[str, list[torch.Tensor]] = defaultdict(list)
        for kind, value in aux:
            by_kind[kind].append(value)
        means = {kind: torch.stack(values).mean() for kind, values in by_kind.items()}
        weights = self.adapter_config.aux_weights()
        unweighted = sorted(means.keys() - weights.keys())
        if unweighted:  # a loss no config weighs would be dropped without a word
            raise ValueError(
                f"the routers reported auxiliary losses {unweighted} that {self.adapter_config.method} does "
                f"not weigh (it weighs {sorted(weights)}); name them with rankmix.config.AuxLoss"
            )
        total = sum(weights[k] * v for k, v in means.items())
        if outputs.get("loss") is not None:
            outputs["loss"] = outputs["loss"] + total.to(outputs["loss"].dtype)
        # aux_loss: weighted, with gradient, for heads and losses computed outside
        return _with_aux(outputs, total, {k: v.detach() for k, v in means.items()})

    @torch.no_grad()
    def generate(self, *args: Any, task_ids: TaskIds = None, **kwargs: Any) -> Any:
        if isinstance(task_ids, str):  # inferred from the prompt, once: every step routes as it does
            prompt = {"input_ids": args[0] if args else kwargs.get("input_ids")}
            prompt["attention_mask"] = kwargs.get("attention_mask")
            task_ids = self._auto_task_ids(task_ids, prompt)
        with self._routing(task_ids, collect=False):
            return self.base_model.generate(*args, **kwargs)

    # -- routing without a task id (task_inference.py) -------------------------------------------
    def _auto_task_ids(self, task_ids: str, inputs: dict[str, Any]) -> torch.Tensor | None:
        if task_ids != "auto":
            raise ValueError(
                f"task_ids={task_ids!r}: pass task ids (ints or task names, one per example), or "
                "task_ids='auto' to infer each example's task from its input"
            )
        return self.infer_tasks(**inputs) if self.method.task_routed else None

    def infer_tasks(self, **inputs: Any) -> torch.Tensor:
        """Each example's task index, inferred from its input by a first pass of the base model (the
        rule in task_inference.py); what `task_ids="auto"` routes by."""
        return self.task_scores(**inputs).argmax(dim=-1)

    def task_scores(self, **inputs: Any) -> torch.Tensor:
        """(batch, n_tasks): the summed per-module log-probabilities `infer_tasks` takes the largest of."""
        return task_inference.task_scores(self, inputs)

    def fit_task_prototypes(self, batches: Iterable[dict[str, torch.Tensor]]) -> None:
        """Fit the task prototypes task inference uses (needed by Multi-LoRA and MoELoRA, which have no
        task embeddings) from batches of inputs with their `task_ids`; kept in memory, not saved."""
        task_inference.fit_task_prototypes(self, batches)

    # -- inspection (stats.py) --------------------------------------------------------------------
    def selected_ranks(self) -> dict[str, dict[str, int]]:
        """{task: {module: rank}}: the rank of the LoRA each task uses in each module."""
        return stats.selected_ranks(self)

    def parameter_counts(self) -> dict[str, int]:
        """trainable, adapter, router, active_per_token, total (see stats.parameter_counts)."""
        return stats.parameter_counts(self)

    def router_stats(self, reset: bool = False) -> dict[str, Any]:
        """Expert load per module (token routing) and selected ranks (task routing)."""
        return stats.router_stats(self, reset)

    # -- files (persistence.py) -------------------------------------------------------------------
    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        """Every saved adapter tensor (bank and router parameters, persistent buffers) by PEFT-style key."""
        return {
            f"base_model.model.{name}.{key}": value
            for name, m in self.adapted_modules()
            for key, value in _added(m).items()
        }

    def adapter_parameters(self) -> dict[str, nn.Parameter]:
        """Every adapter parameter (banks and routers) under its file key."""
        return {k: v for k, v in self.adapter_tensors().items() if isinstance(v, nn.Parameter)}

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Every saved adapter tensor: parameters and persistent buffers."""
        return {k: v.detach() for k, v in self.adapter_tensors().items()}

    def save_pretrained(
        self, path: str | os.PathLike, state_dict: dict[str, torch.Tensor] | None = None
    ) -> None:
        """adapter_config.json (versioned) and adapter_model.safetensors, each written atomically;
        `state_dict`: the adapter tensors to write instead of the model's own (e.g. gathered from FSDP
        shards), as in transformers and PEFT."""
        persistence.save_adapter(self, path, state_dict)

    @classmethod
    def from_pretrained(
        cls, model: nn.Module, path: str | os.PathLike, is_trainable: bool = False, strict: bool = False
    ) -> RankMixModel:
        """Attach an adapter saved by `save_pretrained` to `model` (the base it was trained on). A base
        whose weights differ from the saved fingerprint's warns; `strict`: raises ValueError instead."""
        meta, tensors = persistence.read_adapter(path)
        rank_model = cls(model, config_from_dict(meta["adapter"]))
        try:
            persistence.load_tensors(rank_model, tensors, meta, path, strict=strict)
        except ValueError:
            rank_model.unload()  # leave the caller's model as it was given
            raise
        for param in rank_model.adapter_parameters().values():
            param.requires_grad_(is_trainable)
        return rank_model

    def load_adapter_weights(self, path: str | os.PathLike, strict: bool = False) -> None:
        """Load the weights of an adapter saved with this model's very configuration (no re-injection).
        A base whose weights differ from the saved fingerprint's warns; `strict`: raises ValueError."""
        persistence.load_adapter_weights(self, path, strict=strict)

    # -- merge and export (deploy.py) ---------------------------------------------------------------
    def unload(self) -> nn.Module:
        """Remove the adapters and return the base model as it was (trainable flags restored)."""
        for name, m in list(self.adapted_modules()):
            parent_name, _, attr = name.rpartition(".")
            setattr(self.base_model.get_submodule(parent_name), attr, m.base_layer)
        for p, flag in zip(self.base_model.parameters(), self._base_trainable, strict=True):
            p.requires_grad_(flag)
        return self.base_model

    def merge_and_unload(self, task: int | str | None = None) -> nn.Module:
        """Fold `task`'s adapter into the base weights and return the plain base model (changed in place;
        this RankMixModel is spent). Inference then costs what the base model costs."""
        return deploy.merge_and_unload(self, task)

    def export_lora(self, task: int | str | None = None, path: str | os.PathLike = "") -> Path:
        """Write `task`'s adapter as a standard PEFT LoRA that `peft.PeftModel.from_pretrained` loads."""
        return deploy.export_lora(self, task, path)


def get_model(model: nn.Module, config: AdapterConfig, probe: Any = None) -> RankMixModel:
    """Freeze `model` and add `config`'s adapters to the linear layers it targets (in place). Fields set
    to "auto" are allocated first (allocators.py; the `probe` allocator trains on `probe`, an
    `allocators.Probe`); the model's `adapter_config` holds the result."""
    from .allocators import resolve  # allocators sizes configs through sizing.py, which imports this module

    return RankMixModel(model, resolve(model, config, probe=probe))
