"""Task metrics, computed by scikit-learn and SciPy (the references users trust); exact match of
generated text after `normalize`, and ROUGE-L by Google's rouge-score (the `generation` extra).

Values are fractions (accuracy 0.83, not 83) and correlations lie in [-1, 1]. Degenerate inputs (a
constant prediction, where a correlation or MCC is undefined) score 0.0 instead of NaN, so that a
collapsed model reads as "no signal" in averages and model selection.
"""

from __future__ import annotations

import math
import re
import string
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


def normalize(text: str) -> str:
    """The normalisation exact match compares after (as SQuAD's): lower case, no punctuation, no
    articles (a, an, the), single spaces."""
    text = "".join(c for c in text.lower() if c not in string.punctuation)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def _exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    same = [normalize(p) == normalize(r) for p, r in zip(predictions, references, strict=True)]
    return sum(same) / len(same)


def _rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure, by Google's `rouge-score` (pip install 'rankmix[generation]')."""
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise ModuleNotFoundError(
            "metric rouge_l needs the rouge-score package: pip install 'rankmix[generation]'"
        ) from None
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    pairs = list(zip(references, predictions, strict=True))
    return sum(scorer.score(r, p)["rougeL"].fmeasure for r, p in pairs) / len(pairs)


_TEXT: dict[str, Callable[[Sequence[str], Sequence[str]], float]] = {
    "exact_match": _exact_match,
    "rouge_l": _rouge_l,
}
METRICS: tuple[str, ...] = (*_METRICS, *_TEXT)


def compute(name: str, predictions: Sequence[int | float], references: Sequence[int | float]) -> float:
    """Metric `name` of `predictions` against `references` (class indices, scores for correlations,
    texts for exact_match and rouge_l). Accepts any sequence of numbers, tensors included."""
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; known metrics: {', '.join(METRICS)}")
    if len(predictions) != len(references):
        raise ValueError(f"{name}: {len(predictions)} predictions but {len(references)} references")
    if not len(references):
        raise ValueError(f"{name}: no examples to score")
    if name in _TEXT:
        return float(_TEXT[name]([str(p) for p in predictions], [str(r) for r in references]))
    return float(_METRICS[name]([float(p) for p in predictions], [float(r) for r in references]))
