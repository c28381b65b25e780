"""Task and Example: what every task knows (its splits, its prompt and answers, its metrics)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Example:
    """One row: one or two texts and a label (class index, or a float score for regression)."""

    text_a: str
    text_b: str | None
    label: int | float


# A reader turns (data_dir, split, strict) into (examples, number of malformed rows skipped).
Reader = Callable[[Path, str, bool], tuple[list[Example], int]]


@dataclass(frozen=True)
class Task:
    """A benchmark task. `labels` are the class names as the data stores them; `label_words` the answers
    a decoder or T5 model is trained to produce (same order); `template` formats the prompt from
    {text_a} and {text_b}. Regression tasks have no labels and answer with the score. `text_fields` name
    the keys of a JSON row to predict on (`rankmix predict`): a custom task's own, else text_a, text_b."""

    name: str
    labels: tuple[str, ...]
    label_words: tuple[str, ...]
    metrics: tuple[str, ...]
    template: str
    reader: Reader = field(repr=False, compare=False)
    hub: Reader | None = field(default=None, repr=False, compare=False)
    regression: bool = False
    text_fields: tuple[str, ...] = ("text_a", "text_b")

    @property
    def num_labels(self) -> int:
        return 1 if self.regression else len(self.labels)

    def prompt(self, example: Example) -> str:
        return self.template.format(text_a=example.text_a, text_b=example.text_b or "")

    def answer(self, label: int | float) -> str:
        """The target text: the label word, or for regression the rounded score, so that generative
        training targets are the candidates evaluation scores (0..5 for STS-B)."""
        return str(round(label)) if self.regression else self.label_words[int(label)]

    def load(
        self, split: str, data_dir: str | Path | None = None, strict: bool = False
    ) -> tuple[list[Example], int]:
        """(examples, malformed rows skipped) of `split` ("train" or "dev"), from `data_dir` in the
        published layout, or from the Hugging Face hub when no folder is given."""
        if split not in ("train", "dev"):
            raise ValueError(f"split must be 'train' or 'dev', got {split!r}")
        if data_dir is None:
            if self.hub is None:
                raise ValueError(f"task {self.name!r} has no hub source; pass data_dir=... (a local folder)")
            return self.hub(Path(), split, strict)
        return self.reader(Path(data_dir), split, strict)

    def score(
        self, predictions: Sequence[int | float], references: Sequence[int | float]
    ) -> dict[str, float]:
        """Every metric of this task plus "score", their mean (the task's number in averages)."""
        from .metrics import compute

        values = {m: compute(m, predictions, references) for m in self.metrics}
        values["score"] = sum(values.values()) / len(values)
        return values
