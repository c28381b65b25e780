"""Tests for rankmix.recipes.run_config: YAML recipes, --set overrides, validation, save/load."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rankmix.config import HiLoConfig, LoRAConfig, MoREConfig, MultiLoRAConfig
from rankmix.recipes.run_config import RunConfig, TrainConfig, apply_overrides, load_run_config

TASKS = ["rte", "mrpc", "stsb"]


def base_recipe(**changes) -> dict:
    data = {
        "model": "smollm2",
        "tasks": list(TASKS),
        "method": {"method": "more", "max_rank": 8},
        "output_dir": "runs/x",
        "train": {"steps": 50, "batch_size": 4, "lr": 3.0e-4},
    }
    data.update(changes)
    return data


def write(tmp_path, data, name="run.yaml"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def load(tmp_path, data, overrides=None) -> RunConfig:
    return load_run_config(write(tmp_path, data), overrides)


# -- loading ---------------------------------------------------------------------------------------


def test_load_reads_every_section(tmp_path):
    cfg = load(tmp_path, base_recipe())
    assert cfg.model == "smollm2"
    assert cfg.tasks == TASKS
    assert cfg.method == {"method": "more", "max_rank": 8}
    assert cfg.output_dir == "runs/x"
    assert isinstance(cfg.train, TrainConfig)
    assert (cfg.train.steps, cfg.train.batch_size, cfg.train.lr) == (50, 4, 3e-4)
    # defaults for everything not given
    assert cfg.train.sampling == "size_softmax" and cfg.train.batch_mode == "single"
    assert cfg.eval_mode == "score" and cfg.data_dir is None and cfg.custom_tasks == []


def test_yaml_exponent_without_dot_is_a_float(tmp_path):
    text = "model: m\ntasks: [rte]\nmethod: {method: lora}\ntrain:\n  lr: 1e-3\n  weight_decay: 5e-2\n"
    cfg = load(tmp_path, text)
    assert cfg.train.lr == 1e-3 and isinstance(cfg.train.lr, float)
    assert cfg.train.weight_decay == 0.05


def test_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_run_config(tmp_path / "nope.yaml")


def test_non_mapping_recipe_raises(tmp_path):
    with pytest.raises(ValueError, match="mapping"):
        load(tmp_path, "- a\n- b\n")


# -- overrides -------------------------------------------------------------------------------------


def test_apply_overrides_parses_values_as_yaml():
    data = base_recipe(data_dir="data")
    out = apply_overrides(
        data,
        [
            "train.lr=1e-3",
            "method.max_rank=4",
            "data_dir=null",
            "train.batch_mode=mixed",
            "tasks=[rte, cola]",
            "strict=true",
            "train.max_train_examples=100",
        ],
    )
    assert out is data
    assert out["train"]["lr"] == 1e-3 and isinstance(out["train"]["lr"], float)
    assert out["method"]["max_rank"] == 4 and isinstance(out["method"]["max_rank"], int)
    assert out["data_dir"] is None
    assert out["train"]["batch_mode"] == "mixed"
    assert out["tasks"] == ["rte", "cola"]
    assert out["strict"] is True
    assert out["train"]["max_train_examples"] == 100
    assert out["train"]["steps"] == 50  # untouched keys stay


def test_apply_overrides_creates_missing_sections():
    out = apply_overrides({"model": "m"}, ["train.seed=3", "a.b.c=x"])
    assert out == {"model": "m", "train": {"seed": 3}, "a": {"b": {"c": "x"}}}


@pytest.mark.parametrize("item", ["train.lr", "=3", "noequals"])
def test_apply_overrides_rejects_malformed_items(item):
    with pytest.raises(ValueError, match="key=value"):
        apply_overrides(base_recipe(), [item])


def test_apply_overrides_rejects_a_value_used_as_section():
    with pytest.raises(ValueError, match="model"):
        apply_overrides(base_recipe(), ["model.name=x"])


def test_load_applies_overrides(tmp_path):
    cfg = load(
        tmp_path,
        base_recipe(data_dir="data"),
        ["train.lr=1e-3", "method.max_rank=4", "data_dir=null", "train.sampling=uniform"],
    )
    assert cfg.train.lr == 1e-3
    assert cfg.method["max_rank"] == 4
    assert cfg.data_dir is None
    assert cfg.train.sampling == "uniform"
    adapter = cfg.adapter_config()
    assert isinstance(adapter, MoREConfig) and adapter.max_rank == 4


# -- unknown and missing keys ----------------------------------------------------------------------


def test_unknown_top_level_key_suggests(tmp_path):
    with pytest.raises(ValueError, match="did you mean") as err:
        load(tmp_path, base_recipe(output_dirr="x"))
    assert "output_dirr" in str(err.value) and "output_dir" in str(err.value)


def test_unknown_train_key_suggests(tmp_path):
    data = base_recipe()
    data["train"]["batch_szie"] = 8
    with pytest.raises(ValueError, match="did you mean") as err:
        load(tmp_path, data)
    message = str(err.value)
    assert "train." in message and "batch_szie" in message and "batch_size" in message


def test_unknown_train_key_via_override(tmp_path):
    with pytest.raises(ValueError, match="did you mean") as err:
        load(tmp_path, base_recipe(), ["train.stpes=3"])
    assert "steps" in str(err.value)


@pytest.mark.parametrize("missing", ["model", "tasks", "method"])
def test_missing_required_key_is_named(tmp_path, missing):
    data = base_recipe()
    del data[missing]
    with pytest.raises(ValueError, match="missing") as err:
        load(tmp_path, data)
    assert missing in str(err.value)


def test_all_missing_required_keys_are_named(tmp_path):
    with pytest.raises(ValueError) as err:
        load(tmp_path, {"output_dir": "x"})
    for key in ("model", "tasks", "method"):
        assert key in str(err.value)


# -- invalid values --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "option"),
    [
        ("train.steps=0", "steps"),
        ("train.steps=-5", "steps"),
        ("train.steps=1.5", "steps"),
        ("train.batch_size=0", "batch_size"),
        ("train.grad_accum=true", "grad_accum"),
        ("train.max_length=0", "max_length"),
        ("train.max_train_examples=0", "max_train_examples"),
        ("train.sampling=foo", "sampling"),
        ("train.batch_mode=x", "batch_mode"),
        ("train.mixed_precision=fp8", "mixed_precision"),
        ("train.temperature=0", "temperature"),
        ("train.lr=0", "lr"),
        ("train.lr=-1e-3", "lr"),
        ("eval_mode=x", "eval_mode"),
        ("tasks=[]", "tasks"),
        ("tasks=rte", "tasks"),
    ],
)
def test_invalid_values_raise_naming_the_option(tmp_path, override, option):
    with pytest.raises(ValueError, match=option):
        load(tmp_path, base_recipe(), [override])


@pytest.mark.parametrize("override", ["train.lr=null", "train.temperature=null"])
def test_null_numbers_raise_value_error(tmp_path, override):
    """A null (or empty `--set train.lr=`) number is a bad value like any other: a ValueError naming
    the option, not a TypeError from comparing None with 0."""
    option = override.split("=")[0].split(".")[1]
    with pytest.raises(ValueError, match=option):
        load(tmp_path, base_recipe(), [override])


def test_empty_train_section(tmp_path):
    """`train:` with every line commented out reads as null: defaults, or a ValueError naming train,
    never an AttributeError from calling .validate() on None."""
    text = "model: m\ntasks: [rte]\nmethod: {method: lora}\ntrain:\n"
    try:
        cfg = load(tmp_path, text)
    except ValueError as e:
        assert "train" in str(e)
    else:
        assert cfg.train == TrainConfig()


def test_method_without_method_key_raises(tmp_path):
    with pytest.raises(ValueError, match="method"):
        load(tmp_path, base_recipe(method={"max_rank": 8}))


def test_method_is_validated_at_load(tmp_path):
    bad = {"method": "hilo", "top_k": 9, "experts": "2"}
    with pytest.raises(ValueError, match="top_k"):
        load(tmp_path, base_recipe(method=bad))
    with pytest.raises(ValueError, match="unknown method"):
        load(tmp_path, base_recipe(method={"method": "moree"}))
    with pytest.raises(ValueError, match="did you mean"):
        load(tmp_path, base_recipe(method={"method": "more", "max_rnak": 4}))
    with pytest.raises(ValueError, match="max_rank"):
        load(tmp_path, base_recipe(), ["method.max_rank=0"])


# -- adapter config --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "cls"), [({"method": "more"}, MoREConfig), ({"method": "multilora", "r": 2}, MultiLoRAConfig)]
)
def test_task_routed_methods_get_the_run_tasks(tmp_path, method, cls):
    cfg = load(tmp_path, base_recipe(method=method))
    adapter = cfg.adapter_config()
    assert isinstance(adapter, cls)
    assert adapter.tasks == TASKS
    assert "tasks" not in cfg.method  # the recipe's method section is left as written


def test_moelora_gets_the_run_tasks(tmp_path):
    cfg = load(tmp_path, base_recipe(method={"method": "moelora", "experts": 2, "rank": 2}))
    assert cfg.adapter_config().tasks == TASKS


def test_matching_method_tasks_are_accepted(tmp_path):
    cfg = load(tmp_path, base_recipe(method={"method": "more", "tasks": list(TASKS)}))
    assert cfg.adapter_config().tasks == TASKS


def test_differing_method_tasks_raise(tmp_path):
    with pytest.raises(ValueError, match="differs"):
        load(tmp_path, base_recipe(method={"method": "more", "tasks": ["rte", "mrpc"]}))
    with pytest.raises(ValueError, match="differs"):  # same tasks in another order: ids would not match
        load(tmp_path, base_recipe(method={"method": "more", "tasks": ["mrpc", "rte", "stsb"]}))


def test_task_agnostic_methods_take_no_tasks(tmp_path):
    cfg = load(tmp_path, base_recipe(method={"method": "lora", "r": 4}))
    adapter = cfg.adapter_config()
    assert isinstance(adapter, LoRAConfig) and adapter.r == 4 and adapter.task_names == []
    cfg = load(tmp_path, base_recipe(method={"method": "hilo", "experts": "2", "ranks": "4", "top_k": 1}))
    assert isinstance(cfg.adapter_config(), HiLoConfig)


# -- save / load -----------------------------------------------------------------------------------


def test_save_then_load_round_trips(tmp_path):
    """Saved into its run folder (output_dir) and read back from there, a config is the same config."""
    data = base_recipe(
        output_dir=str(tmp_path),
        data_dir="data/here",
        custom_tasks=["a.yaml"],
        strict=True,
        eval_mode="generate",
        method={"method": "more", "max_rank": 4, "ranks": [1, 2, 4], "contrastive_weight": 0.2},
    )
    data["train"].update(
        lr=1e-5,
        temperature=3.5,
        sampling="temperature",
        batch_mode="mixed",
        mixed_precision="bf16",
        max_train_examples=1000,
        seed=7,
    )
    cfg = load(tmp_path, data)
    cfg.save(tmp_path / "saved.yaml")
    again = load_run_config(tmp_path / "saved.yaml")
    again.resolve_paths(tmp_path)
    assert again == cfg
    assert again.to_dict() == cfg.to_dict()
    assert again.train.lr == 1e-5 and isinstance(again.train.lr, float)
    assert again.adapter_config() == cfg.adapter_config()


def test_saved_paths_are_relative_inside_the_run_folder_and_absolute_outside(tmp_path, monkeypatch):
    """A run folder can move: output_dir and what lies inside it are written relative to the file's
    folder; paths outside stay absolute (training made them so); names that are no paths stay names."""
    (tmp_path / "data").mkdir()
    (tmp_path / "run" / "adapter").mkdir(parents=True)
    (tmp_path / "run" / "task.yaml").write_text("")
    monkeypatch.chdir(tmp_path)
    cfg = load(tmp_path, base_recipe(output_dir="run", data_dir="data"))
    cfg.custom_tasks = [str(tmp_path / "run" / "task.yaml")]
    cfg.resolve_paths(tmp_path)
    assert cfg.data_dir == str(tmp_path / "data") and cfg.model == "smollm2"
    cfg.save(tmp_path / "run" / "adapter" / "run.yaml")
    saved = yaml.safe_load((tmp_path / "run" / "adapter" / "run.yaml").read_text())
    assert saved["output_dir"] == ".." and saved["custom_tasks"] == ["../task.yaml"]
    assert saved["data_dir"] == str(tmp_path / "data") and saved["model"] == "smollm2"


def test_save_writes_plain_yaml(tmp_path):
    cfg = load(tmp_path, base_recipe())
    cfg.save(tmp_path / "saved.yaml")
    data = yaml.safe_load((tmp_path / "saved.yaml").read_text())
    assert data["train"]["steps"] == 50 and data["tasks"] == TASKS and data["method"]["method"] == "more"


def test_direct_construction_validates_train_dict():
    cfg = RunConfig(model="m", tasks=["rte"], method={"method": "lora"}, train={"steps": 3})
    assert isinstance(cfg.train, TrainConfig) and cfg.train.steps == 3
    with pytest.raises(ValueError, match="did you mean"):
        RunConfig(model="m", tasks=["rte"], method={"method": "lora"}, train={"step": 3})


def test_custom_task_paths_are_relative_to_the_recipe(tmp_path, monkeypatch):
    """custom_tasks resolve against the recipe's folder, whatever the working directory, and are kept
    absolute so the saved run.yaml still finds them."""
    (tmp_path / "recipes").mkdir()
    recipe = tmp_path / "recipes" / "r.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "model": "m",
                "tasks": ["rte"],
                "method": {"method": "lora"},
                "custom_tasks": ["tasks/mine.yaml"],
            }
        )
    )
    monkeypatch.chdir(tmp_path)
    cfg = load_run_config(recipe)
    assert cfg.custom_tasks == [str((tmp_path / "recipes" / "tasks" / "mine.yaml").resolve())]
    cfg.save(tmp_path / "run.yaml")
    assert load_run_config(tmp_path / "run.yaml").custom_tasks == cfg.custom_tasks


def test_every_shipped_recipe_is_valid():
    """The recipes in configs/ load and validate (adapter config included) as users run them."""
    recipes = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
    assert recipes
    for path in recipes:
        cfg = load_run_config(path)
        assert cfg.adapter_config().method == cfg.method["method"], path


def test_paper_recipe_keeps_every_more_option_at_the_papers_value():
    """configs/more-t5-base-glue.yaml reproduces the published MoRE whatever rankmix's defaults become."""
    cfg = load_run_config(Path(__file__).parents[1] / "configs" / "more-t5-base-glue.yaml").adapter_config()
    paper = {
        "max_rank": 8,
        "alpha": 32.0,
        "dropout": 0.1,
        "scaling": "constant",
        "linear_scaling": True,
        "task_embedding_std": 0.01,
        "zero_gate_bias": False,
        "start_at_max_rank": False,
        "learn_selection": True,
        "pooling": "first",
        "contrastive_weight": 0.1,
        "temperature": 0.05,
        "ranks": None,
    }
    assert {k: getattr(cfg, k) for k in paper} == paper
