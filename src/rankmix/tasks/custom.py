"""User tasks from a YAML file over JSON-lines data, so a new task needs no code:

    name: my_sentiment
    kind: classification                        # (default) | regression | multiple_choice | generation
    data: {train: train.jsonl, dev: dev.jsonl}   # paths relative to the YAML file
    text_fields: [review]                       # one or two keys -> text_a, text_b
    label_field: label
    labels: [neg, pos]                          # omit (or regression: true) for a regression task
    label_words: [negative, positive]           # optional, defaults to labels
    metrics: [accuracy]                         # default accuracy (pearson + spearman for regression)
    template: "Review: {text_a}\\nSentiment:"    # optional

A multiple-choice task names `choices_field` (a JSON list of option strings per row) and
`answer_field` (the index of the right option); a generation task `answer_field` (the target text).
Neither has labels. Every key is checked when the file is loaded, before any long work; the template
of a multiple-choice or generation task must hold {text_a} (every model reads such a row through its
prompt), and a multiple-choice row may not name an option twice (equal options tie). A generation task
whose targets span lines (a target in its data files holds a newline) is answered by all the text a
model generates, not cut at its first line. The data files are named by the YAML, so the task reads
them whatever data_dir a recipe passes (and also when it passes none).
"""

from __future__ import annotations

import string
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..files import check_name, read_utf8, read_yaml
from ..hints import did_you_mean
from .base import Reader, Task
from .kinds import KINDS, Generation, TaskKind
from .readers import columns, json_reader, label_key
from .registry import register_task

_REQUIRED = ("name", "data", "text_fields")
_KEYS = (
    *_REQUIRED,
    "kind",
    "label_field",
    "labels",
    "label_words",
    "regression",
    "choices_field",
    "answer_field",
    "metrics",
    "template",
)
# the keys of each kind beyond the common ones, and how many of them (the first) it requires
_KIND_KEYS = {
    "classification": (("label_field", "labels", "label_words"), 1),
    "regression": (("label_field", "regression"), 1),
    "multiple_choice": (("choices_field", "answer_field"), 2),
    "generation": (("answer_field",), 1),
}


def _strings(value: Any, key: str, where: str) -> tuple[str, ...]:
    """A non-empty list of non-empty strings (a single string is a list of one)."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) and v for v in items):
        raise ValueError(f"{where}: {key} must be a non-empty list of strings, got {value!r}")
    return tuple(items)


def _check_keys(spec: dict[str, Any], where: str) -> None:
    for key in spec:
        if key not in _KEYS:
            hint = did_you_mean(key, _KEYS)
            raise ValueError(f"{where}: unknown key {key!r}{hint} Allowed keys: {', '.join(_KEYS)}")
    missing = [k for k in _REQUIRED if k not in spec]
    if missing:
        raise ValueError(f"{where}: missing required key(s) {', '.join(missing)}")


def _kind(spec: dict[str, Any], where: str) -> TaskKind:
    """The kind a spec asks for (`kind`, or for a spec of today's keys: regression when it says so or
    has no labels), with its keys checked."""
    default = "regression" if spec.get("regression", "labels" not in spec) is True else "classification"
    name = spec.get("kind", default)
    if not isinstance(name, str) or name not in KINDS:
        hint = did_you_mean(str(name), KINDS) or "."
        raise ValueError(f"{where}: unknown kind {name!r}{hint} Kinds: {', '.join(KINDS)}")
    own, required = _KIND_KEYS[name]
    other = [k for k in spec if k in {x for keys, _ in _KIND_KEYS.values() for x in keys} - set(own)]
    if other and not (name == "classification" and other == ["regression"] and spec["regression"] is False):
        raise ValueError(f"{where}: a {name} task takes no {', '.join(other)}; its keys are {', '.join(own)}")
    if name == "regression" and spec.get("regression", True) is not True:
        raise ValueError(f"{where}: kind regression with regression: false; drop one of them")
    missing = [k for k in own[:required] if k not in spec]
    if missing:
        raise ValueError(f"{where}: a {name} task needs {' and '.join(missing)}")
    for key in ("label_field", "choices_field", "answer_field"):
        if key in spec and (not isinstance(spec[key], str) or not spec[key]):
            raise ValueError(f"{where}: {key} must be one key (a string), got {spec[key]!r}")
    return KINDS[name]


def _data_files(data: Any, folder: Path, where: str) -> dict[str, Path]:
    if not isinstance(data, dict) or not data or not set(data) <= {"train", "dev"}:
        raise ValueError(f"{where}: data must map train and/or dev to a file, got {data!r}")
    files = {split: folder / str(name) for split, name in data.items()}
    for split, path in files.items():
        if not path.is_file():
            what = "is a folder, not a file" if path.is_dir() else "does not exist"
            raise FileNotFoundError(
                f"{where}: the {split} file {path} {what} (paths are relative to the YAML)"
            )
        if path.stat().st_size == 0:
            raise ValueError(
                f"{where}: the {split} file {path} is empty; write one JSON record per line into it "
                "(or name another file)"
            )
    return files


def _labels(spec: dict[str, Any], kind: TaskKind, where: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(labels, label_words) of a spec: those of a classification task; other kinds have none."""
    regression = spec.get("regression", False)
    if not isinstance(regression, bool):
        raise ValueError(f"{where}: regression must be true or false, got {regression!r}")
    if kind is not KINDS["classification"]:
        return (), ()
    if "labels" not in spec:
        raise ValueError(f"{where}: a classification task needs labels (or set regression: true)")
    raw = spec["labels"]
    if not isinstance(raw, list) or len(raw) < 2:
        raise ValueError(f"{where}: labels must be a list of at least two class names, got {raw!r}")
    labels = tuple(label_key(v) for v in raw)
    if len(set(labels)) != len(labels):
        raise ValueError(f"{where}: labels {labels} repeat a name")
    words = _strings(spec.get("label_words", list(labels)), "label_words", where)
    if len(words) != len(labels):
        raise ValueError(f"{where}: {len(words)} label_words for {len(labels)} labels")
    return labels, words


def _metrics(spec: dict[str, Any], labels: tuple[str, ...], kind: TaskKind, where: str) -> tuple[str, ...]:
    metrics = _strings(spec.get("metrics", list(kind.default_metrics)), "metrics", where)
    kind.check_metrics(metrics, where)
    for metric in metrics:
        if metric == "f1" and len(labels) != 2:
            raise ValueError(f"{where}: f1 needs two labels (the second is the positive class), got {labels}")
    return metrics


def _template(spec: dict[str, Any], pair: bool, kind: TaskKind, where: str) -> str:
    template = spec.get("template", "{text_a}\n{text_b}\nAnswer:" if pair else "{text_a}\nAnswer:")
    if not isinstance(template, str):
        raise ValueError(f"{where}: template must be a string, got {template!r}")
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as e:
        raise ValueError(f"{where}: template {template!r} is not a valid format string ({e})") from None
    allowed = {"text_a", "text_b"} if pair else {"text_a"}
    if not fields <= allowed:
        raise ValueError(
            f"{where}: template uses {sorted(fields - allowed)}; it may use only {sorted(allowed)}"
        )
    if (kind.needs_choices or kind.generates) and "text_a" not in fields:
        raise ValueError(
            f"{where}: template {template!r} lacks {{text_a}}, so every row of this {kind.name} task "
            "would get the same prompt; put {text_a} where the row's text goes"
        )
    return template


def _spans_lines(reader: Reader, splits: Iterable[str]) -> bool:
    """Whether a target text of the task's data holds a newline, its rows read as training reads them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # training warns of the rows it skips, when it reads them
        return any("\n" in str(e.label) for split in splits for e in reader(Path(), split, False)[0])


_LOADED: dict[tuple[Path, str], Task] = {}  # (file, its text): loading it again returns the same task


def is_custom(task: Task) -> bool:
    """Whether `task` came from a custom task file: then its text_fields are exactly the keys its reader
    requires of a row (both, where it names two, whether or not its template shows text_b)."""
    return any(t.name == task.name for t in _LOADED.values())


def load_custom_task(path: str | Path) -> Task:
    """Read, check and register the task a YAML file describes, and return it (once per file: loading
    the same file again returns the registered task)."""
    path = Path(path)
    where = str(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "not found"
        raise FileNotFoundError(
            f"custom task file {path} {what}; name the task's YAML file in the recipe's custom_tasks "
            "(or --set custom_tasks=[path/to/task.yaml])"
        )
    text = read_utf8(path, "custom task file")
    key = (path.resolve(), text)
    if key in _LOADED:
        return _LOADED[key]
    spec = read_yaml(text, f"custom task file {where}")
    if spec is None:
        raise ValueError(
            f"custom task file {where} holds no settings; write them into it "
            f"({', '.join(f'{k}: ...' for k in _REQUIRED)}, one per line)"
        )
    if not isinstance(spec, dict):
        raise ValueError(
            f"custom task file {where} holds a YAML {type(spec).__name__}, not a mapping of task settings; "
            f"write it as `key: value` lines ({', '.join(_REQUIRED)}, ...)"
        )
    _check_keys(spec, where)
    name = check_name(spec["name"], f"{where}: task name")
    files = _data_files(spec["data"], path.parent.resolve(), where)
    text_fields = _strings(spec["text_fields"], "text_fields", where)
    if len(text_fields) > 2:
        raise ValueError(
            f"{where}: text_fields takes one or two keys (text_a, text_b), got {list(text_fields)}"
        )
    kind = _kind(spec, where)
    labels, words = _labels(spec, kind, where)
    metrics = _metrics(spec, labels, kind, where)
    pair = len(text_fields) == 2
    template = _template(spec, pair, kind, where)
    choices = spec.get("choices_field")
    convert = columns(
        text_fields[0],
        text_fields[1] if pair else None,
        spec.get("label_field", spec.get("answer_field")),
        choices,
    )
    target = "choice" if choices else "text" if "answer_field" in spec else "label"
    reader = json_reader(
        files, convert, labels, has_b=pair, hint=f"named in {where}", target=target, distinct_options=True
    )
    if kind.generates:  # the stop rule of its answers, from its targets
        kind = Generation(multiline=_spans_lines(reader, files))
    task = Task(
        name, labels, words, metrics, template, reader, reader, kind, tuple(text_fields), choices or "choices"
    )
    task = register_task(task)
    _LOADED[key] = task
    return task
