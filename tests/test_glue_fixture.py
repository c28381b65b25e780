"""The generated GLUE data of the end-to-end tests (tests/glue_fixture.py): the project's readers take it
as they take the published files, it is the same bytes on every run, and its labels follow from the text,
so that a test training on it trains on something learnable."""

from __future__ import annotations

from pathlib import Path

import pytest

from glue_fixture import SIZES, TASKS, write_glue_fixture
from rankmix.tasks import get_task

NAMES = {"RTE": "rte", "CoLA": "cola", "STS-B": "stsb", "MRPC": "mrpc"}


def test_same_bytes_every_time(glue_data, tmp_path):
    again = write_glue_fixture(tmp_path)
    files = sorted(p.relative_to(glue_data) for p in glue_data.rglob("*.tsv"))
    assert files == sorted(p.relative_to(again) for p in again.rglob("*.tsv"))
    assert files == [Path("glue", f, f"{s}.tsv") for f in sorted(TASKS) for s in sorted(SIZES)]
    for rel in files:
        assert (again / rel).read_bytes() == (glue_data / rel).read_bytes(), rel


@pytest.mark.parametrize("folder", sorted(NAMES))
@pytest.mark.parametrize("split", sorted(SIZES))
def test_readers_take_every_row_and_labels_follow_the_text(glue_data, folder, split):
    task = get_task(NAMES[folder])
    examples, skipped = task.load(split, glue_data, strict=True)
    assert skipped == 0 and len(examples) == SIZES[split]
    labels = {e.label for e in examples}
    if task.kind.name == "regression":
        assert all(0.0 <= y <= 5.0 for y in labels) and len(labels) >= 4
    else:
        assert task.kind.name == "classification" and labels == set(range(len(task.labels)))
    seen: dict[tuple[str, str | None], int | float] = {}
    for e in examples:  # one text, one label: nothing contradicts itself
        assert seen.setdefault((e.text_a, e.text_b), e.label) == e.label


def test_published_layout_quirks(glue_data):
    """CoLA has no header line and four fields; MRPC starts with a UTF-8 BOM; the others do not."""
    cola = (glue_data / "glue" / "CoLA" / "train.tsv").read_text(encoding="utf-8").splitlines()
    assert all(len(line.split("\t")) == 4 and line.split("\t")[1] in ("0", "1") for line in cola)
    for folder in TASKS:
        raw = (glue_data / "glue" / folder / "dev.tsv").read_bytes()
        assert raw.startswith(b"\xef\xbb\xbf") == (folder == "MRPC")
