"""Shared helpers for model tests: tiny random Hugging Face models (built in helpers.py), batches, adapter
randomization; and the generated GLUE data folder of the end-to-end tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from glue_fixture import write_glue_fixture
from helpers import ARCHS, SMALL_RUN_TASKS, VOCAB, build_base
from rankmix.layers import TaskRankSelector, TaskRouter, TokenRouter

# The models here are tiny: intra-op threading only adds synchronisation cost (ms per op on small CPUs).
torch.set_num_threads(1)


def make_batch(
    arch: str, batch_size: int = 4, seq_len: int = 7, *, labels: bool = False, seed: int = 1
) -> dict:
    """Random token ids (no padding) in the keyword layout `arch` expects; `labels` adds LM targets."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch_size, seq_len), generator=gen)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if arch == "t5":
        target = torch.randint(3, VOCAB, (batch_size, 5), generator=gen)
        if labels:
            batch["labels"] = target
        else:
            batch["decoder_input_ids"] = torch.cat([torch.zeros(batch_size, 1, dtype=torch.long), target], 1)
    elif labels:
        batch["labels"] = ids.clone()
    return batch


def select_rows(batch: dict, rows: list[int]) -> dict:
    """The examples `rows` of a batch."""
    return {k: v[rows] for k, v in batch.items()}


def model_output(out) -> torch.Tensor:
    """The tensor to compare: logits for LM heads, last_hidden_state for bare encoders."""
    logits = out.get("logits") if hasattr(out, "get") else None
    return logits if logits is not None else out["last_hidden_state"]


@torch.no_grad()
def randomize_adapters(model, *, std: float = 0.1, seed: int = 123) -> None:
    """Give every bank a random lora_B (zero at init), and spread task selectors and gates so that
    tasks choose different experts (MoRE ranks, MoELoRA mixes) and token routing is peaked."""
    gen = torch.Generator().manual_seed(seed)

    def normal(p: torch.Tensor, scale: float) -> None:
        p.copy_(torch.randn(p.shape, generator=gen) * scale)

    for _, module in model.adapted_modules():
        normal(module.bank.lora_B, std)
        router = module.router
        if isinstance(router, (TaskRankSelector, TaskRouter)) and hasattr(router, "task_embedding"):
            normal(router.task_embedding, 1.0)
            normal(router.gate.weight, 1.0)
            router.gate.bias.zero_()
        elif isinstance(router, TokenRouter):
            normal(router.gate.weight, 1.0)


@pytest.fixture
def tiny():
    """Namespace of the tiny-model helpers above."""

    class Tiny:
        archs = ARCHS
        base = staticmethod(build_base)
        batch = staticmethod(make_batch)
        rows = staticmethod(select_rows)
        output = staticmethod(model_output)
        randomize = staticmethod(randomize_adapters)

    return Tiny


@pytest.fixture(scope="session")
def glue_data(tmp_path_factory) -> Path:
    """A data_dir of small generated GLUE tasks (tests/glue_fixture.py) in the published layout: the
    end-to-end tests train on it, so that they run on any clone, without the benchmark data."""
    return write_glue_fixture(tmp_path_factory.mktemp("glue-data"))


@pytest.fixture(scope="session")
def small_runs(glue_data, tmp_path_factory):
    """get(family, method=None, name=None) -> (recipe dict, run folder): a few-step run of `method`
    (default MoRE) on SMALL_RUN_TASKS with a tiny model of `family`, trained on first use and shared by
    the tests that start from a trained run."""
    from test_cli import _corpus, _tokenizer, ok, recipe_dict, save_tiny_models, write_recipe

    root, done = tmp_path_factory.mktemp("small-runs"), {}
    corpus = _corpus(glue_data)
    text_tok, enc_tok = _tokenizer(corpus, encoder=False), _tokenizer(corpus, encoder=True)
    model_dirs = save_tiny_models(root / "models", text_tok, enc_tok)

    def get(family: str, method: dict | None = None, name: str | None = None) -> tuple[dict, Path]:
        name = name or family
        if name not in done:
            data = recipe_dict(
                model_dirs[family], root / name, glue_data, tasks=SMALL_RUN_TASKS, method=method
            )
            ok("train", write_recipe(root / f"{name}.yaml", data), "--no-progress")
            done[name] = (data, root / name)
        return done[name]

    return get
