"""Multi-task sampling: which task each batch (or each example) comes from, seeded and resumable."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

import torch


def task_probabilities(sizes: list[int], strategy: str, temperature: float = 2.0) -> torch.Tensor:
    """size_softmax: MoRE's softmax(|D_t| / sum |D|); temperature: |D_t|^(1/T), normalized;
    proportional: |D_t| / sum |D|; uniform: 1/T."""
    n = torch.tensor(sizes, dtype=torch.float64)
    if strategy == "size_softmax":
        return torch.softmax(n / n.sum(), dim=0)
    if strategy == "temperature":
        w = n ** (1.0 / temperature)
        return w / w.sum()
    if strategy == "proportional":
        return n / n.sum()
    if strategy == "uniform":
        return torch.full_like(n, 1.0 / len(sizes))
    raise ValueError(f"unknown sampling strategy {strategy!r}")


class TaskSampler:
    """An endless stream of batches, each a list of (task, example index) pairs. `single` mode takes a
    whole batch from one drawn task; `mixed` draws the task of every example. Each task is walked in a
    fresh random order per pass. With `world` processes, every process draws the same global batch of
    `world * batch_size` pairs and keeps its own slice (`rank`): the processes never share examples,
    their sampler states stay equal (one checkpoint serves all), and one process draws exactly the
    stream a single-process run of batch `world * batch_size` draws."""

    def __init__(
        self,
        sizes: list[int],
        batch_size: int,
        strategy: str = "size_softmax",
        temperature: float = 2.0,
        mode: str = "single",
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        if mode not in ("single", "mixed"):
            raise ValueError(f"batch mode must be 'single' or 'mixed', got {mode!r}")
        if not sizes or min(sizes) <= 0:
            raise ValueError(f"every task needs training examples; sizes per task: {sizes}")
        if not 0 <= rank < world:
            raise ValueError(f"rank must lie in 0..world-1, got rank {rank} of {world}")
        self.sizes, self.batch_size, self.mode = list(sizes), batch_size, mode
        self.rank, self.world = rank, world
        self.probs = task_probabilities(sizes, strategy, temperature)
        self.generator = torch.Generator().manual_seed(seed * 1_000_003)
        self.orders = [torch.randperm(n, generator=self.generator) for n in sizes]
        self.cursors = [0] * len(sizes)

    def _take(self, task: int) -> int:
        if self.cursors[task] == self.sizes[task]:
            self.orders[task] = torch.randperm(self.sizes[task], generator=self.generator)
            self.cursors[task] = 0
        index = int(self.orders[task][self.cursors[task]])
        self.cursors[task] += 1
        return index

    def next_batch(self) -> list[tuple[int, int]]:
        """This process's slice of the next global batch."""
        size = self.batch_size * self.world
        if self.mode == "single":
            task = int(torch.multinomial(self.probs, 1, generator=self.generator))
            tasks = [task] * size
        else:
            tasks = torch.multinomial(self.probs, size, replacement=True, generator=self.generator).tolist()
        batch = [(t, self._take(t)) for t in tasks]
        return batch[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]

    def state_dict(self) -> dict:
        # the orders are replaced on each pass, never changed in place: a state can share them
        return {
            "generator": self.generator.get_state(),
            "orders": list(self.orders),
            "cursors": list(self.cursors),
        }

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.orders = list(state["orders"])
        self.cursors = list(state["cursors"])


class ConsumedBatches:
    """A DataLoader's batch sampler over a TaskSampler that resumes where training stopped. A DataLoader
    draws batches ahead of the step that uses them (its workers prefetch), so the sampler's own state runs
    ahead; this one keeps the state after each drawn batch until the loop calls `consumed()`, and its
    `state_dict()` is the state after the last batch consumed."""

    def __init__(self, sampler: TaskSampler) -> None:
        self.sampler = sampler
        self.pending: deque[dict] = deque()
        self.state = sampler.state_dict()

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        while True:
            batch = self.sampler.next_batch()
            self.pending.append(self.sampler.state_dict())
            yield batch

    def consumed(self) -> None:
        """The loop took the oldest batch drawn."""
        self.state = self.pending.popleft()

    def state_dict(self) -> dict:
        return self.state

    def load_state_dict(self, state: dict) -> None:
        """Before the DataLoader starts drawing."""
        self.sampler.load_state_dict(state)
        self.pending.clear()
        self.state = self.sampler.state_dict()
