"""Evaluation: predictions for every task and model family, scored with each task's metrics.

Encoders read their task head. Decoders and T5 score every candidate answer by its log-likelihood
(`mode="score"`) or generate an answer and match it (`mode="generate"`). A regression task (STS-B)
on a generative model scores the answers 0..5 and predicts their probability-weighted mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..data.collate import IGNORE, encode_decoder, encode_encoder, encode_seq2seq
from ..tasks.base import Example, Task

REGRESSION_CANDIDATES = [str(v) for v in range(6)]


def _candidates(task: Task) -> list[str]:
    return REGRESSION_CANDIDATES if task.regression else list(task.label_words)


def _answer_logprob(logits: torch.Tensor, labels: torch.Tensor, shift: bool) -> torch.Tensor:
    """Sum of log-probabilities of the label tokens of each sequence."""
    if shift:  # a causal LM predicts token i+1 at position i
        logits, labels = logits[:, :-1], labels[:, 1:]
    logp = F.log_softmax(logits.float(), dim=-1)
    mask = labels != IGNORE
    picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(-1)


@torch.no_grad()
def predict(
    model,
    family: str,
    tokenizer,
    task: Task,
    task_index: int,
    examples: Sequence[Example],
    batch_size: int,
    max_length: int,
    mode: str = "score",
) -> list[float]:
    """One prediction per example: a class index, or a float for regression."""
    device = next(p.device for p in model.parameters())
    preds: list[float] = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        ids = torch.full((len(chunk),), task_index, dtype=torch.long, device=device)
        if family == "encoder":
            enc = {k: v.to(device) for k, v in encode_encoder(tokenizer, chunk, max_length).items()}
            logits = model(**enc, task_ids=ids).logits[:, : task.num_labels]
            preds += logits.squeeze(-1).tolist() if task.regression else logits.argmax(-1).tolist()
        elif mode == "generate":
            preds += _generate(model, family, tokenizer, task, chunk, ids, max_length)
        else:
            preds += _score_candidates(model, family, tokenizer, task, chunk, ids, max_length)
    return preds


def _score_candidates(model, family, tokenizer, task, chunk, ids, max_length) -> list[float]:
    cands = _candidates(task)
    prompts = [task.prompt(e) for e in chunk for _ in cands]
    answers = cands * len(chunk)
    encode = encode_decoder if family == "decoder" else encode_seq2seq
    device = ids.device
    batch = {k: v.to(device) for k, v in encode(tokenizer, prompts, answers, max_length).items()}
    labels = batch.pop("labels")
    extra = {"labels": labels} if family == "seq2seq" else {}  # T5 builds its decoder inputs from labels
    logits = model(**batch, **extra, task_ids=ids.repeat_interleave(len(cands))).logits
    scores = _answer_logprob(logits, labels, shift=family == "decoder").view(len(chunk), len(cands))
    if task.regression:
        values = torch.tensor([float(c) for c in cands], device=device)
        return (scores.softmax(-1) * values).sum(-1).tolist()
    return scores.argmax(-1).float().tolist()


def _generate(model, family, tokenizer, task, chunk, ids, max_length) -> list[float]:
    prompts = [task.prompt(e) for e in chunk]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left" if family == "decoder" else "right"
    try:
        enc = tokenizer(prompts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    finally:
        tokenizer.padding_side = side
    enc = {k: v.to(ids.device) for k, v in enc.items()}
    out = model.generate(
        **enc, task_ids=ids, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id
    )
    if family == "decoder":
        out = out[:, enc["input_ids"].shape[1] :]
    texts = tokenizer.batch_decode(out, skip_special_tokens=True)
    return [_parse(task, text) for text in texts]


def _parse(task: Task, text: str) -> float:
    """The first label word (or number) in generated text; -1 (always wrong) when there is none."""
    words = text.strip().lower().replace(",", " ").split()
    for word in (w.strip(".!?") for w in words):
        if task.regression:
            try:
                value = float(word)
            except ValueError:
                continue
            if math.isfinite(value):
                return value
            continue
        for i, label in enumerate(task.label_words):
            if word == label.lower():
                return float(i)
    return -1.0


def evaluate(
    model,
    family: str,
    tokenizer,
    tasks: Sequence[Task],
    dev_sets: Sequence[Sequence[Example]],
    batch_size: int,
    max_length: int,
    mode: str = "score",
) -> dict[str, dict[str, float]]:
    """{task: {metric: value, "score": mean}} for every task."""
    was_training = model.training
    model.eval()
    results = {}
    try:
        for t, (task, examples) in enumerate(zip(tasks, dev_sets, strict=True)):
            preds = predict(model, family, tokenizer, task, t, examples, batch_size, max_length, mode)
            results[task.name] = task.score(preds, [e.label for e in examples])
    finally:
        model.train(was_training)
    return results


def average(results: dict[str, dict[str, float]]) -> float:
    return sum(r["score"] for r in results.values()) / len(results)
