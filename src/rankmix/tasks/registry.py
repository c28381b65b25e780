"""The built-in tasks (GLUE, SuperGLUE BoolQ and CB, SciTail, the LLM-Adapters commonsense suite,
CommonsenseQA) and the name -> Task registry that recipes and configs look tasks up in.

Each task reads the published local layout (see shared/data/README.md) and, without a data_dir, the
Hugging Face hub ("dev" is then the hub's whole validation split, "train" its train split). Label
orders follow the hub's ClassLabel order, so hub label indices need no mapping.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from ..hints import did_you_mean
from .base import Task
from .kinds import CLASSIFICATION, REGRESSION, MultipleChoice, TaskKind
from .readers import Convert, columns, hub_reader, json_reader, tsv_reader
from .synthetic import subject_task, synthetic_tasks

MULTIPLE_CHOICE = MultipleChoice()

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
    kind = REGRESSION if score_range else CLASSIFICATION
    register_task(Task(name, labels, label_words, metrics, template, reader, hub_read, kind))


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


# Commonsense suite, as multiple-choice tasks (each row its own options, scored in cloze form as
# lm-evaluation-harness does) and, as `<task>_labels`, in the LLM-Adapters label-word format that
# MoE-PEFT and the papers' tables use: the instruction lists the options and the model answers a word
# (answer1, solution2, ...). The local files hold only the LLM-Adapters instruction, from which the
# multiple-choice tasks read the question and the options back; the hub holds the original columns.


def _options(
    intro: str, question: str, word: str, options: Sequence[str], sep: str = " ", end: str = "\n\n"
) -> str:
    """An LLM-Adapters multiple-choice instruction: the question, "Word1: ..." options, the answer format."""
    listed = sep.join(f"{word.capitalize()}{i}: {o}" for i, o in enumerate(options, 1))
    names = "/".join(f"{word}{i}" for i in range(1, len(options) + 1))
    return f"Please choose the correct {intro}: {question}\n\n{listed}{end}Answer format: {names}"


def _parse_options(instruction: str, intro: str, word: str) -> tuple[str, list[str]]:
    """(question, options) of an instruction `_options` wrote: the inverse of `_options`."""
    head = f"Please choose the correct {intro}: "
    if not instruction.startswith(head) or "Answer format: " not in instruction:
        raise ValueError(f"not an LLM-Adapters instruction for {word}s")
    body, _, names = instruction[len(head) :].rpartition("Answer format: ")
    count = len(names.split("/"))
    marks = [f"{word.capitalize()}{i}: " for i in range(1, count + 1)]
    starts = [body.index("\n\n" + marks[0])]
    for mark in marks[1:]:
        starts.append(body.index(mark, starts[-1] + len(marks[0])))
    ends = [*starts[1:], len(body)]
    options = [
        body[s:e].strip().removeprefix(mark).strip() for s, e, mark in zip(starts, ends, marks, strict=True)
    ]
    return body[: starts[0]].strip(), options


def _answer_index(answer: str, word: str) -> int:
    """0-based index of an LLM-Adapters answer word: "answer3" -> 2."""
    return int(answer.removeprefix(word)) - 1


def _local_choices(intro: str, word: str) -> Convert:
    def convert(r: Any) -> tuple[str, None, int, list[str]]:
        question, options = _parse_options(r["instruction"], intro, word)
        return question, None, _answer_index(r["answer"], word), options

    return convert


_QUESTION = "answer to the question"
_BOOLQ = "Please answer the following question with true or false, question: {}?\n\nAnswer format: true/false"
_BLANK = "answer to fill in the blank to complete the given sentence"
_ENDING = "ending to complete the given sentence"
_ANSWERS = tuple(f"answer{i}" for i in range(1, 6))


def _keyed(r: Any, question: str) -> tuple[str, list[str], int]:
    """ARC / OpenBookQA rows: (question, option texts, index of the answerKey)."""
    choices = r["choices"]
    return r[question], choices["text"], choices["label"].index(r["answerKey"])


def _hellaswag_text(text: str) -> str:
    """The usual HellaSwag clean-up: WikiHow [title] markers become sentence breaks, other markers go."""
    return re.sub(r"\[.*?\]", "", text.strip().replace(" [title]", ". ")).replace("  ", " ")


def _hellaswag(r: Any) -> tuple[str, list[str], int]:
    context = _hellaswag_text(f"{r['activity_label']}: {r['ctx_a']} {r['ctx_b'].capitalize()}")
    return context, [_hellaswag_text(e) for e in r["endings"]], int(r["label"])


def _boolq_local(r: Any) -> tuple[str, None, int, list[str]]:
    question = r["instruction"].removeprefix(_BOOLQ.split("{}")[0]).rpartition("?")[0]
    return question, None, ("false", "true").index(r["answer"]), ["no", "yes"]


def _as_mc(read: Callable[[Any], tuple[str, list[str], int]]) -> Convert:
    def convert(r: Any) -> tuple[str, None, int, list[str]]:
        question, options, index = read(r)
        return question, None, index, options

    return convert


def _commonsense(
    name: str,
    folder: str,
    hub: tuple[str, str | None],
    template: str,
    local: Convert,
    original: Callable[[Any], tuple[str, list[str], int]],
    labels: tuple[str, ...],
    instruction: Callable[[str, list[str]], str],
    answer: Callable[[int], str],
    kind: TaskKind = MULTIPLE_CHOICE,
) -> None:
    """A commonsense task `name` (multiple choice) and its label-word twin `name`_labels, from the
    LLM-Adapters files under commonsense/`folder` or the original dataset `hub` (path, config), whose
    rows `original` reads as (question, options, answer index). The twin's `instruction` lists the
    options; it answers `answer(index)`, one of `labels`."""
    files = _files(f"commonsense/{folder}", ".json")

    def words(r: Any) -> tuple[str, None, str]:
        question, options, index = original(r)
        return instruction(question, options), None, answer(index)

    mc_local = json_reader(files, local, (), has_b=False, target="choice")
    mc_hub = hub_reader(*hub, _hub_splits(), _as_mc(original), (), has_b=False, target="choice")
    register_task(Task(name, (), (), ("acc", "acc_norm"), template, mc_local, mc_hub, kind))
    twin = json_reader(files, columns("instruction", None, "answer"), labels, has_b=False)
    twin_hub = hub_reader(*hub, _hub_splits(), words, labels, has_b=False)
    register_task(Task(f"{name}_labels", labels, labels, ("accuracy",), "{text_a}\nAnswer:", twin, twin_hub))


def _listed(intro: str, word: str, sep: str = " ", end: str = "\n\n"):
    """The twin's instruction and answer word for options named `word`1, `word`2, ..."""
    return {
        "instruction": lambda q, options: _options(intro, q, word, options, sep=sep, end=end),
        "answer": lambda i: f"{word}{i + 1}",
    }


_commonsense(
    "boolq",
    "boolq",
    ("google/boolq", None),
    "Question: {text_a}?\nAnswer:",
    _boolq_local,
    lambda r: (r["question"], ["no", "yes"], int(r["answer"])),
    ("true", "false"),
    instruction=lambda q, _: _BOOLQ.format(q),
    answer=lambda i: ("false", "true")[i],
)
_commonsense(
    "piqa",
    "piqa",
    ("ybisk/piqa", None),
    "Question: {text_a}\nAnswer:",
    _local_choices("solution to the question", "solution"),
    lambda r: (r["goal"], [r["sol1"], r["sol2"]], r["label"]),
    ("solution1", "solution2"),
    **_listed("solution to the question", "solution", sep="\n\n"),
)
_commonsense(
    "social_i_qa",
    "social_i_qa",
    ("allenai/social_i_qa", None),
    "Q: {text_a}\nA:",
    _local_choices(_QUESTION, "answer"),
    lambda r: (
        f"{r['context']} {r['question']}",
        [r["answerA"], r["answerB"], r["answerC"]],
        int(r["label"]) - 1,
    ),
    _ANSWERS[:3],
    **_listed(_QUESTION, "answer"),
)
_commonsense(
    "hellaswag",
    "hellaswag",
    ("Rowan/hellaswag", None),
    "{text_a}",
    _local_choices(_ENDING, "ending"),
    _hellaswag,
    tuple(f"ending{i}" for i in range(1, 5)),
    **_listed(_ENDING, "ending"),
)
_commonsense(
    "winogrande",
    "winogrande",
    ("allenai/winogrande", "winogrande_xl"),
    "{text_a}",
    _local_choices(_BLANK, "option"),
    lambda r: (r["sentence"], [r["option1"], r["option2"]], int(r["answer"]) - 1),
    ("option1", "option2"),
    **_listed(_BLANK, "option", end=" "),
    kind=MultipleChoice(fill_blank=True),
)
# ARC questions have 3 to 5 options, OpenBookQA always 4.
for _name, _config in (("arc_easy", "ARC-Easy"), ("arc_challenge", "ARC-Challenge")):
    _commonsense(
        _name,
        _config,
        ("allenai/ai2_arc", _config),
        "Question: {text_a}\nAnswer:",
        _local_choices(_QUESTION, "answer"),
        lambda r: _keyed(r, "question"),
        _ANSWERS,
        **_listed(_QUESTION, "answer"),
    )
_commonsense(
    "openbookqa",
    "openbookqa",
    ("allenai/openbookqa", "main"),
    "{text_a}",
    _local_choices(_QUESTION, "answer"),
    lambda r: _keyed(r, "question_stem"),
    _ANSWERS[:4],
    **_listed(_QUESTION, "answer"),
)


def _lettered(stem: str, choices: Sequence[tuple[str, str]]) -> str:
    """A CommonsenseQA question with its lettered choices: "stem\\nA. ... B. ..."."""
    return stem + "\n" + " ".join(f"{letter}. {text}" for letter, text in choices)


def _csqa(stem: str, labels: Sequence[str], texts: Sequence[str], key: str) -> tuple[str, list[str], int]:
    return stem, list(texts), list(labels).index(key)


def _csqa_local(r: Any) -> tuple[str, list[str], int]:
    choices = r["question"]["choices"]
    return _csqa(
        r["question"]["stem"], [c["label"] for c in choices], [c["text"] for c in choices], r["answerKey"]
    )


def _csqa_hub(r: Any) -> tuple[str, list[str], int]:
    return _csqa(r["question"], r["choices"]["label"], r["choices"]["text"], r["answerKey"])


# CommonsenseQA: multiple choice over the option texts (lm-evaluation-harness's commonsense_qa scores
# the letters A-E instead, which a small model cannot use), and the lettered twin.
_LETTERS = ("A", "B", "C", "D", "E")
_CSQA_FILES = _files("commonsenseqa", ".jsonl")


def _as_letters(read: Callable[[Any], tuple[str, list[str], int]]) -> Convert:
    def convert(r: Any) -> tuple[str, None, str]:
        question, options, index = read(r)
        return _lettered(question, list(zip(_LETTERS, options, strict=False))), None, _LETTERS[index]

    return convert


register_task(
    Task(
        "commonsenseqa",
        (),
        (),
        ("acc", "acc_norm"),
        "Question: {text_a}\nAnswer:",
        json_reader(_CSQA_FILES, _as_mc(_csqa_local), (), has_b=False, target="choice"),
        hub_reader(
            "tau/commonsense_qa", None, _hub_splits(), _as_mc(_csqa_hub), (), has_b=False, target="choice"
        ),
        MULTIPLE_CHOICE,
    )
)
register_task(
    Task(
        "commonsenseqa_labels",
        _LETTERS,
        _LETTERS,
        ("accuracy",),
        "Question: {text_a}\nAnswer:",
        json_reader(_CSQA_FILES, _as_letters(_csqa_local), _LETTERS, has_b=False),
        hub_reader("tau/commonsense_qa", None, _hub_splits(), _as_letters(_csqa_hub), _LETTERS, has_b=False),
    )
)

# The toy tasks of `rankmix quickstart` (generated, no files): sentiment, topic, negation.
for _task in (*synthetic_tasks(), subject_task()):
    register_task(_task)
