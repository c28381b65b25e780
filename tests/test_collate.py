"""Tests for rankmix.data.collate: decoder, seq2seq and encoder encodings (one example at a time), the
label-word and lm-evaluation-harness continuation encodings, and training batches (each example's
features, padded; several sequences per row for an encoder's multiple choice)."""

from __future__ import annotations

from array import array

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from helpers import word_tokenizer
from rankmix.data.collate import (
    IGNORE,
    compact,
    continuation_ids,
    decoder_features,
    encode_encoder,
    encoder_row,
    pad_features,
    pad_id,
    seq2seq_features,
)
from rankmix.families import FAMILIES
from rankmix.tasks import Example, Task, get_task
from rankmix.tasks.kinds import MultipleChoice

WORDS = (
    "the cat sat on a mat dog ran fast slow big small red blue green house tree car road sun moon "
    "yes no maybe 0 1 2 3 4 5 . , ? : a b c d e f g h _"
)


def make_tokenizer(kind: str = "llama") -> PreTrainedTokenizerFast:
    """An offline WordLevel tokenizer. `kind` picks the special tokens it adds: "llama" prepends <s>,
    "t5" appends </s>, "bert" wraps [CLS] a [SEP] (b [SEP]), "plain" adds none."""
    corpus = [WORDS, get_task("rte").template, get_task("stsb").template]
    return word_tokenizer(corpus, template=None if kind == "plain" else kind)


def metaspace_tokenizer() -> PreTrainedTokenizerFast:
    """A tokenizer for which spaces matter (SentencePiece-style "▁word" pieces, a lone space is a token
    of its own), prepending <s>: where the space between context and continuation goes changes the ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    specials = ["[PAD]", "</s>", "<s>", "[UNK]"]
    tok.train_from_iterator(
        ["Answer: yes no the cat sat"], trainers.WordLevelTrainer(special_tokens=specials)
    )
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", eos_token="</s>", bos_token="<s>", unk_token="[UNK]"
    )


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer("llama")


PROMPTS = ["the cat sat on a mat", "a dog ran", "the big red car ran on the road fast"]
ANSWERS = ["yes", "no maybe", "3 . 5"]


def ids_of(tokenizer, text: str, special: bool = True) -> list[int]:
    return tokenizer(text, add_special_tokens=special)["input_ids"]


def decoder_batch(tokenizer, prompts, answers, max_length: int, eos: bool = True) -> dict[str, torch.Tensor]:
    """A batch of decoder training rows, each encoded on its own and padded."""
    rows = [decoder_features(tokenizer, p, a, eos, max_length) for p, a in zip(prompts, answers, strict=True)]
    return pad_features(rows, pad_id(tokenizer))


def seq2seq_batch(tokenizer, prompts, answers, max_length: int, eos: bool = True) -> dict[str, torch.Tensor]:
    rows = [seq2seq_features(tokenizer, p, a, eos, max_length) for p, a in zip(prompts, answers, strict=True)]
    return pad_features(rows, pad_id(tokenizer))


def pairs_of(examples) -> list[list[tuple[str, str | None]]]:
    """encode_encoder's input: each example as its one (text_a, text_b) pair."""
    return [[(e.text_a, e.text_b)] for e in examples]


# -- continuation_ids ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["llama", "t5", "plain"])
def test_label_word_encoding_is_the_answer_alone_then_eos(kind):
    tok = make_tokenizer(kind)
    for prompt, answer in zip(PROMPTS, ANSWERS, strict=True):
        head, cont = continuation_ids(tok, prompt, answer, eos=True)
        assert head == ids_of(tok, prompt)  # the prompt keeps the tokenizer's special tokens
        assert cont == [*ids_of(tok, " " + answer, special=False), tok.eos_token_id]


def test_label_word_encoding_without_an_eos_token_appends_nothing():
    tok = make_tokenizer("plain")
    tok.eos_token = None
    _, cont = continuation_ids(tok, "a dog ran", "yes", eos=True)
    assert cont == ids_of(tok, " yes", special=False)


def test_option_encoding_is_the_whole_text_after_the_contexts_own_tokens(tok):
    """lm-evaluation-harness's request: context + " " + option tokenised as one text, the continuation
    what follows the context's tokens; no end-of-sequence token."""
    for prompt, option in zip(PROMPTS, ANSWERS, strict=True):
        head, cont = continuation_ids(tok, prompt, option, eos=False)
        whole = ids_of(tok, prompt + " " + option)
        assert head == ids_of(tok, prompt)
        assert head + cont == whole
        assert cont == ids_of(tok, option, special=False)  # a word tokenizer: the option's own words
        assert tok.eos_token_id not in cont


def test_option_encoding_moves_the_contexts_trailing_spaces_to_the_continuation():
    """With a tokenizer for which a space is a token, "Answer: " + "yes" is encoded as "Answer:" and
    "  yes" (as lm-evaluation-harness does), not with the space at the end of the context."""
    tok = metaspace_tokenizer()
    assert ids_of(tok, "Answer: ") != ids_of(tok, "Answer:")  # the space is a token of its own here
    head, cont = continuation_ids(tok, "Answer: ", "yes", eos=False)
    assert head == ids_of(tok, "Answer:")
    assert head + cont == ids_of(tok, "Answer:" + "  yes")
    plain_head, plain_cont = continuation_ids(tok, "Answer:", "yes", eos=False)
    assert plain_head == ids_of(tok, "Answer:") and plain_cont == ids_of(tok, " yes", special=False)


# -- decoder ---------------------------------------------------------------------------------------


def test_decoder_batch_layout(tok):
    out = decoder_batch(tok, PROMPTS, ANSWERS, max_length=64)
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


def test_decoder_option_rows_have_no_eos(tok):
    """A multiple-choice target (eos=False) is the option as lm-evaluation-harness scores it."""
    for prompt, option in zip(PROMPTS, ANSWERS, strict=True):
        row = decoder_features(tok, prompt, option, False, 64)
        p, a = ids_of(tok, prompt), ids_of(tok, option, special=False)
        assert list(row["input_ids"]) == p + a
        assert list(row["labels"]) == [IGNORE] * len(p) + a


def test_decoder_labels_mask_exactly_prompt_and_padding(tok):
    out = decoder_batch(tok, PROMPTS, ANSWERS, max_length=64)
    for row, answer in enumerate(ANSWERS):
        n_answer = len(ids_of(tok, " " + answer, False)) + 1
        assert int((out["labels"][row] != IGNORE).sum()) == n_answer
        # the answer tokens are exactly the last `n_answer` tokens under the attention mask
        length = int(out["attention_mask"][row].sum())
        kept = out["labels"][row][length - n_answer : length]
        assert torch.equal(kept, out["input_ids"][row][length - n_answer : length])


def test_decoder_truncates_the_prompt_from_the_left(tok):
    prompt, answer = PROMPTS[2], "no maybe"
    p = ids_of(tok, prompt)
    a = [*ids_of(tok, " " + answer, False), tok.eos_token_id]
    max_length = len(a) + 4
    assert len(p) > 4
    out = decoder_batch(tok, [prompt, "a"], [answer, "yes"], max_length=max_length)
    assert out["input_ids"][0].tolist() == p[-4:] + a  # the answer is whole; the prompt's end is kept
    assert out["labels"][0].tolist() == [IGNORE] * 4 + a
    assert out["attention_mask"][0].tolist() == [1] * max_length
    assert out["input_ids"].shape[1] == max_length


def test_decoder_keeps_the_answer_when_it_alone_is_too_long(tok):
    prompt, answer = PROMPTS[0], "the big red car ran on the road fast"
    a = [*ids_of(tok, " " + answer, False), tok.eos_token_id]
    out = decoder_batch(tok, [prompt], [answer], max_length=3)
    assert out["input_ids"][0].tolist() == ids_of(tok, prompt)[-1:] + a  # at least one prompt token
    assert out["labels"][0].tolist() == [IGNORE, *a]


def test_decoder_pads_with_eos_without_a_pad_token():
    tok = make_tokenizer("llama")
    tok.pad_token = None
    out = decoder_batch(tok, ["a", "the cat sat"], ["yes", "no"], max_length=32)
    assert out["input_ids"][0, -1].item() == tok.eos_token_id
    assert out["attention_mask"][0].tolist()[-1] == 0


def test_padding_without_pad_or_eos_raises():
    tok = make_tokenizer("llama")
    tok.pad_token = None
    tok.eos_token = None
    with pytest.raises(ValueError, match="pad"):
        decoder_batch(tok, ["a", "the cat sat"], ["yes", "no"], max_length=32, eos=False)


# -- seq2seq ---------------------------------------------------------------------------------------


def test_seq2seq_batch_layout():
    tok = make_tokenizer("t5")
    out = seq2seq_batch(tok, PROMPTS, ANSWERS, max_length=64)
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


def test_seq2seq_truncates_prompts():
    tok = make_tokenizer("t5")
    out = seq2seq_batch(tok, PROMPTS, ANSWERS, max_length=4)
    assert out["input_ids"].shape[1] == 4
    assert out["input_ids"][2].tolist()[:3] == ids_of(tok, PROMPTS[2])[:3]


# -- encoder ---------------------------------------------------------------------------------------


def test_encode_encoder_pairs_text_a_and_b():
    tok = make_tokenizer("bert")
    examples = [Example("the cat sat", "a dog ran", 1), Example("red car", "the big blue house", 0)]
    out = encode_encoder(tok, pairs_of(examples), max_length=64)
    assert "choices" not in out  # one sequence per example
    width = out["input_ids"].shape[1]
    for row, e in enumerate(examples):
        ref = tok(e.text_a, e.text_b)["input_ids"]
        assert ref[0] == tok.cls_token_id and ref.count(tok.sep_token_id) == 2
        assert out["input_ids"][row].tolist() == ref + [tok.pad_token_id] * (width - len(ref))
        assert out["attention_mask"][row].tolist() == [1] * len(ref) + [0] * (width - len(ref))


def test_encode_encoder_single_texts():
    tok = make_tokenizer("bert")
    examples = [Example("the cat sat", None, 1), Example("red car", None, 0)]
    out = encode_encoder(tok, pairs_of(examples), max_length=64)
    for row, e in enumerate(examples):
        ref = tok(e.text_a)["input_ids"]
        assert out["input_ids"][row].tolist()[: len(ref)] == ref
        assert int(out["attention_mask"][row].sum()) == len(ref)


def test_encode_encoder_truncates():
    tok = make_tokenizer("bert")
    examples = [Example("the cat sat on a mat", "the big red car ran on the road fast", 1)]
    out = encode_encoder(tok, pairs_of(examples), max_length=7)
    assert out["input_ids"].shape == (1, 7)


@pytest.mark.parametrize("pairs", [True, False], ids=["pairs", "single"])
def test_encode_encoder_matches_the_tokenizers_own_batch_padding(pairs):
    """Examples encoded one by one and padded give what the tokenizer gives for the whole batch."""
    tok = make_tokenizer("bert")
    texts = ["the cat sat on a mat", "a dog", "the big red car ran on the road fast", "sun"]
    seconds = ["red car", "the moon and the sun", "a b c", "yes"] if pairs else [None] * 4
    examples = [Example(a, b, 0) for a, b in zip(texts, seconds, strict=True)]
    out = encode_encoder(tok, pairs_of(examples), max_length=9)
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
    alone = encode_encoder(tok, pairs_of([single]), max_length=32)["input_ids"][0].tolist()
    mixed = encode_encoder(tok, pairs_of([single, pair]), max_length=32)
    n = len(alone)
    assert mixed["input_ids"][0, :n].tolist() == alone and int(mixed["attention_mask"][0].sum()) == n


def test_encode_encoder_flattens_examples_with_several_pairs():
    """A multiple-choice example (several pairs) gives one padded row per pair, in order, and `choices`
    counts the rows of each example; a one-pair example counts one."""
    tok = make_tokenizer("bert")
    examples = [
        [("the cat sat", "yes"), ("the cat sat", "no maybe"), ("the cat sat", "a big red car")],
        [("a dog ran", None)],
        [("sun", "moon"), ("sun", "the road")],
    ]
    out = encode_encoder(tok, examples, max_length=32)
    assert out["choices"].tolist() == [3, 1, 2]
    flat = [pair for pairs in examples for pair in pairs]
    assert out["input_ids"].shape[0] == len(flat)
    width = out["input_ids"].shape[1]
    for row, (a, b) in enumerate(flat):
        ids = tok(a, b)["input_ids"]
        assert out["input_ids"][row].tolist() == ids + [tok.pad_token_id] * (width - len(ids))
        assert out["attention_mask"][row].tolist() == [1] * len(ids) + [0] * (width - len(ids))


def test_compact_keeps_nested_sequences():
    tok = make_tokenizer("bert")
    row = encoder_row(tok, [("the cat", "yes"), ("the cat", "no")], 16) | {"labels": 1.0, "task_ids": 2}
    packed = compact(row)
    assert all(isinstance(s, array) for s in packed["input_ids"])
    assert [list(s) for s in packed["input_ids"]] == [tok("the cat", w)["input_ids"] for w in ("yes", "no")]
    assert packed["labels"] == 1.0 and packed["task_ids"] == 2
    assert torch.equal(pad_features([packed], 0)["input_ids"], pad_features([row], 0)["input_ids"])


# -- training batches: features of each example, padded ---------------------------------------------
def collate(family: str, tokenizer, tasks, batch, max_length: int) -> dict[str, torch.Tensor]:
    """A training batch as train() builds it (the DataLoader pads the features of each example)."""
    rows = [FAMILIES[family].features(tokenizer, t, tasks[t], e, max_length) for t, e in batch]
    return pad_features(rows, pad_id(tokenizer))


def padded(rows: list[list[int]], fill: int) -> list[list[int]]:
    width = max(len(r) for r in rows)
    return [r + [fill] * (width - len(r)) for r in rows]


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
    assert "choices" not in out
    ref = tok([e.text_a for _, e in batch], [e.text_b for _, e in batch], padding=True, return_tensors="pt")
    for key, value in ref.items():
        assert torch.equal(out[key], value), key


def test_collate_encoder_multiple_choice_rows():
    """A multiple-choice example brings one (prompt, option) pair per option; a classification example
    of the same batch one pair; labels and task ids stay one per example."""
    tok = make_tokenizer("bert")
    mc = Task("mc", (), (), ("acc",), "{text_a}", reader=None, kind=MultipleChoice())
    tasks = [get_task("rte"), mc]
    batch = [
        (1, Example("the cat sat on a", None, 2, ("mat", "road", "big car"))),
        (0, Example("the cat sat", "a dog ran", 1)),
        (1, Example("a dog ran", None, 0, ("fast", "slow"))),
    ]
    out = collate("encoder", tok, tasks, batch, max_length=32)
    assert out["choices"].tolist() == [3, 1, 2]
    assert out["task_ids"].tolist() == [1, 0, 1]
    assert out["labels"].tolist() == [2.0, 1.0, 0.0]
    pairs = [("the cat sat on a", o) for o in ("mat", "road", "big car")] + [("the cat sat", "a dog ran")]
    pairs += [("a dog ran", o) for o in ("fast", "slow")]
    ids = padded([tok(a, b)["input_ids"] for a, b in pairs], tok.pad_token_id)
    assert out["input_ids"].tolist() == ids
    assert out["attention_mask"].tolist() == [[int(i != tok.pad_token_id) for i in r] for r in ids]


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
    assert out["task_ids"].tolist() == [1, 0, 0]
    assert set(out) == {"input_ids", "attention_mask", "labels", "task_ids"}
    if family == "decoder":
        p = [ids_of(tok, x) for x in prompts]
        a = [[*ids_of(tok, " " + y, False), tok.eos_token_id] for y in answers]
        inputs = padded([x + y for x, y in zip(p, a, strict=True)], tok.pad_token_id)
        labels = padded([[IGNORE] * len(x) + y for x, y in zip(p, a, strict=True)], IGNORE)
    else:
        inputs = padded([ids_of(tok, x) for x in prompts], tok.pad_token_id)
        labels = padded([ids_of(tok, y) for y in answers], IGNORE)
    assert out["input_ids"].tolist() == inputs
    assert out["labels"].tolist() == labels
    assert out["attention_mask"].tolist() == [[int(i != tok.pad_token_id) for i in r] for r in inputs]


def test_collate_decoder_multiple_choice_target_is_the_right_option():
    """A multiple-choice training row on a decoder: the prompt, then the right option as scored (no eos);
    with fill_blank, the prompt up to the blank filled with the right option, then the rest."""
    tok = make_tokenizer("llama")
    mc = Task("mc", (), (), ("acc",), "{text_a} :", reader=None, kind=MultipleChoice())
    blank = Task("blank", (), (), ("acc",), "{text_a}", reader=None, kind=MultipleChoice(fill_blank=True))
    batch = [
        (0, Example("the cat sat on a", None, 1, ("red mat", "big road"))),
        (1, Example("the _ sat on a mat", None, 0, ("dog", "cat"))),
    ]
    out = collate("decoder", tok, [mc, blank], batch, max_length=64)
    rows = [
        (ids_of(tok, "the cat sat on a :"), ids_of(tok, "big road", False)),
        (ids_of(tok, "the dog"), ids_of(tok, "sat on a mat", False)),
    ]
    assert out["input_ids"].tolist() == padded([p + a for p, a in rows], tok.pad_token_id)
    assert out["labels"].tolist() == padded([[IGNORE] * len(p) + a for p, a in rows], IGNORE)
