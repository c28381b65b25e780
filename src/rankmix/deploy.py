"""Deployment: fold one task's adapter into the base weights, or export it as a stock PEFT LoRA.
Only mergeable methods have one plain LoRA per task; token-routed experts depend on each token."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from .files import write_json
from .layers.base import Quantized, base_layer_kind
from .persistence import CONFIG_NAME, WEIGHTS_NAME, base_model_name, save_tensors

if TYPE_CHECKING:
    from .model import RankMixModel


def resolve_task(model: RankMixModel, task: int | str | None) -> int:
    """The task index to merge or export; refuses methods whose adapter is not one LoRA per task."""
    if not model.method.mergeable:
        raise ValueError(
            "token-routed experts depend on each token, not on the task: this adapter cannot be merged "
            "or exported per task. Use MoRE, Multi-LoRA, MoELoRA or LoRA for per-task merging"
        )
    if not model.method.task_routed:
        return 0
    if task is None:
        raise ValueError(
            f"pass task=... (one of {model.adapter_config.task_names}): each task merges differently"
        )
    return model.task_index(task)


@torch.no_grad()
def merge_and_unload(model: RankMixModel, task: int | str | None = None) -> nn.Module:
    """Fold `task`'s adapter into the base weights and return the plain base model (changed in place).
    Over a quantized base (bitsandbytes), each adapted layer is dequantized, merged and kept in float32
    (quantizing it again would round the update away), and `dequantized` turns the other layers to float
    and drops the quantization config: the result is a float model of the base's architecture."""
    t = resolve_task(model, task)
    modules = [m for _, m in model.adapted_modules()]
    deltas = [m.delta_weight(t) for m in modules]  # all first: a refusal must leave the model intact
    for m, delta in zip(modules, deltas, strict=True):
        m.base_layer = m.kind.merge(m.base_layer, delta)
    return dequantized(model.unload())


def dequantized(model: nn.Module) -> nn.Module:
    """`model` as a float model: its bitsandbytes layers dequantized (layers/base.py; transformers'
    `dequantize()` misreads 4-bit weights that bitsandbytes repacked for the CPU), and the model no longer
    says it is quantized (a saved config that still did would quantize it again when loaded)."""
    for name, module in list(model.named_modules()):
        kind = base_layer_kind(module)
        if isinstance(kind, Quantized):
            model.set_submodule(name, kind.dequantize(module))
    config = getattr(model, "config", None)
    if hasattr(config, "quantization_config"):
        model.is_quantized, model.hf_quantizer = False, None
        del config.quantization_config
    return model


@torch.no_grad()
def export_lora(model: RankMixModel, task: int | str | None, path: str | os.PathLike) -> Path:
    """Write `task`'s adapter as a standard PEFT LoRA that `peft.PeftModel.from_pretrained` and vLLM's
    multi-LoRA serving load alike. Each module's scaling is folded into lora_B and every module is
    zero-padded to the largest rank the task uses, so that one `lora_alpha` equal to `r` (a scale of 1)
    holds everywhere: no `rank_pattern` or `alpha_pattern`, which vLLM does not read."""
    from peft import LoraConfig

    if not path:
        raise ValueError("pass path=... (a folder to write the PEFT adapter into)")
    t = resolve_task(model, task)
    factors = {name: m.task_factors(t) for name, m in model.adapted_modules()}
    top = max(a.shape[0] for a, _ in factors.values())
    tensors = {}
    for name, (a, b) in factors.items():
        pad = top - a.shape[0]
        tensors[f"base_model.model.{name}.lora_A.weight"] = torch.nn.functional.pad(a, (0, 0, 0, pad))
        tensors[f"base_model.model.{name}.lora_B.weight"] = torch.nn.functional.pad(b, (0, pad))
    lora = LoraConfig(
        r=top,
        lora_alpha=top,
        target_modules=list(factors),
        lora_dropout=model.adapter_config.dropout,
        fan_in_fan_out=any(m.fan_in_fan_out for _, m in model.adapted_modules()),
        bias="none",
        base_model_name_or_path=base_model_name(model.base_model),
    )
    folder = Path(path)
    save_tensors(folder / WEIGHTS_NAME, tensors)
    write_json(folder / CONFIG_NAME, lora.to_dict())
    return folder
