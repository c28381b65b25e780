"""Task registry: the built-in tasks on the real published data (read-only, skipped when absent), their
quirks (QQP's malformed row, MRPC's BOM and quotes, STS-B scores), errors, hub readers and user tasks
(every kind: classification, regression, multiple choice, generation).

Expected numbers come from COUNTS.tsv or from an independent, simple parse of the raw files here."""

from __future__ import annotations

import json
import random
import re
import sys
import types
import warnings
from collections import Counter
from pathlib import Path

import pytest

from rankmix.tasks import Example, get_task, load_custom_task, register_task, task_names
from rankmix.tasks.kinds import Choice

DATA = Path(__file__).parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"benchmark data not found at {DATA}")

# (benchmark, task) of COUNTS.tsv -> (our task name, its folder under DATA, file extension).
PUBLISHED = {
    ("glue", "CoLA"): ("cola", "glue/CoLA", ".tsv"),
    ("glue", "SST-2"): ("sst2", "glue/SST-2", ".tsv"),
    ("glue", "MRPC"): ("mrpc", "glue/MRPC", ".tsv"),
    ("glue", "STS-B"): ("stsb", "glue/STS-B", ".tsv"),
    ("glue", "RTE"): ("rte", "glue/RTE", ".tsv"),
    ("glue", "WNLI"): ("wnli", "glue/WNLI", ".tsv"),
    ("glue", "QNLI"): ("qnli", "glue/QNLI", ".tsv"),
    ("glue", "QQP"): ("qqp", "glue/QQP", ".tsv"),
    ("superglue", "BoolQ"): ("superglue_boolq", "superglue/BoolQ", ".jsonl"),
    ("superglue", "CB"): ("cb", "superglue/CB", ".jsonl"),
    ("commonsense", "ARC-Challenge"): ("arc_challenge", "commonsense/ARC-Challenge", ".json"),
    ("commonsense", "ARC-Easy"): ("arc_easy", "commonsense/ARC-Easy", ".json"),
    ("commonsense", "openbookqa"): ("openbookqa", "commonsense/openbookqa", ".json"),
    ("commonsense", "boolq"): ("boolq", "commonsense/boolq", ".json"),
    ("commonsense", "piqa"): ("piqa", "commonsense/piqa", ".json"),
    ("commonsense", "social_i_qa"): ("social_i_qa", "commonsense/social_i_qa", ".json"),
    ("commonsense", "winogrande"): ("winogrande", "commonsense/winogrande", ".json"),
    ("commonsense", "hellaswag"): ("hellaswag", "commonsense/hellaswag", ".json"),
    ("commonsenseqa", "CSQA"): ("commonsenseqa", "commonsenseqa", ".jsonl"),
}
# The commonsense suite: multiple-choice tasks that read their options out of the LLM-Adapters
# instruction, each with a label-word twin `<name>_labels` over the same files (the published format).
MULTIPLE_CHOICE = {
    "boolq", "piqa", "social_i_qa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa",
    "commonsenseqa",
}  # fmt: skip
TWINS = {f"{name}_labels": name for name in MULTIPLE_CHOICE}
# The twins' label sets as the LLM-Adapters answer words spell them (the order their indices use).
TWIN_LABELS = {
    "boolq_labels": ("true", "false"),
    "piqa_labels": ("solution1", "solution2"),
    "social_i_qa_labels": ("answer1", "answer2", "answer3"),
    "hellaswag_labels": ("ending1", "ending2", "ending3", "ending4"),
    "winogrande_labels": ("option1", "option2"),
    "arc_easy_labels": ("answer1", "answer2", "answer3", "answer4", "answer5"),
    "arc_challenge_labels": ("answer1", "answer2", "answer3", "answer4", "answer5"),
    "openbookqa_labels": ("answer1", "answer2", "answer3", "answer4"),
    "commonsenseqa_labels": ("A", "B", "C", "D", "E"),
}
FILES = {name: (folder, ext) for name, folder, ext in PUBLISHED.values()}
FILES |= {twin: FILES[name] for twin, name in TWINS.items()}
# Column of the label in the GLUE TSVs (README: CoLA and QQP have no header line).
TSV_LABEL_COLUMN = {"cola": 1, "sst2": -1, "mrpc": 0, "rte": -1, "wnli": -1, "qnli": -1, "qqp": -1}
HEADERLESS = {"cola", "qqp"}


def kind_of(name: str) -> str:
    return get_task(name).kind.name


def counts_rows() -> list[list[str]]:
    """The rows of COUNTS.tsv for the local data folder (none without the data)."""
    path = DATA / "COUNTS.tsv"
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [row for row in (line.split("\t") for line in lines[1:]) if row[4] == "data"]


COUNTS = {(PUBLISHED[b, t][0], split): int(n) for b, t, split, n, _ in counts_rows() if (b, t) in PUBLISHED}
COUNTS |= {(twin, split): COUNTS[name, split] for twin, name in TWINS.items() for split in ("train", "dev")
           if (name, split) in COUNTS}  # fmt: skip


def path_of(name: str, split: str) -> Path:
    folder, ext = FILES[name]
    return DATA / folder / f"{split}{ext}"


def tsv_lines(name: str, split: str) -> list[str]:
    """Data lines of a TSV (header dropped), with no csv module: split on newlines only."""
    lines = path_of(name, split).read_text(encoding="utf-8").split("\n")
    lines = [line for line in lines if line]
    return lines if name in HEADERLESS else lines[1:]


def malformed_lines(name: str, split: str) -> list[int]:
    """1-based file line numbers of TSV rows whose number of tabs differs from the file's usual one."""
    lines = path_of(name, split).read_text(encoding="utf-8").split("\n")
    tabs = Counter(line.count("\t") for line in lines if line).most_common(1)[0][0]
    return [i for i, line in enumerate(lines, 1) if line and line.count("\t") != tabs]


def raw_records(name: str, split: str) -> list[dict]:
    path = path_of(name, split)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def raw_labels(name: str, split: str) -> list[str]:
    """The label names of a split's well-formed rows, in file order, read straight from the file."""
    if name in TSV_LABEL_COLUMN:
        lines = tsv_lines(name, split)
        tabs = Counter(line.count("\t") for line in lines).most_common(1)[0][0]
        return [line.split("\t")[TSV_LABEL_COLUMN[name]] for line in lines if line.count("\t") == tabs]
    key = {"superglue_boolq": "label", "cb": "label", "commonsenseqa_labels": "answerKey"}.get(name, "answer")
    return [str(r[key]) for r in raw_records(name, split)]


def raw_answers(name: str, split: str) -> list[tuple[int, int]]:
    """(index of the right option, number of options) of each row of a multiple-choice task, read from
    the raw file: the number of the LLM-Adapters answer word minus 1 and the number of words its
    "Answer format: a1/a2/..." line lists; BoolQ's false/true as no/yes; CommonsenseQA's answerKey
    among the row's choice labels."""
    out = []
    for r in raw_records(name, split):
        if name == "commonsenseqa":
            letters = [c["label"] for c in r["question"]["choices"]]
            out.append((letters.index(r["answerKey"]), len(letters)))
        elif name == "boolq":
            out.append(({"false": 0, "true": 1}[r["answer"]], 2))
        else:
            number = int(re.fullmatch(r"[a-z]+(\d+)", r["answer"]).group(1))
            listed = r["instruction"].rsplit("Answer format: ", 1)[1].strip().split("/")
            out.append((number - 1, len(listed)))
    return out


@pytest.fixture(scope="session")
def loaded():
    """load(name, split) -> (examples, skipped, warning messages), each split read once per session."""
    if not DATA.is_dir():
        pytest.skip(f"benchmark data not found at {DATA}")
    cache: dict[tuple[str, str], tuple[list[Example], int, list[str]]] = {}

    def load(name: str, split: str) -> tuple[list[Example], int, list[str]]:
        if (name, split) not in cache:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                examples, skipped = get_task(name).load(split, DATA)
            cache[name, split] = examples, skipped, [str(w.message) for w in caught]
        return cache[name, split]

    return load


# ---------------------------------------------------------------- the registry and its definitions


BUILTIN = {
    "cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli", "superglue_boolq", "cb", "scitail",
    *MULTIPLE_CHOICE, *TWINS,
}  # fmt: skip


def test_builtin_tasks_are_registered_with_consistent_definitions():
    assert set(task_names()) >= BUILTIN
    for name in BUILTIN:
        task = get_task(name)
        assert task.name == name and task.hub is not None and "{text_a}" in task.template
        assert len(set(task.labels)) == len(task.labels)
        if task.kind.name == "classification":
            assert len(task.label_words) == len(task.labels) == task.kind.head_size(task) >= 2
            assert task.template.endswith("Answer:")
        else:  # a score, or one logit per option: no label set
            assert task.labels == task.label_words == () and task.kind.head_size(task) == 1
    # Metrics and kinds as the task definitions (GLUE conventions, lm-evaluation-harness) prescribe.
    assert get_task("cola").metrics == ("mcc",)
    assert get_task("mrpc").metrics == get_task("qqp").metrics == ("f1", "accuracy")
    stsb = get_task("stsb")
    assert stsb.kind.name == "regression" and stsb.metrics == ("pearson", "spearman")
    for name in MULTIPLE_CHOICE:
        task = get_task(name)
        assert task.kind.name == "multiple_choice" and task.kind.needs_choices, name
        assert task.metrics == ("acc", "acc_norm"), name
        assert task.kind.fill_blank == (name == "winogrande"), name
    for twin, labels in TWIN_LABELS.items():
        assert get_task(twin).labels == get_task(twin).label_words == labels, twin
    others = BUILTIN - {"cola", "mrpc", "qqp", "stsb"} - MULTIPLE_CHOICE
    assert all(get_task(n).metrics == ("accuracy",) and kind_of(n) == "classification" for n in others)


@needs_data
def test_every_published_split_maps_to_a_task():
    rows = counts_rows()
    assert rows, "COUNTS.tsv lists no local splits"
    unknown = {(b, t) for b, t, *_ in rows} - set(PUBLISHED)
    assert not unknown, f"COUNTS.tsv lists tasks this test does not know: {unknown}"
    assert {s for _, _, s, _, _ in rows} == {"train", "dev"}


def test_lookup_is_case_insensitive_and_unknown_names_suggest_the_closest():
    assert get_task("RTE") is get_task("rte")
    with pytest.raises(ValueError, match=r"unknown task 'rtee'; did you mean 'rte'\?.*Known tasks:.*cola"):
        get_task("rtee")
    with pytest.raises(ValueError, match="did you mean 'social_i_qa'"):
        get_task("social_iqa")


def test_registering_a_taken_name_is_an_error():
    with pytest.raises(ValueError, match="already registered"):
        register_task(get_task("rte"))


def test_bad_split_name_is_an_error():
    with pytest.raises(ValueError, match="'train' or 'dev'"):
        get_task("rte").load("test", DATA)


# ---------------------------------------------------------------- every published split


@pytest.mark.parametrize("name,split", sorted(COUNTS), ids=[f"{n}-{s}" for n, s in sorted(COUNTS)])
def test_split_loads_with_published_counts(loaded, name, split):
    task = get_task(name)
    examples, skipped, messages = loaded(name, split)
    expected_skipped = len(malformed_lines(name, split)) if FILES[name][1] == ".tsv" else 0
    assert skipped == expected_skipped
    assert len(examples) == COUNTS[name, split] - expected_skipped
    assert len(messages) == (1 if skipped else 0)
    pair = "{text_b}" in task.template
    for ex in examples:
        assert ex.text_a.strip() and ex.text_a == ex.text_a.strip()
        assert (ex.text_b is not None and ex.text_b.strip()) if pair else ex.text_b is None
        if task.kind.name == "regression":
            assert isinstance(ex.label, float) and 0.0 <= ex.label <= 5.0 and ex.choices == ()
        elif task.kind.name == "multiple_choice":
            assert len(ex.choices) >= 2 and all(c and c == c.strip() for c in ex.choices)
            assert isinstance(ex.label, int) and 0 <= ex.label < len(ex.choices)
        else:
            assert isinstance(ex.label, int) and 0 <= ex.label < len(task.labels) and ex.choices == ()


LABELLED = sorted(k for k in COUNTS if k[0] != "stsb" and k[0] not in MULTIPLE_CHOICE)


@pytest.mark.parametrize("name,split", LABELLED, ids=str)
def test_labels_follow_the_raw_file_in_order(loaded, name, split):
    examples, _, _ = loaded(name, split)
    labels = get_task(name).labels
    assert [labels[ex.label] for ex in examples] == raw_labels(name, split)


@pytest.mark.parametrize("name,split", sorted(k for k in COUNTS if k[0] in MULTIPLE_CHOICE), ids=str)
def test_multiple_choice_answers_follow_the_raw_file_in_order(loaded, name, split):
    """Same rows as the twin, in file order: label = the answer word's number - 1, and as many options
    as the instruction lists."""
    examples, _, _ = loaded(name, split)
    twin, _, _ = loaded(f"{name}_labels", split)
    assert len(examples) == len(twin)
    assert [(ex.label, len(ex.choices)) for ex in examples] == raw_answers(name, split)


@pytest.mark.parametrize("name", sorted({n for n, _ in COUNTS}))
def test_prompts_and_answers_are_strings_with_the_label_words(loaded, name):
    task = get_task(name)
    examples, _, _ = loaded(name, "dev")
    for ex in examples[:50]:
        prompt = task.prompt(ex)
        assert ex.text_a in prompt
        # the template's fixed text around the texts ("Question: ...\nAnswer:", "Q: ...\nA:", none)
        assert prompt.startswith(task.template.split("{", 1)[0])
        assert prompt.endswith(task.template.rsplit("}", 1)[1])
        if ex.text_b is not None:
            assert ex.text_b in prompt
        target = task.kind.target(task, ex)
        if getattr(task.kind, "fill_blank", False):  # the right option fills the blank, the rest is scored
            filled = prompt.replace("_", ex.choices[ex.label], 1)
            assert re.sub(r"\s", "", target.context + target.text) == re.sub(r"\s", "", filled)
            assert target.context.startswith(prompt.split("_")[0])
            continue
        assert target.context == prompt
        if task.kind.name == "regression":
            assert float(target.text) == round(ex.label)  # the rounded score: a candidate evaluation scores
        elif task.kind.name == "multiple_choice":
            assert target.text == ex.choices[ex.label]  # the right option continues the prompt
        else:
            assert target.text == task.label_words[ex.label]


# ---------------------------------------------------------------- quirks of the published files


@needs_data
def test_qqp_malformed_row_is_skipped_with_a_warning_and_raises_under_strict(loaded):
    bad = {split: malformed_lines("qqp", split) for split in ("train", "dev")}
    assert len(bad["train"]) == 1 and bad["dev"] == []  # README: one malformed row (in train)
    _, skipped, messages = loaded("qqp", "train")
    assert skipped == 1
    assert "skipped 1 malformed" in messages[0] and "QQP/train.tsv" in messages[0]
    with pytest.raises(ValueError, match=rf"QQP/train\.tsv, line {bad['train'][0]}: malformed row"):
        get_task("qqp").load("train", DATA, strict=True)


@needs_data
def test_mrpc_bom_and_unbalanced_quotes(loaded):
    raw = path_of("mrpc", "train").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")  # the quirk is there to handle
    examples, skipped, _ = loaded("mrpc", "train")
    lines = tsv_lines("mrpc", "train")
    assert skipped == 0 and len(examples) == len(lines)
    assert not examples[0].text_a.startswith("\ufeff")
    unbalanced = [i for i, line in enumerate(lines) if line.count('"') % 2 == 1]
    assert unbalanced, "expected rows with an odd number of quote characters"
    for i in [0, *unbalanced[:20]]:
        fields = lines[i].split("\t")
        assert (examples[i].text_a, examples[i].text_b) == (fields[3].strip(), fields[4].strip())


@needs_data
def test_stsb_scores_are_the_raw_floats(loaded):
    for split in ("train", "dev"):
        examples, _, _ = loaded("stsb", split)
        scores = [float(line.split("\t")[-1]) for line in tsv_lines("stsb", split)]
        assert [ex.label for ex in examples] == scores
        assert all(isinstance(ex.label, float) and 0 <= ex.label <= 5 for ex in examples)
        assert len(set(scores)) > 10  # real-valued scores, not classes


# ---------------------------------------------------------------- errors and the other local layouts


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_label_outside_the_label_set_names_file_line_label_and_allowed(tmp_path):
    path = write(
        tmp_path / "glue/RTE/train.tsv",
        "index\tsentence1\tsentence2\tlabel\n"
        "0\tA cat sat.\tA cat.\tentailment\n"
        "1\tA dog ran.\tA dog.\tmaybe\n",
    )
    with pytest.raises(
        ValueError, match=r"train\.tsv, line 3: label 'maybe' .*'entailment', 'not_entailment'"
    ) as e:
        get_task("rte").load("train", tmp_path)
    assert str(path) in str(e.value)


def test_missing_data_folder_names_the_expected_path_and_layout(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"nowhere/glue/RTE/dev\.tsv not found.*data_dir=PATH.*glue/.*superglue/"
    ):
        get_task("rte").load("dev", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"commonsense/piqa/train\.json"):
        get_task("piqa").load("train", tmp_path)


LATIN1 = "caf\u00e9"  # "café": the byte 0xe9 in latin-1, not UTF-8


CB_ROW = {"premise": "A.", "hypothesis": "B.", "label": "neutral"}
PIQA_ROW = {"instruction": "A?", "answer": "solution1"}
NOT_UTF8 = {  # task -> (its file, lines whose third holds the latin-1 text)
    "rte": (
        "glue/RTE/train.tsv",
        ["index\tsentence1\tsentence2\tlabel", "0\tA.\tB.\tentailment", f"1\t{LATIN1}.\tB.\tentailment"],
    ),
    "cb": (
        "superglue/CB/train.jsonl",
        [json.dumps(CB_ROW)] * 2 + [json.dumps({**CB_ROW, "premise": LATIN1}, ensure_ascii=False)],
    ),
    "piqa": (
        "commonsense/piqa/train.json",
        [
            "[",
            json.dumps(PIQA_ROW) + ",",
            json.dumps({**PIQA_ROW, "instruction": LATIN1}, ensure_ascii=False),
            "]",
        ],
    ),
}


@pytest.mark.parametrize("task", list(NOT_UTF8))
def test_a_data_file_that_is_not_utf8_names_the_file_the_line_and_the_fix(tmp_path, task):
    file, lines = NOT_UTF8[task]
    path = tmp_path / file
    path.parent.mkdir(parents=True)
    path.write_bytes("\n".join(lines).encode("latin-1") + b"\n")
    with pytest.raises(ValueError, match=r"line 3: byte 0xe9 at column \d+ is not UTF-8 text") as e:
        get_task(task).load("train", tmp_path)
    assert str(e.value).startswith(f"{path}, line 3") and str(e.value).endswith(
        "save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
    )


@pytest.mark.parametrize(
    "text", ["", "index\tsentence1\tsentence2\tlabel\n", "index\tsentence1\tsentence2\tlabel\n\n"]
)
def test_a_data_file_without_rows_is_an_error_naming_it(tmp_path, text):
    path = write(tmp_path / "glue/RTE/train.tsv", text)
    with pytest.raises(ValueError, match=re.escape(str(path)) + " holds no data rows.*; add rows to it"):
        get_task("rte").load("train", tmp_path)


def test_mnli_reads_the_glue_layout_with_dev_matched(tmp_path):
    train_cols = [
        "index",
        "promptID",
        "pairID",
        "genre",
        "s1b",
        "s2b",
        "s1p",
        "s2p",
        "sentence1",
        "sentence2",
    ]
    row = ["0", "1", "1e", "fiction", "(", "(", "(", "(", "A man sleeps.", "Someone rests."]
    write(
        tmp_path / "glue/MNLI/train.tsv",
        "\t".join([*train_cols, "label1", "gold_label"])
        + "\n"
        + "\t".join([*row, "neutral", "contradiction"])
        + "\n",
    )
    dev_cols = [*train_cols, "label1", "label2", "label3", "label4", "label5", "gold_label"]
    dev_row = [*row, "neutral", "neutral", "entailment", "neutral", "neutral", "neutral"]
    write(tmp_path / "glue/MNLI/dev_matched.tsv", "\t".join(dev_cols) + "\n" + "\t".join(dev_row) + "\n")
    task = get_task("mnli")
    (train,), _ = task.load("train", tmp_path)
    (dev,), _ = task.load("dev", tmp_path)
    assert (train.text_a, train.text_b, task.labels[train.label]) == (
        "A man sleeps.",
        "Someone rests.",
        "contradiction",
    )
    assert task.labels[dev.label] == "neutral" and task.kind.target(task, dev).text == "maybe"


def test_scitail_reads_the_headerless_tsv_format(tmp_path):
    write(
        tmp_path / "scitail/train.tsv",
        'Plants need light.\tA "plant" needs light.\tentails\nA.\tB.\tneutral\n',
    )
    write(tmp_path / "scitail/dev.tsv", "Water boils.\tIce melts.\tneutral\n")
    task = get_task("scitail")
    train, skipped = task.load("train", tmp_path)
    assert skipped == 0 and [task.labels[e.label] for e in train] == ["entails", "neutral"]
    assert train[0].text_b == 'A "plant" needs light.'
    assert task.prompt(train[0]).endswith("yes or no?\nAnswer:")


# ---------------------------------------------------------------- hub readers (datasets is optional)


def test_hub_loading_without_datasets_says_how_to_install(monkeypatch):
    """ModuleNotFoundError: the CLI prints it as one line (exit 2), like every bad-setup error."""
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(ModuleNotFoundError, match="pip install datasets"):
        get_task("rte").load("dev")


def test_hub_unreachable_names_the_dataset_and_data_dir(monkeypatch):
    """Offline (or an unknown id): a ValueError naming the dataset and pointing at data_dir."""

    def load_dataset(path, name=None, split=None):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with pytest.raises(ValueError, match=r"could not load nyu-mll/glue \(rte, split validation\).*data_dir"):
        get_task("rte").load("dev")


def fake_datasets(monkeypatch, rows: list[dict]) -> list[tuple]:
    """Install a stand-in `datasets` whose load_dataset returns `rows`; returns the calls it saw."""
    calls: list[tuple] = []

    def load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        return rows

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    return calls


def test_hub_class_indices_and_booleans_map_to_labels(monkeypatch):
    calls = fake_datasets(monkeypatch, [{"sentence1": " A. ", "sentence2": "B.", "label": 1, "idx": 0}])
    (ex,), skipped = get_task("rte").load("dev")
    assert (ex.text_a, ex.text_b, ex.label, skipped) == ("A.", "B.", 1, 0)
    assert calls == [("nyu-mll/glue", "rte", "validation")]

    fake_datasets(monkeypatch, [{"question": "is it", "passage": "It is.", "label": 1, "idx": 3}])
    (ex,), _ = get_task("superglue_boolq").load("train")
    assert get_task("superglue_boolq").labels[ex.label] == "true"

    fake_datasets(monkeypatch, [{"sentence1": "A.", "sentence2": "B.", "label": 7}])
    with pytest.raises(ValueError, match="label index 7"):
        get_task("rte").load("dev")


def test_hub_rows_missing_a_column_are_malformed(monkeypatch):
    fake_datasets(monkeypatch, [{"sentence1": "A.", "sentence2": "B.", "label": 0}, {"sentence1": "A."}])
    with pytest.warns(UserWarning, match="skipped 1 malformed"):
        examples, skipped = get_task("rte").load("train")
    assert (len(examples), skipped) == (1, 1)


def hub_row_from_local(name: str, record: dict) -> dict:
    """The original dataset's row (hub columns) that the local LLM-Adapters / CSQA record was made from,
    recovered by parsing the local text."""
    text = record.get("instruction", "")
    if name == "boolq":
        question = re.search(r"question: (.*)\?\n\n", text).group(1)
        return {"question": question, "passage": "", "answer": record["answer"] == "true"}
    if name == "piqa":
        goal, sol1, sol2 = re.search(
            r"question: (.*)\n\nSolution1: (.*)\n\nSolution2: (.*)\n\n", text, re.S
        ).groups()
        return {"goal": goal, "sol1": sol1, "sol2": sol2, "label": int(record["answer"][-1]) - 1}
    if name == "winogrande":
        sentence, o1, o2 = re.search(
            r"sentence: (.*)\n\nOption1: (.*) Option2: (.*) Answer format", text
        ).groups()
        return {"sentence": sentence, "option1": o1, "option2": o2, "answer": record["answer"][-1]}
    if name in ("arc_easy", "openbookqa"):
        question, options = re.search(
            r"question: (.*)\n\n(Answer1: .*)\n\nAnswer format", text, re.S
        ).groups()
        texts = re.split(r" ?Answer\d: ", options)[1:]
        letters = "ABCDE"[: len(texts)]
        key = "question" if name == "arc_easy" else "question_stem"
        answer = letters[int(record["answer"][-1]) - 1]
        return {key: question, "choices": {"text": texts, "label": list(letters)}, "answerKey": answer}
    assert name == "commonsenseqa"
    choices = record["question"]["choices"]
    return {
        "question": record["question"]["stem"],
        "choices": {"label": [c["label"] for c in choices], "text": [c["text"] for c in choices]},
        "answerKey": record["answerKey"],
    }


HUB_CHECKED = ["boolq", "piqa", "winogrande", "arc_easy", "openbookqa", "commonsenseqa"]


@needs_data
@pytest.mark.parametrize("name", [*HUB_CHECKED, *(f"{n}_labels" for n in HUB_CHECKED)])
def test_hub_rows_format_like_the_local_files(monkeypatch, loaded, name):
    """The multiple-choice task and its label-word twin read the original columns into the examples the
    local files give."""
    base = TWINS.get(name, name)
    records = raw_records(name, "dev")[:25]
    local, _, _ = loaded(name, "dev")
    fake_datasets(monkeypatch, [hub_row_from_local(base, r) for r in records])
    hub, skipped = get_task(name).load("dev")
    assert skipped == 0 and hub == local[: len(records)]


def hub_folder(root: Path, repo: str, configs: dict[str | None, dict[str, list[dict]]]) -> None:
    """A dataset folder in the hub's published layout: parquet files per config and split, declared in the
    README's `configs:` header, as `datasets.load_dataset(repo, config)` finds them on the hub."""
    from datasets import Dataset

    header = ["---", "configs:"]
    for config, splits in configs.items():
        name = config or "default"
        header += [f"- config_name: {name}", "  data_files:"]
        for split, rows in splits.items():
            Dataset.from_list(rows).to_parquet(str(root / repo / name / f"{split}-00000-of-00001.parquet"))
            header += [f"  - split: {split}", f"    path: {name}/{split}-*.parquet"]
    (root / repo / "README.md").write_text("\n".join([*header, "---", ""]))


def test_hub_reader_reads_a_dataset_in_the_hub_layout(tmp_path, monkeypatch):
    """The real `datasets` loader on local folders laid out as nyu-mll/glue (rte: pair classification,
    ClassLabel indices) and tau/commonsense_qa (no config; nested choices): only the download is not
    exercised."""
    pytest.importorskip("datasets")
    rte = [{"sentence1": "A cat sat.", "sentence2": "An animal sat.", "label": 0, "idx": 0}]
    rte.append({"sentence1": "It rained.", "sentence2": "It was dry.", "label": 1, "idx": 1})
    hub_folder(tmp_path, "nyu-mll/glue", {"rte": {"train": rte, "validation": rte[::-1]}})
    csqa = {
        "id": "q1",
        "question": "Where do fish live?",
        "question_concept": "fish",
        "choices": {"label": ["A", "B", "C", "D", "E"], "text": ["sea", "sky", "desk", "car", "moon"]},
        "answerKey": "A",
    }
    hub_folder(tmp_path, "tau/commonsense_qa", {None: {"train": [csqa], "validation": [csqa]}})
    monkeypatch.chdir(tmp_path)  # a local folder named like the hub id is what load_dataset reads
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    dev, skipped = get_task("rte").load("dev")
    assert skipped == 0
    assert [(e.text_a, e.text_b, e.label) for e in dev] == [
        ("It rained.", "It was dry.", 1),
        ("A cat sat.", "An animal sat.", 0),
    ]
    (ex,), _ = get_task("commonsenseqa").load("train")
    assert (ex.text_a, ex.label, ex.choices) == (
        "Where do fish live?",
        0,
        ("sea", "sky", "desk", "car", "moon"),
    )
    (ex,), _ = get_task("commonsenseqa_labels").load("train")
    assert ex.label == 0 and "Where do fish live?" in ex.text_a and "E" in ex.text_a and "moon" in ex.text_a


# ---------------------------------------------------------------- user tasks from YAML


def custom_files(tmp_path: Path, yaml_text: str, train: list, dev: list | None = None) -> Path:
    """A YAML in tmp_path (its {name} replaced by a name unique to the test) and its JSONL files."""
    for split, rows in (("train", train), ("dev", dev if dev is not None else train)):
        write(tmp_path / f"{split}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    return write(tmp_path / "task.yaml", yaml_text.replace("{name}", f"custom_{tmp_path.name}"))


SENTIMENT = """\
name: {name}
data: {train: train.jsonl, dev: dev.jsonl}
text_fields: [review]
label_field: label
labels: [neg, pos]
label_words: [negative, positive]
metrics: [accuracy, f1]
template: "Review: {text_a}\\nSentiment:"
"""
ROWS = [
    {"review": "Great film.", "label": "pos"},
    {"review": "Dull.", "label": "neg"},
    {"review": "Fine.", "label": "pos"},
]


def test_custom_task_loads_prompts_and_scores(tmp_path):
    task = load_custom_task(custom_files(tmp_path, SENTIMENT, ROWS, ROWS[:2]))
    assert get_task(task.name.upper()) is task
    train, skipped = task.load("train")
    assert skipped == 0 and len(train) == len(ROWS)
    assert [task.labels[e.label] for e in train] == [r["label"] for r in ROWS]
    assert task.load("dev", DATA)[0] == train[:2]  # its own files, whatever data_dir a recipe passes
    assert task.kind.name == "classification" and task.kind.head_size(task) == 2
    assert task.prompt(train[0]) == "Review: Great film.\nSentiment:"
    assert task.kind.target(task, train[0]).text == "positive"
    references = [e.label for e in train]
    assert task.score(references, references) == {"accuracy": 1.0, "f1": 1.0, "score": 1.0}
    # Predict all positive: accuracy 2/3; F1 of class 1 = 2*2 / (2*2 + 1 + 0) = 0.8.
    scores = task.score([1, 1, 1], references)
    assert scores["accuracy"] == pytest.approx(2 / 3) and scores["f1"] == pytest.approx(0.8)


def test_custom_regression_pair_task(tmp_path):
    yaml_text = "name: {name}\ndata: {train: train.jsonl}\ntext_fields: [a, b]\nlabel_field: y\n"
    rows = [{"a": "x", "b": "y", "y": 1.5}, {"a": "p", "b": "q", "y": "4"}, {"a": "m", "b": "n", "y": 0}]
    task = load_custom_task(custom_files(tmp_path, yaml_text, rows))
    assert task.kind.name == "regression" and task.metrics == ("pearson", "spearman")
    assert task.labels == () and task.kind.head_size(task) == 1
    examples, _ = task.load("train")
    assert [e.label for e in examples] == [1.5, 4.0, 0.0] and examples[0].text_b == "y"
    assert task.prompt(examples[0]) == "x\ny\nAnswer:"
    assert task.kind.target(task, Example("x", "y", 1.6)).text == "2"
    with pytest.raises(ValueError, match="no 'dev' split"):
        task.load("dev")


@pytest.mark.parametrize(
    "change,error",
    [
        (("labels:", "lables:"), r"unknown key 'lables'; did you mean 'labels'\?"),
        (("label_field: label\n", ""), r"a classification task needs label_field"),
        (("[accuracy, f1]", "[accuracy, auc]"), r"unknown metric 'auc'.*Known: acc, acc_norm, accuracy"),
        (("[accuracy, f1]", "[pearson]"), "metric 'pearson' does not apply to a classification task"),
        (("[negative, positive]", "[negative]"), "1 label_words for 2 labels"),
        (("Review: {text_a}", "Review: {txt}"), r"template uses \['txt'\]"),
        (("dev.jsonl}", "missing.jsonl}"), r"the dev file .*missing\.jsonl does not exist"),
    ],
)
def test_custom_task_bad_yaml_is_a_clear_error(tmp_path, change, error):
    old, new = change
    assert old in SENTIMENT
    path = custom_files(tmp_path, SENTIMENT.replace(old, new), ROWS)
    with pytest.raises((ValueError, FileNotFoundError), match=error):
        load_custom_task(path)


def test_custom_task_bad_label_names_row_and_allowed_labels(tmp_path):
    task = load_custom_task(
        custom_files(tmp_path, SENTIMENT, [*ROWS, {"review": "Meh.", "label": "neutral"}])
    )
    with pytest.raises(ValueError, match=r"train\.jsonl, line 4: label 'neutral' .*\('neg', 'pos'\)"):
        task.load("train")


def test_custom_task_row_missing_a_field_is_skipped_or_raised(tmp_path):
    rows = [*ROWS[:1], {"label": "neg"}, {"review": "", "label": "pos"}, *ROWS[1:]]
    task = load_custom_task(custom_files(tmp_path, SENTIMENT, rows))
    with pytest.warns(UserWarning, match=r"skipped 2 malformed row\(s\) in .*train\.jsonl \(first: line 2"):
        examples, skipped = task.load("train")
    assert (len(examples), skipped) == (len(ROWS), 2)
    with pytest.raises(ValueError, match=r"train\.jsonl, line 2: malformed row .*'review'"):
        task.load("train", strict=True)


@pytest.mark.parametrize(
    "text,error",
    [
        ("", r"custom task file .*task\.yaml holds no settings; write them into it \(name: \.\.\., data"),
        ("# to do\n", r"custom task file .*task\.yaml holds no settings"),
        (
            "- name\n- data\n",
            r"custom task file .*task\.yaml holds a YAML list, not a mapping .*`key: value`",
        ),
        ("sentiment\n", r"custom task file .*task\.yaml holds a YAML str, not a mapping"),
    ],
)
def test_custom_task_file_empty_or_not_a_mapping_names_it_and_the_fix(tmp_path, text, error):
    with pytest.raises(ValueError, match=error):
        load_custom_task(write(tmp_path / "task.yaml", text))


def test_custom_task_with_an_empty_data_file_names_that_file(tmp_path):
    """A 0-byte data file is refused when the task file loads; one of blank lines when its split loads,
    by the reader, so that a recipe never ends in its generic "no examples" message."""
    from rankmix.recipes.run import load_data
    from rankmix.recipes.run_config import RunConfig

    path = custom_files(tmp_path, SENTIMENT, ROWS)
    (tmp_path / "dev.jsonl").write_text("")
    with pytest.raises(ValueError, match=r"task\.yaml: the dev file .*dev\.jsonl is empty; write one JSON"):
        load_custom_task(path)

    (tmp_path / "dev.jsonl").write_text("\n\n")
    task = load_custom_task(path)
    blank = re.escape(str(tmp_path / "dev.jsonl")) + " holds no data rows"
    with pytest.raises(ValueError, match=blank):
        task.load("dev")
    cfg = RunConfig(model="unused", tasks=[task.name], method={"method": "lora"})
    with pytest.raises(ValueError, match=blank):
        load_data(cfg, [task])


def test_a_skipped_row_warning_is_one_line_naming_file_line_and_reason(tmp_path):
    path = custom_files(tmp_path, SENTIMENT, ROWS)
    with (tmp_path / "train.jsonl").open("a") as f:
        f.write('{"review": "Good", "label": \n')  # cut short: line 4
    task = load_custom_task(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        task.load("train")
    (message,) = [str(w.message) for w in caught]
    assert "\n" not in message
    assert re.fullmatch(
        rf"skipped 1 malformed row\(s\) in {re.escape(str(tmp_path / 'train.jsonl'))} \(first: line 4, "
        r"not valid JSON: .*\); fix them, or load with strict=True to stop at the first",
        message,
    ), message


def test_custom_task_name_taken_is_an_error(tmp_path):
    path = custom_files(tmp_path, SENTIMENT, ROWS)
    first = load_custom_task(path)
    assert load_custom_task(path) is first  # the same file again: the task it registered
    with pytest.raises(ValueError, match="already registered"):  # another file, a taken name
        load_custom_task(
            custom_files(tmp_path, SENTIMENT.replace("labels: [neg, pos]", "labels: [a, b]"), ROWS)
        )
    with pytest.raises(ValueError, match="already registered"):
        load_custom_task(custom_files(tmp_path, SENTIMENT.replace("{name}", "rte"), ROWS))


# ---------------------------------------------------------------- user tasks of every kind


MC_YAML = """\
name: {name}
kind: multiple_choice
data: {train: train.jsonl, dev: dev.jsonl}
text_fields: [question]
choices_field: options
answer_field: answer
template: "Question: {text_a}\\nAnswer:"
"""
MC_ROWS = [  # 2, 3 and 4 options; the answer an index (a digit string too)
    {"question": "Where do fish live?", "options": ["sea", "sky"], "answer": 0},
    {"question": " What is red? ", "options": [" a car ", "a cloud", "the sun at dusk"], "answer": 2},
    {"question": "Which is a fruit?", "options": ["stone", "apple", "chair", "cloud"], "answer": "1"},
]
GEN_YAML = """\
name: {name}
kind: generation
data: {train: train.jsonl}
text_fields: [question, context]
answer_field: target
metrics: [exact_match, rouge_l]
"""
GEN_ROWS = [
    {"question": "What sat?", "context": "A cat sat on the mat.", "target": " the cat sat on the mat "},
    {"question": "Who barked?", "context": "A dog barked.", "target": "A dog."},
    {"question": "What colour?", "context": "The sky was blue.", "target": "blue"},
]


def ref_acc(picks: list[int], labels: list[int]) -> float:
    return sum(p == y for p, y in zip(picks, labels, strict=True)) / len(labels)


def test_custom_multiple_choice_task_reads_options_and_scores_acc_and_acc_norm(tmp_path):
    task = load_custom_task(custom_files(tmp_path, MC_YAML, MC_ROWS, MC_ROWS[:1]))
    assert task.kind.name == "multiple_choice" and not task.kind.fill_blank
    assert task.metrics == ("acc", "acc_norm")  # the default
    assert task.labels == task.label_words == () and task.kind.head_size(task) == 1
    assert (task.text_fields, task.choices_field) == (("question",), "options")
    train, skipped = task.load("train")
    assert skipped == 0
    assert [(e.text_a, e.text_b, e.label, e.choices) for e in train] == [
        ("Where do fish live?", None, 0, ("sea", "sky")),
        ("What is red?", None, 2, ("a car", "a cloud", "the sun at dusk")),
        ("Which is a fruit?", None, 1, ("stone", "apple", "chair", "cloud")),
    ]
    assert task.load("dev")[0] == train[:1]
    assert [o.text for o in task.kind.options(task, train[2])] == ["stone", "apple", "chair", "cloud"]
    assert task.kind.target(task, train[1]).text == "the sun at dusk"
    assert task.prompt(train[1]) == "Question: What is red?\nAnswer:"

    labels = [e.label for e in train]
    # acc reads .pick, acc_norm .pick_norm: 1/3 and 2/3 here; the task's score is acc_norm
    scores = task.score([Choice(0, 1), Choice(1, 2), Choice(0, 1)], labels)
    assert scores == pytest.approx({"acc": 1 / 3, "acc_norm": 2 / 3, "score": 2 / 3})
    rng = random.Random(0)
    many = [rng.randrange(4) for _ in range(200)]
    preds = [Choice(rng.randrange(4), rng.randrange(4)) for _ in many]
    scores = task.score(preds, many)
    assert scores["acc"] == pytest.approx(ref_acc([p.pick for p in preds], many))
    assert scores["acc_norm"] == pytest.approx(ref_acc([p.pick_norm for p in preds], many))
    assert scores["score"] == scores["acc_norm"] != scores["acc"]


def test_custom_multiple_choice_task_with_acc_only_scores_acc(tmp_path):
    yaml_text = MC_YAML + "metrics: [acc]\n"
    task = load_custom_task(custom_files(tmp_path, yaml_text.replace("{name}", "{name}_acc"), MC_ROWS))
    assert task.metrics == ("acc",)
    assert task.score([Choice(0, 1), Choice(2, 0), Choice(0, 1)], [0, 2, 1]) == pytest.approx(
        {"acc": 2 / 3, "score": 2 / 3}
    )


def test_custom_generation_task_reads_target_texts_and_scores_exact_match_and_rouge_l(tmp_path):
    pytest.importorskip("rouge_score")
    task = load_custom_task(custom_files(tmp_path, GEN_YAML, GEN_ROWS))
    assert task.kind.name == "generation" and task.kind.generates
    assert task.metrics == ("exact_match", "rouge_l") and task.labels == ()
    train, skipped = task.load("train")
    assert skipped == 0
    assert [(e.text_a, e.text_b, e.label, e.choices) for e in train] == [
        ("What sat?", "A cat sat on the mat.", "the cat sat on the mat", ()),
        ("Who barked?", "A dog barked.", "A dog.", ()),
        ("What colour?", "The sky was blue.", "blue", ()),
    ]
    assert task.prompt(train[0]) == "What sat?\nA cat sat on the mat.\nAnswer:"
    assert task.kind.target(task, train[1]).text == "A dog."
    references = [e.label for e in train]
    assert task.score(references, references) == pytest.approx({"exact_match": 1, "rouge_l": 1, "score": 1})
    # exact match after lower-casing and dropping punctuation and articles: only "dog" == "A dog.".
    # ROUGE-L F1 over lower-cased word tokens, by longest common subsequence:
    #   "the cat on mat" vs "the cat sat on the mat": LCS 4, P 4/4, R 4/6 -> 0.8
    #   "dog" vs "a dog": LCS 1, P 1, R 1/2 -> 2/3;  "red" vs "blue": 0
    scores = task.score(["the cat on mat", "dog", "red"], references)
    rouge = (0.8 + 2 / 3 + 0) / 3
    assert scores == pytest.approx({"exact_match": 1 / 3, "rouge_l": rouge, "score": (1 / 3 + rouge) / 2})


def test_custom_generation_task_defaults_to_exact_match(tmp_path):
    yaml_text = GEN_YAML.replace("metrics: [exact_match, rouge_l]\n", "")
    task = load_custom_task(custom_files(tmp_path, yaml_text, GEN_ROWS))
    assert task.metrics == ("exact_match",)
    assert task.score(["The cat sat on the mat!", "a dog", "Blue."], [r["target"] for r in GEN_ROWS]) == {
        "exact_match": 1.0,
        "score": 1.0,
    }


def test_custom_specs_of_todays_keys_keep_their_kind(tmp_path):
    """No `kind`: labels make a classification task, `regression: true` (or no labels) a regression
    task; `regression: false` with labels stays classification."""
    rows = [{"a": "x", "y": 1}, {"a": "p", "y": 0}]
    base = "name: {name}\ndata: {train: train.jsonl}\ntext_fields: [a]\nlabel_field: y\n"
    specs = {
        "regression: true\n": ("regression", [1.0, 0.0]),
        "": ("regression", [1.0, 0.0]),
        "labels: [0, 1]\n": ("classification", [1, 0]),
        "labels: [0, 1]\nregression: false\n": ("classification", [1, 0]),
        "kind: classification\nlabels: [1, 0]\n": ("classification", [0, 1]),
    }
    for i, (extra, (kind, labels)) in enumerate(specs.items()):
        folder = tmp_path / str(i)
        task = load_custom_task(
            custom_files(folder, (base + extra).replace("{name}", "{name}_" + str(i)), rows)
        )
        assert task.kind.name == kind, extra
        assert [e.label for e in task.load("train")[0]] == labels, extra
        assert task.metrics == (("pearson", "spearman") if kind == "regression" else ("accuracy",))


@pytest.mark.parametrize(
    "spec,change,error",
    [
        (MC_YAML, ("kind: multiple_choice", "kind: multiple_choise"),
         r"unknown kind 'multiple_choise'; did you mean 'multiple_choice'\? Kinds: classification, "
         r"regression, multiple_choice, generation"),
        (MC_YAML, ("choices_field: options\n", ""), "a multiple_choice task needs choices_field"),
        (MC_YAML, ("answer_field", "label_field"), "a multiple_choice task takes no label_field"),
        (MC_YAML, ("answer_field: answer", "answer_field: answer\nlabels: [a, b]"),
         "a multiple_choice task takes no labels"),
        (GEN_YAML, ("answer_field: target", "answer_field: target\nlabels: [a, b]"),
         "a generation task takes no labels; its keys are answer_field"),
        (GEN_YAML, ("answer_field: target", "answer_field: target\nchoices_field: options"),
         "a generation task takes no choices_field"),
        (GEN_YAML, ("answer_field: target\n", ""), "a generation task needs answer_field"),
        (SENTIMENT, ("label_field: label", "label_field: label\nanswer_field: label"),
         "a classification task takes no answer_field"),
        (SENTIMENT, ("labels: [neg, pos]", "labels: [neg, pos]\nregression: true"),
         "a regression task takes no labels"),
        (MC_YAML, ("answer_field: answer", "answer_field: answer\nmetrics: [accuracy]"),
         "metric 'accuracy' does not apply to a multiple_choice task; choose from acc, acc_norm"),
        (SENTIMENT, ("[accuracy, f1]", "[accuracy, exact_match]"),
         "metric 'exact_match' does not apply to a classification task; choose from accuracy, f1, mcc"),
        (GEN_YAML, ("[exact_match, rouge_l]", "[acc_norm]"),
         "metric 'acc_norm' does not apply to a generation task; choose from exact_match, rouge_l"),
        (MC_YAML, ("choices_field: options", "choices_field: [options]"),
         r"choices_field must be one key \(a string\), got \['options'\]"),
    ],
)  # fmt: skip
def test_custom_task_kind_errors_at_load_time_name_the_problem(tmp_path, spec, change, error):
    old, new = change
    assert old in spec
    path = custom_files(tmp_path, spec.replace(old, new), MC_ROWS)
    with pytest.raises(ValueError, match=error) as e:
        load_custom_task(path)
    assert str(e.value).startswith(str(path))  # the file it is in


def test_custom_multiple_choice_task_without_answer_field_is_a_load_time_error(tmp_path):
    path = custom_files(tmp_path, MC_YAML.replace("answer_field: answer\n", ""), MC_ROWS)
    with pytest.raises(ValueError, match="answer_field"):
        load_custom_task(path)


@pytest.mark.parametrize("answer", [2, -1, True, "x", 1.5, "-1"])
def test_custom_multiple_choice_answer_out_of_range_names_the_row(tmp_path, answer):
    """Never skipped: an answer that names no option means the file and the spec disagree."""
    rows = [MC_ROWS[0], {"question": "Q?", "options": ["a", "b"], "answer": answer}]
    task = load_custom_task(custom_files(tmp_path, MC_YAML, rows))
    for strict in (False, True):
        with pytest.raises(
            ValueError,
            match=rf"train\.jsonl, line 2: answer {re.escape(repr(answer))} is not the index \(0\.\.1\)",
        ):
            task.load("train", strict=strict)


@pytest.mark.parametrize("options", ["a b", ["only"], ["a", 3], ["a", " "], None, {"a": "b"}, []])
def test_custom_multiple_choice_bad_options_are_skipped_or_raised(tmp_path, options):
    rows = [MC_ROWS[0], {"question": "Q?", "options": options, "answer": 0}, *MC_ROWS[1:]]
    task = load_custom_task(custom_files(tmp_path, MC_YAML, rows))
    why = "the options are not a list of at least two non-empty strings"
    with pytest.warns(
        UserWarning, match=rf"skipped 1 malformed row\(s\) in .*train\.jsonl \(first: line 2, {why}"
    ):
        examples, skipped = task.load("train")
    assert skipped == 1 and [e.text_a for e in examples] == [
        "Where do fish live?",
        "What is red?",
        "Which is a fruit?",
    ]
    with pytest.raises(ValueError, match=rf"train\.jsonl, line 2: malformed row \({why}\)"):
        task.load("train", strict=True)


@pytest.mark.parametrize("target", ["", "  ", 3, None, ["a"]])
def test_custom_generation_bad_target_is_skipped_or_raised(tmp_path, target):
    rows = [GEN_ROWS[0], {**GEN_ROWS[1], "target": target}, GEN_ROWS[2]]
    task = load_custom_task(custom_files(tmp_path, GEN_YAML, rows))
    with pytest.warns(UserWarning, match=r"skipped 1 malformed row\(s\) .*line 2, the target text is empty"):
        examples, skipped = task.load("train")
    assert skipped == 1 and [e.label for e in examples] == ["the cat sat on the mat", "blue"]
    with pytest.raises(
        ValueError, match=r"line 2: malformed row \(the target text is empty or not a string\)"
    ):
        task.load("train", strict=True)
