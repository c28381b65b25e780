"""Tests for routing without a task id (rankmix.task_inference): the inferred tasks against a slow reference
written out by hand on the pristine base, and auto routing against routing by the inferred ids."""

from __future__ import annotations

import copy
import inspect
import json

import pytest
import torch
import torch.nn.functional as F

from rankmix import MoELoRAConfig, MoREConfig, MultiLoRAConfig, get_model
from rankmix.growth import grown_config
from rankmix.recipes.evaluate import predict
from rankmix.recipes.predict import predict_records, read_rows
from rankmix.recipes.run import open_run
from rankmix.recipes.task_free import task_inferrer
from rankmix.task_inference import PROTOTYPE_TEMPERATURE
from test_cli import fails, ok

TASKS = ["rte", "mrpc", "cola"]


def build(tiny, arch: str, config):
    base = tiny.base(arch)
    pristine = copy.deepcopy(base)
    torch.manual_seed(0)
    model = get_model(base, config).eval()
    tiny.randomize(model)
    return pristine, model


def module_inputs(pristine, names: list[str], batch: dict) -> dict[str, torch.Tensor]:
    """Each named linear layer's input in a forward of the untouched base model, its positions counted
    over the real tokens (a left-padded row read as unpadded)."""
    if "position_ids" in inspect.signature(pristine.forward).parameters:
        batch = batch | {"position_ids": (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)}
    seen, hooks = {}, []
    for name in names:
        module = pristine.get_submodule(name)
        hooks.append(
            module.register_forward_pre_hook(lambda m, args, name=name: seen.setdefault(name, args[0]))
        )
    with torch.no_grad():
        pristine(**batch)
    for hook in hooks:
        hook.remove()
    return seen


def reference_scores(model, pristine, batch: dict, prototypes=None) -> torch.Tensor:
    """The rule of task_inference.py, module by module and example by example, in plain loops."""
    mask = batch["attention_mask"]
    modules = dict(model.adapted_modules())
    inputs = module_inputs(pristine, list(modules), batch)
    total = torch.zeros(mask.shape[0], len(TASKS), dtype=torch.float64)
    for name, x in inputs.items():
        if "decoder" in name:  # a T5 decoder module: it does not read the input's tokens
            continue
        router = modules[name].router
        for i in range(x.shape[0]):
            real = x[i][mask[i].bool()]  # the example's own tokens: its batch's padding aside
            if prototypes is None:
                pooled = real[0] if router.pooling == "first" else real.mean(0)
                table, tau = router.task_embedding, router.temperature
            else:
                pooled, table, tau = real.mean(0), prototypes[name], PROTOTYPE_TEMPERATURE
            logits = torch.stack([F.cosine_similarity(pooled, u, dim=0) for u in table]).double() / tau
            total[i] += torch.log_softmax(logits, dim=0)
    return total


def padded_batch(tiny, arch: str) -> dict:
    batch = tiny.batch(arch, batch_size=6)
    batch["attention_mask"][1, -2:] = 0  # padding must not count, on the right
    batch["attention_mask"][2, :2] = 0  # or on the left
    if arch == "t5":
        batch["decoder_input_ids"] = batch["decoder_input_ids"][:, :1]
    return batch


@pytest.mark.parametrize("pooling", ["first", "mean"])
@pytest.mark.parametrize("arch", ["bert", "t5"])
def test_more_task_scores_against_a_reference(tiny, arch, pooling):
    pristine, model = build(tiny, arch, MoREConfig(tasks=TASKS, max_rank=4, pooling=pooling))
    batch = padded_batch(tiny, arch)
    expected = reference_scores(model, pristine, batch)
    scores = model.task_scores(**batch)
    assert torch.allclose(scores.double(), expected, atol=1e-3)
    assert torch.equal(model.infer_tasks(**batch), expected.argmax(-1))


def distinct_tasks_batch(tiny, arch: str) -> tuple[dict, torch.Tensor]:
    """Examples whose task shows in their tokens: task t's rows draw from their own range of ids."""
    gen = torch.Generator().manual_seed(3)
    rows, ids = [], []
    for t in range(len(TASKS)):
        for _ in range(4):
            rows.append(torch.randint(3 + 30 * t, 3 + 30 * (t + 1), (7,), generator=gen))
            ids.append(t)
    input_ids = torch.stack(rows)
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    if arch == "t5":
        batch["decoder_input_ids"] = torch.zeros(len(rows), 1, dtype=torch.long)
    return batch, torch.tensor(ids)


@pytest.mark.parametrize(
    "config",
    [
        MultiLoRAConfig(tasks=TASKS, r=2),
        MoELoRAConfig(tasks=TASKS, experts=2, rank=2, task_embedding_dim=4),
        MoREConfig(tasks=TASKS, max_rank=4),
    ],
    ids=["multilora", "moelora", "more"],
)
@pytest.mark.parametrize("arch", ["llama", "bert"])
def test_prototypes_recognise_tasks_and_auto_routes_as_given(tiny, arch, config):
    pristine, model = build(tiny, arch, config)
    batch, truth = distinct_tasks_batch(tiny, arch)
    if not isinstance(config, MoREConfig):
        with pytest.raises(ValueError, match="fit task prototypes first"):
            model.infer_tasks(**batch)
    model.fit_task_prototypes([batch | {"task_ids": truth}])
    expected = reference_scores(model, pristine, batch, model.task_prototypes)
    assert torch.allclose(model.task_scores(**batch).double(), expected, atol=1e-3)
    assert torch.equal(model.infer_tasks(**batch), truth)  # right here: the tasks differ in their tokens
    with torch.no_grad():
        auto = tiny.output(model(**batch, task_ids="auto"))
        given = tiny.output(model(**batch, task_ids=truth))
    assert torch.equal(auto, given)


def test_auto_generation_routes_as_the_inferred_ids(tiny):
    _, model = build(tiny, "llama", MultiLoRAConfig(tasks=TASKS, r=2))
    batch, truth = distinct_tasks_batch(tiny, "llama")
    model.fit_task_prototypes([batch | {"task_ids": truth}])
    kwargs = {"max_new_tokens": 3, "do_sample": False, "pad_token_id": 0}
    auto = model.generate(**batch, task_ids="auto", **kwargs)
    assert torch.equal(auto, model.generate(**batch, task_ids=truth, **kwargs))


def test_a_grown_adapter_needs_prototypes(tiny):
    """Its groups' task embeddings were never trained against each other: prototypes score its tasks."""
    pristine, old = build(tiny, "bert", MoREConfig(tasks=TASKS[:2], max_rank=4, pooling="mean"))
    torch.manual_seed(1)
    grown = get_model(copy.deepcopy(pristine), grown_config(old.adapter_config, TASKS, "frozen")).eval()
    batch, truth = distinct_tasks_batch(tiny, "bert")
    with pytest.raises(ValueError, match="fit task prototypes first"):
        grown.infer_tasks(**batch)
    grown.fit_task_prototypes([batch | {"task_ids": truth}])
    expected = reference_scores(grown, pristine, batch, grown.task_prototypes)
    assert torch.allclose(grown.task_scores(**batch).double(), expected, atol=1e-3)


def test_task_ids_none_and_unknown_strings_are_refused(tiny):
    _, model = build(tiny, "bert", MoREConfig(tasks=TASKS, max_rank=4))
    batch = tiny.batch("bert")
    with pytest.raises(ValueError, match="routes by task: pass task_ids"):
        model(**batch)
    with pytest.raises(ValueError, match="task_ids='auto' to infer"):
        model(**batch, task_ids="guess")


# -- rankmix eval RUN --task-free, rankmix predict RUN --task auto ----------------------------------------
@pytest.mark.parametrize(
    ("family", "method"),
    [("encoder", None), ("encoder", {"method": "multilora", "r": 2}), ("decoder", None)],
    ids=["encoder-more", "encoder-multilora", "decoder-more"],
)
def test_task_free_evaluation_routes_by_the_inferred_tasks(small_runs, tmp_path, family, method):
    """task_accuracy is the share of rows inferred right, and the rows inferred right are predicted
    exactly as with their task given (the others as routed by their inferred task)."""
    _, run_dir = small_runs(family, method, f"{family}-{(method or {}).get('method', 'more')}")
    out = tmp_path / "free.json"
    ok("eval", run_dir, "--task-free", "--no-progress", "--out", out)
    reported = json.loads(out.read_text())
    run, _ = open_run(run_dir, [], splits=("train", "dev"))
    infer, t = task_inferrer(run), run.config.train
    assert run.adapted.task_prototypes is not None  # every method, MoRE too: they identify tasks best
    run.model.eval()
    for index, (task, rows) in enumerate(zip(run.tasks, run.dev_sets, strict=True)):
        inferred = infer(rows)
        right = (inferred == index).tolist()
        assert reported[task.name]["task_accuracy"] == pytest.approx(sum(right) / len(right))
        args = (run.model, run.family, run.tokenizer, task, index, rows, t.batch_size, t.max_length)
        given = predict(*args)
        free = predict(*args, routes=inferred)
        assert [f for f, r in zip(free, right, strict=True) if r] == [
            g for g, r in zip(given, right, strict=True) if r
        ]
        score = task.score(free, [e.label for e in rows])["score"]
        assert score == pytest.approx(reported[task.name]["score"])


def test_predict_auto_names_each_row_s_task(small_runs, tmp_path):
    _, run_dir = small_runs("encoder")
    rows = tmp_path / "rows.jsonl"
    texts = [
        {"text_a": "the cat sat on the mat", "text_b": "a cat sat"},
        {"text_a": "a dog ran", "text_b": "the dog was running fast"},
        {"text_a": "birds fly south in winter", "text_b": "birds fly"},
    ]
    rows.write_text("".join(json.dumps(r) + "\n" for r in texts))
    lines = [
        json.loads(line) for line in ok("predict", run_dir, "--task", "auto", "--input", rows).splitlines()
    ]
    run, _ = open_run(run_dir, [], splits=("train",))
    examples = read_rows(rows, None)
    inferred = task_inferrer(run)(examples)
    assert [line["task"] for line in lines] == [run.tasks[t].name for t in inferred.tolist()]
    for line, example in zip(lines, examples, strict=True):  # as predicted with that task named
        (expected,) = predict_records(run, line["task"], [example], "score", 16)
        assert {k: v for k, v in line.items() if k != "task"} == pytest.approx(expected)


def test_predict_auto_checks_every_row_against_its_inferred_task(small_runs, tmp_path, capsys):
    """rte and stsb each read two texts: a row with one is refused before anything is predicted."""
    _, run_dir = small_runs("encoder")
    err = fails(capsys, "predict", run_dir, "--task", "auto", "--text", "one text only")
    assert "row 1 is inferred to be of task" in err and "has one text" in err
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"text_a": "a", "text_b": ""}) + "\n")
    assert "'text_b' is empty" in fails(capsys, "predict", run_dir, "--task", "auto", "--input", rows)
    rows.write_text(json.dumps({"text_a": "a", "choices": ["only one"]}) + "\n")
    assert "reads 'choices', a list of at least two" in fails(
        capsys, "predict", run_dir, "--task", "auto", "--input", rows
    )


def test_task_free_refusals(small_runs, capsys):
    _, run_dir = small_runs("encoder", {"method": "lora", "r": 2}, "encoder-lora")
    assert "routes every input alike" in fails(capsys, "eval", run_dir, "--task-free")
    assert "routes every input alike" in fails(capsys, "predict", run_dir, "--task", "auto", "--text", "hi")
    _, more_dir = small_runs("decoder")
    recipe = more_dir / "run.yaml"
    assert "evaluates a trained run" in fails(capsys, "eval", more_dir.parent / "decoder.yaml", "--task-free")
    assert recipe.is_file()


@pytest.mark.parametrize("pooling", ["first", "mean"])
@pytest.mark.parametrize("arch", ["bert", "llama", "gpt2"])
def test_an_example_s_tasks_do_not_depend_on_its_batch(tiny, arch, pooling):
    """Alone or padded (left for decoders, as prompts are, right for encoders) beside longer rows."""
    _, model = build(tiny, arch, MoREConfig(tasks=TASKS, max_rank=4, pooling=pooling))
    batch = tiny.batch(arch, batch_size=3, seq_len=7)
    alone = {"input_ids": batch["input_ids"][:1, :4], "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    ids, mask = batch["input_ids"].clone(), batch["attention_mask"].clone()
    cut = slice(0, 3) if arch != "bert" else slice(4, 7)  # the padding's side
    ids[0] = torch.cat([alone["input_ids"][0], torch.zeros(3, dtype=torch.long)])
    if arch != "bert":
        ids[0] = torch.cat([torch.zeros(3, dtype=torch.long), alone["input_ids"][0]])
    mask[0, cut] = 0
    together = model.task_scores(input_ids=ids, attention_mask=mask)[0]
    assert torch.allclose(model.task_scores(**alone)[0], together, atol=1e-4)
