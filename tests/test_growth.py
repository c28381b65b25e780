"""Tests for rankmix.growth: tasks added to a trained adapter, frozen (old tasks bit for bit) or joint."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from helpers import SMALL_RUN_TASKS
from rankmix import (
    HiLoConfig,
    LoRAConfig,
    MoELoRAConfig,
    MoREConfig,
    MultiLoRAConfig,
    RankMixModel,
    get_model,
)
from rankmix.growth import grown_config, load_grown
from test_cli import copy_run, fails, ok, write_recipe

OLD, NEW = ["rte", "mrpc"], ["cola", "sst2"]
TASK_ROUTED = ("more", "multilora", "moelora")


def config(method: str, tasks: list[str]):
    if method == "more":
        return MoREConfig(tasks=tasks, max_rank=4, dropout=0.0)
    if method == "multilora":
        return MultiLoRAConfig(tasks=tasks, r=2)
    if method == "moelora":
        return MoELoRAConfig(tasks=tasks, experts=3, rank=2, task_embedding_dim=8)
    if method == "hilo":
        return HiLoConfig(experts="12", ranks="24", top_k=1)
    return LoRAConfig(r=2)


def trained(tiny, arch: str, method: str):
    """(pristine base, an adapter on OLD with random weights, its tensors)."""
    base = tiny.base(arch)
    pristine = copy.deepcopy(base)
    torch.manual_seed(0)
    model = get_model(base, config(method, OLD)).eval()
    tiny.randomize(model)
    return pristine, model, {k: v.clone() for k, v in model.adapter_state_dict().items()}


def grow(tiny, pristine, old_model, tensors, mode: str, tasks=OLD + NEW):
    torch.manual_seed(1)
    grown = get_model(copy.deepcopy(pristine), grown_config(old_model.adapter_config, tasks, mode))
    load_grown(grown, old_model.adapter_config, tensors, mode)
    return grown


def outputs(tiny, model, arch: str, task: int) -> torch.Tensor:
    with torch.no_grad():
        return tiny.output(model(**tiny.batch(arch), task_ids=torch.full((4,), task)))


def train_step(tiny, model, arch: str, tasks: list[int]) -> None:
    """One AdamW step (with weight decay) on a batch of `tasks`."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=0.1, weight_decay=0.1)
    model.train()
    batch = tiny.batch(arch, labels=True)
    out = model(**batch, task_ids=torch.tensor(tasks * (4 // len(tasks))))
    out.loss.backward()
    optimizer.step()
    model.eval()


@pytest.mark.parametrize("method", TASK_ROUTED)
@pytest.mark.parametrize("arch", ["llama", "t5"])
def test_frozen_growth_keeps_old_tasks_bit_for_bit(tiny, arch, method):
    pristine, old, tensors = trained(tiny, arch, method)
    grown = grow(tiny, pristine, old, tensors, "frozen")
    assert grown.adapter_config.task_groups == [2, 2]
    train_step(tiny, grown, arch, [2, 3])  # the new tasks train, with weight decay on
    for t in range(len(OLD)):
        assert torch.equal(outputs(tiny, grown, arch, t), outputs(tiny, old, arch, t))
        for (_, a), (_, b) in zip(grown.adapted_modules(), old.adapted_modules(), strict=True):
            assert torch.equal(a.delta_weight(t), b.delta_weight(t))
    for key, value in tensors.items():  # nothing trained moved, and it no longer trains
        assert torch.equal(grown.adapter_tensors()[key], value)
        assert not grown.adapter_tensors()[key].requires_grad
    new = {k: v for k, v in grown.adapter_parameters().items() if k not in tensors}
    assert new and all(p.requires_grad for p in new.values())
    assert any(".grown.0.bank.lora_B" in k and v.abs().sum() > 0 for k, v in new.items())  # they learned


@pytest.mark.parametrize("method", TASK_ROUTED)
def test_mixed_batch_of_a_grown_adapter_equals_per_task(tiny, method):
    """Each row of a batch of old and new tasks goes through its own group, as it does alone."""
    pristine, old, tensors = trained(tiny, "llama", method)
    grown = grow(tiny, pristine, old, tensors, "frozen").eval()
    tiny.randomize(grown, seed=5)  # new groups' lora_B away from zero (group 0 too: fine here)
    batch = tiny.batch("llama")
    ids = torch.tensor([0, 3, 1, 2])
    with torch.no_grad():
        mixed = tiny.output(grown(**batch, task_ids=ids))
        for row, t in enumerate(ids.tolist()):
            alone = tiny.output(grown(**tiny.rows(batch, [row]), task_ids=torch.tensor([t])))
            assert torch.allclose(mixed[row : row + 1], alone, atol=1e-5)


@pytest.mark.parametrize("method", TASK_ROUTED)
def test_grown_adapter_merges_and_reloads(tiny, method, tmp_path):
    pristine, old, tensors = trained(tiny, "llama", method)
    grown = grow(tiny, pristine, old, tensors, "frozen").eval()
    tiny.randomize(grown, seed=5)
    grown.save_pretrained(tmp_path)
    again = RankMixModel.from_pretrained(copy.deepcopy(pristine), tmp_path).eval()
    assert again.adapter_config.task_groups == [2, 2]
    for t in range(4):
        expected = outputs(tiny, grown, "llama", t)
        assert torch.equal(outputs(tiny, again, "llama", t), expected)
        merged = copy.deepcopy(again).merge_and_unload(task=t)
        with torch.no_grad():
            plain = tiny.output(merged(**tiny.batch("llama")))
        assert torch.allclose(plain, expected, atol=1e-5)


@pytest.mark.parametrize("method", (*TASK_ROUTED, "lora", "hilo"))
def test_joint_growth_starts_from_the_trained_adapter(tiny, method):
    pristine, old, tensors = trained(tiny, "llama", method)
    grown = grow(tiny, pristine, old, tensors, "joint")
    if method in TASK_ROUTED:
        assert grown.adapter_config.task_groups is None and grown.adapter_config.tasks == OLD + NEW
    else:  # one adapter for every task: nothing of it grows
        assert grown.adapter_config == old.adapter_config
    for t in range(len(OLD)):  # the old tasks compute what they did, until training moves them
        assert torch.allclose(outputs(tiny, grown, "llama", t), outputs(tiny, old, "llama", t), atol=1e-6)
    assert all(p.requires_grad for p in grown.adapter_parameters().values())
    before = {k: v.clone() for k, v in grown.adapter_state_dict().items()}
    train_step(tiny, grown, "llama", [0, 3])
    moved = [k for k, v in grown.adapter_state_dict().items() if not torch.equal(v, before[k])]
    assert any(k in tensors for k in moved)  # old weights train on


def test_growing_a_grown_adapter(tiny):
    """Frozen again: a third group; joint after frozen: the last group's tasks grow."""
    _, old, _ = trained(tiny, "llama", "more")
    twice = grown_config(
        grown_config(old.adapter_config, OLD + NEW, "frozen"), [*OLD, *NEW, "qnli"], "frozen"
    )
    assert twice.task_groups == [2, 2, 1]
    assert grown_config(twice, [*OLD, *NEW, "qnli", "wnli"], "joint").task_groups == [2, 2, 2]


def test_task_free_methods_keep_their_config(tiny):
    lora = config("lora", OLD)
    assert grown_config(lora, OLD + NEW, "frozen") is lora


def test_refusals(tiny):
    pristine, old, tensors = trained(tiny, "llama", "more")
    with pytest.raises(ValueError, match="must come first"):
        grown_config(old.adapter_config, ["mrpc", "rte", "cola"], "joint")
    with pytest.raises(ValueError, match="grow must be one of"):
        grown_config(old.adapter_config, OLD + NEW, "later")
    bigger = get_model(copy.deepcopy(pristine), MoREConfig(tasks=OLD + NEW, max_rank=6))
    with pytest.raises(ValueError, match="is not the trained one grown joint"):
        load_grown(bigger, old.adapter_config, tensors, "joint")
    joint = get_model(copy.deepcopy(pristine), grown_config(old.adapter_config, OLD + NEW, "joint"))
    with pytest.raises(ValueError, match="is not the trained one grown frozen"):
        load_grown(joint, old.adapter_config, tensors, "frozen")
    other = {k.replace("q_proj", "k_proj") if "layers.0." in k else k: v for k, v in tensors.items()}
    other |= {k.replace("layers.0", "layers.9"): v for k, v in tensors.items() if "layers.0." in k}
    with pytest.raises(ValueError, match="has no place"):
        load_grown(joint, old.adapter_config, other, "joint")


def test_config_task_groups_are_checked():
    with pytest.raises(ValueError, match="count 3 tasks"):
        MoREConfig(tasks=OLD, task_groups=[1, 2])
    with pytest.raises(ValueError, match="positive task counts"):
        MultiLoRAConfig(tasks=OLD, task_groups=[2, 0])
    groups = MoREConfig(tasks=OLD + NEW, task_groups=[2, 2]).group_configs()
    assert [g.tasks for g in groups] == [OLD, NEW] and all(g.task_groups is None for g in groups)


# -- `rankmix train RECIPE --init-from RUN` --------------------------------------------------------------
OLD_RUN_TASKS, ADDED = SMALL_RUN_TASKS, ["cola"]


def grow_recipe(tmp_path, data: dict, name: str, tasks=OLD_RUN_TASKS + ADDED, **changes):

    data = copy.deepcopy(data) | {"tasks": list(tasks), "output_dir": str(tmp_path / name)} | changes
    data["train"] = data["train"] | {"steps": 4, "eval_every": 4}
    return write_recipe(tmp_path / f"{name}.yaml", data), tmp_path / name


def old_scores(run) -> dict:
    return json.loads((run / "results.json").read_text())["tasks"]


def tensors_of(run):
    return load_file(run / "adapter" / "adapter_model.safetensors")


@pytest.mark.parametrize("family", ["decoder", "encoder"])
def test_frozen_growth_run_keeps_old_tasks(small_runs, tmp_path, family):
    """MoRE on a decoder (groups of experts) and on an encoder (groups and heads): the old tasks score
    what the run scored, their weights and heads are the file's, and the new task trains."""

    data, run = small_runs(family)
    recipe, out = grow_recipe(tmp_path, data, "frozen", grow="frozen")
    ok("train", recipe, "--init-from", run, "--no-progress")
    results = json.loads((out / "results.json").read_text())
    for task in OLD_RUN_TASKS:
        assert results["tasks"][task] == old_scores(run)[task]
    grown, trained = tensors_of(out), tensors_of(run)
    assert all(torch.equal(grown[k], v) for k, v in trained.items())
    added = [k for k in grown if k not in trained]
    assert added and all(".grown.0." in k for k in added)
    assert any(grown[k].abs().sum() > 0 for k in added if k.endswith("lora_B"))
    if family == "encoder":
        heads, old_heads = (load_file(r / "adapter" / "heads.safetensors") for r in (out, run))
        assert all(torch.equal(heads[k], v) for k, v in old_heads.items())
    cfg = yaml.safe_load((out / "run.yaml").read_text())
    assert cfg["method"]["task_groups"] == [2, 1] and cfg["grow"] == "frozen"
    table = ok("eval", out, "--no-progress")  # the grown run folder opens as any other
    for task in OLD_RUN_TASKS + ADDED:
        assert f"{results['tasks'][task]['score']:6.3f}" in next(
            r for r in table.splitlines() if r.startswith(task)
        )


def test_joint_growth_run_trains_everything(small_runs, tmp_path):

    data, run = small_runs("decoder")
    recipe, out = grow_recipe(tmp_path, data, "joint")
    ok("train", recipe, "--init-from", run, "--no-progress")
    grown, trained = tensors_of(out), tensors_of(run)
    assert set(grown) == set(trained)  # the same adapter, its task tables longer
    assert any(not torch.equal(grown[k], v) for k, v in trained.items() if grown[k].shape == v.shape)
    table = next(k for k in trained if k.endswith("task_embedding"))
    assert grown[table].shape[0] == 3 and trained[table].shape[0] == 2


def test_frozen_growth_of_a_task_free_encoder_trains_the_new_head_only(small_runs, tmp_path):
    data, run = small_runs("encoder", {"method": "lora", "r": 2}, "encoder-lora")
    recipe, out = grow_recipe(tmp_path, data, "frozen", grow="frozen")
    ok("train", recipe, "--init-from", run, "--no-progress")
    assert all(torch.equal(tensors_of(out)[k], v) for k, v in tensors_of(run).items())
    heads, old_heads = (load_file(r / "adapter" / "heads.safetensors") for r in (out, run))
    assert all(torch.equal(heads[k], v) for k, v in old_heads.items())
    assert set(heads) - set(old_heads) == {"2.weight", "2.bias"}
    for task in OLD_RUN_TASKS:
        assert json.loads((out / "results.json").read_text())["tasks"][task] == old_scores(run)[task]


def test_growth_refusals_come_before_training(small_runs, tmp_path, capsys):

    data, run = small_runs("decoder")

    def refused(name: str, *extra, **changes) -> str:
        recipe, out = grow_recipe(tmp_path, data, name, **changes)
        err = fails(capsys, "train", recipe, "--init-from", run, *extra)
        assert not out.exists()
        return err

    assert "must list them first" in refused("missing", tasks=["rte", "cola"])
    assert "lacks ['stsb']" in refused("missing2", tasks=["rte", "cola"])
    assert "must list them first" in refused("order", tasks=["stsb", "rte", "cola"])
    method = data["method"] | {"max_rank": 3}
    assert "max_rank: 4 in the run, 3 in the recipe" in refused("option", method=method)
    assert "trained method more" in refused("method", method={"method": "multilora"})
    assert "no new task" in refused("same", tasks=OLD_RUN_TASKS, grow="frozen")
    assert "was trained on model" in refused("model", model=data["model"] + "-other")
    recipe, _ = grow_recipe(tmp_path, data, "self", output_dir=str(run))
    assert "output_dir is the run --init-from reads" in fails(capsys, "train", recipe, "--init-from", run)
    recipe, _ = grow_recipe(tmp_path, data, "no-init", grow="frozen")
    assert "--init-from RUN" in fails(capsys, "train", recipe)
    lora, lora_run = small_runs("decoder", {"method": "lora", "r": 2}, "decoder-lora")
    recipe, _ = grow_recipe(tmp_path, lora, "lora-frozen", grow="frozen")
    assert "nothing to train" in fails(capsys, "train", recipe, "--init-from", lora_run)


def test_a_grown_run_resumes_only_over_the_adapter_it_grew_from(small_runs, tmp_path, capsys):
    """Its frozen part is read from --init-from again at each start: a changed source is refused."""
    data, trained_run = small_runs("decoder")
    source = copy_run(trained_run, tmp_path / "source")
    recipe, out = grow_recipe(tmp_path, data, "grown", grow="frozen")
    ok("train", recipe, "--init-from", source, "--no-progress")
    inspected = ok("inspect", recipe, "--init-from", source)  # the grown adapter, before training
    counts = json.loads((out / "results.json").read_text())["parameters"]
    assert f"'trainable': {counts['trainable']}," in inspected
    weights = source / "adapter" / "adapter_model.safetensors"
    tensors = load_file(weights)
    key = next(iter(tensors))
    save_file({**tensors, key: tensors[key] + 1}, weights)
    err = fails(capsys, "train", recipe, "--init-from", source, "--set", "train.steps=6")
    assert "grown_from" in err and "another configuration" in err


def test_an_encoder_run_without_its_heads_file_is_refused(small_runs, tmp_path, capsys):
    data, trained_run = small_runs("encoder")
    source = copy_run(trained_run, tmp_path / "source")
    (source / "adapter" / "heads.safetensors").unlink()
    recipe, out = grow_recipe(tmp_path, data, "grown")
    assert "holds no heads.safetensors" in fails(capsys, "train", recipe, "--init-from", source)
    assert not out.exists()
