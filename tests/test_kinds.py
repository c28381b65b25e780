"""Tests for the task kinds (rankmix.tasks.kinds) as the model families serve them: shared-prefix option
scoring of decoders and T5 against a slow one-sequence-per-option reference (plain, fill-in-the-blank
and label-word options; task- and token-routed adapters), acc / acc_norm, multiple choice on an encoder
(one head logit per (prompt, option) pair), the generation kind, and the built-in commonsense tasks on
the published files in ../shared/data (skipped without them)."""

from __future__ import annotations

import json
import math
import random
import re
import warnings
from functools import cache
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from helpers import build_base, generative_base, word_tokenizer
from rankmix import HiLoConfig, LoRAConfig, MoREConfig, get_model
from rankmix.data.collate import continuation_ids, pad_features, pad_id
from rankmix.families import FAMILIES, GenerativeFamily
from rankmix.heads import MultiTaskHeads
from rankmix.layers import TaskRankSelector, TokenRouter
from rankmix.recipes.evaluate import check_mode, evaluate, predict
from rankmix.tasks import Example, Task, compute, get_task
from rankmix.tasks.custom import load_custom_task
from rankmix.tasks.kinds import Choice, Generation, MultipleChoice
from rankmix.tasks.metrics import normalize

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(
    not (DATA / "commonsense").is_dir(), reason=f"commonsense data not found at {DATA}"
)

WORDS = "the cat sat on a mat dog ran fast big red car road sun moon house yes no maybe and over _ Answer :"
RTE = get_task("rte")


def no_reader(data_dir, split, strict):
    raise AssertionError("these test tasks hold no files")


def mc_task(name: str, template: str, fill_blank: bool = False) -> Task:
    return Task(name, (), (), ("acc", "acc_norm"), template, no_reader, kind=MultipleChoice(fill_blank))


MC = mc_task("mc", "Question: {text_a}\nAnswer:")
BLANK = mc_task("blank", "{text_a}", fill_blank=True)
GEN = Task("gen", (), (), ("exact_match",), "Question: {text_a}\nAnswer:", no_reader, kind=Generation())

# Rows of different numbers of options and contexts of different lengths (so left padding differs).
MC_EXAMPLES = [
    Example("the cat sat on the mat", None, 1, ("yes", "no maybe", "the big red car ran")),
    Example("a dog", None, 0, ("ran fast", "sat")),
    Example(
        "the sun and the moon over the big red house", None, 3, ("big", "red car", "sun", "a house on a road")
    ),
]
# The blank in the middle, at the end of a short sentence, at the start.
BLANK_EXAMPLES = [
    Example("the cat sat on the _ and ran fast", None, 0, ("mat", "big red car")),
    Example("a _ ran", None, 2, ("dog", "cat", "red car")),
    Example("_ sat on the road over the house", None, 1, ("the sun", "a dog", "the big moon")),
]
RTE_EXAMPLES = [
    Example("the cat sat on a mat", "a cat sat", 0),
    Example("a dog ran", "the big red car ran on the road fast", 1),
    Example("the sun", "the moon", 1),
]
TASK_IDS = [0, 1, 0]  # the rows of a batch routed to different tasks


@cache
def tokenizer(template: str):
    return word_tokenizer([WORDS, RTE.template], template=template)


@torch.no_grad()
def randomize(model, seed: int = 5) -> None:
    """lora_B is zero at init: give it values so that the adapters matter; spread task selectors and
    token gates so that tasks choose different experts and tokens different mixtures."""
    gen = torch.Generator().manual_seed(seed)

    def normal(p, scale):
        p.copy_(torch.randn(p.shape, generator=gen) * scale)

    for _, m in model.adapted_modules():
        normal(m.bank.lora_B, 0.3)
        if isinstance(m.router, TaskRankSelector):
            normal(m.router.task_embedding, 1.0)
            normal(m.router.gate.weight, 1.0)
        elif isinstance(m.router, TokenRouter):
            normal(m.router.gate.weight, 1.0)


ADAPTERS = {
    "lora": lambda: LoRAConfig(r=4, dropout=0.0),
    "more": lambda: MoREConfig(tasks=["a", "b"], max_rank=4, dropout=0.0),
    "hilo": lambda: HiLoConfig(experts="3", ranks="4", top_k=2, dropout=0.0),
}


def base(family: str):
    tok = tokenizer("llama" if family == "decoder" else "t5")
    return generative_base("llama" if family == "decoder" else "t5", tok)


@cache
def adapted(family: str, adapter: str):
    """(tokenizer, tiny adapted model in eval mode) of a family, built once per module run."""
    model = get_model(base(family), ADAPTERS[adapter]())
    randomize(model)
    return tokenizer("llama" if family == "decoder" else "t5"), model.eval()


# -- slow references -------------------------------------------------------------------------------


def reference_options(task: Task, example: Example) -> list[tuple[str, str]]:
    """(context, continuation) of every option, built here from the task's template: the label words
    after the prompt (classification), each option after the prompt, or (fill_blank) the sentence up to
    the blank filled with each option, then the rest of the sentence."""
    prompt = task.template.format(text_a=example.text_a, text_b=example.text_b or "")
    if task.kind.name == "classification":
        return [(prompt, w) for w in task.label_words]
    if not task.kind.fill_blank:
        return [(prompt, c) for c in example.choices]
    blank = prompt.index("_")
    return [(prompt[:blank] + c, prompt[blank + 1 :].strip()) for c in example.choices]


@torch.no_grad()
def reference_ids(family: str, tok, context: str, text: str, eos: bool) -> tuple[list[int], list[int]]:
    """(context tokens, continuation tokens) as each family scores them: a decoder as lm-evaluation-
    harness builds a request (`continuation_ids`, tested in test_collate.py); T5 the context and the
    text encoded apart, the text with its end-of-sequence token only for answers (eos)."""
    if family == "decoder":
        return continuation_ids(tok, context, text, eos)
    return tok(context)["input_ids"], tok(text, add_special_tokens=eos)["input_ids"]


def slow_scores(model, family: str, tok, task: Task, example: Example, task_id: int, max_length=None):
    """Summed log-probability of each option's continuation tokens, one unpadded forward pass per
    option (context + continuation for a decoder; context to T5's encoder, continuation as labels).
    `max_length` cuts each context from the left so that it and the example's longest continuation fit."""
    eos = task.kind.name == "classification"
    pairs = [reference_ids(family, tok, c, t, eos) for c, t in reference_options(task, example)]
    scores = []
    for head, cont in pairs:
        if max_length is not None:
            longest = max(len(c) for h, c in pairs if h == head)
            head = head[-max(1, max_length - longest) :]
        if family == "decoder":
            ids = torch.tensor([head + cont])
            logp = F.log_softmax(model(input_ids=ids, task_ids=[task_id]).logits[0].float(), dim=-1)
            score = sum(float(logp[len(head) + j - 1, token]) for j, token in enumerate(cont))
        else:
            start = model.base_model.config.decoder_start_token_id
            decoder_in = torch.tensor([[start, *cont[:-1]]])
            logits = model(
                input_ids=torch.tensor([head]), decoder_input_ids=decoder_in, task_ids=[task_id]
            ).logits
            logp = F.log_softmax(logits[0].float(), dim=-1)
            score = sum(float(logp[j, token]) for j, token in enumerate(cont))
        scores.append(score)
    return scores


def close(got: torch.Tensor, expected: list[float]) -> bool:
    return got.shape == (len(expected),) and torch.allclose(got, torch.tensor(expected), atol=2e-4, rtol=1e-5)


# -- shared-prefix scoring against the slow reference -----------------------------------------------

CASES = {"mc": (MC, MC_EXAMPLES), "fill_blank": (BLANK, BLANK_EXAMPLES), "label_words": (RTE, RTE_EXAMPLES)}


@pytest.mark.parametrize("adapter", ["lora", "more", "hilo"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("family", ["decoder", "seq2seq"])
def test_shared_prefix_scores_equal_one_pass_per_option(family, case, adapter):
    tok, model = adapted(family, adapter)
    task, examples = CASES[case]
    ids = torch.tensor(TASK_IDS)
    got = FAMILIES[family].scores(model, tok, task, ids, examples, max_length=256)
    assert len(got) == len(examples)
    for example, scores, t in zip(examples, got, TASK_IDS, strict=True):
        expected = slow_scores(model, family, tok, task, example, t)
        assert close(scores, expected), (example, scores.tolist(), expected)


@pytest.mark.parametrize("family", ["decoder", "seq2seq"])
@pytest.mark.parametrize("adapter", ["lora", "more", "hilo"])
def test_the_adapters_change_the_scores(family, adapter):
    """The references above would not see an adapter that does nothing, or task ids mixed up."""
    tok, model = adapted(family, adapter)
    plain = base(family)
    example = MC_EXAMPLES[0]
    with_adapter = slow_scores(model, family, tok, MC, example, 0)
    ids = [reference_ids(family, tok, c, t, False) for c, t in reference_options(MC, example)]
    with torch.no_grad():
        if family == "decoder":
            logits = [plain(input_ids=torch.tensor([h + c])).logits[0] for h, c in ids]
        else:
            logits = [plain(input_ids=torch.tensor([h]), labels=torch.tensor([c])).logits[0] for h, c in ids]
    offsets = [len(h) - 1 if family == "decoder" else 0 for h, _ in ids]
    baseline = [
        sum(float(F.log_softmax(lg.float(), -1)[o + j, tkn]) for j, tkn in enumerate(c))
        for lg, o, (_, c) in zip(logits, offsets, ids, strict=True)
    ]
    assert max(abs(a - b) for a, b in zip(with_adapter, baseline, strict=True)) > 1e-2
    if adapter == "more":
        other = slow_scores(model, family, tok, MC, example, 1)
        assert max(abs(a - b) for a, b in zip(with_adapter, other, strict=True)) > 1e-2


def scored_continuations(monkeypatch, family: str, tok, model, task, examples) -> list[list[int]]:
    """The continuation tokens `family.scores` hands to the model, per option, in order."""
    seen = []
    original = FAMILIES[family].continuation_logprobs

    def spy(model, tokenizer, contexts, task_ids, context_of, continuations):
        seen.extend(continuations)
        return original(model, tokenizer, contexts, task_ids, context_of, continuations)

    monkeypatch.setattr(FAMILIES[family], "continuation_logprobs", spy)
    FAMILIES[family].scores(model, tok, task, torch.zeros(len(examples), dtype=torch.long), examples, 256)
    return seen


@pytest.mark.parametrize("family", ["decoder", "seq2seq"])
@pytest.mark.parametrize("case", ["mc", "fill_blank"])
def test_every_token_of_an_option_is_scored(monkeypatch, family, case):
    """What is scored after the context is the whole option (fill_blank: the whole rest of the
    sentence), at most followed by the end-of-sequence token: no option token is lost."""
    tok, model = adapted(family, "lora")
    task, examples = CASES[case]
    seen = scored_continuations(monkeypatch, family, tok, model, task, examples)
    texts = [t for e in examples for _, t in reference_options(task, e)]
    assert len(seen) == len(texts)
    for cont, text in zip(seen, texts, strict=True):
        words = tok(text, add_special_tokens=False)["input_ids"]
        assert cont in (words, [*words, tok.eos_token_id]), (text, tok.convert_ids_to_tokens(cont))


def test_decoder_scores_cut_long_contexts_from_the_left():
    """With max_length shorter than context + continuation, each context keeps its end, as much as its
    longest continuation leaves room for (at least one token)."""
    tok, model = adapted("decoder", "lora")
    got = FAMILIES["decoder"].scores(model, tok, MC, torch.tensor(TASK_IDS), MC_EXAMPLES, max_length=9)
    for example, scores, t in zip(MC_EXAMPLES, got, TASK_IDS, strict=True):
        assert close(scores, slow_scores(model, "decoder", tok, MC, example, t, max_length=9))


@pytest.mark.parametrize("family", ["decoder", "seq2seq"])
def test_predict_picks_by_total_and_per_character_loglikelihood(family):
    """predict() over batches of two: each row's Choice is the argmax of the reference scores, total
    and divided by the option's length in characters (fill_blank: of the context it fills in, as
    lm-evaluation-harness's multiple-input tasks do)."""
    tok, model = adapted(family, "more")
    for task, examples in ((MC, MC_EXAMPLES), (BLANK, BLANK_EXAMPLES)):
        preds = predict(model, FAMILIES[family], tok, task, 1, examples, batch_size=2, max_length=256)
        for example, pred in zip(examples, preds, strict=True):
            scores = slow_scores(model, family, tok, task, example, 1)
            lengths = [len(c if task.kind.fill_blank else t) for c, t in reference_options(task, example)]
            pick = max(range(len(scores)), key=scores.__getitem__)
            norm = max(range(len(scores)), key=lambda i: scores[i] / lengths[i])
            assert pred == Choice(pick, norm)


def test_evaluate_a_multiple_choice_task():
    tok, model = adapted("decoder", "lora")
    results = evaluate(model, FAMILIES["decoder"], tok, [MC], [MC_EXAMPLES], batch_size=2, max_length=256)
    picks, norms = [], []
    for e in MC_EXAMPLES:
        scores = slow_scores(model, "decoder", tok, MC, e, 0)
        picks.append(max(range(len(scores)), key=scores.__getitem__))
        norms.append(max(range(len(scores)), key=lambda i: scores[i] / len(e.choices[i])))
    labels = [e.label for e in MC_EXAMPLES]
    acc = sum(p == y for p, y in zip(picks, labels, strict=True)) / len(labels)
    acc_norm = sum(p == y for p, y in zip(norms, labels, strict=True)) / len(labels)
    assert results["mc"] == pytest.approx({"acc": acc, "acc_norm": acc_norm, "score": acc_norm})


# -- acc and acc_norm ------------------------------------------------------------------------------


def test_acc_and_acc_norm_can_pick_different_options():
    example = Example("q", None, 1, ("x", "a much longer option"))
    logprobs = torch.tensor([-2.0, -6.0])  # the long option: less likely in total, more per character
    totals, per_char = [-2.0, -6.0], [-2.0 / 1, -6.0 / 20]
    expected = Choice(totals.index(max(totals)), per_char.index(max(per_char)))
    assert expected.pick != expected.pick_norm
    assert MC.kind.from_logprobs(MC, example, logprobs) == expected


def test_acc_norm_divides_by_option_characters_on_random_cases():
    rng = random.Random(0)
    for _ in range(50):
        n = rng.randint(2, 5)
        choices = tuple(
            "".join(rng.choice("abc d") for _ in range(rng.randint(1, 30))).strip() or "z" for _ in range(n)
        )
        example = Example("q", None, 0, choices)
        logprobs = [rng.uniform(-40, -0.1) for _ in range(n)]
        pred = MC.kind.from_logprobs(MC, example, torch.tensor(logprobs))
        norm = [lp / len(c) for lp, c in zip(logprobs, choices, strict=True)]
        assert pred == Choice(logprobs.index(max(logprobs)), norm.index(max(norm)))


def test_fill_blank_acc_norm_divides_by_the_filled_context():
    """Every option of a fill-in-the-blank row scores the same continuation; acc_norm divides by the
    length of the sentence up to the blank filled with the option (lm-evaluation-harness's winogrande)."""
    example = Example("a _ sat on the mat", None, 0, ("cat", "very big dog"))
    lengths = [len("a cat"), len("a very big dog")]
    differ = 0
    for logprobs in ([-3.0, -4.0], [-4.0, -3.0], [-1.0, -30.0], [-5.0, -4.0]):
        pred = BLANK.kind.from_logprobs(BLANK, example, torch.tensor(logprobs))
        norm = [lp / n for lp, n in zip(logprobs, lengths, strict=True)]
        assert pred == Choice(logprobs.index(max(logprobs)), norm.index(max(norm)))
        differ += pred.pick != pred.pick_norm
    assert differ  # the case is not one where the two always agree


def test_task_score_of_multiple_choice_is_acc_norm():
    predictions = [Choice(0, 1), Choice(1, 1), Choice(2, 0), Choice(1, 1), Choice(0, 0)]
    references = [1, 1, 0, 0, 0]
    acc = sum(p.pick == y for p, y in zip(predictions, references, strict=True)) / len(references)
    acc_norm = sum(p.pick_norm == y for p, y in zip(predictions, references, strict=True)) / len(references)
    assert acc != acc_norm
    assert MC.score(predictions, references) == pytest.approx(
        {"acc": acc, "acc_norm": acc_norm, "score": acc_norm}
    )


def softmax(values: list[float]) -> list[float]:
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    return [e / sum(exps) for e in exps]


def test_a_pick_is_scored_by_the_criterion_that_picked_it():
    """`predict`'s record of a multiple-choice row: the acc_norm pick, and its probability under acc_norm
    (softmax over the options of the log-likelihood per character), never the acc probability of
    another criterion's pick: so the pick has the largest score, at least 1/options. On an encoder,
    the softmax of the head logits that picked it."""
    rng = random.Random(3)
    differ = 0
    for _ in range(30):
        choices = tuple(f"{'x' * rng.randint(1, 40)} {i}" for i in range(8))
        example = Example("q", None, 0, choices)
        logprobs = [rng.uniform(-80, -0.5) for _ in choices]
        pred = MC.kind.from_logprobs(MC, example, torch.tensor(logprobs))
        record = MC.kind.record(MC, example, pred, torch.tensor(logprobs))
        per_char = softmax([lp / len(c) for lp, c in zip(logprobs, choices, strict=True)])
        pick = per_char.index(max(per_char))
        assert record == {"choice": choices[pick], "index": pick, "score": pytest.approx(per_char[pick])}
        assert record["score"] >= 1 / len(choices)
        differ += softmax(logprobs)[pick] < 1 / len(choices)  # what acc's probability would have said
    assert differ
    logits = torch.tensor([0.5, 2.0, -1.0])
    example = Example("q", None, 0, ("a", "b", "c"))
    record = MC.kind.record(MC, example, MC.kind.from_head(MC, logits), logits)
    assert record == {"choice": "b", "index": 1, "score": pytest.approx(softmax(logits.tolist())[1])}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("No maybe", 1),
        ("  THE big red car ran.", 2),
        ("yes!", 0),
        ("ran", -1),
        ("", -1),
        ("yes no maybe", -1),
    ],
)
def test_multiple_choice_parse_reads_the_option_spelled(text, expected):
    assert MC.kind.parse(MC, MC_EXAMPLES[0], text) == Choice(expected, expected)


# -- multiple choice on an encoder -----------------------------------------------------------------


@cache
def encoder_heads():
    tok = tokenizer("bert")
    bert = build_base("bert", vocab=len(tok), hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    config = MoREConfig(tasks=["rte", "mc", "blank"], max_rank=4, dropout=0.0, contrastive_weight=0.0)
    body = get_model(bert, config)
    randomize(body)
    return tok, MultiTaskHeads(body, [RTE, MC, BLANK]).eval()


def encoder_pairs(task: Task, example: Example) -> list[tuple[str, str | None]]:
    """What an encoder reads: the text pair of a classification row; (prompt, option) per option, or
    (sentence up to the blank filled, rest of the sentence) with fill_blank."""
    if task.kind.name == "classification":
        return [(example.text_a, example.text_b)]
    return reference_options(task, example)


@torch.no_grad()
def reference_logits(heads, tok, t: int, task: Task, example: Example) -> torch.Tensor:
    """Each pair encoded alone (no padding), mean-pooled, through the task's head; a classification
    row's logits, or one logit per option side by side."""
    out = []
    for a, b in encoder_pairs(task, example):
        enc = tok(a, b, return_tensors="pt")
        hidden = heads.body(**enc, task_ids=torch.tensor([t])).last_hidden_state[0]
        out.append(heads.heads[t](hidden.mean(0)))
    return torch.cat(out)


def test_encoder_mixed_batch_logits_and_loss_equal_per_example_references():
    tok, heads = encoder_heads()
    tasks = [RTE, MC, BLANK]
    batch = [
        (1, MC_EXAMPLES[0]),
        (0, RTE_EXAMPLES[0]),
        (1, MC_EXAMPLES[1]),
        (2, BLANK_EXAMPLES[1]),
        (0, RTE_EXAMPLES[1]),
        (1, MC_EXAMPLES[2]),
    ]
    rows = [FAMILIES["encoder"].features(tok, t, tasks[t], e, 64) for t, e in batch]
    inputs = pad_features(rows, pad_id(tok))
    with torch.no_grad():
        out = heads(**inputs)
    refs = [reference_logits(heads, tok, t, tasks[t], e) for t, e in batch]
    assert out.logits.shape == (len(batch), max(len(r) for r in refs))
    losses = []
    for i, ((t, e), ref) in enumerate(zip(batch, refs, strict=True)):
        assert torch.allclose(out.logits[i, : len(ref)], ref, atol=1e-5), (i, out.logits[i], ref)
        assert torch.isneginf(out.logits[i, len(ref) :]).all()
        width = len(e.choices) if e.choices else len(tasks[t].labels)
        assert len(ref) == width
        losses.append(F.cross_entropy(ref[None], torch.tensor([int(e.label)])))
    assert math.isclose(float(out.loss), float(sum(losses)) / len(batch), rel_tol=1e-5)


def test_encoder_multiple_choice_loss_has_gradients_for_the_used_heads():
    tok, heads = encoder_heads()
    rows = [FAMILIES["encoder"].features(tok, 1, MC, e, 64) for e in MC_EXAMPLES]
    heads.zero_grad()
    out = heads(**pad_features(rows, pad_id(tok)))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert heads.heads[1].weight.grad is not None and heads.heads[1].weight.grad.abs().sum() > 0
    assert heads.heads[0].weight.grad is None  # no rte row in this batch
    heads.zero_grad()


def test_encoder_scores_one_logit_per_option():
    tok, heads = encoder_heads()
    family = FAMILIES["encoder"]
    ids = torch.tensor([1, 1, 1])
    scores = family.scores(heads, tok, MC, ids, MC_EXAMPLES, 64)
    preds = family.predict(heads, tok, MC, ids, MC_EXAMPLES, 64, "score")
    for example, got, pred in zip(MC_EXAMPLES, scores, preds, strict=True):
        ref = reference_logits(heads, tok, 1, MC, example)
        assert got.shape == (len(example.choices),)
        assert torch.allclose(got, ref, atol=1e-5)
        pick = int(ref.argmax())
        assert pred == Choice(pick, pick)  # no length to normalise: acc_norm is acc


# Rows longer than max_length 16 whose options share their start and differ in their last word: a
# (prompt, option) pair, and a fill-in-the-blank pair (sentence up to the blank filled, rest of it).
TAILS = ("the sun and the moon over the big red house", "the sun and the moon over the big red car")
LONG_MC = Example(
    "the cat sat on a mat and the dog ran fast over the big red car on the road", None, 0, TAILS
)
LONG_BLANK = Example(
    "_ sat on the road over the house and the big red car ran fast on the mat", None, 1, TAILS
)


def cut_by_hand(tok, first: str, second: str, keep: str, max_length: int) -> list[int]:
    """[CLS] first [SEP] second [SEP] in max_length tokens, the text that is not `keep` cut at its end."""
    a, b = (tok(text, add_special_tokens=False)["input_ids"] for text in (first, second))
    room = max_length - 3
    a, b = (a[: room - len(b)], b) if keep == "second" else (a, b[: room - len(a)])
    return [tok.cls_token_id, *a, tok.sep_token_id, *b, tok.sep_token_id]


@pytest.mark.parametrize("case", ["mc", "fill_blank"])
def test_encoder_cuts_the_shared_text_of_a_pair_not_the_option(case):
    """A (prompt, option) pair too long for max_length loses the end of the prompt, a fill-in-the-blank
    pair the end of the rest of the sentence (both shared by every option), never what tells the
    options apart: training features and scores are those of the pairs cut so by hand, and no two
    options tie."""
    tok, heads = encoder_heads()
    t, task, example = (1, MC, LONG_MC) if case == "mc" else (2, BLANK, LONG_BLANK)
    keep = "second" if case == "mc" else "first"
    ids = [cut_by_hand(tok, a, b, keep, 16) for a, b in encoder_pairs(task, example)]
    assert len(set(map(tuple, ids))) == len(example.choices)
    family = FAMILIES["encoder"]
    assert family.features(tok, t, task, example, 16)["input_ids"] == ids
    ref = []
    with torch.no_grad():
        for row in ids:  # this tokenizer gives no token type ids
            hidden = heads.body(input_ids=torch.tensor([row]), task_ids=torch.tensor([t])).last_hidden_state[
                0
            ]
            ref.append(heads.heads[t](hidden.mean(0)))
    got = family.scores(heads, tok, task, torch.tensor([t]), [example], 16)[0]
    assert torch.allclose(got, torch.cat(ref), atol=1e-5)
    assert got.unique().numel() == len(example.choices)


def test_encoder_warns_once_of_options_it_cannot_tell_apart():
    """Options that still read the same when the prompt is cut (each alone is longer than max_length):
    evaluation warns once, naming the task and how many of its rows are so."""
    tok, heads = encoder_heads()
    long = "the cat sat on a mat and the dog ran fast over the big red"
    tied = [
        Example("a dog", None, 0, (f"{long} car", f"{long} house")),
        Example("the sun", None, 1, (f"{long} moon", f"{long} road", "sat")),
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        evaluate(heads, FAMILIES["encoder"], tok, [RTE, MC], [RTE_EXAMPLES, [*tied, LONG_MC]], 2, 16)
    said = [str(w.message) for w in caught if "max_length" in str(w.message)]
    assert len(said) == 1, said
    assert said[0].startswith("mc: ") and "2 of 3 row(s)" in said[0]


# -- generation ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Cat, sat!", "cat sat"),
        ("  an apple  a DAY. ", "apple day"),
        ("Theatre and anthem", "theatre and anthem"),  # articles go as words, not inside words
        ("A", ""),
        ("U.S.A.", "usa"),
    ],
)
def test_normalize(text, expected):
    assert normalize(text) == expected


def test_exact_match_after_normalising():
    predictions = ["The cat.", "a dog", "Paris", "the moon", "an Apple!"]
    references = ["cat", "Dog!", "London", "moon light", "apple"]
    same = [True, True, False, False, True]
    assert compute("exact_match", predictions, references) == pytest.approx(sum(same) / len(same))
    assert GEN.score(predictions, references) == pytest.approx({"exact_match": 0.6, "score": 0.6})


@pytest.mark.parametrize(
    ("text", "expected"),
    [("  Paris is big \nand so on", "Paris is big"), ("one", "one"), ("\n\nlater\nmore", "later"), ("", "")],
)
def test_generation_parse_takes_the_first_line(text, expected):
    assert GEN.kind.parse(GEN, Example("q", None, "a"), text) == expected


def test_encoders_refuse_generation():
    encoder = FAMILIES["encoder"]
    encoder.check([RTE, MC, BLANK])  # head kinds: fine
    with pytest.raises(ValueError, match="gen"):
        encoder.check([RTE, GEN])
    with pytest.raises(ValueError, match="generate"):
        encoder.check([RTE], "generate")
    for family in ("decoder", "seq2seq"):
        FAMILIES[family].check([RTE, GEN], "generate")
        FAMILIES[family].check([RTE, GEN, MC])


def test_score_mode_asked_for_a_generation_task_is_refused():
    """`--mode score` would be ignored by a generation task (it generates whatever the mode): refused,
    naming the task; no mode asked for, or --mode generate, serve it."""
    with pytest.raises(ValueError, match=r"--mode score: gen is a generation task.*--mode generate"):
        check_mode([RTE, MC, GEN], "score")
    for mode in (None, "generate"):
        check_mode([RTE, MC, GEN], mode)
    check_mode([RTE, MC], "score")


@pytest.mark.parametrize("family", ["decoder", "seq2seq"])
def test_generation_predicts_the_first_line_of_greedy_generation(family):
    """A generation task is generated whatever the eval mode; batched generation (left-padded prompts
    for a decoder) equals one prompt at a time."""
    tok, model = adapted(family, "lora")
    examples = [Example(e.text_a, None, "a dog") for e in MC_EXAMPLES]
    preds = predict(model, FAMILIES[family], tok, GEN, 0, examples, batch_size=3, max_length=64)
    for example, pred in zip(examples, preds, strict=True):
        enc = tok(GEN.prompt(example), return_tensors="pt")
        out = model.generate(
            **enc,
            task_ids=[0],
            max_new_tokens=GEN.kind.max_new_tokens,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
        )
        new = out[0, enc["input_ids"].shape[1] :] if family == "decoder" else out[0]
        text = tok.decode(new, skip_special_tokens=True)
        assert pred == text.strip().split("\n")[0].strip()


def write_custom_task(folder: Path, name: str, rows: list[dict], **spec) -> Path:
    """A custom task's YAML over `rows` (its train and dev file), `spec` its other keys."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = {"name": name, "data": {"train": "rows.jsonl", "dev": "rows.jsonl"}, "text_fields": ["q"]} | spec
    (folder / "task.yaml").write_text(yaml.safe_dump(spec))
    return folder / "task.yaml"


@pytest.mark.parametrize("multiline", [False, True])
def test_generation_answers_span_lines_where_the_targets_do(tmp_path, monkeypatch, multiline):
    """A generation task whose targets hold a newline is answered by all the text the model generates
    (a trained model stops with its end-of-sequence token); one of single-line targets by the first line
    (the rest is the model talking on). exact_match against the answers cut by that rule, here."""
    sep = "\n" if multiline else " "
    targets = [f"the cat{sep}sat on a mat", f"a dog{sep}ran fast", "the sun", f"big{sep}red car"]
    said = [targets[0], f"{targets[1]}\nand the moon", "the moon", f" {targets[3]}\n"]
    rows = [{"q": f"what is {i}", "a": t} for i, t in enumerate(targets)]
    name = f"gen_lines_{multiline}"
    task = load_custom_task(write_custom_task(tmp_path, name, rows, kind="generation", answer_field="a"))
    dev, _ = task.load("dev")
    answer_of = {e.text_a: text for e, text in zip(dev, said, strict=True)}
    generate = lambda self, model, tok, task, ids, chunk, n: [answer_of[e.text_a] for e in chunk]  # noqa: E731
    monkeypatch.setattr(GenerativeFamily, "generate", generate)
    tok, model = adapted("decoder", "lora")
    got = evaluate(model, FAMILIES["decoder"], tok, [task], [dev], batch_size=3, max_length=64)[name]
    answers = [text.strip() if multiline else text.strip().split("\n")[0] for text in said]
    hits = [normalize(a) == normalize(t) for a, t in zip(answers, targets, strict=True)]
    assert got["exact_match"] == pytest.approx(sum(hits) / len(hits))
    assert hits[0] and hits[3]  # right answers count, over one line or two


# -- the built-in commonsense tasks on the published files ------------------------------------------

# task -> (folder under commonsense/, the word its instruction names options by, option counts)
COMMONSENSE = {
    "arc_easy": ("ARC-Easy", "answer", {3, 4, 5}),
    "arc_challenge": ("ARC-Challenge", "answer", {3, 4, 5}),
    "openbookqa": ("openbookqa", "answer", {4}),
    "piqa": ("piqa", "solution", {2}),
    "social_i_qa": ("social_i_qa", "answer", {3}),
    "hellaswag": ("hellaswag", "ending", {4}),
    "winogrande": ("winogrande", "option", {2}),
}


@cache
def records(folder: str) -> list[dict]:
    return json.loads((DATA / "commonsense" / folder / "dev.json").read_text(encoding="utf-8"))


@cache
def loaded(name: str) -> list[Example]:
    examples, skipped = get_task(name).load("dev", DATA)
    assert skipped == 0
    return examples


def parse_instruction(instruction: str, word: str) -> tuple[str, list[str]]:
    """(question, options) of an LLM-Adapters instruction, by a regex over its layout: "Please choose
    the correct ...: QUESTION\\n\\nWord1: ... Word2: ...(\\n\\n| )Answer format: word1/word2/..."."""
    count = instruction.rpartition("Answer format: ")[2].count("/") + 1
    marks = "".join(rf"\s+{word.capitalize()}{i}: (.*?)" for i in range(1, count + 1))
    found = re.fullmatch(
        rf"Please choose the correct [^:]*: (.*?){marks}\s+Answer format: \S+", instruction, re.S
    )
    assert found, instruction
    question, *options = (g.strip() for g in found.groups())
    return question, options


@needs_data
@pytest.mark.parametrize("name", list(COMMONSENSE))
def test_commonsense_options_are_the_ones_the_instruction_lists(name):
    folder, word, counts = COMMONSENSE[name]
    rows, examples = records(folder), loaded(name)
    assert len(examples) == len(rows)
    for example, row in zip(examples, rows, strict=True):
        question, options = parse_instruction(row["instruction"], word)
        assert example.text_a == question and example.text_b is None
        assert list(example.choices) == options
        assert example.label == int(row["answer"].removeprefix(word)) - 1
    seen = {len(e.choices) for e in examples}
    assert seen <= counts
    if name == "arc_easy":
        assert seen == {3, 4, 5}  # rows of every size, as the published dev split has


@needs_data
def test_winogrande_options_fill_the_blank_and_the_rest_is_scored():
    task = get_task("winogrande")
    assert task.kind.fill_blank
    examples = loaded("winogrande")
    tok = word_tokenizer(
        [e.text_a for e in examples] + [c for e in examples for c in e.choices], template="llama"
    )
    for example in examples:
        before, after = example.text_a.split("_")  # one blank per sentence
        options = task.kind.options(task, example)
        assert [(o.context, o.text) for o in options] == [
            (before + c, after.strip()) for c in example.choices
        ]
        rest = tok(after.strip(), add_special_tokens=False)["input_ids"]
        for option, choice in zip(options, example.choices, strict=True):
            head, cont = continuation_ids(tok, option.context, option.text, eos=False)
            assert head == tok(before + choice)["input_ids"]
            assert cont == rest  # every option scores the same continuation


@needs_data
def test_boolq_options_are_no_and_yes():
    rows, examples = records("boolq"), loaded("boolq")
    task = get_task("boolq")
    assert len(examples) == len(rows)
    for example, row in zip(examples, rows, strict=True):
        found = re.fullmatch(
            r"Please answer the following question with true or false, question: (.*)\?"
            r"\s+Answer format: true/false",
            row["instruction"],
            re.S,
        )
        assert found and example.text_a == found.group(1).strip()
        assert example.choices == ("no", "yes")
        assert example.label == {"false": 0, "true": 1}[row["answer"]]
        assert [o.text for o in task.kind.options(task, example)] == ["no", "yes"]
        assert task.prompt(example) == f"Question: {found.group(1).strip()}?\nAnswer:"


@needs_data
@pytest.mark.parametrize("name", [*COMMONSENSE, "boolq"])
def test_label_word_twin_reads_the_instruction_and_the_answer_word(name):
    folder = "boolq" if name == "boolq" else COMMONSENSE[name][0]
    rows, twin = records(folder), get_task(f"{name}_labels")
    examples = loaded(f"{name}_labels")
    assert twin.kind.name == "classification" and twin.labels == twin.label_words
    assert len(examples) == len(rows)
    for example, row in zip(examples, rows, strict=True):
        assert example.text_a == row["instruction"].strip() and example.text_b is None
        assert twin.labels[example.label] == row["answer"]
        assert twin.prompt(example) == row["instruction"].strip() + "\nAnswer:"
    if name != "boolq":
        word = COMMONSENSE[name][1]
        largest = max(COMMONSENSE[name][2])
        assert twin.labels == tuple(f"{word}{i}" for i in range(1, largest + 1))
    # the multiple-choice task reads the same rows: its answer is the twin's answer word
    for mc, labelled in zip(loaded(name), examples, strict=True):
        word = twin.labels[labelled.label]
        expected = {"false": 0, "true": 1}[word] if name == "boolq" else int(re.sub(r"\D", "", word)) - 1
        assert mc.label == expected


# -- custom tasks: templates and rows that cannot be scored -----------------------------------------


@pytest.mark.parametrize("kind", ["multiple_choice", "generation"])
def test_a_template_without_text_a_is_refused_where_every_model_reads_the_prompt(tmp_path, kind):
    """Every row of such a task would get the same prompt: refused when the task file is loaded."""
    row = {"q": "which one is cat", "options": ["cat", "dog"], "answer": 0}
    mc = kind == "multiple_choice"
    keys = {"choices_field": "options", "answer_field": "answer"} if mc else {"answer_field": "q"}
    path = write_custom_task(tmp_path, f"no_text_a_{kind}", [row], kind=kind, template="Pick one:", **keys)
    with pytest.raises(ValueError, match=r"task\.yaml: template 'Pick one:' lacks \{text_a\}.*same prompt"):
        load_custom_task(path)


def test_repeated_options_in_a_task_file_are_refused(tmp_path):
    """Options equal once stripped (as every reader strips them) would tie: an error naming the file and
    the line, strict or not."""
    rows = [
        {"q": "which one is cat", "options": ["cat", "dog"], "answer": 0},
        {"q": "which one is dog", "options": ["cat", "dog", " cat "], "answer": 1},
    ]
    spec = {"kind": "multiple_choice", "choices_field": "options", "answer_field": "answer"}
    task = load_custom_task(write_custom_task(tmp_path, "repeated_options", rows, **spec))
    for strict in (True, False):
        with pytest.raises(
            ValueError, match=r"rows\.jsonl, line 2: option 'cat' appears twice.*each option once"
        ):
            task.load("train", strict=strict)
