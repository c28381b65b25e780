"""Task metrics in pure Python, so evaluation needs neither sklearn nor scipy.

Values are fractions (accuracy 0.83, not 83) and correlations lie in [-1, 1]. Degenerate inputs (a
constant prediction, where a correlation or MCC is undefined) score 0.0 instead of NaN, so that a
collapsed model reads as "no signal" in averages and model selection.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence

Values = Sequence[float]


def _accuracy(pred: Values, ref: Values) -> float:
    return sum(p == r for p, r in zip(pred, ref, strict=True)) / len(ref)


def _f1(pred: Values, ref: Values) -> float:
    """Binary F1 of the positive class 1 (MRPC "equivalent", QQP "duplicate")."""
    tp = sum(p == 1 and r == 1 for p, r in zip(pred, ref, strict=True))
    fp = sum(p == 1 and r != 1 for p, r in zip(pred, ref, strict=True))
    fn = sum(p != 1 and r == 1 for p, r in zip(pred, ref, strict=True))
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def _mcc(pred: Values, ref: Values) -> float:
    """Matthews correlation from confusion-matrix counts; the multi-class form, equal to the binary
    (tp*tn - fp*fn) / sqrt(...) for two classes."""
    n = len(ref)
    correct = sum(p == r for p, r in zip(pred, ref, strict=True))
    p_counts, r_counts = Counter(pred), Counter(ref)
    cov = correct * n - sum(p_counts[k] * r_counts[k] for k in p_counts)
    var_p = n * n - sum(c * c for c in p_counts.values())
    var_r = n * n - sum(c * c for c in r_counts.values())
    return cov / math.sqrt(var_p * var_r) if var_p and var_r else 0.0


def _pearson(pred: Values, ref: Values) -> float:
    mean_p, mean_r = math.fsum(pred) / len(pred), math.fsum(ref) / len(ref)
    dp = [p - mean_p for p in pred]
    dr = [r - mean_r for r in ref]
    var_p, var_r = math.fsum(d * d for d in dp), math.fsum(d * d for d in dr)
    if var_p == 0 or var_r == 0:
        return 0.0
    return math.fsum(a * b for a, b in zip(dp, dr, strict=True)) / math.sqrt(var_p * var_r)


def _ranks(values: Values) -> list[float]:
    """1-based ranks; tied values share the average of the ranks they span."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for i in order[start : end + 1]:
            ranks[i] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def _spearman(pred: Values, ref: Values) -> float:
    return _pearson(_ranks(pred), _ranks(ref))


_METRICS: dict[str, Callable[[Values, Values], float]] = {
    "accuracy": _accuracy,
    "f1": _f1,
    "mcc": _mcc,
    "pearson": _pearson,
    "spearman": _spearman,
}
METRICS: tuple[str, ...] = tuple(_METRICS)


def compute(name: str, predictions: Sequence[int | float], references: Sequence[int | float]) -> float:
    """Metric `name` of `predictions` against `references` (class indices, or scores for correlations).
    Accepts any sequence of numbers, tensors included."""
    if name not in _METRICS:
        raise ValueError(f"unknown metric {name!r}; known metrics: {', '.join(METRICS)}")
    pred, ref = [float(p) for p in predictions], [float(r) for r in references]
    if len(pred) != len(ref):
        raise ValueError(f"{name}: {len(pred)} predictions but {len(ref)} references")
    if not ref:
        raise ValueError(f"{name}: no examples to score")
    return float(_METRICS[name](pred, ref))
