"""Property-based tests of bad input: every malformed recipe, `--set` override or custom task file ends in
a ValueError (or FileNotFoundError) with a message, before any model or data is loaded, never in an
unrelated exception."""

from __future__ import annotations

import warnings
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rankmix.recipes.run_config import load_run_config
from rankmix.tasks import get_task, load_custom_task

USER_ERRORS = (ValueError, FileNotFoundError)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["more", "lora", "hilo", "mola", "moelora", "multilora", "2468", "all-linear", "rte"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)
TRAIN_KEYS = [
    "steps",
    "batch_size",
    "lr",
    "head_lr",
    "warmup_steps",
    "eval_every",
    "max_length",
    "seed",
    "sampling",
    "batch_mode",
    "max_train_examples",
    "max_grad_norm",
    "checkpoint_every",
    "data_seed",
]
METHOD_KEYS = [
    "method",
    "r",
    "alpha",
    "max_rank",
    "experts",
    "ranks",
    "top_k",
    "top_p",
    "dropout",
    "target_modules",
    "linear_scaling",
    "scaling",
    "balance_weight",
    "contrastive_weight",
]
GOOD = {
    "model": "minilm",
    "tasks": ["rte", "cola"],
    "method": {"method": "more", "max_rank": 4},
    "train": {"steps": 4, "batch_size": 2},
}


def _mutate(data: dict, section: str | None, key: str, value) -> dict:
    out = yaml.safe_load(yaml.safe_dump(GOOD))
    target = out if section is None else out.setdefault(section, {})
    if isinstance(target, dict):
        target[key] = value
    return out


def _load(tmp_path: Path, text: str, overrides: list[str] | None = None) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_run_config(path, overrides)
    except USER_ERRORS as e:
        assert str(e), "an error without a message"


@FUZZ
@given(
    section=st.sampled_from([None, "train", "method"]),
    key=st.sampled_from(["model", "tasks", "method", "train", "eval_mode", "output_dir", "data_dir"])
    | st.sampled_from(TRAIN_KEYS + METHOD_KEYS)
    | st.text(max_size=8),
    value=values,
)
def test_recipe_values(tmp_path, section, key, value):
    _load(tmp_path, yaml.safe_dump(_mutate(GOOD, section, key, value)))


@FUZZ
@given(text=st.text(max_size=200))
def test_recipe_text(tmp_path, text):
    _load(tmp_path, text)


@FUZZ
@given(
    key=st.sampled_from(
        ["train", "method", "tasks", "model"]
        + [f"train.{k}" for k in TRAIN_KEYS]
        + [f"method.{k}" for k in METHOD_KEYS]
    )
    | st.text(max_size=10),
    raw=st.text(max_size=20),
)
def test_set_overrides(tmp_path, key, raw):
    _load(tmp_path, yaml.safe_dump(GOOD), [f"{key}={raw}"])


TASK = {
    "name": "fuzzed",
    "data": {"train": "train.jsonl", "dev": "dev.jsonl"},
    "text_fields": ["text"],
    "label_field": "label",
    "labels": ["no", "yes"],
}
TASK_KEYS = [*TASK, "label_words", "metrics", "template", "regression", "score_range"]


@FUZZ
@given(key=st.sampled_from(TASK_KEYS) | st.text(max_size=8), value=values)
def test_custom_task_files(tmp_path, key, value):
    for split in ("train", "dev"):
        (tmp_path / f"{split}.jsonl").write_text('{"text": "a", "label": "yes"}\n')
    spec = {**TASK, key: value}
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(spec).replace("fuzzed", f"fuzzed_{abs(hash(str(spec)))}"))
    try:
        load_custom_task(path)
    except USER_ERRORS as e:
        assert str(e)


@FUZZ
@given(
    rows=st.lists(
        st.lists(
            st.text(
                alphabet=st.characters(blacklist_characters="\t\n\r", blacklist_categories=("Cs",)),
                max_size=8,
            ),
            max_size=5,
        ),
        max_size=6,
    ),
    strict=st.booleans(),
)
def test_data_rows(tmp_path, rows, strict):
    """RTE's TSV with arbitrary rows: malformed ones are skipped with a warning (strict: a ValueError
    naming the file and line), never an unrelated exception."""
    folder = tmp_path / "glue" / "RTE"
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["index\tsentence1\tsentence2\tlabel", *("\t".join(row) for row in rows)]
    (folder / "train.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            examples, skipped = get_task("rte").load("train", tmp_path, strict=strict)
        assert len(examples) + skipped == sum(1 for row in rows if "\t".join(row).strip())  # blank: none
    except USER_ERRORS as e:
        assert str(e)
