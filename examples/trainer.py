"""A MoRE adapter trained with transformers' Trainer (default arguments) on SmolLM2-135M and rankmix's
three demo tasks; the task of each row is a dataset column, `task_ids`, which Trainer keeps because the
model's forward names it. Checkpoints hold the adapter only, as for a PEFT model; the final adapter is
saved in rankmix's format.

    python examples/trainer.py --out runs/trainer-more --steps 60
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import datasets
from torch import nn
from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

from rankmix import MoREConfig, RankMixModel, get_model
from rankmix.families import FAMILIES
from rankmix.tasks.base import Task
from rankmix.tasks.synthetic import synthetic_tasks


def task_rows(tokenizer: Any, tasks: list[Task], per_task: int, max_length: int = 64) -> datasets.Dataset:
    """Prompt + answer token ids, the prompt masked out of `labels`, and the row's task index."""
    rows = []
    for t, task in enumerate(tasks):
        for example in task.load("train")[0][:per_task]:
            rows.append(FAMILIES["decoder"].features(tokenizer, t, task, example, max_length))
    return datasets.Dataset.from_list(rows)


def train(
    base: nn.Module, tokenizer: Any, out: str | Path, steps: int, resume: str | None = None, **args: Any
) -> tuple[RankMixModel, Trainer]:
    """MoRE over the demo tasks, trained by Trainer for `steps` steps; the adapter saved in out/adapter."""
    tasks = synthetic_tasks()
    model = get_model(base, MoREConfig(tasks=[t.name for t in tasks], max_rank=8))
    settings = {"per_device_train_batch_size": 8, "learning_rate": 1e-3, "report_to": "none"} | args
    trainer = Trainer(
        model=model,
        args=TrainingArguments(output_dir=str(out), max_steps=steps, **settings),
        train_dataset=task_rows(tokenizer, tasks, per_task=200),
        data_collator=DataCollatorForSeq2Seq(tokenizer),  # pads input_ids, attention_mask and labels
    )
    trainer.train(resume_from_checkpoint=resume)
    model.save_pretrained(Path(out) / "adapter")
    return model, trainer


if __name__ == "__main__":
    from rankmix.recipes.loading import load_model

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="runs/trainer-more")
    parser.add_argument("--steps", type=int, default=60)
    cli = parser.parse_args()
    base, tokenizer, _ = load_model("smollm2")  # the offline SmolLM2; or a local folder, or a hub id
    train(base, tokenizer, cli.out, cli.steps)
    print(f"adapter saved in {cli.out}/adapter")
