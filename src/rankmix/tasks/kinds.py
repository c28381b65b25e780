"""Task kinds: what a task's rows hold and how they are learned, scored and read back, in one place.

- classification: a fixed label set; a decoder or T5 answers a label word, an encoder head one logit
  per label.
- regression: a score; a generative model answers the rounded score (its candidates 0..5, predicting
  their probability-weighted mean), an encoder head one value.
- multiple_choice: each row brings its own options and the index of the right one. A decoder or T5
  scores each option as the continuation of the prompt, as lm-evaluation-harness does: `acc` takes the
  option of largest summed log-likelihood, `acc_norm` the largest log-likelihood per character of the
  option. An encoder encodes each (prompt, option) pair and its head gives one logit per pair, softmax
  over the row's options (transformers' AutoModelForMultipleChoice); there is no length to normalise,
  so its acc_norm is its acc. An encoder cuts a pair too long for max_length from the text the options
  share, not from the option (where the option alone fits), so that what tells the options apart
  survives (`encoder_truncation`).
  With `fill_blank`, the options fill the blank ("_") of the prompt and the rest of the sentence after
  the blank is the continuation scored (WinoGrande's partial scoring); acc_norm then divides by the
  length of each option's filled context, as lm-evaluation-harness does. A prediction's probability is
  the softmax, over the row's options, of the scores that picked it (per character, for acc_norm).
- generation: a free-text target; the model generates (until its end-of-sequence token, which ends
  every training target) and is scored by exact match after `metrics.normalize` (and ROUGE-L, with the
  `generation` extra, where a task names it). The answer is the first line of the generated text, as
  lm-evaluation-harness cuts at a newline, unless the task's targets span lines (`multiline`: a custom
  task sets it when a target of its data files holds a newline): then it is the whole generated text.
  Encoders cannot generate.

The model families (families.py) tokenise and run the model; a kind says which texts to encode, how
the model's scores become a prediction and which metrics apply.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F

from ..hints import did_you_mean
from .metrics import METRICS, compute, normalize

if TYPE_CHECKING:
    from .base import Example, Task

BLANK = "_"
REGRESSION_CANDIDATES = tuple(str(v) for v in range(6))


@dataclass(frozen=True)
class Option:
    """One scored continuation: the text the model reads, and the text whose likelihood is scored
    after it (without the space a decoder puts between them)."""

    context: str
    text: str


@dataclass(frozen=True)
class Choice:
    """A multiple-choice prediction: the option `acc` picks and the one `acc_norm` picks, and the
    probability of the acc_norm pick under the scores that picked it (softmax over the row's options;
    None for an option read from generated text)."""

    pick: int
    pick_norm: int
    probability: float | None = field(default=None, compare=False)


Prediction = int | float | Choice | str


class TaskKind(abc.ABC):
    """How the rows of one kind of task are encoded, scored, predicted and measured."""

    name: ClassVar[str]
    metrics: ClassVar[tuple[str, ...]]  # those that apply to this kind
    default_metrics: ClassVar[tuple[str, ...]]
    generates: ClassVar[bool] = False  # evaluated by generating text, whatever the eval mode
    needs_choices: ClassVar[bool] = False  # each row brings its own options
    max_new_tokens: ClassVar[int] = 8  # what generating an answer may take
    # a decoder's training target ends with the end-of-sequence token (answers the model must stop after)
    ends_with_eos: ClassVar[bool] = True

    # -- generative models (decoder, seq2seq) ---------------------------------------------------------
    def target(self, task: Task, example: Example) -> Option:
        """What a generative model is trained to produce for `example`."""
        return self.options(task, example)[int(example.label)]

    def options(self, task: Task, example: Example) -> list[Option]:
        """The continuations a generative model's log-likelihoods are compared over."""
        raise ValueError(f"{task.name} is a {self.name} task: it generates its answer, nothing is scored")

    @abc.abstractmethod
    def from_logprobs(self, task: Task, example: Example, logprobs: torch.Tensor) -> Prediction:
        """The prediction from the summed log-likelihood of each option."""

    @abc.abstractmethod
    def parse(self, task: Task, example: Example, text: str) -> Prediction:
        """The prediction read from generated text (`--mode generate`, and generation tasks)."""

    # -- what a prediction means ----------------------------------------------------------------------
    def score(
        self, metrics: Sequence[str], predictions: Sequence[Prediction], references: Sequence[Any]
    ) -> dict[str, float]:
        return {m: compute(m, predictions, references) for m in metrics}

    def headline(self, values: dict[str, float]) -> float:
        """A task's number in averages (`score`), from its metrics' values: their mean."""
        return sum(values.values()) / len(values)

    @abc.abstractmethod
    def record(
        self, task: Task, example: Example, prediction: Prediction, scores: torch.Tensor | None
    ) -> dict[str, Any]:
        """One line of `rankmix predict`'s output (`scores`: the model's, where it scored candidates)."""

    def check_metrics(self, metrics: Sequence[str], where: str) -> None:
        known = {*METRICS, *(m for kind in KINDS.values() for m in kind.metrics)}
        for metric in metrics:
            if metric not in known:
                hint = did_you_mean(metric, known) or "."
                raise ValueError(
                    f"{where}: unknown metric {metric!r}{hint} Known: {', '.join(sorted(known))}"
                )
            if metric not in self.metrics:
                raise ValueError(
                    f"{where}: metric {metric!r} does not apply to a {self.name} task; choose from "
                    f"{', '.join(self.metrics)}"
                )


class HeadKind(TaskKind):
    """A kind an encoder can learn: a head per task reads the pooled encoding of each text (pair)."""

    def head_size(self, task: Task) -> int:
        """Outputs of the task's head per encoded text (pair)."""
        return 1

    def encoder_pairs(self, task: Task, example: Example) -> list[tuple[str, str | None]]:
        """The (text_a, text_b) pairs an encoder encodes for `example`: one per row of head outputs."""
        return [(example.text_a, example.text_b)]

    def encoder_truncation(self) -> str:
        """Which text of a pair too long for max_length an encoder cuts (a tokenizer's `truncation`):
        the longer first, or, where the pairs of a row are its options, the text they share."""
        return "longest_first"

    @abc.abstractmethod
    def head_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Summed training loss of a task's head outputs (examples, width) against their labels."""

    @abc.abstractmethod
    def from_head(self, task: Task, logits: torch.Tensor) -> Prediction:
        """The prediction from one example's head outputs (its options' logits, for multiple choice)."""


class Classification(HeadKind):
    name = "classification"
    metrics = ("accuracy", "f1", "mcc")
    default_metrics = ("accuracy",)

    def options(self, task, example):
        prompt = task.prompt(example)
        return [Option(prompt, word) for word in task.label_words]

    def from_logprobs(self, task, example, logprobs):
        return int(logprobs.argmax())

    def parse(self, task, example, text):
        """The first label word in the text; -1 (always wrong) when there is none."""
        for word in _words(text):
            for i, label in enumerate(task.label_words):
                if word == label.lower():
                    return i
        return -1

    def head_size(self, task):
        return len(task.labels)

    def record(self, task, example, prediction, scores):
        probs = scores.float().softmax(-1)
        return {"label": task.labels[int(prediction)], "score": probs[int(prediction)].item()}

    def head_loss(self, logits, target):
        return F.cross_entropy(logits, target.long(), reduction="sum")

    def from_head(self, task, logits):
        return int(logits.argmax())


class Regression(HeadKind):
    name = "regression"
    metrics = ("pearson", "spearman")
    default_metrics = ("pearson", "spearman")

    def target(self, task, example):
        """The rounded score, so that generative training targets are the candidates scored (0..5)."""
        return Option(task.prompt(example), str(round(example.label)))

    def options(self, task, example):
        prompt = task.prompt(example)
        return [Option(prompt, c) for c in REGRESSION_CANDIDATES]

    def from_logprobs(self, task, example, logprobs):
        """The expected score under the candidates' normalised likelihoods."""
        values = torch.tensor([float(c) for c in REGRESSION_CANDIDATES], device=logprobs.device)
        return float((logprobs.float().softmax(-1) * values).sum())

    def parse(self, task, example, text):
        """The first finite number in the text; -1 when there is none."""
        for word in _words(text):
            try:
                value = float(word)
            except ValueError:
                continue
            if math.isfinite(value):
                return value
        return -1.0

    def head_loss(self, logits, target):
        return F.mse_loss(logits.squeeze(-1), target.float(), reduction="sum")

    def from_head(self, task, logits):
        return float(logits[0])

    def record(self, task, example, prediction, scores):
        return {"score": float(prediction)}


@dataclass(frozen=True)
class MultipleChoice(HeadKind):
    """Options per row (`example.choices`); `fill_blank`: each option fills the prompt's blank."""

    fill_blank: bool = False
    name: ClassVar[str] = "multiple_choice"
    metrics: ClassVar[tuple[str, ...]] = ("acc", "acc_norm")
    default_metrics: ClassVar[tuple[str, ...]] = ("acc", "acc_norm")
    ends_with_eos: ClassVar[bool] = False  # an option is a continuation, not an answer to stop after
    needs_choices: ClassVar[bool] = True
    max_new_tokens: ClassVar[int] = 32

    def options(self, task, example):
        prompt = task.prompt(example)
        if not self.fill_blank:
            return [Option(prompt, choice) for choice in example.choices]
        head, blank, rest = prompt.partition(BLANK)
        if not blank or not rest.strip():
            raise ValueError(
                f"{task.name}: a fill-in-the-blank row needs a blank ({BLANK!r}) with text after it, "
                f"which each option's likelihood is scored on; got {prompt!r}"
            )
        return [Option(head + choice, rest.strip()) for choice in example.choices]

    def norm_lengths(self, task: Task, example: Example) -> list[int]:
        """What acc_norm divides each option's log-likelihood by, as lm-evaluation-harness does: the
        length in characters of the option's text, or, for fill_blank, of the context the option
        completes (its multiple-input form divides by the length of each input)."""
        return [max(1, len(o.context if self.fill_blank else o.text)) for o in self.options(task, example)]

    def from_logprobs(self, task, example, logprobs):
        lengths = torch.tensor(self.norm_lengths(task, example), device=logprobs.device)
        norm = logprobs.float() / lengths
        pick_norm = int(norm.argmax())
        return Choice(int(logprobs.argmax()), pick_norm, float(norm.softmax(-1)[pick_norm]))

    def parse(self, task, example, text):
        """The option the generated text spells (after `normalize`); -1 when none does."""
        said = normalize(text)
        picks = [i for i, c in enumerate(example.choices) if normalize(c) == said]
        pick = picks[0] if picks else -1
        return Choice(pick, pick)

    def encoder_pairs(self, task, example):
        return [(o.context.strip(), o.text.strip() or None) for o in self.options(task, example)]

    def encoder_truncation(self):
        """The prompt (an option's pair is (prompt, option)), or with fill_blank the rest of the sentence
        after the blank (its pair is (sentence up to the blank filled, rest))."""
        return "only_second" if self.fill_blank else "only_first"

    def head_loss(self, logits, target):
        return F.cross_entropy(logits, target.long(), reduction="sum")

    def from_head(self, task, logits):
        pick = int(logits.argmax())
        return Choice(pick, pick, float(logits.float().softmax(-1)[pick]))

    def score(self, metrics, predictions, references):
        picks = {"acc": [p.pick for p in predictions], "acc_norm": [p.pick_norm for p in predictions]}
        return {m: compute("accuracy", picks[m], references) for m in metrics}

    def headline(self, values):
        """acc_norm, where the task measures it (lm-evaluation-harness's usual headline)."""
        return values["acc_norm"] if "acc_norm" in values else super().headline(values)

    def record(self, task, example, prediction, scores):
        """The acc_norm pick, scored by its probability under acc_norm's own criterion (per character
        for a decoder or T5), so that the pick always has the largest score, at least 1/options."""
        pick = prediction.pick_norm
        if pick < 0:
            return {"choice": None, "index": -1}
        return {"choice": example.choices[pick], "index": pick, "score": prediction.probability}


@dataclass(frozen=True)
class Generation(TaskKind):
    """A target text per row; `multiline`: targets may span lines, so an answer is not cut at a newline."""

    multiline: bool = False
    name: ClassVar[str] = "generation"
    metrics: ClassVar[tuple[str, ...]] = ("exact_match", "rouge_l")
    default_metrics: ClassVar[tuple[str, ...]] = ("exact_match",)
    generates: ClassVar[bool] = True
    max_new_tokens: ClassVar[int] = 32

    def target(self, task, example):
        return Option(task.prompt(example), str(example.label))

    def from_logprobs(self, task, example, logprobs):
        raise ValueError(f"{task.name} is a generation task: it generates its answer, nothing is scored")

    def parse(self, task, example, text):
        """The generated answer, stripped: its first line, or all of it where targets span lines."""
        return text.strip() if self.multiline else text.strip().split("\n", 1)[0].strip()

    def record(self, task, example, prediction, scores):
        return {"text": prediction}


def _words(text: str) -> list[str]:
    return [w.strip(".!?") for w in text.strip().lower().replace(",", " ").split()]


CLASSIFICATION, REGRESSION = Classification(), Regression()
KINDS: dict[str, TaskKind] = {k.name: k for k in (CLASSIFICATION, REGRESSION, MultipleChoice(), Generation())}
