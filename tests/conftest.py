"""Shared helpers for model tests: tiny random Hugging Face models, batches, adapter randomization."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rankmix.layers import TaskRankSelector, TaskRouter, TokenRouter

ARCHS = ("llama", "bert", "t5", "gpt2")
VOCAB = 100

# The models here are tiny: intra-op threading only adds synchronisation cost (ms per op on small CPUs).
torch.set_num_threads(1)


def build_base(arch: str, *, layers: int = 2, hidden: int = 32, seed: int = 0) -> nn.Module:
    """A tiny randomly initialised model of `arch` (eval mode, float32)."""
    from transformers import (
        BertConfig,
        BertModel,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        T5Config,
        T5ForConditionalGeneration,
    )

    torch.manual_seed(seed)
    if arch == "llama":
        model = LlamaForCausalLM(
            LlamaConfig(
                hidden_size=hidden,
                intermediate_size=2 * hidden,
                num_hidden_layers=layers,
                num_attention_heads=4,
                num_key_value_heads=2,
                vocab_size=VOCAB,
                max_position_embeddings=64,
                pad_token_id=0,
                bos_token_id=1,
                eos_token_id=2,
            )
        )
    elif arch == "bert":
        model = BertModel(
            BertConfig(
                hidden_size=hidden,
                num_hidden_layers=layers,
                num_attention_heads=4,
                intermediate_size=2 * hidden,
                vocab_size=VOCAB,
                max_position_embeddings=64,
            )
        )
    elif arch == "t5":
        model = T5ForConditionalGeneration(
            T5Config(
                d_model=hidden,
                d_ff=2 * hidden,
                d_kv=hidden // 4,
                num_layers=layers,
                num_heads=4,
                vocab_size=VOCAB,
                decoder_start_token_id=0,
                pad_token_id=0,
                eos_token_id=1,
            )
        )
    elif arch == "gpt2":
        model = GPT2LMHeadModel(
            GPT2Config(
                n_embd=hidden,
                n_layer=layers,
                n_head=4,
                vocab_size=VOCAB,
                n_positions=64,
                bos_token_id=1,
                eos_token_id=2,
                pad_token_id=0,
            )
        )
    else:
        raise ValueError(arch)
    return model.eval()


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
