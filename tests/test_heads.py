"""Tests for rankmix.heads.MultiTaskHeads over a tiny BERT with MoRE: heads as wide as each task's kind
says, mixed batches equal task-by-task runs, -inf padding of narrow heads, the loss against a per-example
reference, gradients; and multiple-choice examples (several encoded (prompt, option) rows each, one
logit per option) mixed with classification ones, against encoding each pair on its own."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from helpers import build_base, word_tokenizer
from rankmix import MoREConfig, get_model
from rankmix.data.collate import encoder_row, pad_features, pad_id
from rankmix.heads import MultiTaskHeads
from rankmix.tasks import Example, Task, get_task
from rankmix.tasks.kinds import MultipleChoice

TASKS = ["rte", "stsb", "mnli"]
NUM_LABELS = [2, 1, 3]
REGRESSION = [False, True, False]
VOCAB = 60
CONTRASTIVE = 0.3
TASK_IDS = [0, 1, 2, 0, 2, 1, 1]
LABELS = [1.0, 3.7, 2.0, 0.0, 1.0, 0.25, 5.0]
LENGTHS = [7, 3, 5, 9, 4, 9, 2]


def build(seed: int = 0) -> MultiTaskHeads:
    bert = build_base(
        "bert",
        vocab=VOCAB,
        seed=seed,
        max_position_embeddings=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    ).train()  # a freshly built module trains; build_base hands it over in eval mode
    config = MoREConfig(tasks=TASKS, max_rank=4, dropout=0.0, contrastive_weight=CONTRASTIVE)
    body = get_model(bert, config)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # lora_B is zero at init; spread the selectors so tasks pick different ranks
        for _, m in body.adapted_modules():
            m.bank.lora_B.copy_(torch.randn(m.bank.lora_B.shape, generator=gen) * 0.2)
            m.router.task_embedding.copy_(torch.randn(m.router.task_embedding.shape, generator=gen))
            m.router.gate.weight.copy_(torch.randn(m.router.gate.weight.shape, generator=gen))
    return MultiTaskHeads(body, [get_task(name) for name in TASKS])


@pytest.fixture(scope="module")
def model():
    return build()


def make_batch(task_ids=TASK_IDS, lengths=LENGTHS, labels=LABELS, seed: int = 2) -> dict:
    """Right-padded random token ids (pad 0) with their attention mask."""
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(5, VOCAB, (n,), generator=gen)
        mask[row, :n] = 1
    batch = {"input_ids": ids, "attention_mask": mask, "task_ids": torch.tensor(task_ids)}
    if labels is not None:
        batch["labels"] = torch.tensor(labels)
    return batch


def rows(batch: dict, index: list[int]) -> dict:
    return {k: v[index] for k, v in batch.items()}


def test_heads_are_as_wide_as_each_kind_says(model):
    """rte: two labels, stsb: one score, mnli: three labels."""
    assert [h.out_features for h in model.heads] == NUM_LABELS
    assert [get_task(name).kind.name == "regression" for name in TASKS] == REGRESSION
    assert all(h.in_features == model.body.base_model.config.hidden_size for h in model.heads)


def test_selectors_differ_across_tasks(model):
    """Tasks use different ranks somewhere, so per-task routing in the tests below is not vacuous."""
    ranks = model.body.selected_ranks()
    assert len({tuple(sorted(r.items())) for r in ranks.values()}) > 1


@torch.no_grad()
def test_logits_are_the_pooled_body_output_through_the_task_head(model):
    model.eval()
    batch = make_batch(labels=None)
    logits = model(**batch).logits
    assert logits.shape == (len(TASK_IDS), max(NUM_LABELS))
    hidden = model.body(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], task_ids=batch["task_ids"]
    ).last_hidden_state
    for row, (t, n) in enumerate(zip(TASK_IDS, LENGTHS, strict=True)):
        pooled = hidden[row, :n].mean(0)  # mean over the real tokens only
        expected = model.heads[t](pooled)
        assert torch.allclose(logits[row, : NUM_LABELS[t]], expected, atol=1e-5)


@torch.no_grad()
def test_mixed_batch_equals_task_by_task(model):
    model.eval()
    batch = make_batch(labels=None)
    mixed = model(**batch).logits
    for t in range(len(TASKS)):
        index = [i for i, task in enumerate(TASK_IDS) if task == t]
        alone = model(**rows(batch, index)).logits
        assert alone.shape == (len(index), NUM_LABELS[t])  # a batch is as wide as its widest head
        width = alone.shape[1]
        assert torch.allclose(mixed[index, :width], alone, atol=1e-5), t
        assert torch.isneginf(mixed[index, width:]).all()


@torch.no_grad()
def test_mixed_batch_equals_unpadded_single_examples(model):
    model.eval()
    batch = make_batch(labels=None)
    mixed = model(**batch).logits
    for row, (t, n) in enumerate(zip(TASK_IDS, LENGTHS, strict=True)):
        single = model(
            input_ids=batch["input_ids"][row : row + 1, :n],
            attention_mask=batch["attention_mask"][row : row + 1, :n],
            task_ids=torch.tensor([t]),
        ).logits
        assert single.shape == (1, NUM_LABELS[t])
        assert torch.allclose(mixed[row : row + 1, : NUM_LABELS[t]], single, atol=1e-5), row


@torch.no_grad()
def test_narrow_heads_are_padded_with_minus_inf(model):
    model.eval()
    logits = model(**make_batch(labels=None)).logits
    for row, t in enumerate(TASK_IDS):
        n = NUM_LABELS[t]
        assert torch.isfinite(logits[row, :n]).all()
        assert torch.isneginf(logits[row, n:]).all()
        # softmax over the padded row equals softmax over the task's own labels
        assert torch.allclose(logits[row].softmax(-1)[:n], logits[row, :n].softmax(-1))


def test_loss_matches_reference(model):
    model.train()  # every dropout is 0, so train mode is deterministic
    batch = make_batch()
    out = model(**batch)
    logits = out.logits.detach()
    task_term = 0.0
    for row, (t, y) in enumerate(zip(TASK_IDS, LABELS, strict=True)):
        if REGRESSION[t]:
            task_term += (float(logits[row, 0]) - y) ** 2
        else:
            row_logits = logits[row, : NUM_LABELS[t]].tolist()
            log_z = math.log(sum(math.exp(v) for v in row_logits))
            task_term += log_z - row_logits[int(y)]
    task_term /= len(TASK_IDS)
    body = model.body(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], task_ids=batch["task_ids"]
    )
    assert "contrastive" in body.aux_losses
    aux = CONTRASTIVE * float(body.aux_losses["contrastive"])
    assert math.isclose(body.aux_loss.item(), aux, rel_tol=1e-5)
    assert body.aux_loss.item() > 0
    assert math.isclose(out.loss.item(), task_term + aux, rel_tol=1e-5, abs_tol=1e-6)
    assert torch.allclose(out.aux_losses["contrastive"], body.aux_losses["contrastive"])


def test_loss_of_a_single_task_batch(model):
    model.train()
    index = [i for i, t in enumerate(TASK_IDS) if t == 1]  # regression only
    batch = rows(make_batch(), index)
    out = model(**batch)
    preds = out.logits[:, 0].detach()
    mse = float(((preds - batch["labels"]) ** 2).mean())
    aux = CONTRASTIVE * float(out.aux_losses["contrastive"])
    assert math.isclose(out.loss.item(), mse + aux, rel_tol=1e-5)


def test_no_labels_no_loss(model):
    model.eval()
    with torch.no_grad():
        out = model(**make_batch(labels=None))
    assert "loss" not in out
    assert "contrastive" in out.aux_losses


def test_gradients_reach_heads_and_adapters():
    model = build(seed=4).train()
    present = [0, 1]  # task 2's head gets no example
    batch = make_batch(task_ids=[0, 1, 0, 1], lengths=[5, 3, 6, 2], labels=[1.0, 2.5, 0.0, 4.0])
    model(**batch).loss.backward()
    for t, head in enumerate(model.heads):
        if t in present:
            assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
            assert head.bias.grad is not None and head.bias.grad.abs().sum() > 0
        else:
            assert head.weight.grad is None or head.weight.grad.abs().sum() == 0
    modules = list(model.body.adapted_modules())
    assert modules
    for name, m in modules:
        assert m.bank.lora_A.grad is not None and m.bank.lora_A.grad.abs().sum() > 0, name
        assert m.bank.lora_B.grad is not None and m.bank.lora_B.grad.abs().sum() > 0, name
        assert m.router.gate.weight.grad is not None and m.router.gate.weight.grad.abs().sum() > 0, name
        assert m.router.task_embedding.grad is not None, name
        assert m.router.task_embedding.grad[present].abs().sum() > 0, name
    for p in model.body.base_model.parameters():
        if not any(p is q for _, m in modules for q in (*m.bank.parameters(), *m.router.parameters())):
            assert p.grad is None  # the base model stays frozen


def test_mixed_precision_autocast():
    """Training with mixed_precision (accelerate wraps forward in autocast) must work: the heads'
    half-precision outputs have to fit into the float32 logits tensor."""
    model = build(seed=5).train()
    batch = make_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**batch)
    assert torch.isfinite(out.loss)
    for row, t in enumerate(TASK_IDS):
        assert torch.isneginf(out.logits[row, NUM_LABELS[t] :]).all()
    out.loss.backward()
    assert model.heads[0].weight.grad is not None
    assert out.logits.dtype == torch.float32
    reference = model(**batch)
    assert math.isclose(out.loss.item(), reference.loss.item(), rel_tol=0.05)


# ---------------------------------------------------------------- multiple choice: one logit per option


def no_files(data_dir, split, strict):
    raise AssertionError("this test task holds no files")


PICK = Task(
    "pick", (), (), ("acc", "acc_norm"), "Question: {text_a}\nAnswer:", no_files, kind=MultipleChoice()
)
RTE = get_task("rte")
MC_TASKS = [RTE, PICK]
# (task id, example): classification pairs and multiple-choice rows of 2 and 3 options, interleaved, of
# different lengths (so that rows pad differently); their labels a class, or the right option's index
MC_BATCH = [
    (1, Example("which animal barks", None, 2, ("a red car", "the sun", "a big dog"))),
    (0, Example("a cat sat on the mat", "an animal sat", 0)),
    (1, Example("what is hot", None, 0, ("the sun over the big red house", "snow"))),
    (0, Example("the dog ran", "the dog sat on a mat and the cat ran fast", 1)),
    (1, Example("where do fish swim", None, 1, ("on a road", "in the sea", "over the moon"))),
]
MC_WORDS = (
    "a an the cat dog sat ran on mat animal fast which barks red car sun big what is hot over house snow"
)
MC_WORDS += " where do fish swim road in sea moon and Question Answer :"


def reference_pairs(task: Task, example: Example) -> list[tuple[str, str | None]]:
    """What an encoder reads, written out here: a classification row's text pair; for multiple choice
    the filled-in prompt paired with each option."""
    if task is PICK:
        return [(f"Question: {example.text_a}\nAnswer:", option) for option in example.choices]
    return [(example.text_a, example.text_b)]


@pytest.fixture(scope="module")
def mc_model():
    tok = word_tokenizer([MC_WORDS], template="bert")
    bert = build_base(
        "bert", vocab=len(tok), seed=7, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    body = get_model(bert, MoREConfig(tasks=["rte", "pick"], max_rank=4, dropout=0.0, contrastive_weight=0.0))
    gen = torch.Generator().manual_seed(8)
    with torch.no_grad():
        for _, m in body.adapted_modules():
            m.bank.lora_B.copy_(torch.randn(m.bank.lora_B.shape, generator=gen) * 0.2)
            m.router.task_embedding.copy_(torch.randn(m.router.task_embedding.shape, generator=gen))
            m.router.gate.weight.copy_(torch.randn(m.router.gate.weight.shape, generator=gen))
    return tok, MultiTaskHeads(body, MC_TASKS).eval()


def mc_inputs(tok, batch) -> dict:
    rows = [
        {**encoder_row(tok, reference_pairs(MC_TASKS[t], e), 64), "task_ids": t, "labels": int(e.label)}
        for t, e in batch
    ]
    return pad_features(rows, pad_id(tok))


@torch.no_grad()
def slow_logits(model, tok, t: int, example: Example) -> list[float]:
    """Each pair encoded on its own (no padding), mean-pooled over its tokens, through the task's head;
    one logit per option side by side, or the classification row's logits."""
    out = []
    for a, b in reference_pairs(MC_TASKS[t], example):
        enc = tok(a, b, return_tensors="pt")
        hidden = model.body(**enc, task_ids=torch.tensor([t])).last_hidden_state[0]
        out += model.heads[t](hidden.mean(0)).tolist()
    return out


def test_multiple_choice_task_has_one_logit_per_option_and_reads_prompt_option_pairs(mc_model):
    _, model = mc_model
    assert [h.out_features for h in model.heads] == [2, 1]  # rte's two labels; one logit per option
    for t, example in MC_BATCH:
        task = MC_TASKS[t]
        assert task.kind.encoder_pairs(task, example) == reference_pairs(task, example)


def test_multiple_choice_rows_are_grouped_by_example(mc_model):
    tok, _ = mc_model
    inputs = mc_inputs(tok, MC_BATCH)
    assert inputs["choices"].tolist() == [3, 1, 2, 1, 3]
    assert inputs["input_ids"].shape[0] == 10 and inputs["task_ids"].tolist() == [1, 0, 1, 0, 1]


@torch.no_grad()
def test_mixed_multiple_choice_batch_logits_equal_each_pair_encoded_alone(mc_model):
    tok, model = mc_model
    logits = model(**mc_inputs(tok, MC_BATCH)).logits
    references = [slow_logits(model, tok, t, e) for t, e in MC_BATCH]
    assert [len(r) for r in references] == [3, 2, 2, 2, 3]  # options, or rte's two labels
    assert logits.shape == (len(MC_BATCH), 3)  # as wide as the widest example of this batch
    for row, reference in enumerate(references):
        width = len(reference)
        assert logits[row, :width].tolist() == pytest.approx(reference, abs=1e-5), row
        assert torch.isneginf(logits[row, width:]).all(), row
    # a batch's width is its own: two-option rows and rte rows alone give two columns
    narrow = [MC_BATCH[1], MC_BATCH[2], MC_BATCH[3]]
    alone = model(**mc_inputs(tok, narrow)).logits
    assert alone.shape == (3, 2)
    assert torch.allclose(alone, logits[[1, 2, 3], :2], atol=1e-5)


def reference_loss(model, tok, batch) -> float:
    """Mean over examples of the softmax cross-entropy of each example's own logits (slow_logits)."""
    total = 0.0
    for t, example in batch:
        reference = slow_logits(model, tok, t, example)
        total += math.log(sum(math.exp(v) for v in reference)) - reference[int(example.label)]
    return total / len(batch)


def test_mixed_multiple_choice_batch_loss_equals_per_example_reference(mc_model):
    tok, model = mc_model
    with torch.no_grad():
        loss = model(**mc_inputs(tok, MC_BATCH)).loss.item()
    assert loss == pytest.approx(reference_loss(model, tok, MC_BATCH), rel=1e-5)
    # the loss follows the labels: every label moved to the next option (class) changes it as it should
    moved = [(t, replace(e, label=(int(e.label) + 1) % (len(e.choices) or 2))) for t, e in MC_BATCH]
    with torch.no_grad():
        other = model(**mc_inputs(tok, moved)).loss.item()
    assert other == pytest.approx(reference_loss(model, tok, moved), rel=1e-5)
    assert other != pytest.approx(loss)
