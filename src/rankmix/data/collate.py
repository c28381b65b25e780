"""Tokenize examples for each kind of model; families.py builds training batches and predictions on them."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..tasks.base import Example

IGNORE = -100


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=torch.long)


def _pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token")
    return pad


def encode_encoder(tokenizer, examples: Sequence[Example], max_length: int) -> dict[str, torch.Tensor]:
    firsts = [e.text_a for e in examples]
    seconds = [e.text_b for e in examples] if any(e.text_b for e in examples) else None
    if seconds is not None:
        seconds = [s or "" for s in seconds]
    return dict(
        tokenizer(firsts, seconds, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    )


def encode_decoder(
    tokenizer, prompts: Sequence[str], answers: Sequence[str], max_length: int
) -> dict[str, torch.Tensor]:
    """prompt + " " + answer + eos, cut from the prompt's left if too long; labels mask the prompt."""
    ids, labels = [], []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    for prompt, answer in zip(prompts, answers, strict=True):
        p = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        a = tokenizer(" " + answer, add_special_tokens=False)["input_ids"] + eos
        p = p[-max(1, max_length - len(a)) :]
        ids.append(p + a)
        labels.append([IGNORE] * len(p) + a)
    pad = _pad_id(tokenizer)
    input_ids = _pad(ids, pad)
    mask = _pad([[1] * len(r) for r in ids], 0)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": _pad(labels, IGNORE)}


def encode_seq2seq(
    tokenizer, prompts: Sequence[str], answers: Sequence[str], max_length: int
) -> dict[str, torch.Tensor]:
    enc = tokenizer(list(prompts), truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    targets = [tokenizer(a, truncation=True, max_length=max_length)["input_ids"] for a in answers]
    return {**dict(enc), "labels": _pad(targets, IGNORE)}
