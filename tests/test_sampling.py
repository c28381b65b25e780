"""Tests for rankmix.data.sampling: task probabilities per strategy, the sampler's task frequencies,
single/mixed batches, per-pass coverage, seeding, processes, and resuming from a state dict."""

from __future__ import annotations

import copy
import io
import math
from collections import Counter

import pytest
import torch

from rankmix.data.loader import training_batches
from rankmix.data.sampling import ConsumedBatches, TaskSampler, task_probabilities

SIZES = [40, 300, 1500, 12]
SIGMAS = 5.0  # tolerance of frequency checks, in binomial standard deviations


def reference_probabilities(sizes: list[int], strategy: str, temperature: float = 2.0) -> list[float]:
    """The formulas of each strategy, in plain Python."""
    total = sum(sizes)
    if strategy == "size_softmax":
        exps = [math.exp(n / total) for n in sizes]
        return [e / sum(exps) for e in exps]
    if strategy == "temperature":
        w = [n ** (1.0 / temperature) for n in sizes]
        return [x / sum(w) for x in w]
    if strategy == "proportional":
        return [n / total for n in sizes]
    if strategy == "uniform":
        return [1.0 / len(sizes)] * len(sizes)
    raise AssertionError(strategy)


def stream(sampler: TaskSampler, batches: int) -> list[list[tuple[int, int]]]:
    return [sampler.next_batch() for _ in range(batches)]


def assert_frequencies(counts: Counter, probs: list[float], draws: int) -> None:
    """Every task's share of `draws` lies within SIGMAS binomial standard deviations of its probability."""
    for task, p in enumerate(probs):
        sigma = math.sqrt(p * (1 - p) / draws)
        share = counts[task] / draws
        assert abs(share - p) <= SIGMAS * sigma + 1e-12, (task, share, p, sigma)


# -- probabilities ---------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["size_softmax", "temperature", "proportional", "uniform"])
@pytest.mark.parametrize("sizes", [SIZES, [5], [1, 1], [10, 1000, 100000]])
def test_task_probabilities_match_formulas(strategy, sizes):
    probs = task_probabilities(sizes, strategy)
    expected = reference_probabilities(sizes, strategy)
    assert probs.shape == (len(sizes),)
    assert torch.allclose(probs, torch.tensor(expected, dtype=probs.dtype), atol=1e-12, rtol=1e-9)
    assert math.isclose(float(probs.sum()), 1.0, abs_tol=1e-12)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0, 10.0])
def test_temperature_strategy_uses_the_temperature(temperature):
    probs = task_probabilities(SIZES, "temperature", temperature)
    expected = reference_probabilities(SIZES, "temperature", temperature)
    assert torch.allclose(probs, torch.tensor(expected, dtype=probs.dtype), atol=1e-12)


def test_temperature_one_is_proportional_and_size_softmax_is_flatter():
    assert torch.allclose(
        task_probabilities(SIZES, "temperature", 1.0), task_probabilities(SIZES, "proportional")
    )
    # MoRE's softmax(|D_t| / sum |D|): all inputs lie in [0, 1], so the largest ratio is at most e.
    probs = task_probabilities(SIZES, "size_softmax")
    assert float(probs.max() / probs.min()) <= math.e + 1e-9
    assert int(probs.argmax()) == SIZES.index(max(SIZES))


def test_unknown_strategy_raises():
    with pytest.raises(ValueError, match="foo"):
        task_probabilities(SIZES, "foo")
    with pytest.raises(ValueError, match="foo"):
        TaskSampler(SIZES, 4, strategy="foo")


@pytest.mark.parametrize("sizes", [[10, 0, 5], [0], []])
def test_empty_task_raises(sizes):
    with pytest.raises(ValueError):
        TaskSampler(sizes, 4)


# -- frequencies -----------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["temperature", "proportional", "size_softmax"])
def test_single_mode_batch_task_frequencies(strategy):
    batches = 6000
    sampler = TaskSampler(SIZES, batch_size=2, strategy=strategy, mode="single", seed=3)
    counts = Counter()
    for batch in stream(sampler, batches):
        tasks = {t for t, _ in batch}
        assert len(batch) == 2
        assert len(tasks) == 1  # one task per batch
        counts[tasks.pop()] += 1
    assert_frequencies(counts, reference_probabilities(SIZES, strategy), batches)


@pytest.mark.parametrize("strategy", ["temperature", "proportional", "uniform"])
def test_mixed_mode_example_task_frequencies(strategy):
    batches, batch_size = 1000, 8
    sampler = TaskSampler(SIZES, batch_size=batch_size, strategy=strategy, mode="mixed", seed=5)
    counts = Counter()
    mixed_batches = 0
    for batch in stream(sampler, batches):
        assert len(batch) == batch_size
        counts.update(t for t, _ in batch)
        mixed_batches += len({t for t, _ in batch}) > 1
    assert_frequencies(counts, reference_probabilities(SIZES, strategy), batches * batch_size)
    assert mixed_batches > batches // 2  # examples of a batch really come from several tasks


def test_indices_lie_in_their_task():
    sampler = TaskSampler(SIZES, batch_size=8, strategy="uniform", mode="mixed", seed=1)
    for batch in stream(sampler, 200):
        for task, index in batch:
            assert 0 <= task < len(SIZES)
            assert 0 <= index < SIZES[task]


# -- passes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["single", "mixed"])
def test_every_example_once_per_pass(mode):
    """Each task's index stream, cut into chunks of the task's size, is a permutation per chunk."""
    sizes = [7, 5, 3]
    sampler = TaskSampler(sizes, batch_size=3, strategy="uniform", mode=mode, seed=11)
    visits: dict[int, list[int]] = {t: [] for t in range(len(sizes))}
    for batch in stream(sampler, 300):
        for task, index in batch:
            visits[task].append(index)
    for task, n in enumerate(sizes):
        seq = visits[task]
        assert len(seq) >= 4 * n  # several full passes were walked
        passes = [seq[i : i + n] for i in range(0, len(seq) - n + 1, n)]
        for p in passes:
            assert sorted(p) == list(range(n)), (task, p)
        # passes are reshuffled, not repeated in one fixed order
        assert len({tuple(p) for p in passes}) > 1


def test_single_task_walk():
    sampler = TaskSampler([6], batch_size=2, seed=0)
    seen = [i for batch in stream(sampler, 3) for _, i in batch]
    assert sorted(seen) == list(range(6))
    nxt = [i for batch in stream(sampler, 3) for _, i in batch]
    assert sorted(nxt) == list(range(6))


# -- seeding and ranks -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["single", "mixed"])
def test_same_seed_same_stream(mode):
    a = TaskSampler(SIZES, 4, strategy="uniform", mode=mode, seed=7)
    b = TaskSampler(SIZES, 4, strategy="uniform", mode=mode, seed=7)
    assert stream(a, 100) == stream(b, 100)


@pytest.mark.parametrize("mode", ["single", "mixed"])
def test_different_seed_different_stream(mode):
    base = stream(TaskSampler(SIZES, 4, strategy="uniform", mode=mode, seed=7), 50)
    other_seed = stream(TaskSampler(SIZES, 4, strategy="uniform", mode=mode, seed=8), 50)
    assert base != other_seed


@pytest.mark.parametrize("mode", ["single", "mixed"])
@pytest.mark.parametrize("world", [2, 3])
def test_processes_slice_one_global_batch(mode, world):
    """`world` processes draw the stream of one process with a `world` times larger batch, each keeping
    its own slice: no example twice in a step, the same task per step in single mode, and equal sampler
    states (so that one checkpoint resumes every process)."""
    whole = TaskSampler(SIZES, 4 * world, strategy="uniform", mode=mode, seed=7)
    parts = [
        TaskSampler(SIZES, 4, strategy="uniform", mode=mode, seed=7, rank=r, world=world)
        for r in range(world)
    ]
    for _ in range(40):
        batch = whole.next_batch()
        slices = [p.next_batch() for p in parts]
        assert [pair for piece in slices for pair in piece] == batch
        if mode == "single":
            assert len({t for t, _ in batch}) == 1
    states = [p.state_dict() for p in parts]
    for state in states[1:]:
        assert (
            torch.equal(state["generator"], states[0]["generator"])
            and state["cursors"] == states[0]["cursors"]
        )


def test_rank_must_fit_the_world():
    with pytest.raises(ValueError, match=r"rank must lie in 0\.\.world-1"):
        TaskSampler(SIZES, 4, rank=2, world=2)


# -- resuming --------------------------------------------------------------------------------------


def _resumed(state: dict, mode: str, batches: int) -> list[list[tuple[int, int]]]:
    fresh = TaskSampler(SIZES, 4, strategy="uniform", mode=mode, seed=999)  # another seed on purpose
    fresh.load_state_dict(state)
    return stream(fresh, batches)


@pytest.mark.parametrize("mode", ["single", "mixed"])
def test_state_dict_resumes_exact_stream(mode):
    """A state saved mid-run (through torch.save, as checkpoints do) resumes the very same stream,
    across pass boundaries of every task."""
    sampler = TaskSampler(SIZES, 4, strategy="uniform", mode=mode, seed=2)
    stream(sampler, 37)
    buffer = io.BytesIO()
    torch.save(sampler.state_dict(), buffer)
    expected = stream(sampler, 60)  # > 12 examples of the smallest task: it starts new passes
    buffer.seek(0)
    assert _resumed(torch.load(buffer), mode, 60) == expected


@pytest.mark.parametrize("mode", ["single", "mixed"])
def test_state_dict_is_a_snapshot(mode):
    """state_dict() taken in memory must not change as the sampler goes on: resuming from it gives the
    stream that followed the moment it was taken (as with a deep copy taken at that moment)."""
    sampler = TaskSampler(SIZES, 4, strategy="uniform", mode=mode, seed=2)
    stream(sampler, 37)
    state = sampler.state_dict()
    frozen = copy.deepcopy(state)
    expected = stream(sampler, 60)
    assert _resumed(frozen, mode, 60) == expected  # the deep copy resumes correctly
    assert _resumed(state, mode, 60) == expected  # so must the state dict itself


@pytest.mark.parametrize("workers", [0, 2])
def test_a_dataloader_resumes_after_the_batches_consumed_not_those_prefetched(workers):
    """Batches come out of the DataLoader in the sampler's order, padded; its workers draw ahead, yet
    the state after 7 consumed batches resumes at batch 8."""
    rows = [
        [{"input_ids": [task] * (1 + i % 5), "task_ids": task, "example": i} for i in range(n)]
        for task, n in enumerate(SIZES)
    ]

    def loader(seed: int, state: dict | None = None):
        batches = ConsumedBatches(TaskSampler(SIZES, 4, strategy="uniform", mode="mixed", seed=seed))
        if state is not None:
            batches.load_state_dict(state)
        return batches, iter(training_batches(rows, batches, pad_token=-1, workers=workers, pin_memory=False))

    expected = stream(TaskSampler(SIZES, 4, strategy="uniform", mode="mixed", seed=3), 12)
    batches, it = loader(3)
    for pairs in expected[:7]:
        batch = next(it)
        batches.consumed()
        assert list(zip(batch["task_ids"].tolist(), batch["example"].tolist(), strict=True)) == pairs
        lengths = [1 + i % 5 for _, i in pairs]
        assert batch["attention_mask"].sum(1).tolist() == lengths
        assert batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -1).tolist() == [
            [t] * n + [-1] * (max(lengths) - n) for (t, _), n in zip(pairs, lengths, strict=True)
        ]
    assert len(batches.pending) == 2 * workers  # drawn ahead, not consumed
    _, resumed = loader(999, batches.state_dict())
    for pairs in expected[7:]:
        batch = next(resumed)
        assert list(zip(batch["task_ids"].tolist(), batch["example"].tolist(), strict=True)) == pairs
