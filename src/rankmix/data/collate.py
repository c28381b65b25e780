"""Tokenize examples for each kind of model, one example at a time (so an example's tokens never depend on
its batch mates and can be computed once before training), and pad rows of such features into batches.
families.py decides which encoding a model family uses."""

from __future__ import annotations

from array import array
from collections.abc import Sequence

import torch

from ..tasks.base import Example

IGNORE = -100
Features = dict[str, Sequence[int] | int | float]  # token sequences (padded in a batch), per-row scalars
PAD_VALUES = {"labels": IGNORE, "token_type_ids": 0}  # input_ids pad with the tokenizer's pad token


def pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token")
    return pad


def pad_features(rows: Sequence[Features], pad_token: int) -> dict[str, torch.Tensor]:
    """One batch: token lists padded on the right to the longest row (input_ids with `pad_token`, labels
    with IGNORE), an attention mask over the real tokens, and scalars (labels, task_ids) stacked."""
    out = {}
    for key in rows[0]:
        values = [r[key] for r in rows]
        if not isinstance(values[0], (int, float)):
            width = max(len(v) for v in values)
            fill = PAD_VALUES.get(key, pad_token)
            out[key] = torch.tensor([[*v, *[fill] * (width - len(v))] for v in values], dtype=torch.long)
        else:  # python ints stack as int64 (task ids), floats as float32 (labels)
            out[key] = torch.tensor(values)
    if "input_ids" in out:
        lengths = torch.tensor([len(r["input_ids"]) for r in rows])
        out["attention_mask"] = (torch.arange(out["input_ids"].shape[1]) < lengths[:, None]).long()
    return out


def compact(features: Features) -> Features:
    """Token lists as 32-bit arrays: a Python list spends an object per token, and a run keeps the
    features of every training example in memory."""
    return {k: v if isinstance(v, (int, float)) else array("i", v) for k, v in features.items()}


def encoder_features(tokenizer, example: Example, max_length: int) -> Features:
    """[CLS] text_a [SEP] (text_b [SEP]) for BERT-style tokenizers, cut to max_length."""
    enc = tokenizer(example.text_a, example.text_b or None, truncation=True, max_length=max_length)
    return {k: v for k, v in enc.items() if k != "attention_mask"}  # the batch's mask comes from padding


def decoder_features(tokenizer, prompt: str, answer: str, max_length: int) -> Features:
    """prompt + " " + answer + eos, cut from the prompt's left if too long; labels mask the prompt."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    p = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    a = tokenizer(" " + answer, add_special_tokens=False)["input_ids"] + eos
    p = p[-max(1, max_length - len(a)) :]
    return {"input_ids": p + a, "labels": [IGNORE] * len(p) + a}


def seq2seq_features(tokenizer, prompt: str, answer: str, max_length: int) -> Features:
    """The prompt for the encoder, the answer as labels; both cut to max_length."""
    return {
        "input_ids": tokenizer(prompt, truncation=True, max_length=max_length)["input_ids"],
        "labels": tokenizer(answer, truncation=True, max_length=max_length)["input_ids"],
    }


def encode_encoder(tokenizer, examples: Sequence[Example], max_length: int) -> dict[str, torch.Tensor]:
    return pad_features([encoder_features(tokenizer, e, max_length) for e in examples], pad_id(tokenizer))


def encode_decoder(
    tokenizer, prompts: Sequence[str], answers: Sequence[str], max_length: int
) -> dict[str, torch.Tensor]:
    rows = [decoder_features(tokenizer, p, a, max_length) for p, a in zip(prompts, answers, strict=True)]
    return pad_features(rows, pad_id(tokenizer))


def encode_seq2seq(
    tokenizer, prompts: Sequence[str], answers: Sequence[str], max_length: int
) -> dict[str, torch.Tensor]:
    rows = [seq2seq_features(tokenizer, p, a, max_length) for p, a in zip(prompts, answers, strict=True)]
    return pad_features(rows, pad_id(tokenizer))
