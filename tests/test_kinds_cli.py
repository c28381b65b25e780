"""End-to-end tests of the task kinds through `rankmix train | eval | predict`, in-process with
tests/test_cli.py's helpers: the `subject` generation task on a tiny Llama and a tiny T5 (exact match
and the generated text against an independent greedy generation, and exact match against an oracle's
answers); a multiple-choice task from a custom-task YAML (2 and 3 options per row) on a tiny Llama and
a tiny BERT (acc, acc_norm and the picks of `predict` against an independent computation from the
family's option scores); the clear errors of kinds a model or a command cannot serve; and run folders
of the version before task kinds, whose commonsense tasks keep evaluating as the label-word task they
were trained as (a few rows of ../shared/data's PIQA; skipped without it).

The tiny models are random, built here over a vocabulary of the words these tasks use (so that no
answer is an unknown token), and every run trains for a few seconds at most on a few rows."""

from __future__ import annotations

import json
import random
import re
import string
from pathlib import Path
from typing import ClassVar

import pytest
import torch
import yaml

from helpers import word_tokenizer
from rankmix.recipes.evaluate import evaluate
from rankmix.recipes.run import open_run
from rankmix.tasks import Example, get_task, synthetic
from rankmix.tasks.kinds import Generation
from test_cli import (
    DATA,
    SPECIALS,
    _tokenizer,
    copy_run,
    fails,
    ok,
    read_jsonl,
    recipe_dict,
    save_tiny_models,
    write_recipe,
)

PIQA = DATA / "commonsense" / "piqa"
needs_piqa = pytest.mark.skipif(not (PIQA / "dev.json").is_file(), reason=f"PIQA files not found in {PIQA}")

MC = "kinds_cli_mc"  # the custom multiple-choice task (a name no other test module registers)
MC_TEMPLATE = "Question: {text_a}\nAnswer:"
PAIR = "kinds_cli_pair"  # a custom classification task of two text fields, its template showing one
TRAIN = {  # what every run here trains for: seconds
    "steps": 6,
    "eval_every": 6,
    "log_every": 3,
    "max_train_examples": 24,
    "max_eval_examples": 8,
    "max_length": 64,
    "seed": 0,
}
BATCH = 4  # recipe_dict's train.batch_size
N_PIQA = {"train": 24, "dev": 10}


# -- data: a custom multiple-choice task, a few PIQA rows ------------------------------------------------
WORDS = ("cat", "dog", "red car", "big house", "the sun", "a small green frog", "moon", "the long road home")


def mc_rows(n: int, seed: int) -> list[dict]:
    """Rows of 2 or 3 options (alternately), of different lengths, the right one named by the question."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        options = rng.sample(WORDS, 2 + i % 2)
        answer = rng.randrange(len(options))
        rows.append({"question": f"which one is {options[answer]}", "options": options, "answer": answer})
    return rows


def pair_rows(n: int, seed: int) -> list[dict]:
    """Rows of two texts, labelled by whether the second names what the first asks for."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        asked, said = rng.choice(WORDS), rng.choice(WORDS)
        rows.append(
            {"first": f"which one is {asked}", "second": said, "same": "yes" if said == asked else "no"}
        )
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """{"dir": a data_dir holding a few PIQA rows (where ../shared/data has them), "mc": the custom
    multiple-choice task's YAML beside its train and dev files, "pair": the custom pair task's}."""
    root = tmp_path_factory.mktemp("kinds-data")
    if (PIQA / "dev.json").is_file():
        piqa = root / "commonsense" / "piqa"
        piqa.mkdir(parents=True)
        for split, n in N_PIQA.items():
            rows = json.loads((PIQA / f"{split}.json").read_text(encoding="utf-8"))[:n]
            (piqa / f"{split}.json").write_text(json.dumps(rows))
    mc_spec = {
        "name": MC,
        "kind": "multiple_choice",
        "text_fields": ["question"],
        "choices_field": "options",
        "answer_field": "answer",
        "template": MC_TEMPLATE,
    }
    pair_spec = {
        "name": PAIR,
        "text_fields": ["first", "second"],
        "label_field": "same",
        "labels": ["no", "yes"],
        "template": MC_TEMPLATE,  # without {text_b}: an encoder reads the pair all the same
    }
    mc = task_folder(root / "mc", mc_rows(24, seed=1), mc_rows(7, seed=2), mc_spec)
    pair = task_folder(root / "pair", pair_rows(24, seed=3), pair_rows(6, seed=4), pair_spec)
    return {"dir": root, "mc": mc, "pair": pair}


def task_folder(folder: Path, train: list[dict], dev: list[dict], spec: dict) -> Path:
    """A custom task's YAML (`spec` with its data files) beside its train and dev rows; returns the YAML."""
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", train)
    write_jsonl(folder / "dev.jsonl", dev)
    spec = {**spec, "data": {"train": "train.jsonl", "dev": "dev.jsonl"}}
    (folder / "task.yaml").write_text(yaml.safe_dump(spec))
    return folder / "task.yaml"


def corpus(data_dir: Path | None = None) -> list[str]:
    """Every word the tasks here use: the synthetic tasks' lists and templates, the custom task's
    options; with `data_dir`, also its PIQA rows in their multiple-choice and label-word forms."""
    lines = [*synthetic.SENTIMENT_TEMPLATES, " ".join(WORDS), "which one is", MC_TEMPLATE]
    for words in (synthetic.POSITIVE, synthetic.NEGATIVE, synthetic.NOUNS, synthetic.ASPECTS):
        lines.append(" ".join(words))
    names = ["subject", "sentiment"] + (["piqa", "piqa_labels"] if data_dir else [])
    for name in names:
        task = get_task(name)
        lines += [task.template, " ".join(task.label_words)]
        if name.startswith("piqa"):
            for split in ("train", "dev"):
                for e in task.load(split, data_dir)[0]:
                    lines += [e.text_a, *e.choices]
    return lines


def tiny_models(root: Path, lines: list[str]) -> dict[str, Path]:
    """{family: folder} of tiny random models (test_cli's shapes) with word tokenizers over `lines`;
    the T5 tokenizer ends a text with </s>, so that T5 learns where an answer stops."""
    text_tok, enc_tok = _tokenizer(lines, encoder=False), _tokenizer(lines, encoder=True)
    t5_tok = word_tokenizer(lines, template="t5", specials=SPECIALS)
    assert text_tok.pad_token_id == 0 and len(t5_tok) == len(enc_tok) == len(text_tok)
    return save_tiny_models(root, text_tok, enc_tok, t5_tok)


@pytest.fixture(scope="module")
def models(tmp_path_factory, data) -> dict[str, Path]:
    """`tiny_models` over the words of `corpus` without PIQA, so that every run but piqa-old is the same
    whether or not ../shared/data is there (the vocabulary sets the models' shapes and random draws);
    where it is, "piqa-decoder": a decoder over a vocabulary that also holds the PIQA rows' words."""
    root = tmp_path_factory.mktemp("kinds-models")
    models = tiny_models(root / "kinds", corpus())
    if (data["dir"] / "commonsense" / "piqa").is_dir():
        models["piqa-decoder"] = tiny_models(root / "piqa", corpus(data["dir"]))["decoder"]
    return models


class KindRuns:
    """The training runs of this module, each trained on first use: (model, tasks, recipe extras)."""

    SPECS: ClassVar[dict[str, tuple[str, list[str], dict]]] = {
        # long enough that each generates words (after 6, or 20, steps the decoder stops at once: empty
        # answers)
        "gen-decoder": ("decoder", ["subject", "sentiment"], {"train": {"steps": 40, "eval_every": 40}}),
        "gen-seq2seq": ("seq2seq", ["subject"], {"train": {"steps": 40, "eval_every": 40, "lr": 3e-2}}),
        "mc-decoder": ("decoder", [MC], {"custom_tasks": "mc"}),
        "mc-encoder": ("encoder", [MC], {"custom_tasks": "mc"}),
        "pair-encoder": ("encoder", [PAIR], {"custom_tasks": "pair"}),
        "piqa-old": ("piqa-decoder", ["piqa"], {"task_kinds": {"piqa": "classification"}}),
    }

    def __init__(self, models: dict[str, Path], data: dict[str, Path], root: Path) -> None:
        self.models, self.data, self.root = models, data, root
        self.done: dict[str, Path] = {}

    def recipe(self, name: str, family: str, tasks: list[str], **extra) -> Path:
        train = TRAIN | extra.pop("train", {})
        recipe = recipe_dict(self.models[family], self.root / name, self.data["dir"], tasks=tasks, **train)
        if custom := extra.pop("custom_tasks", None):
            recipe["custom_tasks"] = [str(self.data[custom])]
        return write_recipe(self.root / f"{name}.yaml", recipe | extra)

    def get(self, name: str) -> Path:
        if name not in self.done:
            family, tasks, extra = self.SPECS[name]
            ok("train", self.recipe(name, family, tasks, **extra), "--no-progress", "--device", "cpu")
            self.done[name] = self.root / name
        return self.done[name]


@pytest.fixture(scope="module")
def runs(models, data, tmp_path_factory) -> KindRuns:
    return KindRuns(models, data, tmp_path_factory.mktemp("kinds-runs"))


def run_yamls(run: Path) -> list[Path]:
    return [run / "run.yaml", run / "adapter" / "run.yaml"]


def recorded_kinds(run: Path) -> list[dict | None]:
    return [yaml.safe_load(p.read_text()).get("task_kinds") for p in run_yamls(run)]


def evaluated(run: Path, out: Path, *args: object) -> dict:
    ok("eval", run, "--out", out, "--device", "cpu", *args)
    return json.loads(out.read_text())


# -- 1. generation: the `subject` task on a decoder and on T5 --------------------------------------------
def squad_normal(text: str) -> str:
    """SQuAD's answer normalisation, written out here: lower case, no punctuation, no articles."""
    text = "".join(c for c in text.lower() if c not in set(string.punctuation))
    return " ".join(w for w in re.split(r"\s+", text) if w and w not in ("a", "an", "the"))


def dev_draw(task: str, cap: int, seed: int) -> list[Example]:
    """A task's dev rows as a recipe draws them: all of them, or `cap` sampled with the data seed."""
    examples, _ = get_task(task).load("dev")
    return examples if len(examples) <= cap else random.Random(seed).sample(examples, cap)


@torch.no_grad()
def greedy_texts(run, t: int, examples: list[Example]) -> list[str]:
    """The answers `run`'s model generates for `examples` of its task `t` (the family's greedy generate,
    batch by batch as evaluation runs them), each cut to its first line."""
    model = run.model.eval()
    texts = []
    for start in range(0, len(examples), BATCH):
        chunk = examples[start : start + BATCH]
        ids = torch.full((len(chunk),), t, dtype=torch.long)
        texts += run.family.generate(model, run.tokenizer, run.tasks[t], ids, chunk, TRAIN["max_length"])
    return [text.strip().split("\n")[0].strip() for text in texts]


@pytest.mark.parametrize("family", ["decoder", "seq2seq"])
def test_generation_task_trains_evaluates_and_predicts(runs, family, tmp_path, monkeypatch):
    run_dir = runs.get(f"gen-{family}")
    tasks = runs.SPECS[f"gen-{family}"][1]
    expected_kinds = {"subject": "generation", "sentiment": "classification"}
    assert recorded_kinds(run_dir) == [{t: expected_kinds[t] for t in tasks}] * 2
    trained = json.loads((run_dir / "results.json").read_text())["tasks"]

    compared: list[str] = []  # what `rankmix eval` scores: the answers it read from generated text
    parse = Generation.parse

    def spy(self, task, example, text):
        compared.append(parse(self, task, example, text))
        return compared[-1]

    monkeypatch.setattr(Generation, "parse", spy)
    results = evaluated(run_dir, tmp_path / "eval.json")
    monkeypatch.undo()
    assert set(results) == set(tasks)
    assert set(results["subject"]) == {"exact_match", "score"}
    em = results["subject"]["exact_match"]
    assert isinstance(em, float) and 0.0 <= em <= 1.0 and results["subject"]["score"] == em
    assert results["subject"] == pytest.approx(trained["subject"], abs=1e-9)  # the best adapter, again
    if "sentiment" in tasks:
        assert set(results["sentiment"]) == {"accuracy", "score"}

    dev = dev_draw("subject", TRAIN["max_eval_examples"], TRAIN["seed"])
    run, _ = open_run(run_dir, [], splits=("dev",))
    assert [e.text_a for e in run.dev_sets[0]] == [e.text_a for e in dev]
    answers = greedy_texts(run, 0, dev)
    assert compared == answers
    assert any(answers), "the run generates nothing: the comparison below would be vacuous"
    hits = [squad_normal(a) == squad_normal(str(e.label)) for a, e in zip(answers, dev, strict=True)]
    assert em == pytest.approx(sum(hits) / len(hits))

    rows = write_jsonl(tmp_path / "rows.jsonl", [{"text_a": e.text_a} for e in dev])
    out = tmp_path / "predicted.jsonl"
    ok("predict", run_dir, "--task", "subject", "--input", rows, "--out", out, "--batch-size", BATCH)
    records = read_jsonl(out)
    assert records == [{"text": a} for a in answers]
    one = json.loads(ok("predict", run_dir, "--task", "subject", "--text", dev[0].text_a))
    assert one == {"text": answers[0]}


def knows(example: Example) -> bool:
    """The rows the oracle below answers right: about half of them, whatever their order."""
    return len(example.text_a) % 2 == 0


def noun_of(sentence: str) -> str:
    """The noun a `subject` sentence is about, read off the sentence (its one word of synthetic.NOUNS)."""
    nouns = [w for w in re.findall(r"\w+", sentence) if w in synthetic.NOUNS]
    assert len(nouns) == 1, sentence
    return nouns[0]


def oracle(self, model, tokenizer, task, ids, chunk, max_length) -> list[str]:
    """A stand-in for the family's generate: the sentence's noun (after an article, upper-cased, with
    punctuation, then a second line) for the rows it `knows`, another noun for the others."""
    nouns = synthetic.NOUNS
    wrong = {noun: nouns[(i + 1) % len(nouns)] for i, noun in enumerate(nouns)}
    said = [noun_of(e.text_a) for e in chunk]
    return [
        f" The {noun.upper()}!\nQuestion: and then?" if knows(e) else f"{wrong[noun]}\n{noun}"
        for e, noun in zip(chunk, said, strict=True)
    ]


def test_exact_match_scores_the_first_line_normalised(runs, tmp_path, monkeypatch):
    """Whatever the model says, eval scores its first line after SQuAD's normalisation: with generate
    answering the right noun for about half the dev rows (in another case, with punctuation and an
    article, before a second line), exact_match is that fraction; not 0 (as an untrained model's), not 1."""
    from rankmix.families import GenerativeFamily

    run_dir = runs.get("gen-decoder")
    dev = dev_draw("subject", TRAIN["max_eval_examples"], TRAIN["seed"])
    assert [noun_of(e.text_a) for e in dev] == [e.label for e in dev]
    expected = sum(map(knows, dev)) / len(dev)
    assert 0 < expected < 1
    monkeypatch.setattr(GenerativeFamily, "generate", oracle)
    assert evaluated(run_dir, tmp_path / "eval.json")["subject"]["exact_match"] == pytest.approx(expected)


def test_predict_writes_the_answer_eval_scores(runs, tmp_path, monkeypatch):
    from rankmix.families import GenerativeFamily

    run_dir = runs.get("gen-decoder")
    dev = dev_draw("subject", TRAIN["max_eval_examples"], TRAIN["seed"])
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"text_a": e.text_a} for e in dev])
    monkeypatch.setattr(GenerativeFamily, "generate", oracle)
    out = tmp_path / "predicted.jsonl"
    ok("predict", run_dir, "--task", "subject", "--input", rows, "--out", out)
    said = oracle(None, None, None, None, None, dev, 0)
    assert read_jsonl(out) == [{"text": text.strip().split("\n")[0].strip()} for text in said]


# -- 2. multiple choice from a custom-task YAML ----------------------------------------------------------
def mc_dev(data: dict[str, Path]) -> list[dict]:
    return read_jsonl(data["mc"].parent / "dev.jsonl")


@torch.no_grad()
def option_scores(run, rows: list[dict]) -> list[torch.Tensor]:
    """Each row's scores of its options, by the family (summed log-likelihoods, or head logits)."""
    model, task = run.model.eval(), run.tasks[0]
    examples = [Example(r["question"], None, r["answer"], tuple(r["options"])) for r in rows]
    scores = []
    for start in range(0, len(examples), BATCH):
        chunk = examples[start : start + BATCH]
        ids = torch.zeros(len(chunk), dtype=torch.long)
        scores += run.family.scores(model, run.tokenizer, task, ids, chunk, TRAIN["max_length"])
    return scores


def picks(family: str, rows: list[dict], scores: list[torch.Tensor]) -> tuple[list[int], list[int]]:
    """(acc's picks, acc_norm's): the largest score, and the largest per character of the option (an
    encoder has no lengths to divide by: its acc_norm pick is its acc pick)."""
    total = [int(s.argmax()) for s in scores]
    if family == "encoder":
        return total, total
    norm = [
        max(range(len(r["options"])), key=lambda i, s=s, r=r: float(s[i]) / len(r["options"][i]))
        for r, s in zip(rows, scores, strict=True)
    ]
    return total, norm


@pytest.mark.parametrize("family", ["decoder", "encoder"])
def test_custom_multiple_choice_trains_evaluates_and_predicts(runs, data, family, tmp_path, capsys):
    run_dir = runs.get(f"mc-{family}")
    assert recorded_kinds(run_dir) == [{MC: "multiple_choice"}] * 2
    results = evaluated(run_dir, tmp_path / "eval.json")
    assert set(results) == {MC}
    got = results[MC]
    assert set(got) == {"acc", "acc_norm", "score"} and got["score"] == got["acc_norm"]

    rows = mc_dev(data)
    assert {len(r["options"]) for r in rows} == {2, 3}
    run, _ = open_run(run_dir, [], splits=("dev",))
    scores = option_scores(run, rows)
    assert [len(s) for s in scores] == [len(r["options"]) for r in rows]
    pick, pick_norm = picks(family, rows, scores)
    answers = [r["answer"] for r in rows]
    assert got["acc"] == pytest.approx(sum(p == a for p, a in zip(pick, answers, strict=True)) / len(rows))
    assert got["acc_norm"] == pytest.approx(
        sum(p == a for p, a in zip(pick_norm, answers, strict=True)) / len(rows)
    )

    inputs = write_jsonl(
        tmp_path / "rows.jsonl", [{"question": r["question"], "options": r["options"]} for r in rows]
    )
    out = tmp_path / "predicted.jsonl"
    ok("predict", run_dir, "--task", MC, "--input", inputs, "--out", out, "--batch-size", 3)
    records = read_jsonl(out)
    assert len(records) == len(rows)
    for record, row, p, s in zip(records, rows, pick_norm, scores, strict=True):
        assert set(record) == {"choice", "index", "score"}
        assert record["index"] == p and record["choice"] == row["options"][p]
        # the pick's probability by the criterion that picked it: per character, on a decoder
        lengths = [1 if family == "encoder" else len(o) for o in row["options"]]
        probs = (s.float() / torch.tensor(lengths)).softmax(-1)
        assert record["score"] == pytest.approx(float(probs[p]), abs=1e-5)
        assert int(probs.argmax()) == p and record["score"] >= 1 / len(row["options"])

    # options spaced out read as the training reader reads them: stripped, the same records
    spaced = [
        {"question": f" {r['question']} ", "options": [f"  {o}   " for o in r["options"]]} for r in rows
    ]
    inputs = write_jsonl(tmp_path / "spaced-rows.jsonl", spaced)
    out = tmp_path / "spaced.jsonl"
    ok("predict", run_dir, "--task", MC, "--input", inputs, "--out", out, "--batch-size", 3)
    assert read_jsonl(out) == records

    bad = write_jsonl(tmp_path / "bad.jsonl", [{"question": "which one is cat", "options": ["cat", "dog"]}])
    with bad.open("a") as f:
        f.write(json.dumps({"question": "which one is dog"}) + "\n")
    message = fails(capsys, "predict", run_dir, "--task", MC, "--input", bad)
    assert "line 2" in message and "'options'" in message and "multiple-choice" in message
    assert "line 1" not in message


def test_predict_refuses_repeated_options(runs, tmp_path, capsys):
    """Options equal once stripped, as the training reader strips them, would tie: refused, naming the
    line."""
    run_dir = runs.get("mc-decoder")
    twice = write_jsonl(
        tmp_path / "twice.jsonl",
        [
            {"question": "which one is cat", "options": ["cat", "dog"]},
            {"question": "x", "options": ["cat", " cat"]},
        ],
    )
    message = fails(capsys, "predict", run_dir, "--task", MC, "--input", twice)
    assert message.startswith(f"{twice}, line 2: option 'cat' appears twice")


def test_predict_reads_the_texts_a_task_was_trained_on(runs, data, tmp_path, capsys):
    """A custom task of two text fields whose template shows only the first: its training reader needs
    both and an encoder reads the pair, and so does predict: each record is the family's scoring of the
    row's (first, second), and a row without `second` is refused, naming its line and the field."""
    run_dir = runs.get("pair-encoder")
    rows = [{"first": "which one is cat", "second": said} for said in ("cat", "the long road home", "moon")]
    out = tmp_path / "predicted.jsonl"
    ok(
        "predict",
        run_dir,
        "--task",
        PAIR,
        "--input",
        write_jsonl(tmp_path / "rows.jsonl", rows),
        "--out",
        out,
    )
    records = read_jsonl(out)

    run, _ = open_run(run_dir, [])
    task = run.tasks[0]
    examples = [Example(r["first"], r["second"], 0) for r in rows]
    with torch.no_grad():
        scores = run.family.scores(
            run.model.eval(), run.tokenizer, task, torch.zeros(3, dtype=torch.long), examples, 64
        )
    for record, s in zip(records, scores, strict=True):
        probs = s.softmax(-1)
        assert record == {
            "label": task.labels[int(probs.argmax())],
            "score": pytest.approx(float(probs.max())),
        }
    assert len({r["score"] for r in records}) == len(rows)  # the second text counts

    bad = write_jsonl(tmp_path / "bad.jsonl", [rows[0], {"first": "which one is dog"}])
    message = fails(capsys, "predict", run_dir, "--task", PAIR, "--input", bad)
    assert message.startswith(f"{bad}, line 2: ") and "'second'" in message
    message = fails(capsys, "predict", run_dir, "--task", PAIR, "--text", "which one is cat")
    assert "takes two texts" in message and "first, second" in message


# -- 3. what a model or a command cannot serve: clear errors ---------------------------------------------
def test_an_encoder_recipe_with_a_generation_task_fails_before_training(runs, capsys):
    recipe = runs.recipe("gen-encoder", "encoder", ["sentiment", "subject"])
    message = fails(capsys, "train", recipe, "--no-progress", "--device", "cpu")
    assert "subject" in message and "generation task" in message
    assert "encoder cannot generate" in message
    assert not (runs.root / "gen-encoder").exists()  # nothing trained, nothing written


def test_eval_generate_mode_on_an_encoder_run_is_refused(runs, capsys, tmp_path):
    run_dir = runs.get("mc-encoder")
    out = tmp_path / "eval.json"
    message = fails(capsys, "eval", run_dir, "--mode", "generate", "--out", out)
    assert "'generate'" in message and "encoder" in message and "decoder or seq2seq" in message
    assert not out.exists()
    assert evaluated(run_dir, out, "--mode", "score")[MC]  # score mode still serves it


def test_score_mode_on_a_generation_task_is_refused(runs, capsys, tmp_path):
    """A generation task generates whatever the mode: `--mode score` is refused, not ignored, by
    `predict`, `eval RUN` and `eval RECIPE.yaml`, naming the task; without --mode they serve it."""
    run_dir = runs.get("gen-decoder")
    recipe = runs.recipe("gen-zero-shot", "decoder", ["sentiment", "subject"])
    text = ["--task", "subject", "--text", "the film was great"]
    for args in (["eval", run_dir], ["eval", recipe], ["predict", run_dir, *text]):
        message = fails(capsys, *args, "--mode", "score", "--device", "cpu")
        assert message.startswith("--mode score: subject is a generation task")
        assert "--mode generate" in message
    assert json.loads(ok("predict", run_dir, *text, "--device", "cpu")).keys() == {"text"}


def test_predict_text_on_a_multiple_choice_task_asks_for_input(runs, capsys):
    message = fails(capsys, "predict", runs.get("mc-decoder"), "--task", MC, "--text", "which one is cat")
    assert MC in message and "multiple-choice" in message and "--input" in message and "'options'" in message


# -- 4. run folders from before task kinds ---------------------------------------------------------------
@needs_piqa
def test_old_run_folders_evaluate_as_they_were_trained(runs, data, tmp_path):
    """A recipe may say how a task is trained (task_kinds): piqa as classification trains its label-word
    twin. A run.yaml without task_kinds predates kinds, so its piqa is that twin (accuracy of the answer
    word); a run.yaml that records piqa as multiple choice is evaluated as multiple choice."""
    trained = runs.get("piqa-old")
    assert recorded_kinds(trained) == [{"piqa": "classification"}] * 2
    assert set(json.loads((trained / "results.json").read_text())["tasks"]["piqa"]) == {"accuracy", "score"}
    old = copy_run(trained, tmp_path / "old")
    for path in run_yamls(old):
        recipe = yaml.safe_load(path.read_text())
        del recipe["task_kinds"]
        path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    assert recorded_kinds(old) == [None, None]

    results = evaluated(old, tmp_path / "old.json")
    assert set(results) == {"piqa"} and set(results["piqa"]) == {"accuracy", "score"}
    run, _ = open_run(old, [], splits=("dev",))
    twin, multiple_choice = get_task("piqa_labels"), get_task("piqa")
    dev_labels, _ = twin.load("dev", data["dir"])
    dev_mc, _ = multiple_choice.load("dev", data["dir"])
    cap = TRAIN["max_eval_examples"]
    assert len(dev_labels) == len(dev_mc) == N_PIQA["dev"] > cap
    draw = random.Random(TRAIN["seed"]).sample(range(N_PIQA["dev"]), cap)  # the recipe's dev draw

    def reference(task, examples) -> dict[str, float]:
        rows = [examples[i] for i in draw]
        args = (run.tokenizer, [task], [rows], BATCH, TRAIN["max_length"])
        return evaluate(run.model, run.family, *args)[task.name]

    want = reference(twin, dev_labels)
    assert results["piqa"] == pytest.approx(want, abs=1e-9)

    for path in run_yamls(old):  # a run.yaml of today's version, recording piqa as multiple choice
        recipe = yaml.safe_load(path.read_text())
        path.write_text(yaml.safe_dump(recipe | {"task_kinds": {"piqa": "multiple_choice"}}, sort_keys=False))
    as_mc = evaluated(old, tmp_path / "mc.json")
    assert set(as_mc["piqa"]) == {"acc", "acc_norm", "score"}
    assert as_mc["piqa"] == pytest.approx(reference(multiple_choice, dev_mc), abs=1e-9)
