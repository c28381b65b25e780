"""Training batches off the training step: every example tokenised once before training, batches drawn
by the task sampler and padded by a DataLoader (in worker processes if asked), so the step only moves
tensors and runs the model."""

from __future__ import annotations

from functools import partial

import torch
from torch.utils.data import DataLoader, Dataset

from .collate import Features, pad_features
from .sampling import ConsumedBatches


class TaskRows(Dataset):
    """The tokenised training examples of every task; an item is a (task, index) pair."""

    def __init__(self, rows: list[list[Features]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return sum(len(r) for r in self.rows)

    def __getitem__(self, key: tuple[int, int]) -> Features:
        task, index = key
        return self.rows[task][index]


def training_batches(
    rows: list[list[Features]], batches: ConsumedBatches, pad_token: int, workers: int, pin_memory: bool
) -> DataLoader:
    """An endless DataLoader of padded batches in the order `batches` draws them."""
    return DataLoader(
        TaskRows(rows),
        batch_sampler=batches,
        collate_fn=partial(pad_features, pad_token=pad_token),
        num_workers=workers,
        pin_memory=pin_memory,
        generator=torch.Generator(),  # its seeds for workers: the global RNG (dropout) stays untouched
    )
