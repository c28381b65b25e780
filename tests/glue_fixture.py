"""Tiny GLUE-format data, generated, so that the end-to-end tests run on any clone without ../shared/data.

`write_glue_fixture(root)` writes glue/{RTE,CoLA,STS-B,MRPC}/{train,dev}.tsv in the published layout,
with the headers and columns the readers of rankmix.tasks parse (CoLA without a header line, MRPC with
a UTF-8 BOM, STS-B float scores 0-5). The text comes from a seeded random.Random over a small
vocabulary, so the bytes are the same on every run, and each label follows from the words, a signal a
tiny model can pick up: a non-entailed hypothesis says "never" or names another object, an unacceptable
sentence has its verb last or a doubled article, a similarity score drops by one per replaced word, a
paraphrase is the passive of the same sentence.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

NOUNS = ("cat", "dog", "bird", "horse", "child", "farmer", "teacher", "doctor")
VERBS = ("chased", "helped", "painted", "followed", "watched", "pushed")  # past = participle
ADJECTIVES = ("small", "old", "happy", "green", "quiet", "tall")
PLACES = ("park", "river", "garden", "market", "school", "station")
SIZES = {"train": 300, "dev": 40}

Row = tuple[str, ...]


def _other(rng: random.Random, words: tuple[str, ...], *avoid: str) -> str:
    return rng.choice([w for w in words if w not in avoid])


def _scene(rng: random.Random) -> dict[str, str]:
    """Who did what to whom, where: the content words of one generated sentence."""
    subject = rng.choice(NOUNS)
    return {
        "adj": rng.choice(ADJECTIVES),
        "subj": subject,
        "verb": rng.choice(VERBS),
        "obj": _other(rng, NOUNS, subject),
        "place": rng.choice(PLACES),
    }


def _rte(rng: random.Random, i: int) -> Row:
    """index, sentence1, sentence2, label: entailed hypotheses restate part of the premise."""
    s = _scene(rng)
    premise = "the {adj} {subj} {verb} the {obj} near the {place} .".format(**s)
    if i % 2 == 0:
        options = ["the {subj} {verb} the {obj} .", "the {subj} was near the {place} ."]
        label = "entailment"
    else:
        stranger = _other(rng, NOUNS, s["subj"], s["obj"])
        options = ["the {subj} never {verb} the {obj} .", "the {subj} {verb} the " + stranger + " ."]
        label = "not_entailment"
    return str(i), premise, rng.choice(options).format(**s), label


def _cola(rng: random.Random, i: int) -> Row:
    """source, label, original mark ("*" on unacceptable rows), sentence: no header line."""
    s = _scene(rng)
    if i % 2 == 0:
        sentence, label = "the {adj} {subj} {verb} the {obj} .", "1"
    else:
        sentence = rng.choice(["the {adj} {subj} the {obj} {verb} .", "the the {adj} {subj} {verb} {obj} ."])
        label = "0"
    return f"fx{i % 4:02d}", label, "" if label == "1" else "*", sentence.format(**s)


def _stsb(rng: random.Random, i: int) -> Row:
    """The ten STS-B columns; the score is 5 minus the number of content words replaced in sentence2."""
    s = _scene(rng)
    replaced = rng.sample(sorted(s), rng.randint(0, 5))
    pools = {"adj": ADJECTIVES, "subj": NOUNS, "verb": VERBS, "obj": NOUNS, "place": PLACES}
    t = {k: _other(rng, pools[k], v) if k in replaced else v for k, v in s.items()}
    template = "the {adj} {subj} {verb} the {obj} in the {place} ."
    sentences = template.format(**s), template.format(**t)
    meta = (str(i), "main-fixture", "fixture", "2024", f"{i:04d}", "none", "none")
    return (*meta, *sentences, f"{5 - len(replaced):.3f}")


def _mrpc(rng: random.Random, i: int) -> Row:
    """Quality, #1 ID, #2 ID, #1 String, #2 String: a paraphrase is the passive of the same sentence."""
    s = _scene(rng)
    if i % 2 == 1:  # another doer: not a paraphrase
        s = {**s, "subj2": _other(rng, NOUNS, s["subj"], s["obj"])}
    second = "the {obj} was {verb} by the " + ("{subj2}" if i % 2 else "{subj}") + " ."
    ids = [str(rng.randrange(100_000, 1_000_000)) for _ in range(2)]
    return str(1 - i % 2), *ids, "the {subj} {verb} the {obj} .".format(**s), second.format(**s)


STSB_HEADER = ("index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1")
# folder -> (header line or None, row generator, seed, encoding)
TASKS: dict[str, tuple[Row | None, Callable[[random.Random, int], Row], int, str]] = {
    "RTE": (("index", "sentence1", "sentence2", "label"), _rte, 1, "utf-8"),
    "CoLA": (None, _cola, 2, "utf-8"),
    "STS-B": ((*STSB_HEADER, "sentence2", "score"), _stsb, 3, "utf-8"),
    "MRPC": (("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"), _mrpc, 4, "utf-8-sig"),
}


def write_glue_fixture(root: Path) -> Path:
    """Write the generated GLUE tasks under `root` (created if need be); returns `root`, the data_dir."""
    for folder, (header, make_row, seed, encoding) in TASKS.items():
        rng = random.Random(seed)
        (root / "glue" / folder).mkdir(parents=True, exist_ok=True)
        for split, n in SIZES.items():
            rows = [make_row(rng, i) for i in range(n)]
            lines = ([header] if header else []) + rows
            text = "".join("\t".join(cells) + "\n" for cells in lines)
            (root / "glue" / folder / f"{split}.tsv").write_text(text, encoding=encoding, newline="\n")
    return root
