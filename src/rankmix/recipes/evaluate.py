"""Evaluation: predictions for every task, batch by batch through the model's family, scored with each
task's metrics; the results table."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn

from ..families import ModelFamily
from ..tasks.base import Example, Task
from ..tasks.kinds import Prediction


@torch.no_grad()
def predict(
    model: nn.Module,
    family: ModelFamily,
    tokenizer,
    task: Task,
    task_index: int,
    examples: Sequence[Example],
    batch_size: int,
    max_length: int,
    mode: str = "score",
    share: tuple[int, int] = (0, 1),
    scored: Callable[[int], object] | None = None,
    routes: torch.Tensor | None = None,
) -> list[Prediction]:
    """One prediction per example (what one is, its task's kind says). With `share` (rank, world)
    of a torch.distributed job, each process predicts every world-th example with its own replica of
    `model`, and every process gets all the predictions, in order. `scored(n)` hears of each batch: about
    n rows scored by all processes. `routes`: the task id the adapter routes each example by (the tasks
    inferred from the inputs: task_free.py; one process), where given."""
    rank, world = share
    if routes is not None and world > 1:
        raise ValueError("task-free evaluation runs in one process: its task counts are not gathered")
    mine = examples[rank::world]
    device = next(p.device for p in model.parameters())
    preds: list[Prediction] = []
    for start in range(0, len(mine), batch_size):
        chunk = mine[start : start + batch_size]
        ids = torch.full((len(chunk),), task_index, dtype=torch.long, device=device)
        chunk_routes = None if routes is None else routes[start : start + len(chunk)].to(device)
        preds += family.predict(model, tokenizer, task, ids, chunk, max_length, mode, chunk_routes)
        if scored is not None:
            scored(len(chunk) * world)
    if world == 1:
        return preds
    parts: list[list[Prediction]] = [[] for _ in range(world)]
    dist.all_gather_object(parts, preds)
    ordered: list[Prediction] = [0.0] * len(examples)
    for r, part in enumerate(parts):
        ordered[r::world] = part
    return ordered


def evaluate(
    model: nn.Module,
    family: ModelFamily,
    tokenizer,
    tasks: Sequence[Task],
    dev_sets: Sequence[Sequence[Example]],
    batch_size: int,
    max_length: int,
    mode: str = "score",
    share: tuple[int, int] = (0, 1),
    progress: bool = False,
    infer: Callable[[Sequence[Example]], torch.Tensor] | None = None,
) -> dict[str, dict[str, float]]:
    """{task: {metric: value, "score": ...}} for every task (each process predicting its `share`); with
    `progress`, a bar of the rows scored, naming the task (the main process's). `infer(examples)`: route
    each example by the task it gives (task-free evaluation, one process), and report each task's
    `task_accuracy`, the share of its rows inferred to be of it."""
    from tqdm.auto import tqdm

    family.check(tasks, mode)
    was_training = model.training
    model.eval()
    results = {}
    total = sum(len(d) for d in dev_sets)
    bar = tqdm(total=total, desc="eval", unit="row", disable=not progress or share[0] != 0)
    try:
        for t, (task, examples) in enumerate(zip(tasks, dev_sets, strict=True)):
            bar.set_description(f"eval {task.name}")
            if share[0] == 0:
                family.check_rows(tokenizer, task, examples, max_length)
            routes = None if infer is None else infer(examples)
            data = (examples, batch_size, max_length, mode, share, bar.update, routes)
            preds = predict(model, family, tokenizer, task, t, *data)
            results[task.name] = task.score(preds, [e.label for e in examples])
            if routes is not None:
                results[task.name]["task_accuracy"] = float((routes == t).float().mean())
    finally:
        bar.close()
        model.train(was_training)
    return results


def check_mode(tasks: Sequence[Task], mode: str | None) -> None:
    """Refuse an eval mode asked for (`--mode`) that a task would not follow: a generation task has
    nothing to score, its answer is generated whatever the mode."""
    for task in tasks:
        if mode == "score" and task.kind.generates:
            raise ValueError(
                f"--mode score: {task.name} is a generation task, scored by generating its answer, never "
                "by scoring candidates; drop --mode, or use --mode generate"
            )


def average(results: dict[str, dict[str, float]]) -> float:
    return sum(r["score"] for r in results.values()) / len(results)


def format_table(results: dict[str, dict[str, float]]) -> str:
    """One row per task (its metrics and score) and the average."""
    lines = [f"{'task':<16} {'metrics':<40} {'score':>6}"]
    for name, r in results.items():
        metrics = ", ".join(f"{k}={v:.3f}" for k, v in r.items() if k != "score")
        lines.append(f"{name:<16} {metrics:<40} {r['score']:6.3f}")
    lines.append(f"{'average':<16} {'':<40} {average(results):6.3f}")
    return "\n".join(lines)
