"""get_model() and RankMixModel: inject adapters into any Hugging Face model, route task ids to every
layer, add auxiliary losses to outputs.loss, save/load, merge per task and export to PEFT LoRA."""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from . import __version__
from .config import AdapterConfig, config_from_dict
from .layers import (
    AdaptedLinear,
    ExpertBank,
    RoutingContext,
    SharedRouter,
    TaskRankSelector,
    TaskRouter,
    TokenRouter,
)

FORMAT_VERSION = 1
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|layer|blocks|block|h)\.(\d+)(?:\.|$)")

TaskIds = torch.Tensor | Sequence[int] | Sequence[str] | None


def layer_index(module_name: str) -> int | None:
    """The block number in a module name (`layers.12.`, `layer.3.`, `block.5.`, `h.7.`), if any."""
    match = _LAYER_INDEX.search(module_name)
    return int(match.group(1)) if match else None


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def _shape(module: nn.Module) -> tuple[int, int, bool]:
    """(d_in, d_out, fan_in_fan_out) of a Linear or a GPT-2 style Conv1D (weight stored as d_in x d_out)."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features, False
    d_in, d_out = module.weight.shape
    return d_in, d_out, True


def find_targets(model: nn.Module, target_modules: str | list[str]) -> list[str]:
    """Names of the linear layers that `target_modules` selects: names match a module name or its
    dotted suffix; any other string is a regex matched against the whole name; "all-linear" takes every
    linear layer inside the numbered blocks (so output heads and poolers stay frozen)."""
    linear = {name for name, m in model.named_modules() if _is_linear(m)}
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
            raise ValueError(
                f"target_modules={target_modules!r} matches modules that are not linear layers: "
                f"{not_linear[:5]}; name the linear projections inside them instead"
            )
        chosen = matched
    if not chosen:
        suffixes = sorted({n.rsplit(".", 1)[-1] for n in linear})
        raise ValueError(
            f"target_modules={target_modules!r} matches no linear layer in {type(model).__name__}; "
            f"its linear layers are named {suffixes} (or use 'all-linear')"
        )
    return sorted(chosen, key=lambda n: [int(p) if p.isdigit() else p for p in n.split(".")])


def _make_router(config: AdapterConfig, d_in: int, n_experts: int) -> nn.Module:
    n_tasks = len(config.task_names)
    if config.routing == "none":
        return SharedRouter()
    if config.routing == "task":
        return TaskRouter(n_tasks, n_experts)
    if config.routing == "task_soft":
        return TaskRouter(n_tasks, n_experts, embedding_dim=config.task_embedding_dim)
    if config.routing == "rank":
        return TaskRankSelector(d_in, n_tasks, n_experts, config.temperature, config.pooling)
    return TokenRouter(d_in, n_experts, config.top_k, config.top_p)


def _atomic_write(path: Path, write: Any) -> None:
    """Write through a temporary file in the same folder, then rename, so a crash never leaves half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _write_json(path: Path, data: dict) -> None:
    text = json.dumps(data, indent=2, default=lambda v: sorted(v) if isinstance(v, set) else str(v))
    _atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _read_adapter(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The saved config (format checked) and tensors of a rankmix adapter folder, with clear errors."""
    config_file, weights_file = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    for f in (config_file, weights_file):
        if not f.is_file():
            raise FileNotFoundError(f"{f} is missing: {folder} is not a rankmix adapter folder")
    try:
        meta = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{config_file} is corrupted ({e}); save the adapter again") from None
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if version != FORMAT_VERSION or "adapter" not in meta:
        raise ValueError(
            f"{config_file} has format_version {version!r}; this rankmix reads version {FORMAT_VERSION}"
        )
    try:
        tensors = load_file(weights_file)
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{weights_file} is corrupted or truncated ({e}); save the adapter again") from None
    return meta, tensors


class RankMixModel(nn.Module):
    """A Hugging Face model with rankmix adapters. Call it like the base model, plus `task_ids`."""

    def __init__(self, model: nn.Module, config: AdapterConfig) -> None:
        super().__init__()
        self.base_model = model
        self.adapter_config = config
        self._context = RoutingContext()
        targets = find_targets(model, config.target_modules)
        indices = [i for i in (layer_index(n) for n, _ in model.named_modules()) if i is not None]
        n_layers = max(indices) + 1 if indices else 0
        # every module's experts are decided before the model is touched, so a bad config changes nothing
        plan = {name: self._expert_ranks(name, n_layers) for name in targets}
        self._base_trainable = [p.requires_grad for p in model.parameters()]
        for p in model.parameters():
            p.requires_grad_(False)
        for name, ranks in plan.items():
            self._inject(name, ranks)

    def _expert_ranks(self, name: str, n_layers: int) -> list[int]:
        config = self.adapter_config
        layer = layer_index(name)
        if config.uses_layer_profile and layer is None:
            raise ValueError(
                f"{type(config).__name__} sizes experts per layer, but target module {name!r} has no layer "
                "index in its name; narrow target_modules to modules inside the numbered blocks"
            )
        return config.expert_ranks(layer, n_layers)

    def _inject(self, name: str, ranks: list[int]) -> None:
        config = self.adapter_config
        parent_name, _, attr = name.rpartition(".")
        parent = self.base_model.get_submodule(parent_name)
        base = getattr(parent, attr)
        d_in, d_out, fan_in_fan_out = _shape(base)
        bank = ExpertBank(
            d_in,
            d_out,
            ranks,
            config.expert_scales(ranks),
            nested=config.nested,
            linear_scaling=getattr(config, "linear_scaling", False),
            dropout=config.dropout,
        )
        router = _make_router(config, d_in, len(ranks))
        weight = base.weight
        dtype = weight.dtype if weight.dtype in (torch.float32, torch.float64) else torch.float32
        bank.to(device=weight.device, dtype=dtype)
        router.to(device=weight.device, dtype=dtype)
        setattr(parent, attr, AdaptedLinear(base, bank, router, self._context, fan_in_fan_out))

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
            if config.needs_task_ids:
                raise ValueError(
                    f"{type(config).__name__} routes by task: pass task_ids=... with one task per example "
                    f"(ints 0..{len(config.task_names) - 1} or names from {config.task_names})"
                )
            return None
        if not config.task_names:
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
        self._context.collect = collect
        self._context.aux = []
        try:
            yield
        finally:
            self._context.collect = False

    def forward(self, *args: Any, task_ids: TaskIds = None, **kwargs: Any) -> Any:
        with self._routing(task_ids, collect=True, token_mask=kwargs.get("attention_mask")):
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
        total = sum(weights.get(k, 0.0) * v for k, v in means.items())
        if outputs.get("loss") is not None:
            outputs["loss"] = outputs["loss"] + total.to(outputs["loss"].dtype)
        outputs["aux_loss"] = total  # weighted, with gradient: for heads and losses computed outside
        outputs["aux_losses"] = {k: v.detach() for k, v in means.items()}
        return outputs

    @torch.no_grad()
    def generate(self, *args: Any, task_ids: TaskIds = None, **kwargs: Any) -> Any:
        with self._routing(task_ids, collect=False):
            return self.base_model.generate(*args, **kwargs)

    # -- inspection -------------------------------------------------------------------------------
    def selected_ranks(self) -> dict[str, dict[str, int]]:
        """{task: {module: rank}}: the rank of the LoRA each task uses in each module (the selector's
        choice for MoRE; the expert rank, or all experts' ranks for MoELoRA's dense mix)."""
        tasks = self.adapter_config.task_names
        if not tasks:
            raise ValueError(
                f"{type(self.adapter_config).__name__} is not task-routed: it has no per-task ranks"
            )
        with torch.no_grad():
            return {
                task: {name: m.task_factors(t)[0].shape[0] for name, m in self.adapted_modules()}
                for t, task in enumerate(tasks)
            }

    def parameter_counts(self) -> dict[str, int]:
        """trainable, adapter (all LoRA factors), router, active_per_token (LoRA parameters one token
        uses: top-k experts, the task's rank, ...; an upper bound for top-p), total."""
        lora = router = 0
        active = 0.0
        for _, m in self.adapted_modules():
            lora += sum(p.numel() for p in m.bank.parameters())
            router += sum(p.numel() for p in m.router.parameters())
            active += m.active_rank() * (m.bank.lora_A.shape[1] + m.bank.lora_B.shape[0])
        return {
            "trainable": sum(p.numel() for p in self.parameters() if p.requires_grad),
            "adapter": lora,
            "router": router,
            "active_per_token": round(active),
            "total": sum(p.numel() for p in self.parameters()),
        }

    def router_stats(self, reset: bool = False) -> dict[str, Any]:
        """Per-module expert load (share of routed assignments per expert, and mean experts per token)
        since the last reset, for token routing; the per-task rank per module for task routing."""
        stats: dict[str, Any] = {}
        load = {}
        for name, m in self.adapted_modules():
            if isinstance(m.router, TokenRouter) and m.router.tokens > 0:
                counts = m.router.load
                load[name] = {
                    "share": (counts / counts.sum()).tolist(),
                    "experts_per_token": float(counts.sum() / m.router.tokens),
                }
                if reset:
                    m.router.reset_stats()
        if load:
            stats["expert_load"] = load
        if self.adapter_config.task_names:
            stats["selected_ranks"] = self.selected_ranks()
        return stats

    # -- files ------------------------------------------------------------------------------------
    def adapter_parameters(self) -> dict[str, nn.Parameter]:
        """Every adapter parameter (banks and routers) under its PEFT-style file key."""
        params = {}
        for name, m in self.adapted_modules():
            for part in ("bank", "router"):
                for pname, p in getattr(m, part).named_parameters():
                    params[f"base_model.model.{name}.{part}.{pname}"] = p
        return params

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: p.detach() for k, p in self.adapter_parameters().items()}

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """adapter_config.json (versioned) and adapter_model.safetensors, each written atomically."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.contiguous().cpu() for k, v in self.adapter_state_dict().items()}
        _atomic_write(folder / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
        base_config = getattr(self.base_model, "config", None)
        _write_json(
            folder / CONFIG_NAME,
            {
                "format_version": FORMAT_VERSION,
                "rankmix_version": __version__,
                "base_model_name_or_path": getattr(base_config, "_name_or_path", None),
                "base_model_class": type(self.base_model).__name__,
                "adapter": self.adapter_config.to_dict(),
            },
        )

    @classmethod
    def from_pretrained(
        cls, model: nn.Module, path: str | os.PathLike, is_trainable: bool = False
    ) -> RankMixModel:
        """Attach an adapter saved by `save_pretrained` to `model` (the base it was trained on)."""
        meta, tensors = _read_adapter(Path(path))
        rank_model = cls(model, config_from_dict(meta["adapter"]))
        try:
            rank_model._load_adapter(tensors, Path(path) / WEIGHTS_NAME, meta.get("base_model_name_or_path"))
        except ValueError:
            rank_model.unload()  # leave the caller's model as it was given
            raise
        for param in rank_model.adapter_parameters().values():
            param.requires_grad_(is_trainable)
        return rank_model

    def load_adapter_weights(self, path: str | os.PathLike) -> None:
        """Load the weights of an adapter saved with this model's very configuration (no re-injection)."""
        meta, tensors = _read_adapter(Path(path))
        if meta["adapter"] != json.loads(json.dumps(self.adapter_config.to_dict())):
            raise ValueError(f"{path} was saved with another adapter configuration than this model's")
        self._load_adapter(tensors, Path(path) / WEIGHTS_NAME, meta.get("base_model_name_or_path"))

    @torch.no_grad()
    def _load_adapter(self, tensors: dict[str, torch.Tensor], source: Path, base_name: str | None) -> None:
        expected = self.adapter_parameters()
        missing = sorted(set(expected) - set(tensors))
        unexpected = sorted(set(tensors) - set(expected))
        if missing or unexpected:
            raise ValueError(
                f"{source} does not fit this base model: missing {missing[:3]}, unexpected {unexpected[:3]}; "
                f"load it onto the model it was trained on ({base_name})"
            )
        for key, param in expected.items():
            if tensors[key].shape != param.shape:
                raise ValueError(
                    f"{key} has shape {tuple(tensors[key].shape)} in {source} but {tuple(param.shape)} here: "
                    f"the adapter was trained on a base model with other shapes ({base_name}); "
                    "load it onto that model"
                )
        for key, param in expected.items():
            param.copy_(tensors[key])

    # -- merge and export -------------------------------------------------------------------------
    def _resolve_task(self, task: int | str | None) -> int:
        if not self.adapter_config.task_names:
            return 0
        if task is None:
            raise ValueError(
                f"pass task=... (one of {self.adapter_config.task_names}): each task merges differently"
            )
        return self.task_index(task)

    def unload(self) -> nn.Module:
        """Remove the adapters and return the base model as it was (trainable flags restored)."""
        for name, m in list(self.adapted_modules()):
            parent_name, _, attr = name.rpartition(".")
            setattr(self.base_model.get_submodule(parent_name), attr, m.base_layer)
        for p, flag in zip(self.base_model.parameters(), self._base_trainable, strict=True):
            p.requires_grad_(flag)
        return self.base_model

    @torch.no_grad()
    def merge_and_unload(self, task: int | str | None = None) -> nn.Module:
        """Fold `task`'s adapter into the base weights and return the plain base model (changed in place;
        this RankMixModel is spent). Inference then costs what the base model costs."""
        t = self._resolve_task(task)
        modules = [m for _, m in self.adapted_modules()]
        deltas = [m.delta_weight(t) for m in modules]  # all first: a refusal must leave the model intact
        for m, delta in zip(modules, deltas, strict=True):
            m.base_layer.weight += delta.to(m.base_layer.weight.dtype)
        return self.unload()

    @torch.no_grad()
    def export_lora(self, task: int | str | None = None, path: str | os.PathLike = "") -> Path:
        """Write `task`'s adapter as a standard PEFT LoRA (per-module rank = the rank that task uses,
        scaling folded into lora_B) that `peft.PeftModel.from_pretrained` loads."""
        from peft import LoraConfig

        if not path:
            raise ValueError("pass path=... (a folder to write the PEFT adapter into)")
        t = self._resolve_task(task)
        tensors, ranks, fan_in_fan_out = {}, {}, False
        for name, m in self.adapted_modules():
            a, b = m.task_factors(t)
            tensors[f"base_model.model.{name}.lora_A.weight"] = a.contiguous().cpu()
            tensors[f"base_model.model.{name}.lora_B.weight"] = b.contiguous().cpu()
            ranks[re.escape(name)] = a.shape[0]
            fan_in_fan_out |= m.fan_in_fan_out
        top = max(ranks.values())
        base_config = getattr(self.base_model, "config", None)
        lora = LoraConfig(
            r=top,
            lora_alpha=top,
            target_modules=[name for name, _ in self.adapted_modules()],
            rank_pattern=dict(ranks),
            alpha_pattern=dict(ranks),
            lora_dropout=self.adapter_config.dropout,
            fan_in_fan_out=fan_in_fan_out,
            bias="none",
            base_model_name_or_path=getattr(base_config, "_name_or_path", None),
        )
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        _atomic_write(folder / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
        _write_json(folder / CONFIG_NAME, lora.to_dict())
        return folder


def get_model(model: nn.Module, config: AdapterConfig) -> RankMixModel:
    """Freeze `model` and add `config`'s adapters to the linear layers it targets (in place)."""
    return RankMixModel(model, config)
