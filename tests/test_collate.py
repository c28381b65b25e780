"""Tests for rankmix.data.collate: decoder, seq2seq and encoder encodings, and training batches (each
example's features, padded)."""

from __future__ import annotations

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from helpers import word_tokenizer
from rankmix.data.collate import IGNORE, encode_decoder, encode_encoder, encode_seq2seq, pad_features, pad_id
from rankmix.families import FAMILIES
from rankmix.tasks import Example, get_task

WORDS = (
    "the cat sat on a mat dog ran fast slow big small red blue green house tree car road sun moon "
    "yes no maybe 0 1 2 3 4 5 . , ? : a b c d e f g h"
)


def make_tokenizer(kind: str = "llama") -> PreTrainedTokenizerFast:
    """An offline WordLevel tokenizer. `kind` picks the special tokens it adds: "llama" prepends <s>,
    "t5" appends </s>, "bert" wraps [CLS] a [SEP] (b [SEP]), "plain" adds none."""
    corpus = [WORDS, get_task("rte").template, get_task("stsb").template]
    return word_tokenizer(corpus, template=None if kind == "plain" else kind)


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer("llama")


PROMPTS = ["the cat sat on a mat", "a dog ran", "the big red car ran on the road fast"]
ANSWERS = ["yes", "no maybe", "3 . 5"]


def ids_of(tokenizer, text: str, special: bool = True) -> list[int]:
    return tokenizer(text, add_special_tokens=special)["input_ids"]


# -- decoder ---------------------------------------------------------------------------------------


def test_encode_decoder_layout(tok):
    out = encode_decoder(tok, PROMPTS, ANSWERS, max_length=64)
    assert set(out) == {"input_ids", "attention_mask", "labels"}
    width = out["input_ids"].shape[1]
    for row, (prompt, answer) in enumerate(zip(PROMPTS, ANSWERS, strict=True)):
        p = ids_of(tok, prompt)
        a = [*ids_of(tok, " " + answer, special=False), tok.eos_token_id]
        assert p[0] == tok.bos_token_id  # the prompt keeps the tokenizer's special tokens
        n = len(p) + len(a)
        pad = width - n
        assert out["input_ids"][row].tolist() == p + a + [tok.pad_token_id] * pad
        assert out["labels"][row].tolist() == [IGNORE] * len(p) + a + [IGNORE] * pad
        assert out["attention_mask"][row].tolist() == [1] * n + [0] * pad
    assert width == max(
        len(ids_of(tok, p)) + len(ids_of(tok, " " + a, False)) + 1
        for p, a in zip(PROMPTS, ANSWERS, strict=True)
    )
    assert out["input_ids"].dtype == out["labels"].dtype == out["attention_mask"].dtype == torch.long


def test_encode_decoder_labels_mask_exactly_prompt_and_padding(tok):
    out = encode_decoder(tok, PROMPTS, ANSWERS, max_length=64)
    for row, answer in enumerate(ANSWERS):
        n_answer = len(ids_of(tok, " " + answer, False)) + 1
        assert int((out["labels"][row] != IGNORE).sum()) == n_answer
        # the answer tokens are exactly the last `n_answer` tokens under the attention mask
        length = int(out["attention_mask"][row].sum())
        kept = out["labels"][row][length - n_answer : length]
        assert torch.equal(kept, out["input_ids"][row][length - n_answer : length])


def test_encode_decoder_truncates_the_prompt_from_the_left(tok):
    prompt, answer = PROMPTS[2], "no maybe"
    p = ids_of(tok, prompt)
    a = [*ids_of(tok, " " + answer, False), tok.eos_token_id]
    max_length = len(a) + 4
    assert len(p) > 4
    out = encode_decoder(tok, [prompt, "a"], [answer, "yes"], max_length=max_length)
    assert out["input_ids"][0].tolist() == p[-4:] + a  # the answer is whole; the prompt's end is kept
    assert out["labels"][0].tolist() == [IGNORE] * 4 + a
    assert out["attention_mask"][0].tolist() == [1] * max_length
    assert out["input_ids"].shape[1] == max_length


def test_encode_decoder_keeps_the_answer_when_it_alone_is_too_long(tok):
    prompt, answer = PROMPTS[0], "the big red car ran on the road fast"
    a = [*ids_of(tok, " " + answer, False), tok.eos_token_id]
    out = encode_decoder(tok, [prompt], [answer], max_length=3)
    assert out["input_ids"][0].tolist() == ids_of(tok, prompt)[-1:] + a  # at least one prompt token
    assert out["labels"][0].tolist() == [IGNORE, *a]


def test_encode_decoder_pads_with_eos_without_a_pad_token():
    tok = make_tokenizer("llama")
    tok.pad_token = None
    out = encode_decoder(tok, ["a", "the cat sat"], ["yes", "no"], max_length=32)
    assert out["input_ids"][0, -1].item() == tok.eos_token_id
    assert out["attention_mask"][0].tolist()[-1] == 0


def test_encode_decoder_without_pad_or_eos_raises():
    tok = make_tokenizer("llama")
    tok.pad_token = None
    tok.eos_token = None
    with pytest.raises(ValueError, match="pad"):
        encode_decoder(tok, ["a", "the cat sat"], ["yes", "no"], max_length=32)


# -- seq2seq ---------------------------------------------------------------------------------------


def test_encode_seq2seq_layout():
    tok = make_tokenizer("t5")
    out = encode_seq2seq(tok, PROMPTS, ANSWERS, max_length=64)
    assert set(out) >= {"input_ids", "attention_mask", "labels"}
    width = max(len(ids_of(tok, p)) for p in PROMPTS)
    label_width = max(len(ids_of(tok, a)) for a in ANSWERS)
    assert out["input_ids"].shape == (3, width)
    assert out["labels"].shape == (3, label_width)
    for row, (prompt, answer) in enumerate(zip(PROMPTS, ANSWERS, strict=True)):
        p, a = ids_of(tok, prompt), ids_of(tok, answer)
        assert a[-1] == tok.eos_token_id
        assert out["input_ids"][row].tolist() == p + [tok.pad_token_id] * (width - len(p))
        assert out["attention_mask"][row].tolist() == [1] * len(p) + [0] * (width - len(p))
        assert out["labels"][row].tolist() == a + [IGNORE] * (label_width - len(a))


def test_encode_seq2seq_truncates_prompts():
    tok = make_tokenizer("t5")
    out = encode_seq2seq(tok, PROMPTS, ANSWERS, max_length=4)
    assert out["input_ids"].shape[1] == 4
    assert out["input_ids"][2].tolist()[:3] == ids_of(tok, PROMPTS[2])[:3]


# -- encoder ---------------------------------------------------------------------------------------


def test_encode_encoder_pairs_text_a_and_b():
    tok = make_tokenizer("bert")
    examples = [Example("the cat sat", "a dog ran", 1), Example("red car", "the big blue house", 0)]
    out = encode_encoder(tok, examples, max_length=64)
    width = out["input_ids"].shape[1]
    for row, e in enumerate(examples):
        ref = tok(e.text_a, e.text_b)["input_ids"]
        assert ref[0] == tok.cls_token_id and ref.count(tok.sep_token_id) == 2
        assert out["input_ids"][row].tolist() == ref + [tok.pad_token_id] * (width - len(ref))
        assert out["attention_mask"][row].tolist() == [1] * len(ref) + [0] * (width - len(ref))


def test_encode_encoder_single_texts():
    tok = make_tokenizer("bert")
    examples = [Example("the cat sat", None, 1), Example("red car", None, 0)]
    out = encode_encoder(tok, examples, max_length=64)
    for row, e in enumerate(examples):
        ref = tok(e.text_a)["input_ids"]
        assert out["input_ids"][row].tolist()[: len(ref)] == ref
        assert int(out["attention_mask"][row].sum()) == len(ref)


def test_encode_encoder_truncates():
    tok = make_tokenizer("bert")
    examples = [Example("the cat sat on a mat", "the big red car ran on the road fast", 1)]
    out = encode_encoder(tok, examples, max_length=7)
    assert out["input_ids"].shape == (1, 7)


@pytest.mark.parametrize("pairs", [True, False], ids=["pairs", "single"])
def test_encode_encoder_matches_the_tokenizers_own_batch_padding(pairs):
    """Examples encoded one by one and padded give what the tokenizer gives for the whole batch."""
    tok = make_tokenizer("bert")
    texts = ["the cat sat on a mat", "a dog", "the big red car ran on the road fast", "sun"]
    seconds = ["red car", "the moon and the sun", "a b c", "yes"] if pairs else [None] * 4
    examples = [Example(a, b, 0) for a, b in zip(texts, seconds, strict=True)]
    out = encode_encoder(tok, examples, max_length=9)
    ref = tok(
        texts, seconds if pairs else None, truncation=True, max_length=9, padding=True, return_tensors="pt"
    )
    assert set(out) == set(ref)
    for key, value in ref.items():
        assert torch.equal(out[key], value), key


def test_an_encoder_example_encodes_the_same_whatever_its_batch_mates():
    """A single-text task's example batched with pairs (mixed batches) is still encoded as one text."""
    tok = make_tokenizer("bert")
    single, pair = Example("the cat sat", None, 1), Example("red car", "a dog ran", 0)
    alone = encode_encoder(tok, [single], max_length=32)["input_ids"][0].tolist()
    mixed = encode_encoder(tok, [single, pair], max_length=32)
    n = len(alone)
    assert mixed["input_ids"][0, :n].tolist() == alone and int(mixed["attention_mask"][0].sum()) == n


# -- training batches: features of each example, padded ---------------------------------------------
def collate(family: str, tokenizer, tasks, batch, max_length: int) -> dict[str, torch.Tensor]:
    """A training batch as train() builds it (the DataLoader pads the features of each example)."""
    rows = [FAMILIES[family].features(tokenizer, t, tasks[t], e, max_length) for t, e in batch]
    return pad_features(rows, pad_id(tokenizer))


def test_collate_encoder_has_task_ids_and_float_labels():
    tok = make_tokenizer("bert")
    tasks = [get_task("rte"), get_task("stsb")]
    batch = [
        (0, Example("the cat sat", "a dog ran", 1)),
        (1, Example("red car", "blue car", 3.25)),
        (0, Example("the sun", "the moon", 0)),
    ]
    out = collate("encoder", tok, tasks, batch, max_length=32)
    assert out["task_ids"].tolist() == [0, 1, 0]
    assert out["task_ids"].dtype == torch.long
    assert out["labels"].dtype.is_floating_point
    assert out["labels"].tolist() == [1.0, 3.25, 0.0]
    ref = encode_encoder(tok, [e for _, e in batch], 32)
    for key, value in ref.items():
        assert torch.equal(out[key], value)


@pytest.mark.parametrize("family", ["decoder", "seq2seq"])
def test_collate_generative_uses_task_prompt_and_answer(family):
    tok = make_tokenizer("llama" if family == "decoder" else "t5")
    rte, stsb = get_task("rte"), get_task("stsb")
    batch = [
        (1, Example("red car", "blue car", 3.25)),
        (0, Example("the cat sat", "a dog ran", 1)),
        (0, Example("the sun", "the moon", 0)),
    ]
    out = collate(family, tok, [rte, stsb], batch, max_length=128)
    prompts = [
        stsb.template.format(text_a="red car", text_b="blue car"),
        rte.template.format(text_a="the cat sat", text_b="a dog ran"),
        rte.template.format(text_a="the sun", text_b="the moon"),
    ]
    answers = ["3", "no", "yes"]  # stsb answers the rounded score (the candidates scored); rte yes/no
    assert [t.prompt(e) for t, e in zip([stsb, rte, rte], [e for _, e in batch], strict=True)] == prompts
    encode = encode_decoder if family == "decoder" else encode_seq2seq
    ref = encode(tok, prompts, answers, 128)
    assert out["task_ids"].tolist() == [1, 0, 0]
    assert set(out) == set(ref) | {"task_ids"}
    for key, value in ref.items():
        assert torch.equal(out[key], value), key
