"""Metrics against slow, obvious reference implementations written here from the definitions (and, for
the text metrics, against worked examples)."""

from __future__ import annotations

import math
import random
import string
import sys

import pytest
import torch

from rankmix.tasks import METRICS, compute


def ref_accuracy(pred, ref):
    hits = 0
    for p, r in zip(pred, ref, strict=True):
        if p == r:
            hits += 1
    return hits / len(ref)


def ref_f1(pred, ref):
    """F1 as the harmonic mean of precision and recall of class 1 (0 where either is undefined or 0)."""
    tp = sum(1 for p, r in zip(pred, ref, strict=True) if p == 1 and r == 1)
    fp = sum(1 for p, r in zip(pred, ref, strict=True) if p == 1 and r == 0)
    fn = sum(1 for p, r in zip(pred, ref, strict=True) if p == 0 and r == 1)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def ref_mcc_binary(pred, ref):
    """(tp*tn - fp*fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) from the 2x2 confusion matrix."""
    tp = tn = fp = fn = 0
    for p, r in zip(pred, ref, strict=True):
        if p == 1 and r == 1:
            tp += 1
        elif p == 0 and r == 0:
            tn += 1
        elif p == 1:
            fp += 1
        else:
            fn += 1
    denominator = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return (tp * tn - fp * fn) / denominator if denominator else 0.0


def ref_mcc_multiclass(pred, ref, classes):
    """Gorodkin's R_K: the correlation of the one-hot prediction and reference matrices,
    sum_k cov(X_k, Y_k) / sqrt(sum_k cov(X_k, X_k) * sum_k cov(Y_k, Y_k))."""
    n = len(ref)

    def cov(a, b):
        xs = [[1.0 if v == k else 0.0 for v in a] for k in classes]
        ys = [[1.0 if v == k else 0.0 for v in b] for k in classes]
        total = 0.0
        for x, y in zip(xs, ys, strict=True):
            mx, my = sum(x) / n, sum(y) / n
            total += sum((xi - mx) * (yi - my) for xi, yi in zip(x, y, strict=True))
        return total

    denominator = math.sqrt(cov(pred, pred) * cov(ref, ref))
    return cov(pred, ref) / denominator if denominator else 0.0


def ref_pearson(x, y):
    """The computational form n*sum(xy) - sum(x)*sum(y) over the square roots of the same for x and y."""
    n = len(x)
    sxy = n * sum(a * b for a, b in zip(x, y, strict=True)) - sum(x) * sum(y)
    sxx = n * sum(a * a for a in x) - sum(x) ** 2
    syy = n * sum(b * b for b in y) - sum(y) ** 2
    return sxy / math.sqrt(sxx * syy)


def ref_ranks(values):
    """Average 1-based ranks by counting: 1 + (number smaller) + (number of other equal values) / 2."""
    return [1 + sum(w < v for w in values) + (sum(w == v for w in values) - 1) / 2 for v in values]


def ref_spearman(x, y):
    return ref_pearson(ref_ranks(x), ref_ranks(y))


def draws(seed, n, values):
    rng = random.Random(seed)
    return [rng.choice(values) for _ in range(n)], [rng.choice(values) for _ in range(n)]


SEEDS = range(12)


@pytest.mark.parametrize("seed", SEEDS)
def test_classification_metrics_match_references(seed):
    n = random.Random(seed).randint(5, 300)
    pred, ref = draws(seed, n, [0, 1])
    assert compute("accuracy", pred, ref) == pytest.approx(ref_accuracy(pred, ref), abs=1e-12)
    assert compute("f1", pred, ref) == pytest.approx(ref_f1(pred, ref), abs=1e-12)
    assert compute("mcc", pred, ref) == pytest.approx(ref_mcc_binary(pred, ref), abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_multiclass_mcc_and_accuracy(seed):
    pred, ref = draws(seed, 200, [0, 1, 2, 3])
    assert compute("mcc", pred, ref) == pytest.approx(ref_mcc_multiclass(pred, ref, range(4)), abs=1e-12)
    assert compute("accuracy", pred, ref) == pytest.approx(ref_accuracy(pred, ref), abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_correlations_match_references(seed):
    rng = random.Random(seed)
    n = rng.randint(3, 200)
    x = [rng.uniform(0, 5) for _ in range(n)]
    y = [v + rng.gauss(0, 2) for v in x]
    assert compute("pearson", x, y) == pytest.approx(ref_pearson(x, y), abs=1e-9)
    assert compute("spearman", x, y) == pytest.approx(ref_spearman(x, y), abs=1e-9)


@pytest.mark.parametrize("seed", SEEDS)
def test_spearman_with_many_ties(seed):
    # Values from {0, ..., 4}: most values are tied, so the average-rank rule decides the result.
    x, y = draws(seed, 60, [0, 1, 2, 3, 4])
    assert len(set(x)) > 1 and len(set(y)) > 1
    assert compute("spearman", x, y) == pytest.approx(ref_spearman(x, y), abs=1e-9)


def test_spearman_ties_by_hand():
    # x = [1, 2, 2, 3] ranks to [1, 2.5, 2.5, 4]; y = [1, 2, 3, 4] to itself. Deviations from the mean 2.5:
    # [-1.5, 0, 0, 1.5] and [-1.5, -0.5, 0.5, 1.5]; covariance sum 4.5, squares 4.5 and 5,
    # so rho = 4.5 / sqrt(4.5 * 5) = sqrt(0.9).
    assert compute("spearman", [1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(math.sqrt(0.9), abs=1e-12)


def test_perfect_predictions_score_one():
    labels = [0, 1, 1, 0, 1, 0, 0, 1]
    scores = [0.5, 4.2, 3.3, 1.0, 2.7, 5.0, 0.0, 2.7]
    for name in ("accuracy", "f1", "mcc"):
        assert compute(name, labels, labels) == pytest.approx(1.0)
    for name in ("pearson", "spearman"):
        assert compute(name, scores, scores) == pytest.approx(1.0)


def test_inverted_predictions_score_minus_one():
    labels = [0, 1, 1, 0, 1, 0]
    assert compute("mcc", [1 - v for v in labels], labels) == pytest.approx(-1.0)
    assert compute("pearson", [1.0, 2.0, 3.0], [3.0, 2.0, 1.0]) == pytest.approx(-1.0)
    assert compute("spearman", [1.0, 2.0, 3.0], [30.0, 20.0, 10.0]) == pytest.approx(-1.0)


@pytest.mark.parametrize("name", ["mcc", "pearson", "spearman", "f1"])
def test_degenerate_constant_input_is_zero_not_nan(name):
    references = [0, 1, 0, 1, 1]
    constant = [0] * 5  # no positive prediction: F1, MCC and correlations are undefined
    assert compute(name, constant, references) == 0.0
    assert compute(name, references, constant) == 0.0


def test_accepts_tensors_and_returns_float():
    value = compute("accuracy", torch.tensor([1, 0, 1, 1]), torch.tensor([1, 1, 1, 0]))
    assert type(value) is float and value == pytest.approx(2 / 4)


def test_bad_calls_are_clear_errors():
    with pytest.raises(ValueError, match=r"unknown metric 'acc'.*accuracy"):
        compute("acc", [1], [1])
    with pytest.raises(ValueError, match="3 predictions but 2 references"):
        compute("accuracy", [1, 0, 1], [1, 0])
    with pytest.raises(ValueError, match="no examples"):
        compute("pearson", [], [])
    assert set(METRICS) == {"accuracy", "f1", "mcc", "pearson", "spearman", "exact_match", "rouge_l"}


# ---------------------------------------------------------------- text metrics (generation tasks)


def ref_normalize(text: str) -> str:
    """SQuAD's answer normalisation, word by word: lower case, punctuation removed, the articles a, an
    and the dropped, words joined by single spaces."""
    for mark in string.punctuation:
        text = text.replace(mark, "")
    return " ".join(w for w in text.lower().split() if w not in ("a", "an", "the"))


def ref_exact_match(pred, ref):
    return sum(ref_normalize(p) == ref_normalize(r) for p, r in zip(pred, ref, strict=True)) / len(ref)


def ref_tokens(text: str) -> list[str]:
    """rouge-score's default tokenisation: lower case, runs of anything but a-z and 0-9 split words."""
    cleaned = "".join(c if c in string.ascii_lowercase + string.digits else " " for c in text.lower())
    return cleaned.split()


def ref_lcs(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence, by the textbook dynamic programme."""
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a, 1):
        for j, y in enumerate(b, 1):
            table[i][j] = table[i - 1][j - 1] + 1 if x == y else max(table[i - 1][j], table[i][j - 1])
    return table[-1][-1]


def ref_rouge_l(pred, ref):
    """Mean ROUGE-L F1: 2PR / (P + R) with P = LCS / |prediction|, R = LCS / |reference| (0 without LCS)."""
    total = 0.0
    for p, r in zip(pred, ref, strict=True):
        tp, tr = ref_tokens(p), ref_tokens(r)
        lcs = ref_lcs(tp, tr) if tp and tr else 0
        total += 2 * lcs / (len(tp) + len(tr)) if lcs else 0.0  # 2PR/(P+R) simplified
    return total / len(ref)


WORDS = ["the", "a", "An", "cat", "Cat,", "sat", "on", "mat.", "dog!", "big", "red", "car's", "42", "--"]


def random_texts(seed: int, n: int) -> tuple[list[str], list[str]]:
    """Pairs of short texts from a small vocabulary (with articles, case and punctuation), some equal."""
    rng = random.Random(seed)
    refs = [" ".join(rng.choices(WORDS, k=rng.randint(1, 6))) for _ in range(n)]
    preds = [r if rng.random() < 0.3 else " ".join(rng.choices(WORDS, k=rng.randint(1, 6))) for r in refs]
    return preds, refs


@pytest.mark.parametrize("seed", SEEDS)
def test_text_metrics_match_references(seed):
    pytest.importorskip("rouge_score")
    preds, refs = random_texts(seed, random.Random(seed).randint(5, 60))
    assert compute("exact_match", preds, refs) == pytest.approx(ref_exact_match(preds, refs), abs=1e-12)
    assert compute("rouge_l", preds, refs) == pytest.approx(ref_rouge_l(preds, refs), abs=1e-12)


@pytest.mark.parametrize(
    "pred,ref,same",
    [
        ("The Cat.", "cat", True),
        ("  a   big dog ", "Big dog!", True),
        ("An apple", "the apple", True),
        ("cat's", "cats", True),  # punctuation goes, inside words too
        ("the cat", "cat sat", False),
        ("theatre", "atre", False),  # only whole words are articles
        ("", "the", True),  # nothing left of either
    ],
)
def test_exact_match_by_hand(pred, ref, same):
    assert compute("exact_match", [pred], [ref]) == float(same)


def test_rouge_l_by_hand():
    pytest.importorskip("rouge_score")
    # "the cat on mat" is a subsequence of "the cat sat on the mat": LCS 4, P 1, R 4/6, F 0.8.
    assert compute("rouge_l", ["the cat on mat"], ["the cat sat on the mat"]) == pytest.approx(0.8)
    # order matters: "mat the cat" against "the cat mat" has LCS 2 ("the cat" or "cat mat"), F 2/3.
    assert compute("rouge_l", ["mat the cat"], ["the cat mat"]) == pytest.approx(2 / 3)
    assert compute("rouge_l", ["Red car!"], ["red CAR"]) == pytest.approx(1.0)
    assert compute("rouge_l", ["blue", "red car"], ["red", "red car"]) == pytest.approx(0.5)


def test_text_metrics_take_any_values_as_text():
    assert compute("exact_match", [1, "2"], ["1", 3]) == pytest.approx(0.5)


def test_rouge_l_without_rouge_score_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "rouge_score", None)  # makes the import fail
    with pytest.raises(ModuleNotFoundError, match=r"rouge_l needs the rouge-score package: pip install"):
        compute("rouge_l", ["a"], ["a"])
