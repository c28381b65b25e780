"""Model families: how an encoder (with task heads), a decoder or an encoder-decoder is loaded, trained
and evaluated. Training and evaluation code call a family object; none of it branches on the family.

encoder:  text pair -> tokens; mean-pooled output -> a head per task (classification, regression, one
          logit per (prompt, option) pair for multiple choice).
decoder:  prompt + answer -> one sequence, loss on the answer tokens only.
seq2seq:  prompt -> encoder, answer -> labels (text-to-text, as in the MoRE paper).
Decoders and T5 are evaluated by scoring every candidate's log-likelihood (`mode="score"`: the label
words, the scores 0..5 of a regression task, a multiple-choice row's options) or by generating an
answer and reading it (`mode="generate"`, and always for generation tasks). What the candidates are and
what their scores predict is the task's kind's to say (tasks/kinds.py).
"""

from __future__ import annotations

import abc
import inspect
import warnings
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import BaseModelOutput

from .data.collate import (
    IGNORE,
    Features,
    continuation_ids,
    cut_context,
    decoder_features,
    encoder_features,
    pad_features,
    pad_id,
    seq2seq_features,
    seq2seq_ids,
)
from .heads import MultiTaskHeads
from .model import RankMixModel
from .tasks.base import Example, Task
from .tasks.kinds import HeadKind, Prediction

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
    modes: ClassVar[tuple[str, ...]]  # how it can be evaluated: scoring candidates, generating text
    # DDP must be told when a step leaves parameters without gradient (heads of tasks not in the batch)
    find_unused_parameters: ClassVar[bool] = False

    def load_base(self, path: str, **options: Any) -> nn.Module:
        """The base model at `path` (a folder or hub id); `options` go to `from_pretrained`."""
        import transformers

        return getattr(transformers, self.auto_class).from_pretrained(path, **options)

    def check(self, tasks: Sequence[Task], mode: str = "score") -> None:
        """Refuse, before any long work, tasks or an evaluation mode this family cannot serve."""
        if mode not in self.modes:
            raise ValueError(
                f"eval mode {mode!r} needs a decoder or seq2seq model; an {self.name} model can only "
                f"{' or '.join(self.modes)}"
            )

    def wrap(self, adapted: RankMixModel, tasks: Sequence[Task]) -> nn.Module:
        """The module that trains: the adapted model itself, or the adapted body with task heads."""
        return adapted

    def train_outputs(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> Any:
        """The outputs of the wrapped `model` on one padded training batch, `loss` the task loss plus the
        weighted aux losses: what rankmix's training loop back-propagates."""
        return model(**batch)

    def check_rows(self, tokenizer: Any, task: Task, examples: Sequence[Example], max_length: int) -> None:
        """Warn, before predicting, of rows whose candidates the model cannot tell apart (an encoder's
        multiple-choice rows cut to max_length)."""
        return

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
        route_ids: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """Per example of one batch, the model's scores of its candidates: its head's outputs (encoder),
        or the summed log-likelihood of each option its task's kind offers (decoder, seq2seq). The adapter
        routes each example by `route_ids` where given (the tasks inferred, task-free), else `task_ids`."""

    @abc.abstractmethod
    def read(self, task: Task, example: Example, scores: torch.Tensor) -> Prediction:
        """The prediction an example's `scores` make."""

    def predict(
        self,
        model: nn.Module,
        tokenizer: Any,
        task: Task,
        task_ids: torch.Tensor,
        examples: Sequence[Example],
        max_length: int,
        mode: str,
        route_ids: torch.Tensor | None = None,
    ) -> list[Prediction]:
        """One prediction per example of one batch (kinds.py says what a prediction is); `route_ids`: as
        in `scores`."""
        values = self.scores(model, tokenizer, task, task_ids, examples, max_length, route_ids)
        return [self.read(task, e, v) for e, v in zip(examples, values, strict=True)]


class EncoderFamily(ModelFamily):
    name = "encoder"
    auto_class = "AutoModel"
    modes = ("score",)
    find_unused_parameters = True

    def check(self, tasks, mode="score"):
        super().check(tasks, mode)
        for task in tasks:
            if not isinstance(task.kind, HeadKind):
                raise ValueError(
                    f"{task.name} is a {task.kind.name} task, and an encoder cannot generate text; train "
                    "it with a decoder or seq2seq model (e.g. model: smollm2)"
                )

    def wrap(self, adapted: RankMixModel, tasks: Sequence[Task]) -> nn.Module:
        self.check(tasks)
        return MultiTaskHeads(adapted, tasks)

    def heads(self, model: nn.Module) -> nn.ModuleList | None:
        return model.heads

    def check_rows(self, tokenizer, task, examples, max_length):
        """One warning naming the multiple-choice rows whose options still read the same after the
        prompt is cut to max_length (their logits tie: the first of them is picked)."""
        if not task.kind.needs_choices:
            return
        rows = [self.tokens(tokenizer, task, e, max_length)["input_ids"] for e in examples]
        tied = sum(len({tuple(ids) for ids in row}) < len(row) for row in rows)
        if tied:
            warnings.warn(
                f"{task.name}: in {tied} of {len(examples)} row(s), options differ only beyond "
                f"max_length ({max_length} tokens) even with the prompt cut, so the encoder cannot tell "
                "them apart (the first is picked); raise train.max_length or shorten those options",
                stacklevel=2,
            )

    def tokens(self, tokenizer: Any, task: Task, example: Example, max_length: int) -> Features:
        """One example's (text_a, text_b) pairs (its kind's `encoder_pairs`), each encoded and cut to
        max_length as its kind says (`encoder_truncation`); one sequence per key, or, for several pairs
        (multiple choice), a list of sequences per key."""
        truncation = task.kind.encoder_truncation()
        pairs = task.kind.encoder_pairs(task, example)
        encoded = [_encode_pair(tokenizer, a, b, max_length, truncation) for a, b in pairs]
        return encoded[0] if len(encoded) == 1 else {k: [e[k] for e in encoded] for k in encoded[0]}

    def features(self, tokenizer, task_index, task, example, max_length):
        enc = self.tokens(tokenizer, task, example, max_length)
        return enc | {"labels": float(example.label), "task_ids": task_index}

    def scores(self, model, tokenizer, task, task_ids, examples, max_length, route_ids=None):
        rows = [self.tokens(tokenizer, task, e, max_length) for e in examples]
        enc = {k: v.to(task_ids.device) for k, v in pad_features(rows, pad_id(tokenizer)).items()}
        logits = model(**enc, task_ids=task_ids, route_ids=route_ids).logits.float()
        return [row[row > float("-inf")] for row in logits]  # the widest head pads the others with -inf

    def read(self, task, example, scores):
        return task.kind.from_head(task, scores)


class GenerativeFamily(ModelFamily):
    """Text-to-text families: the answer is text, learned and scored token by token."""

    modes = ("score", "generate")
    encode_one: ClassVar[Callable[..., Features]]  # one context and continuation -> its features
    prompt_padding_side: ClassVar[str]  # where prompts are padded for generation
    generation_repeats_prompt: ClassVar[bool]  # a decoder's generate() output starts with the prompt

    def features(self, tokenizer, task_index, task, example, max_length):
        target = task.kind.target(task, example)
        enc = self.encode_one(tokenizer, target.context, target.text, task.kind.ends_with_eos, max_length)
        return enc | {"task_ids": task_index}

    def predict(self, model, tokenizer, task, task_ids, examples, max_length, mode, route_ids=None):
        if mode == "generate" or task.kind.generates:
            routes = task_ids if route_ids is None else route_ids
            texts = self.generate(model, tokenizer, task, routes, examples, max_length)
            return [task.kind.parse(task, e, text) for e, text in zip(examples, texts, strict=True)]
        return super().predict(model, tokenizer, task, task_ids, examples, max_length, mode, route_ids)

    def scores(self, model, tokenizer, task, task_ids, examples, max_length, route_ids=None):
        task_ids = task_ids if route_ids is None else route_ids  # the ids only route: no heads here
        options = [task.kind.options(task, e) for e in examples]
        eos = task.kind.ends_with_eos
        index: dict[tuple[int, str], int] = {}  # each example's distinct contexts, run once each
        heads, longest, owner, context_of, continuations = [], [], [], [], []
        for i, example_options in enumerate(options):
            for option in example_options:
                head, continuation = self.pair_ids(tokenizer, option.context, option.text, eos, max_length)
                key = (i, option.context)
                if key not in index:
                    index[key] = len(heads)
                    heads.append(head)
                    longest.append(0)
                    owner.append(i)
                c = index[key]
                longest[c] = max(longest[c], len(continuation))
                context_of.append(c)
                continuations.append(continuation)
        heads = [self.fit(h, n, max_length) for h, n in zip(heads, longest, strict=True)]
        owners = torch.tensor(owner, device=task_ids.device)
        logprobs = self.continuation_logprobs(
            model, tokenizer, heads, task_ids[owners], torch.tensor(context_of), continuations
        )
        sizes = [len(o) for o in options]
        return list(logprobs.split(sizes))

    @abc.abstractmethod
    def pair_ids(
        self, tokenizer: Any, context: str, text: str, eos: bool, max_length: int
    ) -> tuple[list[int], list[int]]:
        """(context tokens, continuation tokens), as `encode_one` encodes them for training."""

    @abc.abstractmethod
    def fit(self, context: list[int], continuation_length: int, max_length: int) -> list[int]:
        """The context tokens that go into the model beside a continuation that long."""

    @abc.abstractmethod
    def continuation_logprobs(
        self,
        model: nn.Module,
        tokenizer: Any,
        contexts: list[list[int]],
        task_ids: torch.Tensor,
        context_of: torch.Tensor,
        continuations: list[list[int]],
    ) -> torch.Tensor:
        """The summed log-likelihood of each continuation after its context (`context_of` its index in
        `contexts`, whose `task_ids` route them), each context run through the model once."""

    def read(self, task, example, scores):
        return task.kind.from_logprobs(task, example, scores)

    def generate(
        self,
        model: nn.Module,
        tokenizer: Any,
        task: Task,
        ids: torch.Tensor,
        chunk: Sequence[Example],
        max_length: int,
    ) -> list[str]:
        """The text the model generates after each example's prompt (greedy, up to the kind's limit)."""
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
            **enc,
            task_ids=ids,
            max_new_tokens=task.kind.max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
        if self.generation_repeats_prompt:
            out = out[:, enc["input_ids"].shape[1] :]
        return tokenizer.batch_decode(out, skip_special_tokens=True)


class DecoderFamily(GenerativeFamily):
    """A causal LM. Scoring runs each context once (left-padded, its key-value cache kept) and then
    every continuation of it from that cache: the prompt is not re-encoded per candidate."""

    name = "decoder"
    auto_class = "AutoModelForCausalLM"
    encode_one = staticmethod(decoder_features)
    prompt_padding_side = "left"
    generation_repeats_prompt = True

    def pair_ids(self, tokenizer, context, text, eos, max_length):
        return continuation_ids(tokenizer, context, text, eos)

    def train_outputs(self, model, batch):
        """The LM head and the log-softmax run only at the positions whose next token is labelled (a
        multiple-choice answer's few tokens of 128; the head of SmolLM2 is a fifth of its forward's work):
        the loss transformers computes over every position (the mean cross-entropy of the labelled
        tokens) and the same gradients. A head that rankmix adapts itself runs over every position."""
        head = _language_model(model).get_output_embeddings()
        if not isinstance(head, nn.Linear):
            return model(**batch)
        inputs = dict(batch)
        targets = inputs.pop("labels")[:, 1:]
        labelled = targets != IGNORE

        def select(_: nn.Module, args: tuple) -> tuple:
            """The head's input: of the hidden states [batch, positions, width], the labelled [n, width]."""
            return (args[0][:, :-1][labelled], *args[1:])

        hook = head.register_forward_pre_hook(select)
        try:
            outputs = model(**inputs)
        finally:
            hook.remove()
        loss = F.cross_entropy(outputs.logits.float(), targets[labelled])
        aux = outputs.get("aux_loss")
        outputs["loss"] = loss if aux is None else loss + aux.to(loss.dtype)
        return outputs

    def fit(self, context, continuation_length, max_length):
        return cut_context(context, continuation_length, max_length)  # one sequence shares max_length

    def continuation_logprobs(self, model, tokenizer, contexts, task_ids, context_of, continuations):
        device = task_ids.device
        pad = pad_id(tokenizer)
        width = max(len(c) for c in contexts)
        ctx = torch.tensor([[pad] * (width - len(c)) + c for c in contexts], device=device)
        ctx_mask = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in contexts], device=device)
        cache_name, keep = _cache_arguments(model)
        out = model(
            input_ids=ctx,
            attention_mask=ctx_mask,
            position_ids=(ctx_mask.cumsum(-1) - 1).clamp(min=0),
            task_ids=task_ids,
            use_cache=True,
            **keep,  # only the last position's logits: it predicts each continuation's first token
        )
        rows = context_of.to(device)
        cache = out[cache_name]
        cache.batch_select_indices(rows)  # each context's cache, once per continuation of it
        cont = pad_features([{"input_ids": c, "labels": c} for c in continuations], pad)
        cont = {k: v.to(device) for k, v in cont.items()}
        lengths = ctx_mask.sum(-1)[rows]
        steps = torch.arange(cont["input_ids"].shape[1], device=device)
        later = model(
            input_ids=cont["input_ids"],
            attention_mask=torch.cat([ctx_mask[rows], cont["attention_mask"]], dim=1),
            position_ids=lengths[:, None] + steps,
            **{cache_name: cache},
            task_ids=task_ids[rows],
            use_cache=True,
        ).logits
        logits = torch.cat([out.logits[rows, -1:], later[:, :-1]], dim=1)
        return answer_logprob(logits, cont["labels"], shift=False)


class Seq2SeqFamily(GenerativeFamily):
    """An encoder-decoder (T5). Scoring encodes each context once and decodes every continuation from
    that encoding."""

    name = "seq2seq"
    auto_class = "AutoModelForSeq2SeqLM"
    encode_one = staticmethod(seq2seq_features)
    prompt_padding_side = "right"
    generation_repeats_prompt = False

    def pair_ids(self, tokenizer, context, text, eos, max_length):
        return seq2seq_ids(tokenizer, context, text, eos, max_length)

    def fit(self, context, continuation_length, max_length):
        return context  # the encoder's input, cut to max_length already

    def continuation_logprobs(self, model, tokenizer, contexts, task_ids, context_of, continuations):
        device, pad = task_ids.device, pad_id(tokenizer)
        ctx = {k: v.to(device) for k, v in pad_features([{"input_ids": c} for c in contexts], pad).items()}
        start = torch.full(
            (len(contexts), 1), _language_model(model).config.decoder_start_token_id, device=device
        )
        encoded = model(**ctx, decoder_input_ids=start, task_ids=task_ids).encoder_last_hidden_state
        rows = context_of.to(device)
        labels = pad_features([{"labels": c} for c in continuations], pad)["labels"].to(device)
        logits = model(
            encoder_outputs=BaseModelOutput(last_hidden_state=encoded[rows]),
            attention_mask=ctx["attention_mask"][rows],
            labels=labels,
            task_ids=task_ids[rows],
        ).logits
        return answer_logprob(logits, labels, shift=False)


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


def _encode_pair(tokenizer: Any, a: str, b: str | None, max_length: int, truncation: str) -> Features:
    """`encoder_features` of (a, b), cut by `truncation` (only_first: b kept whole, only_second: a kept
    whole) where the text kept leaves room for a token of the other; else the longer text first."""
    if b is not None and truncation != "longest_first":
        kept = b if truncation == "only_first" else a
        length = len(tokenizer(kept, add_special_tokens=False)["input_ids"])
        if length + tokenizer.num_special_tokens_to_add(pair=True) < max_length:
            enc = tokenizer(a, b, truncation=truncation, max_length=max_length)
            return {k: v for k, v in enc.items() if k != "attention_mask"}
    return encoder_features(tokenizer, a, b, max_length)


# -- scoring ---------------------------------------------------------------------------------------
def _language_model(model: nn.Module) -> nn.Module:
    """The transformers model inside `model` (a RankMixModel, a DDP replica's module, or itself)."""
    from transformers import PreTrainedModel

    return next(m for m in model.modules() if isinstance(m, PreTrainedModel))  # the outermost


def _cache_arguments(model: nn.Module) -> tuple[str, dict[str, int]]:
    """The name a causal LM's forward gives its key-value cache (transformers 5: `cache`, before:
    `past_key_values`), and the argument that keeps only the last position's logits, where it has one."""
    params = inspect.signature(type(_language_model(model)).forward).parameters
    keep = next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None)
    return ("cache" if "cache" in params else "past_key_values"), ({keep: 1} if keep else {})


def answer_logprob(logits: torch.Tensor, labels: torch.Tensor, shift: bool) -> torch.Tensor:
    """Sum of log-probabilities of the label tokens of each sequence."""
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]
    logp = F.log_softmax(logits.float(), dim=-1)
    mask = labels != IGNORE
    picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(-1)
