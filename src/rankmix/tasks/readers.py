"""Format readers: each builds a `Reader` (data_dir, split, strict) -> (examples, rows skipped).

One generic reader per format (GLUE-style TSV, JSON / JSON lines, Hugging Face hub), parameterised
per task by its files, its columns and its label set, so that every task checks rows the same way:
a row of the wrong shape (too few fields, a missing key, an empty text) is malformed, skipped and
counted with a warning, or raised under strict=True; a label outside the task's label set is always
an error, since it means the file and the task definition disagree, and so is an option named twice in
a row of a reader told `distinct_options` (a user's file: two equal options tie). A file that is
not UTF-8 text, or that holds no rows at all, is an error naming it.
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from ..files import parse_json
from .base import Example, Reader

LAYOUT = (
    "data_dir (in the recipe, or --set data_dir=PATH) must point at a folder in the published layout, "
    "with glue/, superglue/, commonsense/, commonsenseqa/ (and scitail/) inside (README: Tasks)"
)

# One row as (text_a, text_b or None, raw label), or with a fourth item, the row's options (multiple
# choice), from a dict-like record (JSON object or hub row).
Convert = Callable[[Mapping[str, Any]], tuple[Any, ...]]
# What a row's label is: a class name or score ("label"), the index of one of its options ("choice"),
# or a target text ("text").
TARGETS = ("label", "choice", "text")


def columns(text_a: str, text_b: str | None, label: str, choices: str | None = None) -> Convert:
    """A converter taking the texts, the label (and the options) from named fields of a record."""
    if choices is None:
        return lambda row: (row[text_a], None if text_b is None else row[text_b], row[label])
    return lambda row: (row[text_a], None if text_b is None else row[text_b], row[label], row[choices])


def label_key(raw: Any) -> str:
    """The label name a stored value stands for: JSON booleans as "true"/"false", anything else as text."""
    return str(raw).lower() if isinstance(raw, bool) else str(raw)


class _Rows:
    """The examples of one source, with its malformed rows skipped and counted (or raised)."""

    def __init__(
        self,
        source: str,
        strict: bool,
        labels: tuple[str, ...],
        score_range: tuple[float, float] | None = None,
        by_index: bool = False,
        unit: str = "line",
        target: str = "label",
        distinct_options: bool = False,
    ) -> None:
        self.source, self.strict, self.labels = source, strict, labels
        self.score_range, self.by_index, self.unit, self.target = score_range, by_index, unit, target
        self.distinct_options = distinct_options
        self.examples: list[Example] = []
        self.skipped: list[tuple[int, str]] = []

    def malformed(self, line: int, why: str) -> None:
        if self.strict:
            raise ValueError(
                f"{self.source}, {self.unit} {line}: malformed row ({why}); fix the file, or load with "
                "strict=False to skip such rows"
            )
        self.skipped.append((line, why))

    def add(self, line: int, text_a: Any, text_b: Any, label: Any, has_b: bool, choices: Any = ()) -> None:
        texts = (text_a, text_b) if has_b else (text_a,)
        if not all(is_text(t) for t in texts):
            self.malformed(line, "a text field is empty or not a string")
            return
        if self.target == "choice":
            if not are_options(choices):
                self.malformed(line, "the options are not a list of at least two non-empty strings")
                return
            choices = clean_options(choices)
            if self.distinct_options and (twice := repeated_option(choices)) is not None:
                raise ValueError(
                    f"{self.source}, {self.unit} {line}: option {twice!r} appears twice, and two equal "
                    "options tie; give each option once"
                )
            label = self._choice(line, label, choices)
        elif self.target == "text":
            if not is_text(label):
                self.malformed(line, "the target text is empty or not a string")
                return
            label = label.strip()
        else:
            label = self._label(line, label)
        self.examples.append(Example(text_a.strip(), text_b.strip() if has_b else None, label, choices))

    def _choice(self, line: int, raw: Any, choices: tuple[str, ...]) -> int:
        """The index of the right option: an int, or a string of digits (0-based)."""
        index = int(raw) if isinstance(raw, str) and raw.strip().isdigit() else raw
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(choices):
            raise ValueError(
                f"{self.source}, {self.unit} {line}: answer {raw!r} is not the index (0..{len(choices) - 1}) "
                "of one of the row's options"
            )
        return index

    def _label(self, line: int, raw: Any) -> int | float:
        where = f"{self.source}, {self.unit} {line}"
        if not self.labels:
            try:
                score = float(raw)
            except (TypeError, ValueError):
                raise ValueError(f"{where}: label {raw!r} is not a number (regression task)") from None
            low, high = self.score_range or (-math.inf, math.inf)
            if not (math.isfinite(score) and low <= score <= high):
                raise ValueError(f"{where}: score {raw!r} is outside the allowed range [{low}, {high}]")
            return score
        if self.by_index and isinstance(raw, int) and not isinstance(raw, bool):
            if 0 <= raw < len(self.labels):
                return raw
            raise ValueError(f"{where}: label index {raw} is outside 0..{len(self.labels) - 1} {self.labels}")
        key = label_key(raw)
        if key not in self.labels:
            raise ValueError(f"{where}: label {key!r} is not one of the allowed labels {self.labels}")
        return self.labels.index(key)

    def result(self) -> tuple[list[Example], int]:
        """(examples, rows skipped); a source without rows is an error here, so that no caller has to
        guess which file was empty."""
        if not self.examples and not self.skipped:
            raise ValueError(
                f"{self.source} holds no data rows; add rows to it, or point the task at the right file"
            )
        if self.skipped:
            line, why = self.skipped[0]
            if not self.examples:
                raise ValueError(
                    f"{self.source}: every row is malformed ({self.unit} {line}: {why}); wrong file?"
                )
            first = f"first: {self.unit} {line}, {why}"
            warnings.warn(
                f"skipped {len(self.skipped)} malformed row(s) in {self.source} ({first}); fix them, or "
                "load with strict=True to stop at the first",
                stacklevel=2,
            )
        return self.examples, len(self.skipped)


def is_text(value: Any) -> bool:
    """What a task accepts as a text: a string that is not blank."""
    return isinstance(value, str) and bool(value.strip())


def are_options(value: Any) -> bool:
    """What a multiple-choice row accepts as its options: a list of two or more texts."""
    return isinstance(value, (list, tuple)) and len(value) >= 2 and all(map(is_text, value))


def clean_options(options: Iterable[str]) -> tuple[str, ...]:
    """A row's options as every reader (and `rankmix predict`) keeps them: stripped, since the space
    before an option is the scorer's and acc_norm counts an option's characters."""
    return tuple(option.strip() for option in options)


def repeated_option(options: Iterable[str]) -> str | None:
    """The first option a row (after `clean_options`) names twice, if any: such a row cannot be scored,
    equal options tie."""
    seen: set[str] = set()
    for option in options:
        if option in seen:
            return option
        seen.add(option)
    return None


def not_utf8(path: Path) -> ValueError:
    """The error for a data file that does not decode as UTF-8, naming the line and column of its first
    bad byte (found by decoding line by line: a newline byte is never part of a UTF-8 sequence)."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                return ValueError(
                    f"{path}, line {number}: byte 0x{raw[e.start]:02x} at column {e.start + 1} is not "
                    "UTF-8 text; save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
                )
    return ValueError(f"{path} is not UTF-8 text; save the file as UTF-8")


def described(read: Reader, source: str) -> Reader:
    """`read`, saying where it reads from (`rankmix tasks` lists it)."""
    read.source = source  # type: ignore[attr-defined]
    return read


def _folder(files: Mapping[str, str | Path]) -> str:
    """The folder (under data_dir, or absolute) that holds a task's split files."""
    parents = {str(Path(f).parent) for f in files.values()}
    return parents.pop() + "/" if len(parents) == 1 else ", ".join(str(f) for f in files.values())


def _locate(data_dir: Path, files: Mapping[str, str | Path], split: str, hint: str) -> Path:
    if split not in files:
        raise ValueError(f"no {split!r} split here; this task has {', '.join(files)}")
    path = data_dir / files[split]
    if path.is_dir():
        raise FileNotFoundError(f"{path} is a folder where the task's {split} file belongs: {hint}")
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {hint}")
    if path.stat().st_size == 0:  # before a parser reports a missing header or invalid JSON instead
        raise ValueError(
            f"{path} holds no data rows (it is empty); add rows to it, or point the task at the right file"
        )
    return path


def tsv_reader(
    files: Mapping[str, str],
    text_a: int | str,
    text_b: int | str | None,
    label: int | str,
    labels: tuple[str, ...],
    *,
    fields: int | None = None,
    score_range: tuple[float, float] | None = None,
) -> Reader:
    """GLUE-style tab-separated files (`files`: split -> path under data_dir). Columns are header names,
    or 0-based indices with `fields` (the number of fields per row) for files without a header line.
    Quoting is off: GLUE texts hold unbalanced quote characters. A UTF-8 BOM is dropped."""

    def read(data_dir: Path, split: str, strict: bool) -> tuple[list[Example], int]:
        path = _locate(data_dir, files, split, LAYOUT)
        rows = _Rows(str(path), strict, labels, score_range)
        try:
            with path.open(encoding="utf-8-sig", newline="") as f:
                lines = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
                if fields is None:
                    header = next(lines, [])
                    missing = [c for c in (text_a, text_b, label) if c is not None and c not in header]
                    if missing:
                        raise ValueError(f"{path}: header line {header} lacks the column(s) {missing}")
                    a, b, y = (None if c is None else header.index(c) for c in (text_a, text_b, label))
                    width = len(header)
                else:
                    a, b, y, width = text_a, text_b, label, fields
                for cells in lines:
                    if not cells:  # a blank line carries no row
                        continue
                    if len(cells) != width:
                        why = f"{len(cells)} tab-separated fields, expected {width}"
                        rows.malformed(lines.line_num, why)
                        continue
                    b_cell = None if b is None else cells[b]
                    rows.add(lines.line_num, cells[a], b_cell, cells[y], b is not None)
        except UnicodeDecodeError:
            raise not_utf8(path) from None
        return rows.result()

    return described(read, f"{_folder(files)} (TSV)")


def _records(path: Path, rows: _Rows) -> list[tuple[int, Any]]:
    """(line or position, record) of a JSON list (.json) or a JSON-lines file (anything else)."""
    try:
        with path.open(encoding="utf-8-sig") as f:  # a byte-order mark is not part of the first row
            if path.suffix == ".json":
                try:
                    return list(enumerate(parse_json(f.read()), 1))
                except json.JSONDecodeError as e:
                    raise ValueError(
                        f"{path}: not valid JSON ({e}); expected a JSON list of records"
                    ) from None
            records = []
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    records.append((number, parse_json(line)))
                except json.JSONDecodeError as e:
                    rows.malformed(number, f"not valid JSON: {e}")
            return records
    except UnicodeDecodeError:
        raise not_utf8(path) from None


def _convert_all(
    rows: _Rows, records: Iterable[tuple[int, Any]], convert: Convert, has_b: bool
) -> tuple[list[Example], int]:
    for number, record in records:
        try:
            text_a, text_b, label, *choices = convert(record)
        except (KeyError, TypeError, IndexError, ValueError, AttributeError) as e:
            rows.malformed(number, f"cannot read the record ({type(e).__name__}: {e})")
            continue
        rows.add(number, text_a, text_b, label, has_b, *choices)
    return rows.result()


def json_reader(
    files: Mapping[str, str | Path],
    convert: Convert,
    labels: tuple[str, ...],
    *,
    has_b: bool,
    hint: str = LAYOUT,
    target: str = "label",
    distinct_options: bool = False,
) -> Reader:
    """JSON lists (.json, numbered by position) or JSON lines (.jsonl, numbered by line); `convert` maps
    a record to (text_a, text_b, label); a record it cannot read (a missing key) is malformed. Absolute
    paths in `files` are read as they are, whatever the data_dir. `distinct_options`: a row naming an
    option twice is an error (the published files keep the few rows they have of that)."""

    def read(data_dir: Path, split: str, strict: bool) -> tuple[list[Example], int]:
        path = _locate(data_dir, files, split, hint)
        unit = "record" if path.suffix == ".json" else "line"
        rows = _Rows(str(path), strict, labels, unit=unit, target=target, distinct_options=distinct_options)
        return _convert_all(rows, _records(path, rows), convert, has_b)

    return described(read, f"{_folder(files)} (JSON)")


def hub_reader(
    path: str,
    config: str | None,
    splits: Mapping[str, str],
    convert: Convert,
    labels: tuple[str, ...],
    *,
    has_b: bool,
    target: str = "label",
) -> Reader:
    """A Hugging Face hub dataset (`splits`: our split -> the hub's). Integer labels are indices into
    `labels` (the hub's ClassLabel order), strings are label names. Needs the optional `datasets`."""

    def read(_: Path, split: str, strict: bool) -> tuple[list[Example], int]:
        try:
            import datasets
        except ImportError:
            raise ModuleNotFoundError(
                f"loading {path} from the Hugging Face hub needs the `datasets` package: "
                f"pip install datasets (or pass a local folder: {LAYOUT})"
            ) from None
        hub_split = splits[split]
        where = f"{path}[{config}]:{hub_split}"
        rows = _Rows(where, strict, labels, by_index=True, unit="row", target=target)
        try:
            dataset = datasets.load_dataset(path, config, split=hub_split)
        except Exception as e:  # offline, unknown id, no such config or split
            raise ValueError(
                f"could not load {path} ({config}, split {hub_split}) from the Hugging Face hub "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); pass a local folder "
                f"instead: {LAYOUT}"
            ) from None
        records = enumerate(dataset, 1)
        return _convert_all(rows, records, convert, has_b)

    return described(read, f"{path}" + (f" ({config})" if config else ""))
