"""transformers' Trainer and TRL's SFTTrainer on a RankMixModel, through examples/trainer.py and
examples/sft.py, on a tiny random Llama with tied embeddings: the task column reaches the adapters, the
loss falls, checkpoints hold the adapter only and resume, and the saved adapter reproduces the trained
model; and an encoder with task heads under Trainer, whose checkpoints hold the adapter and the heads."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import build_base, word_tokenizer
from rankmix import RankMixModel
from rankmix.tasks.synthetic import synthetic_tasks

EXAMPLES = Path(__file__).parents[1] / "examples"


def _example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny():
    """A word tokenizer knowing the demo tasks' words, and a builder of tiny Llamas with tied embeddings."""
    corpus = []
    for task in synthetic_tasks():
        examples = task.load("train")[0][:200]
        corpus += [task.prompt(e) + " " + task.kind.target(task, e).text for e in examples]
    tokenizer = word_tokenizer(corpus, specials=["[PAD]", "[UNK]", "<s>", "</s>"], template="llama")

    def base():
        torch.manual_seed(0)
        return build_base(
            "llama",
            vocab=len(tokenizer),
            max_position_embeddings=128,
            pad_token_id=0,
            bos_token_id=2,
            eos_token_id=3,
            tie_word_embeddings=True,
        )

    return tokenizer, base


@pytest.mark.parametrize("example", ["trainer", "sft"])
def test_example_trains_checkpoints_the_adapter_only_and_resumes(tiny, tmp_path, example):
    """examples/trainer.py (transformers' Trainer) and examples/sft.py (rankmix's SFTTrainer)."""
    module = _example(example)
    tokenizer, base = tiny
    settings = {"learning_rate": 1e-2, "logging_steps": 1, "save_steps": 4, "seed": 0}
    model, trainer = module.train(base(), tokenizer, tmp_path / "whole", steps=8, **settings)
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    assert len(losses) == 8 and sum(losses[-2:]) < sum(losses[:2])  # it learns

    checkpoint = load_file(tmp_path / "whole" / "checkpoint-4" / "model.safetensors")
    assert set(checkpoint) == model.own_state_keys()  # the adapter: no base weight, tied or not
    assert all((".bank." in k or ".router." in k) for k in checkpoint)

    # resumed from the step-4 checkpoint (on a fresh base: the checkpoint restores the adapter), a
    # second run ends where the uninterrupted one did
    resume = str(tmp_path / "whole" / "checkpoint-4")
    resumed, _ = module.train(base(), tokenizer, tmp_path / "resumed", 8, resume, **settings)
    for key, value in model.state_dict().items():
        assert torch.allclose(resumed.state_dict()[key], value, atol=1e-6), key

    # the final adapter, in rankmix's format, reproduces the trained model
    loaded = RankMixModel.from_pretrained(base(), tmp_path / "whole" / "adapter").eval()
    assert json.loads((tmp_path / "whole" / "adapter" / "adapter_config.json").read_text())["adapter"]
    batch = tokenizer(["the food was not bad"], return_tensors="pt")
    with torch.no_grad():
        want = model.eval()(**batch, task_ids=[2]).logits
        got = loaded(**batch, task_ids=[2]).logits
    assert torch.allclose(got, want, atol=1e-5)


def test_sft_trainer_loss_is_the_routed_models_own(tiny, tmp_path):
    """A batch as rankmix's SFTTrainer builds it carries each row's task, and the trainer's loss is the
    completion's cross-entropy plus the adapter's weighted aux loss, both from the routed forward (TRL's
    fused head would run the language model without the routing and drop the aux loss)."""
    tokenizer, base = tiny
    model, trainer = _example("sft").train(base(), tokenizer, tmp_path / "run", steps=1, seed=0)
    batch = next(iter(trainer.get_train_dataloader()))
    assert set(batch["task_ids"]) <= {t.name for t in synthetic_tasks()}
    model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch))
        outputs = model(**{k: v for k, v in batch.items() if k != "labels"})
    logits, labels = outputs.logits[:, :-1], batch["labels"][:, 1:]
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
    assert outputs.aux_loss > 0
    assert torch.allclose(loss, nll + outputs.aux_loss, atol=1e-5)


def test_trainer_checkpoints_an_encoders_adapter_and_task_heads_only(tmp_path):
    """An encoder with task heads (the family's wrapped model) under Trainer's defaults: rows are the
    family's features; a checkpoint holds the adapter and the heads, no base weight, and the loss falls."""
    import datasets
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from rankmix import MoREConfig, get_model
    from rankmix.families import FAMILIES

    tasks = synthetic_tasks()
    examples = [(i, e) for i, t in enumerate(tasks) for e in t.load("train")[0][:40]]
    tokenizer = word_tokenizer([e.text_a for _, e in examples], template="bert")
    torch.manual_seed(0)
    base = build_base("bert", layers=2, hidden=32, vocab=len(tokenizer), max_position_embeddings=128)
    encoder = FAMILIES["encoder"]
    adapted = get_model(base, MoREConfig(tasks=[t.name for t in tasks], max_rank=4))
    model = encoder.wrap(adapted, tasks)
    rows = [dict(encoder.features(tokenizer, i, tasks[i], e, 64)) for i, e in examples]
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=8, save_steps=4, per_device_train_batch_size=8,
        learning_rate=1e-2, logging_steps=1, report_to="none", seed=0,
    )  # fmt: skip
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        data_collator=DataCollatorWithPadding(tokenizer),
    )
    trainer.train()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    assert sum(losses[-2:]) < sum(losses[:2])
    checkpoint = load_file(tmp_path / "checkpoint-4" / "model.safetensors")
    heads = {f"heads.{k}" for k in model.heads.state_dict()}
    assert set(checkpoint) == {f"body.{k}" for k in adapted.own_state_keys()} | heads


def test_sft_trainer_without_a_task_column_fails_before_training(tiny, tmp_path):
    import datasets
    from trl import SFTConfig

    from rankmix import MoREConfig, get_model
    from rankmix.sft import SFTTrainer

    tokenizer, base = tiny
    model = get_model(base(), MoREConfig(tasks=[t.name for t in synthetic_tasks()], max_rank=4))
    rows = datasets.Dataset.from_list(
        [{"prompt": "Review: good\\nSentiment:", "completion": " positive"}] * 4
    )
    with pytest.raises(ValueError, match="task_ids column"):
        SFTTrainer(
            model=model,
            args=SFTConfig(output_dir=str(tmp_path), bf16=False, report_to="none"),
            train_dataset=rows,
            processing_class=tokenizer,
        )


def test_trainer_gradient_checkpointing_trains_as_without(tiny, tmp_path):
    """The Trainer's gradient_checkpointing=True (non-reentrant, transformers' default) on the example's
    MoRE model: the same losses, step by step, as without it."""
    module = _example("trainer")
    tokenizer, base = tiny
    settings = {"learning_rate": 1e-2, "logging_steps": 1, "save_steps": 100, "seed": 0}
    _, plain = module.train(base(), tokenizer, tmp_path / "plain", steps=3, **settings)
    model, checkpointed = module.train(
        base(), tokenizer, tmp_path / "ckpt", 3, gradient_checkpointing=True, **settings
    )
    assert model.base_model.is_activation_checkpointing

    def losses(trainer) -> list[float]:
        return [r["loss"] for r in trainer.state.log_history if "loss" in r]

    assert len(losses(plain)) == 3 and losses(checkpointed) == pytest.approx(losses(plain), rel=1e-4)
