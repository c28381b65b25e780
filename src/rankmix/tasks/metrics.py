"""Task metrics, computed by scikit-learn and SciPy (the references users trust).

Values are fractions (accuracy 0.83, not 83) and correlations lie in [-1, 1]. Degenerate inputs (a
constant prediction, where a correlation or MCC is undefined) score 0.0 instead of NaN, so that a
collapsed model reads as "no signal" in averages and model selection.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

Values = Sequence[float]


# scikit-learn and SciPy load on first use (a second or so), not with every rankmix command
def _accuracy(pred: Values, ref: Values) -> float:
    from sklearn.metrics import accuracy_score

    return accuracy_score(ref, pred)


def _f1(pred: Values, ref: Values) -> float:
    """Binary F1 of the positive class 1 (MRPC "equivalent", QQP "duplicate")."""
    from sklearn.metrics import f1_score

    return f1_score(ref, pred, labels=[1], average="macro", zero_division=0.0)


def _mcc(pred: Values, ref: Values) -> float:
    from sklearn.metrics import matthews_corrcoef

    return matthews_corrcoef(ref, pred)


def _correlation(kind: str) -> Callable[[Values, Values], float]:
    def score(pred: Values, ref: Values) -> float:
        from scipy import stats

        with warnings.catch_warnings():  # constant input: undefined, scored 0.0 below
            warnings.simplefilter("ignore", stats.ConstantInputWarning)
            value = getattr(stats, kind)(pred, ref).statistic if len(ref) > 1 else math.nan
        return 0.0 if math.isnan(value) else value

    return score


_METRICS: dict[str, Callable[[Values, Values], float]] = {
    "accuracy": _accuracy,
    "f1": _f1,
    "mcc": _mcc,
    "pearson": _correlation("pearsonr"),
    "spearman": _correlation("spearmanr"),
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
