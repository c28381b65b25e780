"""A trained run used without task ids: `rankmix eval RUN --task-free` and `rankmix predict RUN --task
auto`. Each example's task is inferred from its texts (task_inference.py), encoded as the tokenizer
encodes a text pair, without any task's prompt (the task is what is not known). MoRE recognises tasks by
its task embeddings; Multi-LoRA, MoELoRA and a grown MoRE (whose groups' embeddings were never trained
against each other) by task prototypes, fit here on the run's training examples (at most
PROTOTYPE_EXAMPLES of each task, drawn with the data seed; a forward of the base over them)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch

from ..data.collate import encoder_features, pad_features, pad_id
from ..task_inference import needs_prototypes
from ..tasks.base import Example
from .run import Run, load_data, subset

PROTOTYPE_EXAMPLES = 256


def texts_batch(run: Run, examples: Sequence[Example], device: torch.device) -> dict[str, torch.Tensor]:
    """The inputs task inference reads: each example's texts as a pair, padded."""
    max_length = run.config.train.max_length
    rows = [encoder_features(run.tokenizer, e.text_a, e.text_b, max_length) for e in examples]
    return {k: v.to(device) for k, v in pad_features(rows, pad_id(run.tokenizer)).items()}


def task_inferrer(run: Run) -> Callable[[Sequence[Example]], torch.Tensor]:
    """A function from examples (any number: batched as the run's batch size) to their inferred task
    indices, on the CPU; fits the prototypes it needs first."""
    adapted = run.adapted
    if not adapted.method.task_routed:
        raise ValueError(
            f"{adapted.adapter_config.method} routes every input alike: there is no task id to infer "
            "(its task heads aside); evaluate without --task-free, predict with --task TASK"
        )
    device = next(adapted.parameters()).device
    if needs_prototypes(adapted) and adapted.task_prototypes is None:
        fit_prototypes(run)

    def infer(examples: Sequence[Example]) -> torch.Tensor:
        size = run.config.train.batch_size
        chunks = [examples[i : i + size] for i in range(0, len(examples), size)]
        inferred = [adapted.infer_tasks(**texts_batch(run, chunk, device)).cpu() for chunk in chunks]
        return torch.cat(inferred) if inferred else torch.zeros(0, dtype=torch.long)

    return infer


def fit_prototypes(run: Run) -> None:
    """Fit the adapter's task prototypes on the run's training rows (at most PROTOTYPE_EXAMPLES a task),
    reading them first where the run was opened without them."""
    if not run.train_sets:
        run.train_sets = load_data(run.config, run.tasks, ("train",))["train"]
    run.adapted.fit_task_prototypes(_training_batches(run, next(run.adapted.parameters()).device))


def _training_batches(run: Run, device: torch.device) -> Iterator[dict[str, torch.Tensor]]:
    t = run.config.train
    for task, examples in enumerate(run.train_sets):
        kept = subset(examples, PROTOTYPE_EXAMPLES, t.sampling_seed)
        for start in range(0, len(kept), t.batch_size):
            chunk = kept[start : start + t.batch_size]
            ids = torch.full((len(chunk),), task, dtype=torch.long, device=device)
            yield texts_batch(run, chunk, device) | {"task_ids": ids}
