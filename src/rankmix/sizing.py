"""Sizes of an adapted model before anything is allocated: exact parameter counts from a meta-device
skeleton of the base model, and a rough estimate of the memory training needs, checked against what the
process can use. A recipe that cannot fit (an unquoted `experts: 2468`, a huge batch) then fails in
seconds with a hint, not minutes later with an allocation error or the kernel's OOM killer."""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .allocation import Profile, layer_index
from .config import AdapterConfig
from .layers.experts import components
from .methods import method_of
from .model import adapter_plan, linear_shape

LIMIT_VARIABLE = "RANKMIX_MEMORY_LIMIT"
FLOAT32 = 4
ADAMW_BYTES = 16  # per trainable float32 parameter: the weight, its gradient and AdamW's two moments
# Elements one token keeps for the backward pass, per block of the base model: fitted to peak RSS of
# float32 training steps on CPU (sdpa attention) of MiniLM-L6 (batch 32-64 x 128, 4 x 512) and SmolLM2-135M
# (4-8 x 256) with HiLo "2468": the estimate of a step is 0.99-1.18 times what it measured
HIDDEN_MULTIPLE = 16  # x hidden size: block inputs, projections, norms, residuals, dropout masks
INTERMEDIATE_MULTIPLE = 4  # x intermediate size: the MLP's up (and gate) projections and activation
ATTENTION_MULTIPLE = 3  # x heads x sequence length: attention probabilities, their dropout mask and output
# ... and per adapted module
COMPONENT_MULTIPLE = 3  # x rank components of its expert bank: x @ A, the gated weights, their product
GATE_MULTIPLE = 4  # x experts: router logits, probabilities, gates, choices
LOGITS_MULTIPLE = 3  # x vocabulary size, per token of a model with an LM head: logits, log-softmax, gradient
# size suffixes: k, M, G, T are powers of 1000; Ki, Mi, Gi, Ti powers of 1024 (a trailing B is optional)
UNITS = (
    {"": 1}
    | {p: 1000 ** (i + 1) for i, p in enumerate("kmgt")}
    | {p + "i": 1024 ** (i + 1) for i, p in enumerate("kmgt")}
)
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?)\s*([kmgt]i?)?b?\s*", re.IGNORECASE)


def meta_model(config: Any, auto_class: str) -> nn.Module:
    """The base model a transformers `config` describes, built by the Auto class named `auto_class`
    ('AutoModel', 'AutoModelForCausalLM', ...) on the meta device: every shape and dtype, no memory."""
    import transformers

    with torch.device("meta"):
        return getattr(transformers, auto_class).from_config(config)


@dataclass(frozen=True)
class _Module:
    """One module the adapter would adapt: its shape and its experts' ranks."""

    d_in: int
    d_out: int
    ranks: list[int]
    components: int  # of its expert bank (layers/experts.py)
    layer: int | None


def _plan(model: nn.Module, config: AdapterConfig) -> list[_Module]:
    """The modules `get_model(model, config)` adapts, with their experts, as it decides them."""
    nested = method_of(config).nested
    return [
        _Module(*linear_shape(model.get_submodule(name)), ranks, components(ranks, nested), layer_index(name))
        for name, ranks in adapter_plan(model, config).items()
    ]


def _router_sizes(config: AdapterConfig, plan: list[_Module]) -> list[int]:
    """Parameters of each module's router, from one router of each shape built by the method's own
    factory on the CPU (routers are small: a gate and, task-routed, a task-embedding table)."""
    method, sizes = method_of(config), {}
    # built on the CPU, from a forked RNG: counting must not move the seeded initialisation that follows
    with torch.device("cpu"), torch.random.fork_rng(devices=[]):
        for m in plan:
            key = (m.d_in, len(m.ranks))
            if key not in sizes:
                sizes[key] = sum(p.numel() for p in method.make_router(config, *key).parameters())
    return [sizes[(m.d_in, len(m.ranks))] for m in plan]


def trainable_by_layer(model: nn.Module, config: AdapterConfig) -> dict[int | None, int]:
    """The trainable parameters (expert factors and routers) of each layer's adapted modules, by layer
    index: what an allocation under a budget adds up (allocators.py)."""
    counts: dict[int | None, int] = {}
    for group in config.group_configs():
        plan = _plan(model, group)
        for m, router in zip(plan, _router_sizes(group, plan), strict=True):
            counts[m.layer] = counts.get(m.layer, 0) + m.components * (m.d_in + m.d_out) + router
    return counts


def parameter_counts(model: nn.Module, config: AdapterConfig) -> dict[str, int]:
    """What `get_model(model, config).parameter_counts()` reports as trainable, adapter, router and total
    (not active_per_token: MoRE's depends on its random initial selection), without building the adapter,
    so `model` may be a meta-device skeleton; it is left unchanged. Expert banks are counted from their
    shapes: ExpertBank takes ~75 us per expert to build even on meta (38 s for 2468 in every module of
    SmolLM2)."""
    return _counts(model, _group_plans(model, config))


def _group_plans(model: nn.Module, config: AdapterConfig) -> list[tuple[AdapterConfig, list[_Module]]]:
    """Each group of tasks' config and plan: every group has its own experts and routers."""
    return [(group, _plan(model, group)) for group in config.group_configs()]


def _counts(model: nn.Module, plans: list[tuple[AdapterConfig, list[_Module]]]) -> dict[str, int]:
    adapter = router = 0
    for group, plan in plans:
        adapter += sum(m.components * (m.d_in + m.d_out) for m in plan)
        router += sum(_router_sizes(group, plan))
    base = sum(p.numel() for p in model.parameters())
    return {
        "trainable": adapter + router,
        "adapter": adapter,
        "router": router,
        "total": base + adapter + router,
    }


def _size(n: float) -> str:
    """Bytes in the largest unit (powers of 1000) that keeps a whole number in front: 1 B, 12.5 MB."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:,.2f} {unit}"
    return f"{n:,.0f} B"


@dataclass(frozen=True)
class SizeEstimate:
    """Parameter counts (exact) and the memory one training step needs (rough, in bytes, parts below)."""

    config: AdapterConfig
    counts: dict[str, int]  # trainable, adapter, router, total: as RankMixModel.parameter_counts()
    batch_size: int
    max_length: int
    base_bytes: int  # frozen base weights, in their own dtype
    adapter_bytes: int  # trainable parameters with gradients and AdamW moments; the banks' gate maps
    activation_bytes: int  # what the base model's blocks keep for the backward pass
    adapter_activation_bytes: int  # what the experts and routers keep for it
    logits_bytes: int  # an LM head's logits, log-probabilities and their gradient

    def parts(self) -> dict[str, int]:
        return {
            "base weights": self.base_bytes,
            "adapter state": self.adapter_bytes,
            "activations": self.activation_bytes,
            "adapter activations": self.adapter_activation_bytes,
            "logits": self.logits_bytes,
        }

    @property
    def total_bytes(self) -> int:
        return sum(self.parts().values())

    def summary(self) -> str:
        """One line for people: the total and every part."""
        parts = ", ".join(f"{name} {_size(size)}" for name, size in self.parts().items())
        return (
            f"training needs about {_size(self.total_bytes)} at batch {self.batch_size} x {self.max_length} "
            f"tokens ({parts}); {self.counts['trainable']:,} trainable parameters"
        )


def estimate_size(
    model: nn.Module, config: AdapterConfig, batch_size: int, max_length: int, mixed_precision: bool = False
) -> SizeEstimate:
    """Size a training run of `config` on base `model` (a meta skeleton will do) at micro-batches of
    `batch_size` x `max_length` tokens. Deliberately rough, and on the high side, so that it refuses only
    what cannot fit: base weights (their numel x element size); trainable parameters x 16 bytes plus each
    expert bank's gate-to-component map (experts x components floats: quadratic in the experts, 60 GB a
    module for an unquoted `experts: 2468, ranks: 2468`); and per token of the micro-batch, per block
    16 x hidden + 4 x intermediate + 3 x heads x length elements (of the base weights' dtype, or 16-bit
    under `mixed_precision`), per adapted module 3 x its rank components + 4 x its experts, and for a
    model with an LM head 3 x vocabulary size (these two in float32). Not counted: encoder task heads,
    other buffers."""
    plans = _group_plans(model, config)
    plan = [m for _, group_plan in plans for m in group_plan]
    counts = _counts(model, plans)
    tokens = batch_size * max_length
    # the blocks are the modules where a layer index first appears in a name (encoder and decoder ones)
    blocks = sum(
        1
        for n, _ in model.named_modules()
        if layer_index(n) is not None and layer_index(n.rpartition(".")[0]) is None
    )
    hidden = model.get_input_embeddings().embedding_dim
    matrices = [
        max(p.shape) for n, p in model.named_parameters() if p.dim() == 2 and layer_index(n) is not None
    ]
    intermediate = max(matrices, default=hidden)  # a block's widest matrix: its MLP's
    heads = getattr(model.config, "num_attention_heads", 0)
    per_block = (
        HIDDEN_MULTIPLE * hidden
        + INTERMEDIATE_MULTIPLE * intermediate
        + ATTENTION_MULTIPLE * heads * max_length
    )
    per_module = sum(COMPONENT_MULTIPLE * m.components + GATE_MULTIPLE * len(m.ranks) for m in plan)
    head = model.get_output_embeddings()
    vocab = head.weight.shape[0] if head is not None else 0
    width = 2 if mixed_precision else next(model.parameters()).element_size()
    return SizeEstimate(
        config=config,
        counts=counts,
        batch_size=batch_size,
        max_length=max_length,
        base_bytes=sum(p.numel() * p.element_size() for p in model.parameters()),
        adapter_bytes=counts["trainable"] * ADAMW_BYTES
        + sum(len(m.ranks) * m.components for m in plan) * FLOAT32,
        activation_bytes=tokens * blocks * per_block * width,
        adapter_activation_bytes=tokens * per_module * FLOAT32,
        logits_bytes=tokens * vocab * LOGITS_MULTIPLE * FLOAT32,
    )


def _unquoted_profiles(config: AdapterConfig) -> dict[str, int]:
    """Profile fields given as a number whose digits read like a per-group profile (2468 experts in every
    layer, where "2468" was meant: YAML reads an unquoted 2468 as a number)."""
    hints = typing.get_type_hints(type(config))
    return {
        f.name: value
        for f in dataclasses.fields(config)
        if hints[f.name] == Profile
        and isinstance(value := getattr(config, f.name), int)
        and not isinstance(value, bool)
        and value >= 10
        and "0" not in str(value)
    }


def _hint(estimate: SizeEstimate, largest: str) -> str:
    unquoted = _unquoted_profiles(estimate.config)
    if unquoted:
        given = " and ".join(f"{k}: {v}" for k, v in unquoted.items())
        quoted = ", ".join(f'{k}: "{v}"' for k, v in unquoted.items())
        verb, pronoun = ("is", "it") if len(unquoted) == 1 else ("are", "them")
        return (
            f"{given} {verb} one number for every layer; for a profile by layer group, quote {pronoun}: "
            + quoted
        )
    if largest in ("activations", "logits"):
        return (
            f"lower train.batch_size ({estimate.batch_size}) or train.max_length ({estimate.max_length}), "
            "and raise train.grad_accum to keep the effective batch size"
        )
    if largest == "base weights":
        return "the base model alone takes most of it: use a smaller model or a machine with more memory"
    return "use fewer experts, lower ranks or fewer target_modules"


def check_size(estimate: SizeEstimate, limit: int) -> None:
    """Refuse (ValueError, one line: the estimate, the limit, the largest part, a hint) an estimate above
    `limit` bytes."""
    if estimate.total_bytes <= limit:
        return
    largest, size = max(estimate.parts().items(), key=lambda kv: kv[1])
    raise ValueError(
        f"training needs about {_size(estimate.total_bytes)}, more than the {_size(limit)} this process can "
        f"use (free memory, or {LIMIT_VARIABLE}); largest part: {largest} {_size(size)}; "
        f"{_hint(estimate, largest)}"
    )


def parse_size(text: str) -> int:
    """Bytes from '17179869184', '8GB', '512MB', '1.5GiB' (k, M, G, T: powers of 1000; Ki, Mi, ...: 1024)."""
    match = _SIZE.fullmatch(text)
    size = float(match.group(1)) * UNITS[(match.group(2) or "").lower()] if match else 0
    if size < 1:
        raise ValueError(
            f"{LIMIT_VARIABLE}={text!r} is not a memory size; write bytes or e.g. 8GB, 512MB, 16GiB"
        )
    return int(size)


def available_memory(device: torch.device) -> int:
    """Bytes this process can use on `device`: $RANKMIX_MEMORY_LIMIT where set, else a CUDA device's
    free memory, or the host's available memory (MemAvailable; total physical memory where the system
    does not say, e.g. macOS)."""
    if LIMIT_VARIABLE in os.environ:
        return parse_size(os.environ[LIMIT_VARIABLE])
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
