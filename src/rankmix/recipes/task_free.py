"""A trained run used without task ids: `rankmix eval RUN --task-free` and `rankmix predict RUN --task
auto`. Each example's task is inferred from its texts (task_inference.py), encoded as the tokenizer
encodes a text pair, without any task's prompt (the task is what is not known). Every method recognises
tasks by task prototypes here, fit on the run's training examples (at most PROTOTYPE_EXAMPLES of each
task, drawn with the data seed; a forward of the base over them): Multi-LoRA, MoELoRA and a grown MoRE
have nothing else, and on GLUE-CPU they identify 80% of a task's dev rows (the mean over seven tasks)
where MoRE's own task embeddings identify 21% (BENCHMARKS.md, "Routing without task ids")."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch

from ..data.collate import encoder_features, pad_features, pad_id
from ..tasks.base import Example
from .run import Run, load_data, subset

PROTOTYPE_EXAMPLES = 256


def texts_batch(run: Run, examples: Sequence[Example], device: torch.device) -> dict[str, torch.Tensor]:
    """The inputs task inference reads: each example's texts as a pair, padded."""
    max_length = run.config.train.max_length
    rows = [encoder_features(run.tokenizer, e.text_a, e.text_b, max_length) for e in examples]
    return {k: v.to(device) for k, v in pad_features(rows, pad_id(run.tokenizer)).items()}


def task_inferrer(run: Run, prototypes: bool = True) -> Callable[[Sequence[Example]], torch.Tensor]:
    """A function from examples (any number: batched as the run's batch size) to their inferred task
    indices, on the CPU; fits the task prototypes first unless the model has them. `prototypes=False`
    infers as the model stands (MoRE without prototypes: its task embeddings; benchmarks/task_free.py
    compares the two rules)."""
    adapted = run.adapted
    if not adapted.method.task_routed:
        raise ValueError(
            f"{adapted.adapter_config.method} routes every input alike: there is no task id to infer "
            "(its task heads aside); evaluate without --task-free, predict with --task TASK"
        )
    device = next(adapted.parameters()).device
    if prototypes and adapted.task_prototypes is None:
        if not run.train_sets:
            run.train_sets = load_data(run.config, run.tasks, ("train",))["train"]
        adapted.fit_task_prototypes(_training_batches(run, device))

    def infer(examples: Sequence[Example]) -> torch.Tensor:
        size = run.config.train.batch_size
        chunks = [examples[i : i + size] for i in range(0, len(examples), size)]
        inferred = [adapted.infer_tasks(**texts_batch(run, chunk, device)).cpu() for chunk in chunks]
        return torch.cat(inferred) if inferred else torch.zeros(0, dtype=torch.long)

    return infer


def _training_batches(run: Run, device: torch.device) -> Iterator[dict[str, torch.Tensor]]:
    t = run.config.train
    for task, examples in enumerate(run.train_sets):
        kept = subset(examples, PROTOTYPE_EXAMPLES, t.sampling_seed)
        for start in range(0, len(kept), t.batch_size):
            chunk = kept[start : start + t.batch_size]
            ids = torch.full((len(chunk),), task, dtype=torch.long, device=device)
            yield texts_batch(run, chunk, device) | {"task_ids": ids}
