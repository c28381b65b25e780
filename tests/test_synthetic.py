"""Synthetic demo tasks: deterministic, balanced, disjoint splits, and the data is what it claims
(negation flips polarity; a bag of words solves sentiment but not negation; the generation task
`subject` answers the noun its sentence is about)."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from rankmix.tasks import get_task
from rankmix.tasks.base import Example, Task
from rankmix.tasks.synthetic import (
    NEGATIVE,
    NOUNS,
    POSITIVE,
    TOPICS,
    _generate,
    subject_task,
    synthetic_tasks,
)

SPLITS = ("train", "dev")


def load(task: Task, split: str) -> list[Example]:
    examples, skipped = task.load(split)
    assert skipped == 0
    return examples


@pytest.fixture(scope="module")
def tasks() -> dict[str, Task]:
    return {t.name: t for t in synthetic_tasks()}


def words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def bag_of_words(text: str) -> int:
    """Count positive minus negative adjectives; ties go to negative."""
    tokens = words(text)
    score = sum(t in POSITIVE for t in tokens) - sum(t in NEGATIVE for t in tokens)
    return int(score > 0)


def negation_rule(text: str) -> int:
    """Reference reading: each adjective counts its polarity, flipped when a "not" came before it
    (since the previous adjective)."""
    score, negated = 0, False
    for t in words(text):
        if t == "not":
            negated = True
        elif t in POSITIVE or t in NEGATIVE:
            polarity = 1 if t in POSITIVE else -1
            score += -polarity if negated else polarity
            negated = False
    assert score != 0, f"ambiguous under the reference rule: {text!r}"
    return int(score > 0)


def accuracy(rule, examples: list[Example]) -> float:
    return sum(rule(e.text_a) == e.label for e in examples) / len(examples)


def test_task_interface(tasks):
    assert list(tasks) == ["sentiment", "topic", "negation"]
    assert tasks["topic"].labels == ("sports", "food", "weather", "technology")
    for task in tasks.values():
        assert task.label_words == task.labels
        assert task.metrics == ("accuracy",)
        assert task.kind.name == "classification" and task.kind.head_size(task) == len(task.labels)
        assert get_task(task.name).labels == task.labels  # registered for `rankmix quickstart`
        example = load(task, "train")[0]
        prompt = task.prompt(example)
        assert prompt.startswith(("Review: ", "Sentence: ")) and example.text_a in prompt
        assert prompt.endswith(":") and "\n" in prompt
        assert task.kind.target(task, example).text == task.labels[example.label]
        assert example.text_b is None and isinstance(example.label, int)


def test_reader_ignores_data_dir_and_checks_split(tasks, tmp_path):
    task = tasks["sentiment"]
    from_folder, _ = task.load("dev", data_dir=tmp_path / "does-not-exist")
    assert from_folder == load(task, "dev")
    with pytest.raises(ValueError, match="split"):
        task.reader(tmp_path, "test", False)


def test_deterministic_for_a_seed():
    first = synthetic_tasks(n_train=50, n_dev=30, seed=7)
    second = synthetic_tasks(n_train=50, n_dev=30, seed=7)
    for a, b in zip(first, second, strict=True):
        for split in SPLITS:
            assert load(a, split) == load(b, split)


def test_different_seeds_differ():
    for a, b in zip(synthetic_tasks(seed=0), synthetic_tasks(seed=1), strict=True):
        for split in SPLITS:
            texts_a = {e.text_a for e in load(a, split)}
            texts_b = {e.text_a for e in load(b, split)}
            assert len(texts_a & texts_b) < 0.5 * len(texts_a), (a.name, split)


def test_sizes_match():
    for task in synthetic_tasks(n_train=123, n_dev=45):
        assert len(load(task, "train")) == 123
        assert len(load(task, "dev")) == 45
    with pytest.raises(ValueError, match="positive"):
        synthetic_tasks(n_train=0)


def test_labels_balanced(tasks):
    for task in tasks.values():
        for split in SPLITS:
            examples = load(task, split)
            counts = Counter(e.label for e in examples)
            expected = len(examples) / len(task.labels)
            assert set(counts) == set(range(len(task.labels)))
            for label, count in counts.items():
                assert abs(count - expected) <= 0.15 * expected, (task.name, split, label, count)


def test_train_and_dev_share_no_sentence(tasks):
    for task in tasks.values():
        train = [e.text_a for e in load(task, "train")]
        dev = [e.text_a for e in load(task, "dev")]
        assert len(set(train)) == len(train) and len(set(dev)) == len(dev)
        assert not set(train) & set(dev), task.name


def test_negation_labels_follow_the_flip(tasks):
    for split in SPLITS:
        examples = load(tasks["negation"], split)
        negated = sum("not" in words(e.text_a) for e in examples) / len(examples)
        assert 0.4 <= negated <= 0.8, negated
        wrong = [e for e in examples if negation_rule(e.text_a) != e.label]
        assert not wrong, wrong[:3]


def test_sentiment_labels_follow_the_adjectives(tasks):
    for e in load(tasks["sentiment"], "train"):
        polarity = POSITIVE if e.label == 1 else NEGATIVE
        adjectives = [t for t in words(e.text_a) if t in POSITIVE or t in NEGATIVE]
        assert adjectives and all(t in polarity for t in adjectives), e


def test_topic_sentences_are_about_their_topic(tasks):
    names = list(TOPICS)
    examples = load(tasks["topic"], "train")
    distractors = 0
    for e in examples:
        mentions = Counter(
            name for name in names for w in TOPICS[name] if re.search(rf"\bthe {w}\b", e.text_a)
        )
        (top, n_top), *rest = mentions.most_common()
        assert top == names[e.label] and all(n < n_top for _, n in rest), e
        distractors += len(mentions) > 1
    assert distractors > 0.1 * len(examples)  # some sentences mention another topic too


def test_bag_of_words_solves_sentiment_but_not_negation(tasks):
    """The difficulty ordering: a word-list lookup is enough for sentiment, not for negation."""
    for split in SPLITS:
        assert accuracy(bag_of_words, load(tasks["sentiment"], split)) > 0.95
        assert accuracy(bag_of_words, load(tasks["negation"], split)) < 0.75


def test_too_many_examples_for_the_vocabulary_raises():
    with pytest.raises(ValueError, match="cannot draw 5 distinct"):
        _generate("tiny", ("{w}",), lambda label: {"w": ("a", "b")}, 2, 5, "seed")


# ---------------------------------------------------------------- subject: a generation task


@pytest.fixture(scope="module")
def subject() -> Task:
    return subject_task()


def nouns_in(text: str) -> list[str]:
    return [t for t in words(text) if t in NOUNS]


def test_subject_task_interface(subject):
    assert subject.name == "subject" and subject.kind.name == "generation" and subject.kind.generates
    assert subject.labels == subject.label_words == () and subject.metrics == ("exact_match",)
    assert get_task("subject").kind.name == "generation"  # registered, like the other toy tasks
    for example in load(subject, "train")[:20]:
        assert example.text_b is None and isinstance(example.label, str) and example.choices == ()
        prompt = subject.prompt(example)
        assert example.text_a in prompt and prompt.startswith("Sentence: ") and prompt.endswith("Answer:")
        assert subject.kind.target(subject, example).text == example.label


def test_subject_label_is_the_noun_of_the_sentence(subject):
    for split in SPLITS:
        for e in load(subject, split):
            assert nouns_in(e.text_a) == [e.label], e  # the one noun of the sentence, and it is the label


def test_subject_is_solved_by_copying_the_noun_and_scored_by_exact_match(subject):
    examples = load(subject, "dev")
    references = [e.label for e in examples]
    copied = [f"The {nouns_in(e.text_a)[0].capitalize()}." for e in examples]  # exact match normalises
    assert subject.score(copied, references) == {"exact_match": 1.0, "score": 1.0}
    first_word = [words(e.text_a)[0] for e in examples]  # a wrong rule scores (next to) nothing
    assert subject.score(first_word, references)["exact_match"] < 0.1


def test_subject_deterministic_sizes_and_seeds():
    a, b = subject_task(n_train=50, n_dev=30, seed=7), subject_task(n_train=50, n_dev=30, seed=7)
    for split in SPLITS:
        assert load(a, split) == load(b, split)
    assert (len(load(a, "train")), len(load(a, "dev"))) == (50, 30)
    first, other = subject_task(seed=0), subject_task(seed=1)
    for split in SPLITS:
        texts = {e.text_a for e in load(first, split)}
        assert len(texts & {e.text_a for e in load(other, split)}) < 0.5 * len(texts), split


def test_subject_train_and_dev_share_no_sentence(subject):
    train = [e.text_a for e in load(subject, "train")]
    dev = [e.text_a for e in load(subject, "dev")]
    assert len(set(train)) == len(train) and len(set(dev)) == len(dev)
    assert not set(train) & set(dev)


def test_subject_covers_every_noun(subject):
    for split in SPLITS:
        assert {e.label for e in load(subject, split)} == set(NOUNS), split


def test_subject_answers_balanced(subject):
    """As the classification tasks' labels: every noun about equally often in each split."""
    for split in SPLITS:
        examples = load(subject, split)
        counts = Counter(e.label for e in examples)
        expected = len(examples) / len(NOUNS)
        assert set(counts) == set(NOUNS)
        for noun, count in counts.items():
            assert abs(count - expected) <= max(1, 0.15 * expected), (split, noun, count)
