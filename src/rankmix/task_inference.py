"""Routing without a task id (`task_ids="auto"`): each example's task is inferred from its input before
the adapter routes it. A first pass of the base model alone (every adapter off) shows each adapted
module its input; each module scores every task, and the scores add up over the modules:

    task(x) = argmax_t  sum_m  log softmax_t( cos(pool_m(x), u_mt) / tau )

- MoRE: u_mt is module m's task embedding of task t, the one its contrastive loss trains to match the
  pooled inputs of task t's examples; pooled as that loss pools (`pooling`), tau its `temperature`.
- Every task-routed method, once `fit_task_prototypes` ran: u_mt is task t's prototype in module m, the
  mean of the normalised inputs of task t's examples there (each input averaged over its real tokens):
  a nearest-class-mean classifier on the same first-pass features, tau = PROTOTYPE_TEMPERATURE.
  Multi-LoRA and MoELoRA have no task embeddings, so they need it; with prototypes, MoRE uses them too,
  and should: on GLUE-CPU prototypes identify 80% of a task's dev rows (the mean over seven tasks),
  MoRE's embeddings 21% (BENCHMARKS.md, "Routing without task ids").

Only modules whose positions are the input's tokens count (a T5 decoder's are not). The first pass
costs one more forward of the base per batch, without its LM head where the model has a backbone.
With MoRE's `pooling: first` on a causal decoder every module sees the same first token whatever the
input, so its embeddings cannot tell tasks apart there: fit prototypes instead.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from .layers import AdaptedLinear
from .layers.routers import masked_mean

if TYPE_CHECKING:
    from .model import RankMixModel

PROTOTYPE_TEMPERATURE = 0.05


def _pooled(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(batch, d): each row's input averaged over its real tokens, normalised."""
    return F.normalize(masked_mean(x, mask).float(), dim=-1)


@contextmanager
def _observing(model: RankMixModel, observer: Callable, mask: torch.Tensor, body: torch.nn.Module) -> Any:
    """Each adapted layer shows `observer` its input and adds nothing; `body` runs in eval mode (no
    dropout); the routing context and the body's mode are restored after."""
    context, was_training = model._context, body.training
    saved = context.observer, context.token_mask
    context.observer, context.token_mask = observer, mask
    body.eval()
    try:
        yield
    finally:
        context.observer, context.token_mask = saved
        body.train(was_training)


def _first_pass(model: RankMixModel, inputs: dict[str, Any], observer: Callable) -> None:
    """Run the base model's backbone alone on `inputs` (labels dropped), calling `observer(name, layer,
    input, mask)` for each adapted module that reads the input's tokens: a decoder's body without the
    LM head, an encoder-decoder's encoder. Positions follow the real tokens, so a left-padded prompt is
    read as it would be unpadded."""
    inputs = {k: v for k, v in inputs.items() if k != "labels" and v is not None}
    if "input_ids" not in inputs:
        raise ValueError("task_ids='auto' infers the tasks from input_ids: pass them (not inputs_embeds)")
    mask = inputs.setdefault("attention_mask", torch.ones_like(inputs["input_ids"]))
    base = model.base_model
    if getattr(getattr(base, "config", None), "is_encoder_decoder", False):
        body = base.get_encoder()
    else:
        body = getattr(base, "base_model", base)  # the backbone, without an LM head, where there is one
    accepted = inspect.signature(body.forward).parameters
    if "position_ids" in accepted:
        inputs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
    inputs = {k: v for k, v in inputs.items() if k in accepted}  # e.g. a tokenizer's token_type_ids
    names = {id(m): name for name, m in model.adapted_modules()}

    def visit(layer: AdaptedLinear, x: torch.Tensor, token_mask: torch.Tensor | None) -> None:
        if token_mask is not None:  # else its positions are not the input's tokens
            observer(names[id(layer)], layer, x, token_mask)

    with torch.no_grad(), _observing(model, visit, mask, body):
        body(**inputs)


def has_task_embeddings(model: RankMixModel) -> bool:
    """Whether every router can score tasks by embeddings of its own (MoRE's selectors)."""
    routers = [part.router for _, m in model.adapted_modules() for part in m.parts()]
    return all(hasattr(router, "task_logits") for router in routers)


def needs_prototypes(model: RankMixModel) -> bool:
    """Whether task inference needs fitted prototypes: no task embeddings (Multi-LoRA, MoELoRA), or
    groups of tasks (a grown adapter) whose embeddings were never trained against each other."""
    return not has_task_embeddings(model) or len(model.adapter_config.group_configs()) > 1


@torch.no_grad()
def task_scores(model: RankMixModel, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """(batch, n_tasks): each example's summed per-module log-probabilities of every task (the rule above)."""
    prototypes = model.task_prototypes
    if prototypes is None and needs_prototypes(model):
        raise ValueError(
            f"this {model.adapter_config.method} adapter has no task embeddings trained to tell all its "
            "tasks apart: fit task prototypes first, model.fit_task_prototypes(batches) (rankmix eval "
            "--task-free and predict --task auto fit them on the run's training data)"
        )
    per_module: list[torch.Tensor] = []

    def observe(name: str, layer: AdaptedLinear, x: torch.Tensor, mask: torch.Tensor) -> None:
        if prototypes is None:
            logits = layer.router.task_logits(x, mask)  # one group of tasks: needs_prototypes
        elif name in prototypes:
            z = _pooled(x, mask)
            logits = z @ prototypes[name].to(z).t() / PROTOTYPE_TEMPERATURE
        else:
            return
        per_module.append(F.log_softmax(logits.float(), dim=-1))

    _first_pass(model, inputs, observe)
    if not per_module:
        raise ValueError("no adapted module reads the input tokens, so none can tell which task they are")
    return torch.stack(per_module).sum(0)


@torch.no_grad()
def fit_task_prototypes(model: RankMixModel, batches: Iterable[dict[str, torch.Tensor]]) -> None:
    """Set `model.task_prototypes` from `batches` of inputs with their `task_ids`: per module, the mean
    of each task's normalised first-pass inputs, normalised. Every task needs examples."""
    n_tasks = len(model.adapter_config.task_names)
    sums: dict[str, torch.Tensor] = {}
    counts = torch.zeros(n_tasks)
    task_ids = torch.zeros(0, dtype=torch.long)  # the batch's, in its first pass

    def observe(name: str, layer: AdaptedLinear, x: torch.Tensor, mask: torch.Tensor) -> None:
        z = _pooled(x, mask)
        total = sums.setdefault(name, torch.zeros(n_tasks, z.shape[-1], device=z.device))
        total.index_add_(0, task_ids.to(z.device), z)

    for batch in batches:
        task_ids = batch["task_ids"]
        _first_pass(model, {k: v for k, v in batch.items() if k != "task_ids"}, observe)
        counts += torch.bincount(task_ids.cpu(), minlength=n_tasks)
    missing = [t for t, n in zip(model.adapter_config.task_names, counts.tolist(), strict=True) if n == 0]
    if missing:
        raise ValueError(f"fit_task_prototypes needs examples of every task; none of {missing}")
    model.task_prototypes = {name: F.normalize(total, dim=-1) for name, total in sums.items()}
