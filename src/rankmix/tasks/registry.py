"""The built-in tasks (GLUE, SuperGLUE BoolQ and CB, SciTail, the LLM-Adapters commonsense suite,
CommonsenseQA) and the name -> Task registry that recipes and configs look tasks up in.

Each task reads the published local layout (see shared/data/README.md) and, without a data_dir, the
Hugging Face hub ("dev" is then the hub's whole validation split, "train" its train split). Label
orders follow the hub's ClassLabel order, so hub label indices need no mapping.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from ..hints import did_you_mean
from .base import Task
from .readers import Convert, columns, hub_reader, json_reader, tsv_reader
from .synthetic import synthetic_tasks

_TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Add `task` under its lower-cased name; a name taken already is an error, never a silent override."""
    key = task.name.lower()
    if key in _TASKS:
        raise ValueError(f"a task named {key!r} is already registered; give the new task another name")
    _TASKS[key] = task
    return task


def task_names() -> list[str]:
    """Every registered task name, sorted."""
    return sorted(_TASKS)


def get_task(name: str) -> Task:
    """The task called `name` (case-insensitive); an unknown name is an error that suggests the closest."""
    key = name.lower()
    if key in _TASKS:
        return _TASKS[key]
    hint = did_you_mean(key, _TASKS) or "."
    raise ValueError(f"unknown task {name!r}{hint} Known tasks: {', '.join(task_names())}")


def _files(folder: str, ext: str) -> dict[str, str]:
    return {"train": f"{folder}/train{ext}", "dev": f"{folder}/dev{ext}"}


def _hub_splits(dev: str = "validation") -> dict[str, str]:
    return {"train": "train", "dev": dev}


_ENTAIL = '{text_a}\nQuestion: Does this imply "{text_b}"? yes or no?\nAnswer:'
_PAIR = "Sentence 1: {text_a}\nSentence 2: {text_b}\nQuestion: {question}\nAnswer:"
_YES_NO = ("no", "yes")


def _glue(
    name: str,
    folder: str,
    local: tuple[int | str, int | str | None, int | str],
    hub: tuple[str, str | None, str],
    labels: tuple[str, ...],
    label_words: tuple[str, ...],
    template: str,
    *,
    metrics: tuple[str, ...] = ("accuracy",),
    fields: int | None = None,
    files: dict[str, str] | None = None,
    hub_dev: str = "validation",
    score_range: tuple[float, float] | None = None,
) -> None:
    """A GLUE task: `local` and `hub` name its (text_a, text_b, label) columns in the TSV (header names,
    or indices when the file has no header and `fields` says how many fields a row has) and on the hub."""
    reader = tsv_reader(
        files or _files(f"glue/{folder}", ".tsv"), *local, labels, fields=fields, score_range=score_range
    )
    hub_read = hub_reader(
        "nyu-mll/glue", name, _hub_splits(hub_dev), columns(*hub), labels, has_b=hub[1] is not None
    )
    register_task(Task(name, labels, label_words, metrics, template, reader, hub_read, regression=not labels))


_glue(
    "cola",
    "CoLA",
    (3, None, 1),
    ("sentence", None, "label"),
    ("0", "1"),
    ("unacceptable", "acceptable"),
    "Sentence: {text_a}\nQuestion: Is this sentence grammatically acceptable or unacceptable?\nAnswer:",
    metrics=("mcc",),
    fields=4,
)
_glue(
    "sst2",
    "SST-2",
    ("sentence", None, "label"),
    ("sentence", None, "label"),
    ("0", "1"),
    ("negative", "positive"),
    "Review: {text_a}\nQuestion: Is the sentiment of this review negative or positive?\nAnswer:",
)
_glue(
    "mrpc",
    "MRPC",
    ("#1 String", "#2 String", "Quality"),
    ("sentence1", "sentence2", "label"),
    ("0", "1"),
    _YES_NO,
    _PAIR.replace("{question}", "Do both sentences mean the same thing? yes or no?"),
    metrics=("f1", "accuracy"),
)
_glue(
    "stsb",
    "STS-B",
    ("sentence1", "sentence2", "score"),
    ("sentence1", "sentence2", "label"),
    (),
    (),
    _PAIR.replace("{question}", "How similar are the two sentences, from 0 to 5?"),
    metrics=("pearson", "spearman"),
    score_range=(0.0, 5.0),
)
_glue(
    "qqp",
    "QQP",
    (3, 4, 5),
    ("question1", "question2", "label"),
    ("0", "1"),
    _YES_NO,
    "Question 1: {text_a}\nQuestion 2: {text_b}\nQuestion: Do both questions ask the same thing? yes or no?"
    "\nAnswer:",
    metrics=("f1", "accuracy"),
    fields=6,
)
_glue(
    "mnli",
    "MNLI",
    ("sentence1", "sentence2", "gold_label"),
    ("premise", "hypothesis", "label"),
    ("entailment", "neutral", "contradiction"),
    ("yes", "maybe", "no"),
    '{text_a}\nQuestion: Does this imply "{text_b}"? yes, maybe or no?\nAnswer:',
    files={"train": "glue/MNLI/train.tsv", "dev": "glue/MNLI/dev_matched.tsv"},
    hub_dev="validation_matched",
)
_glue(
    "qnli",
    "QNLI",
    ("question", "sentence", "label"),
    ("question", "sentence", "label"),
    ("entailment", "not_entailment"),
    ("yes", "no"),
    "Question: {text_a}\nSentence: {text_b}\nQuestion: Does the sentence answer the question? yes or no?"
    "\nAnswer:",
)
_glue(
    "rte",
    "RTE",
    ("sentence1", "sentence2", "label"),
    ("sentence1", "sentence2", "label"),
    ("entailment", "not_entailment"),
    ("yes", "no"),
    _ENTAIL,
)
_glue(
    "wnli",
    "WNLI",
    ("sentence1", "sentence2", "label"),
    ("sentence1", "sentence2", "label"),
    ("0", "1"),
    _YES_NO,
    _ENTAIL,
)


def _superglue(
    name: str,
    folder: str,
    labels: tuple[str, ...],
    label_words: tuple[str, ...],
    fields: tuple[str, str],
    template: str,
) -> None:
    """A SuperGLUE pair task: JSON lines with `fields` as (text_a, text_b) and a "label"."""
    convert = columns(*fields, "label")
    reader = json_reader(_files(f"superglue/{folder}", ".jsonl"), convert, labels, has_b=True)
    hub = hub_reader("aps/super_glue", folder.lower(), _hub_splits(), convert, labels, has_b=True)
    register_task(Task(name, labels, label_words, ("accuracy",), template, reader, hub))


# The local BoolQ file stores its labels as the strings "true"/"false", the hub as 0 = False, 1 = True.
_superglue(
    "superglue_boolq",
    "BoolQ",
    ("false", "true"),
    _YES_NO,
    ("passage", "question"),
    "{text_a}\nQuestion: {text_b}? yes or no?\nAnswer:",
)
_superglue(
    "cb",
    "CB",
    ("entailment", "contradiction", "neutral"),
    ("yes", "no", "maybe"),
    ("premise", "hypothesis"),
    '{text_a}\nQuestion: Does this imply "{text_b}"? yes, no or maybe?\nAnswer:',
)

_SCITAIL = ("entails", "neutral")
register_task(
    Task(
        "scitail",
        _SCITAIL,
        ("yes", "no"),
        ("accuracy",),
        _ENTAIL,
        tsv_reader(_files("scitail", ".tsv"), 0, 1, 2, _SCITAIL, fields=3),
        hub_reader(
            "allenai/scitail",
            "tsv_format",
            _hub_splits(),
            columns("premise", "hypothesis", "label"),
            _SCITAIL,
            has_b=True,
        ),
    )
)


# Commonsense suite. Locally the instruction (which lists the options) is text_a, and the answer token
# (answer1, solution2, ...) the label. From the hub the same instruction is rebuilt from the original
# columns in the LLM-Adapters wording.


def _options(
    intro: str, question: str, word: str, options: Sequence[str], sep: str = " ", end: str = "\n\n"
) -> str:
    """An LLM-Adapters multiple-choice instruction: the question, "Word1: ..." options, the answer format."""
    listed = sep.join(f"{word.capitalize()}{i}: {o}" for i, o in enumerate(options, 1))
    names = "/".join(f"{word}{i}" for i in range(1, len(options) + 1))
    return f"Please choose the correct {intro}: {question}\n\n{listed}{end}Answer format: {names}"


_QUESTION = "answer to the question"


def _keyed_choices(question: str) -> Convert:
    """ARC / OpenBookQA rows: `question` field, choices {"text": [...], "label": [...]} and an answerKey."""

    def convert(r: Any) -> tuple[str, None, str]:
        choices = r["choices"]
        answer = f"answer{choices['label'].index(r['answerKey']) + 1}"
        return _options(_QUESTION, r[question], "answer", choices["text"]), None, answer

    return convert


def _hellaswag_text(text: str) -> str:
    """The usual HellaSwag clean-up: WikiHow [title] markers become sentence breaks, other markers go."""
    return re.sub(r"\[.*?\]", "", text.strip().replace(" [title]", ". ")).replace("  ", " ")


def _hellaswag(r: Any) -> tuple[str, None, str]:
    context = _hellaswag_text(f"{r['activity_label']}: {r['ctx_a']} {r['ctx_b'].capitalize()}")
    endings = [_hellaswag_text(e) for e in r["endings"]]
    intro = "ending to complete the given sentence"
    return _options(intro, context, "ending", endings), None, f"ending{int(r['label']) + 1}"


_BOOLQ = "Please answer the following question with true or false, question: {}?\n\nAnswer format: true/false"
_BLANK = "answer to fill in the blank to complete the given sentence"
_ANSWERS = tuple(f"answer{i}" for i in range(1, 6))


def _commonsense(
    name: str, folder: str, labels: tuple[str, ...], path: str, config: str | None, convert: Convert
) -> None:
    """An LLM-Adapters commonsense task; `path`, `config` and `convert` read the original on the hub."""
    reader = json_reader(
        _files(f"commonsense/{folder}", ".json"), columns("instruction", None, "answer"), labels, has_b=False
    )
    hub = hub_reader(path, config, _hub_splits(), convert, labels, has_b=False)
    register_task(Task(name, labels, labels, ("accuracy",), "{text_a}\nAnswer:", reader, hub))


_commonsense(
    "boolq",
    "boolq",
    ("true", "false"),
    "google/boolq",
    None,
    lambda r: (_BOOLQ.format(r["question"]), None, r["answer"]),
)
_commonsense(
    "piqa",
    "piqa",
    ("solution1", "solution2"),
    "ybisk/piqa",
    None,
    lambda r: (
        _options("solution to the question", r["goal"], "solution", [r["sol1"], r["sol2"]], sep="\n\n"),
        None,
        f"solution{r['label'] + 1}",
    ),
)
_commonsense(
    "social_i_qa",
    "social_i_qa",
    _ANSWERS[:3],
    "allenai/social_i_qa",
    None,
    lambda r: (
        _options(
            _QUESTION, f"{r['context']} {r['question']}", "answer", [r["answerA"], r["answerB"], r["answerC"]]
        ),
        None,
        f"answer{r['label'].strip()}",
    ),
)
_commonsense(
    "hellaswag", "hellaswag", tuple(f"ending{i}" for i in range(1, 5)), "Rowan/hellaswag", None, _hellaswag
)
_commonsense(
    "winogrande",
    "winogrande",
    ("option1", "option2"),
    "allenai/winogrande",
    "winogrande_xl",
    lambda r: (
        _options(_BLANK, r["sentence"], "option", [r["option1"], r["option2"]], end=" "),
        None,
        f"option{r['answer']}",
    ),
)
# ARC questions have 3 to 5 options, OpenBookQA always 4.
_commonsense("arc_easy", "ARC-Easy", _ANSWERS, "allenai/ai2_arc", "ARC-Easy", _keyed_choices("question"))
_commonsense(
    "arc_challenge", "ARC-Challenge", _ANSWERS, "allenai/ai2_arc", "ARC-Challenge", _keyed_choices("question")
)
_commonsense(
    "openbookqa", "openbookqa", _ANSWERS[:4], "allenai/openbookqa", "main", _keyed_choices("question_stem")
)


def _lettered(stem: str, choices: Sequence[tuple[str, str]]) -> str:
    """A CommonsenseQA question with its lettered choices: "stem\\nA. ... B. ..."."""
    return stem + "\n" + " ".join(f"{letter}. {text}" for letter, text in choices)


_LETTERS = ("A", "B", "C", "D", "E")
register_task(
    Task(
        "commonsenseqa",
        _LETTERS,
        _LETTERS,
        ("accuracy",),
        "Question: {text_a}\nAnswer:",
        json_reader(
            _files("commonsenseqa", ".jsonl"),
            lambda r: (
                _lettered(r["question"]["stem"], [(c["label"], c["text"]) for c in r["question"]["choices"]]),
                None,
                r["answerKey"],
            ),
            _LETTERS,
            has_b=False,
        ),
        hub_reader(
            "tau/commonsense_qa",
            None,
            _hub_splits(),
            lambda r: (
                _lettered(r["question"], list(zip(r["choices"]["label"], r["choices"]["text"], strict=True))),
                None,
                r["answerKey"],
            ),
            _LETTERS,
            has_b=False,
        ),
    )
)

# The toy tasks of `rankmix quickstart` (generated, no files): sentiment, topic, negation.
for _task in synthetic_tasks():
    register_task(_task)
