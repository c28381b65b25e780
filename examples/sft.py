"""A MoRE adapter trained with TRL's SFTTrainer (rankmix's subclass, SFTConfig defaults) on SmolLM2-135M and
rankmix's three demo tasks: a prompt/completion dataset (the loss on the completion only, TRL's default)
with a `task_ids` column naming each row's task. Checkpoints hold the adapter only; the final adapter is
saved in rankmix's format.

    python examples/sft.py --out runs/sft-more --steps 60
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import datasets
import torch
from torch import nn
from trl import SFTConfig

from rankmix import MoREConfig, RankMixModel, get_model
from rankmix.sft import SFTTrainer
from rankmix.tasks.synthetic import synthetic_tasks


def task_rows(per_task: int) -> datasets.Dataset:
    """Each demo example as prompt, completion and the name of its task."""
    rows = []
    for task in synthetic_tasks():
        for example in task.load("train")[0][:per_task]:
            completion = " " + task.kind.target(task, example).text
            rows.append({"prompt": task.prompt(example), "completion": completion, "task_ids": task.name})
    return datasets.Dataset.from_list(rows)


def train(
    base: nn.Module, tokenizer: Any, out: str | Path, steps: int, resume: str | None = None, **args: Any
) -> tuple[RankMixModel, SFTTrainer]:
    """MoRE over the demo tasks, trained by SFTTrainer for `steps` steps; the adapter saved in out/adapter."""
    model = get_model(base, MoREConfig(tasks=[t.name for t in synthetic_tasks()], max_rank=8))
    settings = {"per_device_train_batch_size": 8, "learning_rate": 1e-3, "report_to": "none"} | args
    settings.setdefault("bf16", torch.cuda.is_available())  # SFTConfig's default needs a GPU
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(output_dir=str(out), max_steps=steps, **settings),
        train_dataset=task_rows(per_task=200),
        processing_class=tokenizer,
    )
    trainer.train(resume_from_checkpoint=resume)
    model.save_pretrained(Path(out) / "adapter")
    return model, trainer


if __name__ == "__main__":
    from rankmix.recipes.loading import load_model

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="runs/sft-more")
    parser.add_argument("--steps", type=int, default=60)
    cli = parser.parse_args()
    base, tokenizer, _ = load_model("smollm2")  # the offline SmolLM2; or a local folder, or a hub id
    train(base, tokenizer, cli.out, cli.steps)
    print(f"adapter saved in {cli.out}/adapter")
