"""Tokenize examples for each kind of model, one example at a time (so an example's tokens never depend on
its batch mates and can be computed once before training), and pad rows of such features into batches.
families.py decides which encoding a model family uses."""

from __future__ import annotations

from array import array
from collections.abc import Sequence

import torch

IGNORE = -100
Features = dict[str, Sequence[int] | int | float]  # token sequences (padded in a batch), per-row scalars
PAD_VALUES = {"labels": IGNORE, "token_type_ids": 0}  # input_ids pad with the tokenizer's pad token


def pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token")
    return pad


def _nested(value) -> bool:
    """A feature holding several token sequences (an encoder's multiple-choice row: one per option)."""
    return not isinstance(value, (int, float)) and len(value) > 0 and not isinstance(value[0], int)


def _flatten(rows: Sequence[Features]) -> tuple[list[Features], list[int]]:
    """Rows with several sequences each, as one row per sequence (scalars stay with the first), and the
    number of sequences of each row."""
    flat, counts = [], []
    for row in rows:
        sequences = {k: v if _nested(v) else [v] for k, v in row.items() if not isinstance(v, (int, float))}
        count = len(next(iter(sequences.values())))
        counts.append(count)
        flat += [{k: v[i] for k, v in sequences.items()} for i in range(count)]
    return flat, counts


def pad_features(rows: Sequence[Features], pad_token: int) -> dict[str, torch.Tensor]:
    """One batch: token lists padded on the right to the longest row (input_ids with `pad_token`, labels
    with IGNORE), an attention mask over the real tokens, and scalars (labels, task_ids) stacked. Rows
    with several sequences (multiple choice on an encoder) give one padded row per sequence and
    `choices`, the number of sequences of each example."""
    out: dict[str, torch.Tensor] = {}
    sequences = rows
    if any(_nested(v) for r in rows for v in r.values()):
        sequences, counts = _flatten(rows)
        out["choices"] = torch.tensor(counts)
    for key in rows[0]:
        if not isinstance(rows[0][key], (int, float)):
            values = [r[key] for r in sequences]
            width = max(len(v) for v in values)
            fill = PAD_VALUES.get(key, pad_token)
            out[key] = torch.tensor([[*v, *[fill] * (width - len(v))] for v in values], dtype=torch.long)
        else:  # python ints stack as int64 (task ids), floats as float32 (labels)
            out[key] = torch.tensor([r[key] for r in rows])
    if "input_ids" in out:
        lengths = torch.tensor([len(r["input_ids"]) for r in sequences])
        out["attention_mask"] = (torch.arange(out["input_ids"].shape[1]) < lengths[:, None]).long()
    return out


def compact(features: Features) -> Features:
    """Token lists as 32-bit arrays: a Python list spends an object per token, and a run keeps the
    features of every training example in memory."""

    def packed(value):
        if isinstance(value, (int, float)):
            return value
        return [array("i", v) for v in value] if _nested(value) else array("i", value)

    return {k: packed(v) for k, v in features.items()}


def encoder_features(tokenizer, text_a: str, text_b: str | None, max_length: int) -> Features:
    """[CLS] text_a [SEP] (text_b [SEP]) for BERT-style tokenizers, cut to max_length."""
    enc = tokenizer(text_a, text_b or None, truncation=True, max_length=max_length)
    return {k: v for k, v in enc.items() if k != "attention_mask"}  # the batch's mask comes from padding


def continuation_ids(tokenizer, context: str, text: str, eos: bool) -> tuple[list[int], list[int]]:
    """(context tokens, continuation tokens) of `text` after `context`, a space between them.
    `eos` (answers to stop after: label words, generation targets): the answer tokenised on its own,
    the end-of-sequence token appended. Otherwise (multiple-choice options) as lm-evaluation-harness
    builds a request: spaces ending the context move to the continuation, the pair is tokenised as one
    text, and the continuation is what follows the context's own tokens; no end-of-sequence token."""
    if eos:
        end = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        answer = tokenizer(" " + text, add_special_tokens=False)["input_ids"] + end
        return tokenizer(context, add_special_tokens=True)["input_ids"], answer
    continuation = " " + text
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer(context + continuation, add_special_tokens=True)["input_ids"]
    head = tokenizer(context, add_special_tokens=True)["input_ids"]
    return head, whole[len(head) :]


def cut_context(context: list[int], continuation_length: int, max_length: int) -> list[int]:
    """A decoder context cut from its left so that it and the continuation fit max_length (at least its
    last token stays)."""
    return context[-max(1, max_length - continuation_length) :]


def decoder_features(tokenizer, context: str, text: str, eos: bool, max_length: int) -> Features:
    """context + continuation as one sequence (`continuation_ids`), cut from the context's left if too
    long; labels mask the context."""
    p, a = continuation_ids(tokenizer, context, text, eos)
    p = cut_context(p, len(a), max_length)
    return {"input_ids": p + a, "labels": [IGNORE] * len(p) + a}


def seq2seq_ids(
    tokenizer, context: str, text: str, eos: bool, max_length: int
) -> tuple[list[int], list[int]]:
    """(encoder tokens, decoder labels): the context as the tokenizer encodes it (T5's ends it with its
    end-of-sequence token), cut to max_length; the text after it, ended likewise with `eos` (answers to
    stop after), without special tokens otherwise (multiple-choice options, as lm-evaluation-harness
    encodes a seq2seq continuation)."""
    return (
        tokenizer(context, truncation=True, max_length=max_length)["input_ids"],
        tokenizer(text, truncation=True, max_length=max_length, add_special_tokens=eos)["input_ids"],
    )


def seq2seq_features(tokenizer, context: str, text: str, eos: bool, max_length: int) -> Features:
    """The context for the encoder, the text as labels (`seq2seq_ids`)."""
    ids, labels = seq2seq_ids(tokenizer, context, text, eos, max_length)
    return {"input_ids": ids, "labels": labels}


def encoder_row(tokenizer, pairs: Sequence[tuple[str, str | None]], max_length: int) -> Features:
    """One example given as its (text_a, text_b) pairs: one sequence per key, or, for several pairs
    (multiple choice), a list of sequences per key."""
    encoded = [encoder_features(tokenizer, a, b, max_length) for a, b in pairs]
    return encoded[0] if len(encoded) == 1 else {k: [e[k] for e in encoded] for k in encoded[0]}


def encode_encoder(
    tokenizer, pairs: Sequence[Sequence[tuple[str, str | None]]], max_length: int
) -> dict[str, torch.Tensor]:
    """A batch of examples, each given as its (text_a, text_b) pairs."""
    return pad_features([encoder_row(tokenizer, p, max_length) for p in pairs], pad_id(tokenizer))
