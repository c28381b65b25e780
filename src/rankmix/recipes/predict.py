"""Prediction on new text with a trained run: JSON rows in, one JSON record per row out, batched."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from ..files import parse_json, read_utf8
from ..tasks.base import Example, Task
from ..tasks.custom import is_custom
from ..tasks.readers import are_options, clean_options, is_text, repeated_option
from .evaluate import check_mode
from .run import Run


def text_keys(task: Task) -> tuple[str, ...]:
    """The keys whose texts the task's training reader requires of a row: a custom task's text_fields
    (both of two, whatever its template shows: an encoder reads the pair), a built-in task's text_a,
    and text_b where its template takes it (its readers read a pair exactly then)."""
    if is_custom(task):
        return task.text_fields
    return task.text_fields[: 2 if "{text_b}" in task.template else 1]


def read_rows(path: Path, task: Task | None) -> list[Example]:
    """Examples from a JSON-lines file whose rows hold the task's text fields (and, for a
    multiple-choice task, its options), read as the task's training reader reads a row: the same
    fields required, texts and options stripped, no option twice; an unusable row is an error naming
    its line, raised before any prediction. No task (--task auto): rows hold text_a, and text_b and
    options (`choices`) where they have them."""
    keys = text_keys(task) if task is not None else ("text_a",)
    fields = ", ".join(repr(k) for k in keys)
    wants_choices = task is not None and task.kind.needs_choices
    name = f"task {task.name}" if task is not None else "--task auto"
    choices_field = task.choices_field if task is not None else "choices"
    examples = []
    for number, line in enumerate(read_utf8(path, "input file").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = parse_json(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}, line {number}: not valid JSON ({e})") from None
        if not isinstance(row, dict):
            raise ValueError(
                f"{path}, line {number}: {name} needs a JSON object with the text field(s) {fields}"
            )
        missing = next((k for k in keys if not is_text(row.get(k))), None)
        if missing is not None:
            raise ValueError(
                f"{path}, line {number}: the non-empty text field {missing!r} is missing; {name} "
                f"reads {fields} from every row"
            )
        row_keys = keys
        if task is None:  # the row's texts and options as it has them: the inferred task reads them
            if "text_b" in row and not is_text(row["text_b"]):
                raise ValueError(f"{path}, line {number}: 'text_b' is empty; give it a text or leave it out")
            row_keys += ("text_b",) if "text_b" in row else ()
            wants_choices = choices_field in row
        choices = row.get(choices_field) if wants_choices else ()
        if wants_choices and not are_options(choices):
            what = "is a multiple-choice task; each row needs" if task is not None else "reads"
            raise ValueError(
                f"{path}, line {number}: {name} {what} {choices_field!r}, a list of at least two non-empty "
                "option strings"
            )
        choices = clean_options(choices)
        if (twice := repeated_option(choices)) is not None:
            raise ValueError(
                f"{path}, line {number}: option {twice!r} appears twice in {choices_field!r}, and "
                "two equal options tie; give each option once"
            )
        texts = [row[k].strip() for k in row_keys]
        examples.append(Example(texts[0], texts[1] if len(texts) == 2 else None, 0, choices))
    if not examples:
        raise ValueError(f"{path} holds no rows to predict on")
    return examples


def text_example(task: Task | None, text: str) -> Example:
    if not is_text(text):
        raise ValueError("--text is empty; pass the text to predict on (training skips empty texts too)")
    if task is None:  # --task auto: the inferred task reads it
        return Example(text.strip(), None, 0)
    if task.kind.needs_choices:
        raise ValueError(
            f"task {task.name} is a multiple-choice task: pass its rows, each with its options "
            f"({task.choices_field!r}), in a JSON-lines file (--input)"
        )
    if len(text_keys(task)) == 2:
        raise ValueError(
            f"task {task.name} takes two texts: pass them as rows of a JSON-lines file (--input), with "
            f"the fields {', '.join(text_keys(task))}"
        )
    return Example(text.strip(), None, 0)


@torch.no_grad()
def predict_records(
    run: Run, task_name: str, examples: Sequence[Example], mode: str, batch_size: int
) -> Iterator[dict[str, Any]]:
    """One record per example: the label and its probability (classification), the value (regression),
    the option acc_norm picks and its probability under that criterion (multiple choice), or the
    generated text (mode "generate", and generation tasks)."""
    t = next(i for i, task in enumerate(run.tasks) if task.name == task_name)
    task, family, model = run.tasks[t], run.family, run.model.eval()
    family.check([task], mode)
    device = next(p.device for p in model.parameters())
    max_length = run.config.train.max_length
    family.check_rows(run.tokenizer, task, examples, max_length)
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        ids = torch.full((len(chunk),), t, dtype=torch.long, device=device)
        if task.kind.generates:  # the answer evaluation scores
            for example, text in zip(
                chunk, family.generate(model, run.tokenizer, task, ids, chunk, max_length), strict=True
            ):
                yield task.kind.record(task, example, task.kind.parse(task, example, text), None)
            continue
        if mode == "generate":
            for text in family.generate(model, run.tokenizer, task, ids, chunk, max_length):
                yield {"text": text}
            continue
        scores = family.scores(model, run.tokenizer, task, ids, chunk, max_length)
        for example, values in zip(chunk, scores, strict=True):
            yield task.kind.record(task, example, family.read(task, example, values), values)


def predict_inferred(
    run: Run,
    infer: Callable[[Sequence[Example]], torch.Tensor],
    examples: Sequence[Example],
    mode: str | None,
    batch_size: int,
) -> list[dict[str, Any]]:
    """`predict_records` for rows of unknown tasks: each row's task inferred (`infer`), the row predicted
    as a row of that task (its routing, its head or candidates), its record naming the task."""
    owners = infer(examples).tolist()
    check_mode([run.tasks[t] for t in set(owners)], mode)
    for i, t in enumerate(owners):  # every row fits its task before anything is predicted
        task, example = run.tasks[t], examples[i]
        if task.kind.needs_choices and not example.choices:
            missing = "no options (choices)"
        elif len(text_keys(task)) == 2 and example.text_b is None:
            missing = "one text, and it reads two (text_a, text_b)"
        else:
            continue
        raise ValueError(
            f"row {i + 1} is inferred to be of task {task.name}, and has {missing}; give the row what "
            f"{task.name} reads, or predict with --task"
        )
    records: list[dict[str, Any]] = [{} for _ in examples]
    for t in sorted(set(owners)):
        task = run.tasks[t]
        rows = [i for i, owner in enumerate(owners) if owner == t]
        chosen = [examples[i] for i in rows]
        predicted = predict_records(run, task.name, chosen, mode or run.config.eval_mode, batch_size)
        for i, record in zip(rows, predicted, strict=True):
            records[i] = {"task": task.name, **record}
    return records
