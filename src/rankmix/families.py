"""Model families: how an encoder (with task heads), a decoder or an encoder-decoder is loaded, trained
and evaluated. Training and evaluation code call a family object; none of it branches on the family.

encoder:  text pair -> tokens; mean-pooled output -> a head per task (classification or regression).
decoder:  prompt + answer -> one sequence, loss on the answer tokens only.
seq2seq:  prompt -> encoder, answer -> labels (text-to-text, as in the MoRE paper).
Decoders and T5 are evaluated by scoring every candidate answer's log-likelihood (`mode="score"`) or by
generating an answer and matching it (`mode="generate"`). A regression task (STS-B) on a generative
model scores the answers 0..5 and predicts their probability-weighted mean.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .data.collate import (
    IGNORE,
    Features,
    decoder_features,
    encode_decoder,
    encode_encoder,
    encode_seq2seq,
    encoder_features,
    seq2seq_features,
)
from .heads import MultiTaskHeads
from .model import RankMixModel
from .tasks.base import Example, Task

REGRESSION_CANDIDATES = [str(v) for v in range(6)]
ENCODER_TYPES = {
    "bert",
    "roberta",
    "distilbert",
    "deberta",
    "deberta-v2",
    "electra",
    "albert",
    "xlm-roberta",
    "mpnet",
    "camembert",
    "modernbert",
}


class ModelFamily(abc.ABC):
    """What training and evaluation need to know about one kind of model."""

    name: ClassVar[str]
    auto_class: ClassVar[str]  # the transformers Auto class that loads a base model of this family
    # DDP must be told when a step leaves parameters without gradient (heads of tasks not in the batch)
    find_unused_parameters: ClassVar[bool] = False

    def load_base(self, path: str) -> nn.Module:
        import transformers

        return getattr(transformers, self.auto_class).from_pretrained(path)

    def wrap(self, adapted: RankMixModel, tasks: Sequence[Task]) -> nn.Module:
        """The module that trains: the adapted model itself, or the adapted body with task heads."""
        return adapted

    def heads(self, model: nn.Module) -> nn.ModuleList | None:
        """The task heads of a wrapped model (one per task), if the family has any."""
        return None

    @abc.abstractmethod
    def features(
        self, tokenizer: Any, task_index: int, task: Task, example: Example, max_length: int
    ) -> Features:
        """One training example's tokens, its `labels` and its `task_ids` (the task's index), unpadded:
        computed once before training and padded into batches by `pad_features`; calling the wrapped
        model on such a batch gives `outputs.loss` (task loss plus the weighted aux losses)."""

    @abc.abstractmethod
    def scores(
        self,
        model: nn.Module,
        tokenizer: Any,
        task: Task,
        task_ids: torch.Tensor,
        examples: Sequence[Example],
        max_length: int,
    ) -> torch.Tensor:
        """Per example of one batch: the probability of each label (classification, shape (batch,
        labels)), or the predicted value (regression, shape (batch,))."""

    def predict(
        self,
        model: nn.Module,
        tokenizer: Any,
        task: Task,
        task_ids: torch.Tensor,
        examples: Sequence[Example],
        max_length: int,
        mode: str,
    ) -> list[float]:
        """One prediction per example of one batch: a class index, or a float for regression."""
        values = self.scores(model, tokenizer, task, task_ids, examples, max_length)
        return values.tolist() if task.regression else values.argmax(-1).tolist()


class EncoderFamily(ModelFamily):
    name = "encoder"
    auto_class = "AutoModel"
    find_unused_parameters = True

    def wrap(self, adapted: RankMixModel, tasks: Sequence[Task]) -> nn.Module:
        return MultiTaskHeads(adapted, [t.num_labels for t in tasks], [t.regression for t in tasks])

    def heads(self, model: nn.Module) -> nn.ModuleList | None:
        return model.heads

    def features(self, tokenizer, task_index, task, example, max_length):
        return encoder_features(tokenizer, example, max_length) | {
            "labels": float(example.label),
            "task_ids": task_index,
        }

    def scores(self, model, tokenizer, task, task_ids, examples, max_length):
        enc = {k: v.to(task_ids.device) for k, v in encode_encoder(tokenizer, examples, max_length).items()}
        logits = model(**enc, task_ids=task_ids).logits[:, : task.num_labels].float()
        return logits.squeeze(-1) if task.regression else logits.softmax(-1)


class GenerativeFamily(ModelFamily):
    """Text-to-text families: the answer is text, learned and scored token by token."""

    encode: ClassVar[Callable[..., dict[str, torch.Tensor]]]  # prompts and answers -> a batch
    encode_one: ClassVar[Callable[..., Features]]  # one prompt and answer -> its features
    shift: ClassVar[bool]  # a causal LM predicts token i+1 at position i
    labels_build_decoder_inputs: ClassVar[bool]  # T5 derives its decoder inputs from `labels`
    prompt_padding_side: ClassVar[str]  # where prompts are padded for generation
    generation_repeats_prompt: ClassVar[bool]  # a decoder's generate() output starts with the prompt

    def features(self, tokenizer, task_index, task, example, max_length):
        enc = self.encode_one(tokenizer, task.prompt(example), task.answer(example.label), max_length)
        return enc | {"task_ids": task_index}

    def predict(self, model, tokenizer, task, task_ids, examples, max_length, mode):
        if mode == "generate":
            texts = self.generate(model, tokenizer, task, task_ids, examples, max_length)
            return [parse_answer(task, text) for text in texts]
        return super().predict(model, tokenizer, task, task_ids, examples, max_length, mode)

    def scores(self, model, tokenizer, task, task_ids, examples, max_length):
        """Each candidate answer's likelihood, normalised over the candidates; for regression, the
        expected value over the candidate scores."""
        ids, chunk, cands = task_ids, examples, candidates(task)
        prompts = [task.prompt(e) for e in chunk for _ in cands]
        answers = cands * len(chunk)
        device = ids.device
        batch = {k: v.to(device) for k, v in self.encode(tokenizer, prompts, answers, max_length).items()}
        labels = batch.pop("labels")
        extra = {"labels": labels} if self.labels_build_decoder_inputs else {}
        logits = model(**batch, **extra, task_ids=ids.repeat_interleave(len(cands))).logits
        probs = answer_logprob(logits, labels, shift=self.shift).view(len(chunk), len(cands)).softmax(-1)
        if task.regression:
            return (probs * torch.tensor([float(c) for c in cands], device=device)).sum(-1)
        return probs

    def generate(
        self,
        model: nn.Module,
        tokenizer: Any,
        task: Task,
        ids: torch.Tensor,
        chunk: Sequence[Example],
        max_length: int,
    ) -> list[str]:
        """The text the model generates after each example's prompt (greedy, a few tokens)."""
        prompts = [task.prompt(e) for e in chunk]
        side = tokenizer.padding_side
        tokenizer.padding_side = self.prompt_padding_side
        try:
            enc = tokenizer(
                prompts, truncation=True, max_length=max_length, padding=True, return_tensors="pt"
            )
        finally:
            tokenizer.padding_side = side
        enc = {k: v.to(ids.device) for k, v in enc.items()}
        out = model.generate(
            **enc, task_ids=ids, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
        if self.generation_repeats_prompt:
            out = out[:, enc["input_ids"].shape[1] :]
        return tokenizer.batch_decode(out, skip_special_tokens=True)


class DecoderFamily(GenerativeFamily):
    name = "decoder"
    auto_class = "AutoModelForCausalLM"
    encode = staticmethod(encode_decoder)
    encode_one = staticmethod(decoder_features)
    shift = True
    labels_build_decoder_inputs = False
    prompt_padding_side = "left"
    generation_repeats_prompt = True


class Seq2SeqFamily(GenerativeFamily):
    name = "seq2seq"
    auto_class = "AutoModelForSeq2SeqLM"
    encode = staticmethod(encode_seq2seq)
    encode_one = staticmethod(seq2seq_features)
    shift = False
    labels_build_decoder_inputs = True
    prompt_padding_side = "right"
    generation_repeats_prompt = False


FAMILIES: dict[str, ModelFamily] = {f.name: f for f in (EncoderFamily(), DecoderFamily(), Seq2SeqFamily())}


def family_of(config: Any) -> ModelFamily:
    """The family of a transformers model config: encoder-decoder, BERT-style encoder or causal decoder."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if getattr(config, "is_encoder_decoder", False):
        return FAMILIES["seq2seq"]
    if config.model_type in ENCODER_TYPES:
        return FAMILIES["encoder"]
    if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return FAMILIES["decoder"]
    raise ValueError(
        f"model type {config.model_type!r} is neither an encoder (BERT-style), a causal decoder nor an "
        "encoder-decoder, so rankmix cannot train it on text tasks; use a text model"
    )


# -- scoring and parsing answers ---------------------------------------------------------------------
def candidates(task: Task) -> list[str]:
    """The answers a generative model's scores are compared over."""
    return REGRESSION_CANDIDATES if task.regression else list(task.label_words)


def answer_logprob(logits: torch.Tensor, labels: torch.Tensor, shift: bool) -> torch.Tensor:
    """Sum of log-probabilities of the label tokens of each sequence."""
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]
    logp = F.log_softmax(logits.float(), dim=-1)
    mask = labels != IGNORE
    picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(-1)


def parse_answer(task: Task, text: str) -> float:
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
