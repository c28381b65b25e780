"""TRL's `SFTTrainer` for a RankMixModel: the same trainer (datasets, chat templates, completion-only loss,
logging), with the task of each row reaching the adapters. Needs `trl` (`pip install rankmix[sft]`).

TRL computes its loss through a fused LM head that it patches onto the model it trains and that runs
`model.base_model` as the backbone. A RankMixModel's `base_model` is the whole language model (the PEFT
convention, which TRL recognises only for PEFT's own class), so that path would skip the task routing
and the adapter's auxiliary losses. This trainer computes the loss with the model's own forward instead
(as transformers' Trainer does), keeps the dataset's `task_ids` column, and adds it to every batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import trl
from transformers import Trainer

MISSING_TASK_IDS = (
    "every training row needs a task_ids column: the index or name of its task, one of the adapter's tasks"
)


class TaskIdsCollator:
    """A data collator (TRL's by default) that also passes each row's `task_ids` (a task index or name)."""

    def __init__(self, collator: Callable[[list[dict]], dict[str, Any]]) -> None:
        self.collator = collator

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        if any("task_ids" not in r for r in rows):
            raise ValueError(MISSING_TASK_IDS)
        batch = self.collator([{k: v for k, v in r.items() if k != "task_ids"} for r in rows])
        ids = [r["task_ids"] for r in rows]
        batch["task_ids"] = ids if any(isinstance(t, str) for t in ids) else torch.tensor(ids)
        return batch


class SFTTrainer(trl.SFTTrainer):
    """`trl.SFTTrainer` for a RankMixModel; rows carry a `task_ids` column. Packing is off (the default):
    each example is routed by its own task, so several cannot share a row."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # before TRL tokenises the dataset (the collator checks iterable datasets, which have no schema)
        columns = getattr(kwargs.get("train_dataset"), "column_names", None)
        if columns is not None and "task_ids" not in columns:
            raise ValueError(f"{MISSING_TASK_IDS}; the training dataset has {columns}")
        super().__init__(*args, **kwargs)
        if self.args.packing or self.args.padding_free:
            raise ValueError(
                "rankmix routes each example by its task, so examples cannot be packed into one row: set "
                "packing=False and padding_free=False in SFTConfig"
            )
        self.data_collator = TaskIdsCollator(self.data_collator)

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if "task_ids" not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, "task_ids"]

    def compute_loss(
        self, model: Any, inputs: dict, return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        """The model's own loss: the routed forward, the adapter's aux losses included."""
        return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)
