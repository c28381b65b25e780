"""Tests for rankmix.families' training outputs: the decoder computes its LM head and loss only where the
labels are not ignored, and must give the loss and gradients of transformers' causal-LM loss over every
position (the path the Trainer and TRL take), for every routing: task (MoRE, Multi-LoRA), token (HiLo)
and none (LoRA), on mixed batches with padding."""

from __future__ import annotations

import pytest
import torch

from helpers import METHODS, build_base, small_config
from rankmix import LoRAConfig, get_model
from rankmix.data.collate import IGNORE
from rankmix.families import FAMILIES

NO_DROPOUT = {"gpt2": {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}, "llama": {}}


def answer_batch(vocab: int, rows: int = 5, width: int = 12) -> dict[str, torch.Tensor]:
    """Right-padded rows of different lengths whose labels are only their last 1-3 tokens (an answer)."""
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(3, vocab, (rows, width), generator=gen)
    mask = torch.ones_like(ids)
    labels = torch.full_like(ids, IGNORE)
    for r in range(rows):
        length = width - r  # row r has r padding positions
        ids[r, length:], mask[r, length:] = 0, 0
        answer = 1 + r % 3
        labels[r, length - answer : length] = ids[r, length - answer : length]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "task_ids": torch.arange(rows) % 3}


def loss_and_grads(model, outputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    outputs.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return outputs.loss.detach(), grads


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_decoder_loss_on_labelled_positions_equals_the_full_logits_loss(arch, method):
    torch.manual_seed(0)
    model = get_model(build_base(arch, **NO_DROPOUT[arch]), small_config(method)).train()
    for name, p in model.named_parameters():  # non-zero experts: every path does real work
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    batch = answer_batch(model.base_model.config.vocab_size)
    full, full_grads = loss_and_grads(model, model(**batch))  # transformers' loss, every position
    head_calls = []
    hook = model.base_model.get_output_embeddings().register_forward_hook(
        lambda _, args, out: head_calls.append(out.shape)
    )
    outputs = FAMILIES["decoder"].train_outputs(model, batch)
    hook.remove()
    fast, fast_grads = loss_and_grads(model, outputs)
    labelled = int((batch["labels"][:, 1:] != IGNORE).sum())
    assert head_calls == [torch.Size([labelled, model.base_model.config.vocab_size])]  # only those rows
    assert torch.allclose(fast, full, atol=1e-6, rtol=1e-5)
    assert fast_grads.keys() == full_grads.keys()
    for name, grad in full_grads.items():
        assert torch.allclose(fast_grads[name], grad, atol=1e-6, rtol=1e-4), name
    if method in ("more", "hilo"):  # the aux loss (contrastive, balance) is in the loss as before
        assert outputs["aux_loss"] > 0


def test_an_adapted_head_runs_over_every_position():
    """A head that rankmix adapts (target_modules naming it) is not a plain Linear: the full path."""
    model = get_model(build_base("llama"), LoRAConfig(r=2, target_modules=["lm_head", "q_proj"])).train()
    batch = answer_batch(model.base_model.config.vocab_size)
    outputs = FAMILIES["decoder"].train_outputs(model, batch)
    assert outputs.logits.shape[:2] == batch["input_ids"].shape
    assert torch.allclose(outputs.loss, model(**batch).loss)
