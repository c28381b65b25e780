"""Tests for rankmix.recipes.evaluate: answer log-likelihoods, candidate scoring for decoders and T5
against a slow unbatched reference, regression by expected value, encoder heads, reading generated
text (each kind's `parse`), and `evaluate` / `average`. Multiple-choice and generation kinds:
test_kinds.py."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerFast

from helpers import build_base, generative_base, word_tokenizer
from rankmix import LoRAConfig, MoREConfig, get_model
from rankmix.data.collate import IGNORE
from rankmix.families import FAMILIES
from rankmix.families import answer_logprob as _answer_logprob
from rankmix.heads import MultiTaskHeads
from rankmix.recipes.evaluate import average, evaluate, predict
from rankmix.tasks import Example, get_task

WORDS = "the cat sat on a mat dog ran fast big red car road sun moon house yes no maybe 0 1 2 3 4 5 ."
RTE, STSB, MNLI = get_task("rte"), get_task("stsb"), get_task("mnli")

EXAMPLES = {
    "rte": [
        Example("the cat sat on a mat", "a cat sat", 0),
        Example("a dog ran", "the big red car ran on the road fast", 1),
        Example("the sun", "the moon", 1),
        Example("the red house", "a house", 0),
        Example("a big dog ran fast", "a dog", 0),
    ],
    "stsb": [
        Example("the cat sat", "a cat sat on a mat", 4.2),
        Example("a dog ran", "the moon", 0.4),
        Example("the big red car", "a red car ran fast on the road", 3.1),
        Example("the sun", "the sun", 5.0),
        Example("a house", "the road", 1.7),
    ],
    "mnli": [
        Example("the cat sat on a mat", "a cat sat", 0),
        Example("a dog ran", "the dog sat", 2),
        Example("the sun", "the moon", 1),
    ],
}


def make_tokenizer(kind: str) -> PreTrainedTokenizerFast:
    """Offline WordLevel tokenizer; "llama" prepends <s>, "t5" appends </s>, "bert" wraps [CLS] .. [SEP]."""
    return word_tokenizer([WORDS, RTE.template, STSB.template, MNLI.template], template=kind)


@torch.no_grad()
def randomize_lora(model, seed: int = 3, std: float = 0.3) -> None:
    """lora_B is zero at init: give it values so that adapters change the output."""
    gen = torch.Generator().manual_seed(seed)
    for _, module in model.adapted_modules():
        module.bank.lora_B.copy_(torch.randn(module.bank.lora_B.shape, generator=gen) * std)


def build_decoder(tok, dropout: float = 0.0):
    base = generative_base("llama", tok)
    model = get_model(base, LoRAConfig(r=4, dropout=dropout))
    randomize_lora(model)
    return model.eval()


def build_seq2seq(tok, dropout: float = 0.0):
    base = generative_base("t5", tok)
    model = get_model(base, LoRAConfig(r=4, dropout=dropout))
    randomize_lora(model)
    return model.eval()


@pytest.fixture(scope="module")
def llama():
    tok = make_tokenizer("llama")
    return tok, build_decoder(tok)


@pytest.fixture(scope="module")
def t5():
    tok = make_tokenizer("t5")
    return tok, build_seq2seq(tok)


# -- slow references -------------------------------------------------------------------------------


def is_regression(task) -> bool:
    return task.kind.name == "regression"


def candidates(task) -> list[str]:
    return [str(v) for v in range(6)] if is_regression(task) else list(task.label_words)


def parse(task, text: str):
    """What the task's kind reads from generated text (the example does not matter for these kinds)."""
    return task.kind.parse(task, Example("unused", None, 0), text)


@torch.no_grad()
def reference_scores(model, family: str, tok, task, example: Example, task_index: int = 0) -> list[float]:
    """Log-likelihood of every candidate answer, one unpadded sequence at a time."""
    scores = []
    prompt = task.prompt(example)
    for cand in candidates(task):
        if family == "decoder":
            p = tok(prompt)["input_ids"]
            a = tok(" " + cand, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            ids = torch.tensor([p + a])
            logits = model(input_ids=ids, task_ids=[task_index]).logits[0].float()
            logp = F.log_softmax(logits, dim=-1)
            score = sum(float(logp[j - 1, ids[0, j]]) for j in range(len(p), len(p) + len(a)))
        else:
            enc = torch.tensor([tok(prompt)["input_ids"]])
            target = tok(cand)["input_ids"]
            decoder_in = torch.tensor([[model.base_model.config.decoder_start_token_id, *target[:-1]]])
            logits = model(input_ids=enc, decoder_input_ids=decoder_in, task_ids=[task_index]).logits[0]
            logp = F.log_softmax(logits.float(), dim=-1)
            score = sum(float(logp[j, target[j]]) for j in range(len(target)))
        scores.append(score)
    return scores


def reference_prediction(scores: list[float], regression: bool) -> float:
    if regression:
        top = max(scores)
        weights = [math.exp(s - top) for s in scores]
        return sum(w * v for w, v in zip(weights, range(6), strict=True)) / sum(weights)
    return float(max(range(len(scores)), key=scores.__getitem__))


def spearman(a: list[float], b: list[float]) -> float:
    def ranks(v):
        order = sorted(range(len(v)), key=v.__getitem__)
        r = [0.0] * len(v)
        for rank, i in enumerate(order):
            r[i] = float(rank)
        return r

    return statistics.correlation(ranks(a), ranks(b))


# -- _answer_logprob -------------------------------------------------------------------------------


def random_labels(batch: int, length: int, vocab: int, gen) -> torch.Tensor:
    """Label rows like the encoders make: -100 over a prompt prefix and a padding suffix."""
    labels = torch.randint(0, vocab, (batch, length), generator=gen)
    for row in range(batch):
        start = int(torch.randint(0, length - 2, (1,), generator=gen))
        end = int(torch.randint(start + 1, length + 1, (1,), generator=gen))
        labels[row, :start] = IGNORE
        labels[row, end:] = IGNORE
    return labels


@pytest.mark.parametrize("shift", [True, False])
def test_answer_logprob_matches_loop(shift):
    gen = torch.Generator().manual_seed(0)
    batch, length, vocab = 5, 9, 13
    logits = torch.randn(batch, length, vocab, generator=gen) * 3
    labels = random_labels(batch, length, vocab, gen)
    got = _answer_logprob(logits, labels, shift=shift)
    assert got.shape == (batch,)
    for row in range(batch):
        total = 0.0
        for j in range(length):
            token = int(labels[row, j])
            if token == IGNORE:
                continue
            position = j - 1 if shift else j  # causal LMs predict token j at position j-1
            if position < 0:
                continue
            row_logits = logits[row, position].tolist()
            top = max(row_logits)
            log_z = top + math.log(sum(math.exp(v - top) for v in row_logits))
            total += row_logits[token] - log_z
        assert math.isclose(float(got[row]), total, rel_tol=1e-5, abs_tol=1e-4), (row, float(got[row]), total)


def test_answer_logprob_half_precision_logits():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 6, 11, generator=gen)
    labels = random_labels(3, 6, 11, gen)
    half = _answer_logprob(logits.bfloat16(), labels, shift=True)
    assert half.dtype == torch.float32  # log-softmax runs in float32, not in bfloat16
    assert torch.allclose(half, _answer_logprob(logits.bfloat16().float(), labels, shift=True))


# -- candidate scoring -----------------------------------------------------------------------------


@pytest.mark.parametrize("task_name", ["rte", "mnli", "stsb"])
@pytest.mark.parametrize("family", ["decoder", "seq2seq"])
def test_predict_scores_candidates_like_unbatched_reference(llama, t5, family, task_name):
    tok, model = llama if family == "decoder" else t5
    task = get_task(task_name)
    examples = EXAMPLES[task_name]
    preds = predict(model, FAMILIES[family], tok, task, 0, examples, batch_size=2, max_length=256)
    assert len(preds) == len(examples)
    for example, pred in zip(examples, preds, strict=True):
        scores = reference_scores(model, family, tok, task, example)
        expected = reference_prediction(scores, is_regression(task))
        if is_regression(task):
            assert 0.0 <= pred <= 5.0
            assert math.isclose(pred, expected, rel_tol=1e-4, abs_tol=1e-4), (pred, expected, scores)
        else:
            ranked = sorted(scores, reverse=True)
            assert ranked[0] - ranked[1] > 1e-4  # no near-tie, so the argmax is well defined
            assert pred == expected, (pred, scores)


@pytest.mark.parametrize("family", ["decoder", "seq2seq"])
def test_predict_does_not_depend_on_batch_size(llama, t5, family):
    tok, model = llama if family == "decoder" else t5
    one = predict(model, FAMILIES[family], tok, STSB, 0, EXAMPLES["stsb"], batch_size=1, max_length=256)
    many = predict(model, FAMILIES[family], tok, STSB, 0, EXAMPLES["stsb"], batch_size=8, max_length=256)
    assert torch.allclose(torch.tensor(one), torch.tensor(many), atol=1e-4)


def test_predict_routes_task_ids_to_the_adapters():
    """With a task-routed adapter (MoRE), the candidates are scored with the adapter of `task_index`."""
    tok = make_tokenizer("llama")
    # LlamaConfig's own special token ids: no pad token
    base = build_base("llama", layers=1, vocab=len(tok), max_position_embeddings=128, pad_token_id=None)
    model = get_model(base, MoREConfig(tasks=["a", "b"], max_rank=4, dropout=0.0))
    with torch.no_grad():
        gen = torch.Generator().manual_seed(5)
        for _, m in model.adapted_modules():
            m.bank.lora_B.copy_(torch.randn(m.bank.lora_B.shape, generator=gen))
            m.router.task_embedding.copy_(torch.randn(m.router.task_embedding.shape, generator=gen))
            m.router.gate.weight.copy_(torch.randn(m.router.gate.weight.shape, generator=gen))
    model.eval()
    examples = EXAMPLES["stsb"][:3]
    for t in (0, 1):
        preds = predict(model, FAMILIES["decoder"], tok, STSB, t, examples, batch_size=2, max_length=256)
        expected = [
            reference_prediction(reference_scores(model, "decoder", tok, STSB, e, t), True) for e in examples
        ]
        assert torch.allclose(torch.tensor(preds), torch.tensor(expected), atol=1e-4)


# -- encoder heads ---------------------------------------------------------------------------------


def test_predict_encoder_reads_the_task_head():
    tok = make_tokenizer("bert")
    bert = build_base("bert", vocab=len(tok))
    body = get_model(bert, MoREConfig(tasks=["rte", "stsb", "mnli"], max_rank=4, dropout=0.0))
    randomize_lora(body)
    heads = MultiTaskHeads(body, [RTE, STSB, MNLI]).eval()
    widths = [2, 1, 3]  # labels of a classification head, one value for a regression head
    assert [h.out_features for h in heads.heads] == widths
    for t, task in enumerate((RTE, STSB, MNLI)):
        examples = EXAMPLES[task.name]
        preds = predict(heads, FAMILIES["encoder"], tok, task, t, examples, batch_size=2, max_length=64)
        for example, pred in zip(examples, preds, strict=True):
            enc = tok(example.text_a, example.text_b, return_tensors="pt")
            with torch.no_grad():
                logits = heads(task_ids=torch.tensor([t]), **enc).logits[0, : widths[t]]
            if is_regression(task):
                assert math.isclose(pred, float(logits[0]), rel_tol=1e-4, abs_tol=1e-5)
            else:
                assert pred == int(logits.argmax())


# -- parsing generated text ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("yes", 0.0),
        ("No", 1.0),
        ("  YES, it does", 0.0),
        ("no.", 1.0),
        ("Yes!", 0.0),
        ("well, no yes", 1.0),
        ("maybe", -1.0),
        ("", -1.0),
        ("yesno", -1.0),
    ],
)
def test_parse_classification(text, expected):
    assert parse(RTE, text) == expected


def test_parse_three_labels():
    assert parse(MNLI, "I think maybe") == 1.0
    assert parse(MNLI, "no") == 2.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [("3.5", 3.5), ("about 2 or 3", 2.0), ("score: 4", 4.0), ("none", -1.0), ("", -1.0), ("1,5", 1.0)],
)
def test_parse_regression(text, expected):
    assert parse(STSB, text) == expected


def test_parse_regression_number_at_sentence_end():
    """A number followed by a full stop ("3.5.") is still the first number, as label words are."""
    assert parse(STSB, "The similarity is 3.5.") == 3.5


@pytest.mark.parametrize("text", ["nan", "inf", "-Infinity"])
def test_parse_regression_ignores_non_finite_words(text):
    """`float()` accepts "nan" and "inf"; such a prediction would turn the task's correlations into NaN."""
    value = parse(STSB, text)
    assert math.isfinite(value) and value == -1.0


# -- evaluate / average ----------------------------------------------------------------------------


def test_evaluate_scores_every_task_and_restores_training():
    tok = make_tokenizer("llama")
    model = build_decoder(tok, dropout=0.4)  # dropout: evaluation must switch it off
    tasks = [RTE, STSB]
    dev = [EXAMPLES["rte"], EXAMPLES["stsb"]]
    refs = [
        [
            reference_prediction(reference_scores(model, "decoder", tok, task, e), is_regression(task))
            for e in examples
        ]
        for task, examples in zip(tasks, dev, strict=True)
    ]
    model.train()
    results = evaluate(model, FAMILIES["decoder"], tok, tasks, dev, batch_size=3, max_length=256)
    assert model.training and all(m.training for m in model.modules())
    assert set(results) == {"rte", "stsb"}

    rte = results["rte"]
    labels = [e.label for e in dev[0]]
    accuracy = sum(p == y for p, y in zip(refs[0], labels, strict=True)) / len(labels)
    assert set(rte) == {"accuracy", "score"}
    assert math.isclose(rte["accuracy"], accuracy)
    assert math.isclose(rte["score"], rte["accuracy"])

    stsb = results["stsb"]
    gold = [e.label for e in dev[1]]
    assert set(stsb) == {"pearson", "spearman", "score"}
    assert math.isclose(stsb["pearson"], statistics.correlation(refs[1], gold), abs_tol=1e-4)
    assert math.isclose(stsb["spearman"], spearman(refs[1], gold), abs_tol=1e-6)
    assert math.isclose(stsb["score"], (stsb["pearson"] + stsb["spearman"]) / 2)

    assert math.isclose(average(results), (rte["score"] + stsb["score"]) / 2)


def test_evaluate_keeps_eval_mode(llama):
    tok, model = llama
    model.eval()
    results = evaluate(
        model, FAMILIES["decoder"], tok, [RTE], [EXAMPLES["rte"][:2]], batch_size=2, max_length=256
    )
    assert not model.training and not any(m.training for m in model.modules())
    assert set(results) == {"rte"}


def test_evaluate_seq2seq(t5):
    tok, model = t5
    model.train()
    results = evaluate(
        model, FAMILIES["seq2seq"], tok, [MNLI], [EXAMPLES["mnli"]], batch_size=2, max_length=256
    )
    model.eval()
    refs = [
        reference_prediction(reference_scores(model, "seq2seq", tok, MNLI, e), False)
        for e in EXAMPLES["mnli"]
    ]
    accuracy = sum(p == e.label for p, e in zip(refs, EXAMPLES["mnli"], strict=True)) / 3
    assert math.isclose(results["mnli"]["accuracy"], accuracy)


def test_average_is_the_mean_of_scores():
    results = {"a": {"accuracy": 0.9, "score": 0.5}, "b": {"score": 0.2}, "c": {"x": 0.0, "score": 0.8}}
    assert math.isclose(average(results), 0.5)
