"""The training recipe: encoder task heads get their own learning rate; gradient clipping keeps one bad
batch from wrecking a run."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from helpers import build_base, word_tokenizer
from rankmix.recipes.run import Run, build_model, resolve_tasks
from rankmix.recipes.run_config import load_run_config
from rankmix.recipes.train import param_groups, train


def _recipe(tmp_path, arch: str, **train):
    folder = tmp_path / arch
    tokenizer = word_tokenizer(["good bad fine yes no"], template="bert" if arch == "bert" else "llama")
    build_base(arch, layers=2, hidden=32, vocab=len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    path = tmp_path / f"{arch}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "model": str(folder),
                "tasks": ["sentiment", "topic"],
                "method": {"method": "lora", "r": 2},
                "train": train,
            }
        )
    )
    return load_run_config(path)


def _groups(cfg):
    tasks = resolve_tasks(cfg)
    model, adapted, tokenizer, family = build_model(cfg, tasks)
    return model, param_groups(Run(cfg, tasks, [], [], model, adapted, tokenizer, family))


@pytest.mark.parametrize("head_lr", [None, 0.05])
def test_encoder_heads_get_head_lr(tmp_path, head_lr):
    """Heads form their own group at head_lr (train.lr when unset); the groups hold every trainable
    parameter exactly once."""
    cfg = _recipe(tmp_path, "bert", lr=0.001, head_lr=head_lr)
    model, groups = _groups(cfg)
    assert len(groups) == 2
    heads = {id(p) for p in model.heads.parameters()}
    assert {id(p) for p in groups[1]["params"]} == heads
    assert groups[1]["lr"] == (head_lr or 0.001)
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters() if p.requires_grad)


def test_decoder_has_one_group(tmp_path):
    """Decoders have no heads: one group of all adapter parameters at train.lr."""
    model, groups = _groups(_recipe(tmp_path, "llama", lr=0.001))
    assert len(groups) == 1
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in model.parameters() if p.requires_grad}


def test_head_lr_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match=r"train\.head_lr"):
        _recipe(tmp_path, "llama", head_lr=0)


# -- gradient clipping -------------------------------------------------------------------------------
RECIPE_TASKS = ["stsb", "rte"]  # the tasks of _bert_on_glue, in order (task ids index them)


def _bert_on_glue(tmp_path, glue_data, name: str, **train):
    """A recipe of a tiny BERT learning STS-B and RTE from the generated GLUE data."""
    folder = tmp_path / "bert"
    if not folder.is_dir():
        corpus = [(glue_data / f"glue/{t}/train.tsv").read_text(encoding="utf-8") for t in ("STS-B", "RTE")]
        tokenizer = word_tokenizer(corpus, template="bert")
        build_base(
            "bert", layers=2, hidden=32, vocab=len(tokenizer), max_position_embeddings=128
        ).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    path = tmp_path / f"{name}.yaml"
    settings = {
        "steps": 16,
        "batch_size": 8,
        "lr": 5e-3,
        "head_lr": 5e-2,
        "warmup_steps": 1,
        "eval_every": 16,
    }
    settings |= {"max_train_examples": 64, "max_eval_examples": 8, "max_length": 48, "seed": 0, **train}
    recipe = {
        "model": str(folder),
        "tasks": RECIPE_TASKS,
        "data_dir": str(glue_data),
        "output_dir": str(tmp_path / name),
        "method": {"method": "lora", "r": 2},
        "train": settings,
    }
    path.write_text(yaml.safe_dump(recipe))
    return load_run_config(path)


@contextlib.contextmanager
def _poisoned(at: int | None, change, task: str | None = None):
    """Apply `change` to the labels of the training batch number `at` (counting only `task`'s batches
    when given); yields the step numbers of the poisoned batches. Training pads its batches with
    `rankmix.data.loader.pad_features` (one batch per step, without DataLoader workers)."""
    from rankmix.data import loader

    original = loader.pad_features
    calls, hit = {"n": 0, "step": 0}, []

    def pad_features(rows, pad_token):
        out = original(rows, pad_token)
        calls["step"] += 1
        if task is None or all(RECIPE_TASKS[r["task_ids"]] == task for r in rows):
            calls["n"] += 1
            if calls["n"] == at:
                out["labels"] = change(out["labels"])
                hit.append(calls["step"])
        return out

    loader.pad_features = pad_features
    try:
        yield hit
    finally:
        loader.pad_features = original


def _saved(folder: Path) -> dict[str, torch.Tensor]:
    tensors = load_file(folder / "adapter_model.safetensors")
    tensors.update({f"head.{k}": v for k, v in load_file(folder / "heads.safetensors").items()})
    return tensors


def _trained_weights(cfg, spike_at: int | None) -> dict[str, torch.Tensor]:
    """Train `cfg`; with `spike_at`, that training batch's regression targets are 1000x too large (a
    loss spike). Returns every trained tensor of the kept (final) adapter and heads."""
    with _poisoned(spike_at, lambda labels: labels * 1000.0):
        train(cfg, progress=False)
    return _saved(Path(cfg.output_dir) / "adapter")


def _distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return float(torch.sqrt(sum(((a[k] - b[k]) ** 2).sum() for k in a)))


def test_clipping_keeps_a_loss_spike_from_wrecking_training(tmp_path, glue_data):
    """One batch with 1000x regression targets (MSE in the millions) halfway through: with the default
    clipping (max_grad_norm 1.0) the run ends near the spike-free run; without clipping the spike throws
    the heads and adapter far away (Adam's second moment is blown up too)."""
    clean = _trained_weights(_bert_on_glue(tmp_path, glue_data, "clean"), spike_at=None)
    clipped = _trained_weights(_bert_on_glue(tmp_path, glue_data, "clipped"), spike_at=8)
    unclipped = _trained_weights(
        _bert_on_glue(tmp_path, glue_data, "unclipped", max_grad_norm=None), spike_at=8
    )
    clean_unclipped = _trained_weights(
        _bert_on_glue(tmp_path, glue_data, "clean-unclipped", max_grad_norm=None), spike_at=None
    )
    assert all(torch.isfinite(v).all() for v in clipped.values())
    assert _distance(clipped, clean) < 0.5 * _distance(unclipped, clean_unclipped)


def test_nan_loss_stops_the_run_and_keeps_the_last_good_state(tmp_path, glue_data, capsys):
    """An STS-B batch with NaN targets: `rankmix train` exits 1 with one line naming the step and the task;
    the checkpoint, adapter and results of the last evaluation stay as they were, all finite."""
    from rankmix.cli import main

    cfg = _bert_on_glue(tmp_path, glue_data, "nan", eval_every=4)
    recipe = tmp_path / "nan.yaml"
    nan = lambda labels: labels * float("nan")  # noqa: E731
    with _poisoned(3, nan, task="stsb") as hit, pytest.raises(SystemExit) as exit_info:
        main(["train", str(recipe), "--no-progress"])
    assert exit_info.value.code == 1
    (step,) = hit
    last_eval = (step - 1) // 4 * 4
    assert last_eval >= 4, "the poisoned batch came before the first evaluation; move it later"
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.splitlines()[-1].startswith("rankmix train: training diverged")
    assert f"diverged at step {step} (task stsb)" in err and "lower train.lr" in err
    out = Path(cfg.output_dir)
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["state"]["step"] == last_eval
    assert all(v.isfinite().all() for v in ckpt["params"].values())
    assert all(v.isfinite().all() for v in _saved(out / "adapter").values())
    results = json.loads((out / "results.json").read_text())
    assert [h["step"] for h in results["history"]][-1] == last_eval


def test_max_grad_norm_must_be_positive_or_null(tmp_path):
    with pytest.raises(ValueError, match=r"train\.max_grad_norm"):
        _recipe(tmp_path, "llama", max_grad_norm=0)
    assert _recipe(tmp_path, "llama", max_grad_norm=None).train.max_grad_norm is None


def test_data_seed_fixes_the_subsets_across_seeds(tmp_path, glue_data):
    """With data_seed set, runs of different seeds draw the same capped training and dev examples; without
    it the subsets follow the seed, as before."""
    from rankmix.recipes.run import load_data, resolve_tasks

    def subsets(**train):
        cfg = _bert_on_glue(tmp_path, glue_data, "data", max_train_examples=16, max_eval_examples=8, **train)
        return load_data(cfg, resolve_tasks(cfg))

    assert subsets(seed=1, data_seed=7) == subsets(seed=2, data_seed=7)
    assert subsets(seed=1, data_seed=7) != subsets(seed=1, data_seed=8)
    assert subsets(seed=1) != subsets(seed=2)
    assert subsets(seed=3) == subsets(seed=9, data_seed=3)


def test_router_lr_puts_gates_and_task_embeddings_in_their_own_group(tmp_path):
    """With train.router_lr, MoRE's selectors (gates and task embeddings) train at that rate and the LoRA
    factors at train.lr; every trainable parameter is in exactly one group."""
    cfg = _recipe(tmp_path, "llama", lr=0.001, router_lr=0.05)
    cfg.method = {"method": "more", "max_rank": 2}
    model, groups = _groups(cfg)
    assert [g.get("lr") for g in groups] == [None, 0.05]
    routers = {id(p) for _, m in model.adapted_modules() for p in m.router.parameters()}
    assert {id(p) for p in groups[1]["params"]} == routers
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters() if p.requires_grad)


def test_fsdp_requested_for_one_process_trains_unsharded(tmp_path, glue_data, monkeypatch):
    """A request for FSDP (accelerate's ACCELERATE_USE_FSDP) with one process has nothing to shard over:
    the run trains as without it, to the same adapter, and its checkpoint says it is not sharded."""
    plain = _bert_on_glue(tmp_path, glue_data, "plain", steps=4, eval_every=4)
    train(plain, progress=False)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    requested = _bert_on_glue(tmp_path, glue_data, "requested", steps=4, eval_every=4)
    train(requested, progress=False)
    checkpoint = torch.load(tmp_path / "requested" / "checkpoint.pt", weights_only=True)
    assert checkpoint["sharded"] is False
    expected = _saved(tmp_path / "plain" / "adapter")
    for name, value in _saved(tmp_path / "requested" / "adapter").items():
        assert torch.equal(value, expected[name]), name


# -- hooks and the loop's state ----------------------------------------------------------------------
def test_hooks_observe_every_micro_batch_and_step_without_patching(tmp_path, glue_data):
    """Hooks see each micro-batch on the device before its forward (the step's first with no gradient
    yet), each backward (the second micro-batch's gradient added to the first's), and each optimizer
    step, in that order, with the loop's typed state counting the steps already taken."""
    from rankmix.recipes.checkpoint import TrainState
    from rankmix.recipes.train import Hooks

    events: list[tuple] = []

    def gradient(training) -> torch.Tensor | None:
        grads = [p.grad for p in training.optimizer.param_groups[0]["params"] if p.grad is not None]
        return torch.cat([g.flatten() for g in grads]).clone() if grads else None

    class Recorder(Hooks):
        def on_batch(self, training, batch):
            assert isinstance(training.state, TrainState)
            assert batch["input_ids"].device == training.accelerator.device
            events.append(("batch", training.state.step, gradient(training) is None))

        def on_backward(self, training):
            events.append(("backward", training.state.step, gradient(training)))

        def on_optimizer_step(self, training):
            events.append(("step", training.state.step, None))

    cfg = _bert_on_glue(tmp_path, glue_data, "hooked", steps=3, eval_every=3, grad_accum=2, batch_size=4)
    result = train(cfg, progress=False, hooks=[Recorder()])
    assert result["steps"] == 3
    assert [e[0] for e in events] == ["batch", "backward", "batch", "backward", "step"] * 3
    for s in range(3):
        batch_a, back_a, batch_b, back_b, step = events[5 * s : 5 * s + 5]
        assert {e[1] for e in (batch_a, back_a, batch_b, back_b, step)} == {s}  # steps taken so far
        assert batch_a[2] and not batch_b[2]  # zero_grad ran after the step before
        assert not torch.equal(back_a[2], back_b[2])  # the second backward added its gradient


def test_the_checkpoint_keeps_the_typed_state_and_older_checkpoints_load(tmp_path, glue_data):
    """The loop's state goes to the checkpoint as a plain dict and comes back as a TrainState; a
    checkpoint written before wall_time_s existed loads with 0 there."""
    from rankmix.recipes.checkpoint import TrainState

    cfg = _bert_on_glue(tmp_path, glue_data, "state", steps=4, eval_every=2)
    train(cfg, progress=False)
    saved = torch.load(Path(cfg.output_dir) / "checkpoint.pt", weights_only=True)["state"]
    state = TrainState.from_dict(saved)
    assert state.step == 4 and [h["step"] for h in state.history] == [2, 4]
    assert state.best_step in (2, 4) and state.wall_time_s > 0
    older = {k: v for k, v in saved.items() if k != "wall_time_s"}
    assert TrainState.from_dict(older).wall_time_s == 0.0
