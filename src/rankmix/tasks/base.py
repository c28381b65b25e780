"""Task and Example: what every task knows (its splits, its prompt and answers, its metrics)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .kinds import CLASSIFICATION, Prediction, TaskKind


@dataclass(frozen=True)
class Example:
    """One row: one or two texts and a label (a class index, a float score for regression, the right
    option's index for multiple choice, the target text for generation); a multiple-choice row also
    carries its options."""

    text_a: str
    text_b: str | None
    label: int | float | str
    choices: tuple[str, ...] = ()


# A reader turns (data_dir, split, strict) into (examples, number of malformed rows skipped).
Reader = Callable[[Path, str, bool], tuple[list[Example], int]]


@dataclass(frozen=True)
class Task:
    """A benchmark task. `kind` (kinds.py) says what its rows hold and how they are learned and scored.
    For classification, `labels` are the class names as the data stores them and `label_words` the
    answers a decoder or T5 model is trained to produce (same order); other kinds have none. `template`
    formats the prompt from {text_a} and {text_b}. `text_fields` (and, for multiple choice,
    `choices_field`) name the keys of a JSON row to predict on (`rankmix predict`): a custom task's
    own, else text_a, text_b and choices."""

    name: str
    labels: tuple[str, ...]
    label_words: tuple[str, ...]
    metrics: tuple[str, ...]
    template: str
    reader: Reader = field(repr=False, compare=False)
    hub: Reader | None = field(default=None, repr=False, compare=False)
    kind: TaskKind = CLASSIFICATION
    text_fields: tuple[str, ...] = ("text_a", "text_b")
    choices_field: str = "choices"

    def prompt(self, example: Example) -> str:
        return self.template.format(text_a=example.text_a, text_b=example.text_b or "")

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

    def score(self, predictions: Sequence[Prediction], references: Sequence[Any]) -> dict[str, float]:
        """Every metric of this task plus "score", the task's number in averages (its kind's headline:
        acc_norm for multiple choice, else the metrics' mean)."""
        values = self.kind.score(self.metrics, predictions, references)
        return values | {"score": self.kind.headline(values)}
