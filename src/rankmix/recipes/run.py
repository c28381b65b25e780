"""A run: its tasks, data and model, prepared from a RunConfig, and its folder on disk.

A run folder holds `run.yaml` (the resolved recipe), `adapter/` (the best adapter, with `run.yaml` and,
for encoders, the task heads), `checkpoint.pt`, `results.json`, `metrics.jsonl`, `tb/` and `plots/`.
The adapter folder, results and heads are written atomically (files.py)."""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..allocators import Probe
from ..config import config_from_dict
from ..data.collate import pad_features, pad_id
from ..data.sampling import TaskSampler
from ..families import ModelFamily
from ..files import atomic_folder, child, write_json
from ..model import RankMixModel, get_model
from ..persistence import read_adapter_config, read_safetensors, save_tensors
from ..stats import allocation, by_layer, mean_selected_ranks
from ..tasks import get_task, load_custom_task, task_names
from ..tasks.base import Example, Task
from .checkpoint import TrainState
from .evaluate import evaluate
from .loading import load_model
from .outputs import mark_output, output_folder
from .run_config import RunConfig, load_run_config
from .run_folder import ADAPTER_DIR, RESULTS, RUN_CONFIG, is_run_folder
from .sharding import full_tensor

HEADS_NAME = "heads.safetensors"
TASK_HEAD_NAME, TASK_HEAD_CONFIG = "task_head.safetensors", "task_head.json"


@dataclass
class Run:
    """What a recipe builds before it trains or evaluates."""

    config: RunConfig
    tasks: list[Task]
    train_sets: list[list[Example]]
    dev_sets: list[list[Example]]
    model: nn.Module  # the trainable module: RankMixModel, or the family's wrapper around it (heads)
    adapted: RankMixModel
    tokenizer: Any
    family: ModelFamily
    frozen_tasks: int = 0  # the leading tasks that do not train (a frozen growth's old ones: grow.py)
    grown_from: str | None = None  # a digest of the trained adapter and heads it grew from (grow.py)

    @property
    def heads(self) -> nn.ModuleList | None:
        return self.family.heads(self.model)


# -- preparing a run ---------------------------------------------------------------------------------
def resolve_tasks(cfg: RunConfig) -> list[Task]:
    """The recipe's tasks, each of the kind `cfg.task_kinds` records (where it does), and that record
    completed, so that the run folder keeps it."""
    for path in cfg.custom_tasks:
        load_custom_task(path)
    kinds = cfg.task_kinds or {}
    tasks = [as_trained(get_task(name), kinds.get(name)) for name in cfg.tasks]
    cfg.task_kinds = {t.name: t.kind.name for t in tasks}
    return tasks


LABEL_WORDS = "_labels"  # the suffix of a task's label-word twin (the format before task kinds)


def _twin(name: str) -> Task | None:
    """The label-word twin of the task called `name`, where it has one."""
    twin = f"{name}{LABEL_WORDS}"
    return get_task(twin) if twin in task_names() else None


def as_trained(task: Task, kind: str | None) -> Task:
    """`task` as a run trained it: a run recorded as another kind than the task is now (the label-word
    format, before the commonsense tasks became multiple-choice ones) gets the task's twin of that
    kind, under the task's own name."""
    if kind is None or kind == task.kind.name:
        return task
    twin = _twin(task.name)
    if twin is not None and twin.kind.name == kind:
        return dataclasses.replace(twin, name=task.name)
    raise ValueError(
        f"this run trained {task.name} as a {kind} task, and {task.name} is a {task.kind.name} task now; "
        "evaluate it with the rankmix version that trained it"
    )


def legacy_kinds(tasks: list[str]) -> dict[str, str]:
    """The kinds a run.yaml written before task kinds meant: the label-word twin's, for the tasks that
    have one (the others were what they are now)."""
    return {name: twin.kind.name for name in tasks if (twin := _twin(name)) is not None}


def subset(examples: list[Example], cap: int | None, seed: int) -> list[Example]:
    """At most `cap` of `examples`, drawn with `seed` (all of them, in order, within the cap)."""
    if cap is None or len(examples) <= cap:
        return examples
    return random.Random(seed).sample(examples, cap)


def load_data(cfg: RunConfig, tasks: list[Task], splits: tuple[str, ...] = ("train", "dev")) -> dict:
    """Every split of every task, capped per task with the data seed (so every training seed of a study
    sees the same examples)."""
    data: dict[str, list[list[Example]]] = {s: [] for s in splits}
    caps = {"train": cfg.train.max_train_examples, "dev": cfg.train.max_eval_examples}
    seed = cfg.train.sampling_seed
    for task in tasks:
        for split in splits:
            examples, _ = task.load(
                split, cfg.data_dir, strict=cfg.strict
            )  # the reader warns of skipped rows
            if not examples:
                where = f"under data_dir {cfg.data_dir}" if cfg.data_dir else "on the hub (no data_dir set)"
                raise ValueError(
                    f"{task.name}/{split} has no examples {where}; point data_dir at a folder that holds them"
                )
            data[split].append(subset(examples, caps[split], seed))
    return data


def build_model(
    cfg: RunConfig,
    tasks: list[Task],
    train_sets: list[list[Example]] | None = None,
    allocated: dict[str, Any] | None = None,
) -> tuple[nn.Module, RankMixModel, Any, ModelFamily]:
    """(trainable module, adapted model, tokenizer, family), initialised with the run's seed; an "auto"
    allocation by the probe allocator trains its first pass on `train_sets`, unless `allocated` (the
    config a resumed run was built with) gives it."""
    torch.manual_seed(cfg.train.seed)
    base, tokenizer, family = load_model(cfg.model, cfg.model_quantization)
    family.check(tasks, cfg.eval_mode)
    if cfg.train.gradient_checkpointing:  # non-reentrant: the routers' aux losses keep their gradients
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    config = cfg.adapter_config()
    if allocated is not None and config.pending():
        config = config_from_dict(allocated)
    probe = probe_pass(cfg, tasks, train_sets, tokenizer, family) if config.probing else None
    adapted = get_model(base, config, probe=probe)
    return family.wrap(adapted, tasks), adapted, tokenizer, family


def probe_pass(
    cfg: RunConfig,
    tasks: list[Task],
    train_sets: list[list[Example]] | None,
    tokenizer: Any,
    family: ModelFamily,
) -> Probe:
    """The probe allocator's first pass as training starts: the recipe's sampler and seed, its task heads
    and loss; examples are tokenised as they are drawn."""
    if not train_sets:
        raise ValueError(
            "allocator: probe trains on the recipe's training data, which this command did not load"
        )
    t = cfg.train
    sizes = [len(s) for s in train_sets]
    sampler = TaskSampler(sizes, t.batch_size, t.sampling, t.temperature, t.batch_mode, seed=t.seed)

    def batches() -> Iterator[dict]:
        while True:
            rows = [
                family.features(tokenizer, i, tasks[i], train_sets[i][index], t.max_length)
                for i, index in sampler.next_batch()
            ]
            yield pad_features(rows, pad_id(tokenizer))

    return Probe(
        batches(),
        loss=lambda model, batch: family.train_outputs(model, batch).loss,
        wrap=lambda adapted: family.wrap(adapted, tasks),
        seed=t.seed,
    )


def prepare(
    cfg: RunConfig, splits: tuple[str, ...] = ("train", "dev"), allocated: dict[str, Any] | None = None
) -> Run:
    """Tasks and data first (quick, and where bad input shows), then the model. The probe allocator's
    first pass reads the training data whatever `splits` asks; `allocated`: see build_model."""
    tasks = resolve_tasks(cfg)
    if cfg.adapter_config().probing and allocated is None and "train" not in splits:
        splits = ("train", *splits)
    data = load_data(cfg, tasks, splits)
    model, adapted, tokenizer, family = build_model(cfg, tasks, data.get("train"), allocated)
    return Run(cfg, tasks, data.get("train", []), data.get("dev", []), model, adapted, tokenizer, family)


def evaluate_run(
    run: Run,
    model: nn.Module | None = None,
    mode: str | None = None,
    share: tuple[int, int] = (0, 1),
    progress: bool = False,
    infer: Callable[[Sequence[Example]], torch.Tensor] | None = None,
) -> dict:
    """Dev metrics of every task of `run` (with `model`, e.g. an unwrapped DDP replica, if given; each
    process of a distributed job predicting its `share`, (rank, world)); `progress`: a bar of rows;
    `infer`: route by the tasks it infers (task_free.py)."""
    t = run.config.train
    model = run.model if model is None else model
    mode = mode or run.config.eval_mode
    data = (run.tasks, run.dev_sets, t.batch_size, t.max_length, mode, share)
    return evaluate(model, run.family, run.tokenizer, *data, progress=progress, infer=infer)


# -- the run folder ----------------------------------------------------------------------------------
def save_adapter(run: Run, folder: Path, write: bool = True) -> None:
    """The adapter (rankmix format), the task heads if any, and the run's config, as one folder swap.
    Under FSDP every process calls it (the shards are gathered) and the one told to `write` writes."""
    adapter = {k: full_tensor(v) for k, v in run.adapted.adapter_state_dict().items()}
    heads = {k: full_tensor(v) for k, v in run.heads.state_dict().items()} if run.heads is not None else {}
    if not write:
        return
    with atomic_folder(folder) as tmp:
        run.adapted.save_pretrained(tmp, state_dict=adapter)
        if heads:
            save_tensors(tmp / HEADS_NAME, heads)
        run.config.save(tmp / RUN_CONFIG)


def load_adapter(run: Run, folder: Path) -> None:
    """Load a saved adapter (and heads) into a freshly prepared run."""
    run.adapted.load_adapter_weights(folder, strict=run.config.strict)
    if run.heads is not None:
        file = folder / HEADS_NAME
        try:  # load_state_dict checks the names and shapes
            run.heads.load_state_dict(read_safetensors(file))
        except RuntimeError:
            raise ValueError(
                f"{file} does not hold this run's task heads; copy the run folder again"
            ) from None


def adapter_folder(folder: str | Path) -> Path:
    """The adapter folder of a run folder (its best adapter), or `folder` itself if it is one."""
    path = Path(folder)
    if (path / ADAPTER_DIR).is_dir():
        path = path / ADAPTER_DIR
    elif is_run_folder(path):
        why = "is not a folder" if (path / ADAPTER_DIR).exists() else "is not there yet"
        raise FileNotFoundError(
            f"run {path} has no adapter to read: {path / ADAPTER_DIR} {why}; training saves it at each "
            "evaluation (train.eval_every), so wait for the first one (or train the run)"
        )
    if not (path / RUN_CONFIG).is_file():
        raise FileNotFoundError(
            f"{path} holds no {RUN_CONFIG}: pass a run folder or its {ADAPTER_DIR}/ folder"
        )
    return path


def open_run(folder: str | Path, overrides: list[str], splits: tuple[str, ...] = ()) -> tuple[Run, Path]:
    """Rebuild the run a run folder (its best adapter) or an adapter folder came from, adapter loaded;
    returns the run and the adapter folder."""
    path = adapter_folder(folder)
    cfg = load_run_config(path / RUN_CONFIG, overrides, paths_from_file=True)
    cfg.method = read_adapter_config(path)["adapter"]  # complete, unlike a recipe that relied on defaults
    if cfg.task_kinds is None:  # trained before task kinds
        cfg.task_kinds = legacy_kinds(cfg.tasks)
    run = prepare(cfg, splits)
    for attempt in range(3):  # a run in training swaps in a new adapter/ at each best evaluation:
        before = _identity(path)  # read again until one whole adapter folder was read
        try:
            load_adapter(run, path)
        except FileNotFoundError:
            if attempt == 2 or _identity(path) == before:
                raise
            continue
        if _identity(path) == before:
            break
    return run, path


def zero_shot_run(recipe: str | Path, overrides: list[str]) -> Run:
    """A recipe's tasks and dev draw (its caps and data seed) on its base model as it is: the adapter at
    initialisation adds exactly zero (every expert's lora_B starts at zero), so evaluating this run
    scores the untouched base model. Nothing is written. An encoder is refused: its heads are untrained."""
    cfg = load_run_config(recipe, overrides)
    run = prepare(cfg, splits=("dev",))
    if run.heads is not None:
        raise ValueError(
            f"{recipe}: zero-shot evaluation needs a model that scores its tasks itself, and {cfg.model} is "
            "an encoder whose task heads would be untrained; train the recipe, then evaluate its run folder"
        )
    return run


def _identity(folder: Path) -> int | None:
    try:
        return folder.stat().st_ino
    except FileNotFoundError:
        return None


DEVICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str) -> torch.device:
    """`auto`: CUDA when present, else the CPU; a device asked for by name must be there."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    present = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if name not in present:
        raise ValueError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}")
    if not present[name]:
        raise ValueError(f"--device {name}: there is no {name} device here; use --device cpu or auto")
    return torch.device(name)


def check_task(run: Run, task: str | None, with_head: bool = False) -> Task | None:
    """`task` must be one of the run's tasks, and is required where each task merges differently (or,
    `with_head`, has a head of its own); returns that task."""
    names = [t.name for t in run.tasks]
    if task is None and run.adapted.method.task_routed:
        raise ValueError(f"pass --task (one of {names}): each task merges and exports differently")
    if task is None and with_head and run.heads is not None:
        raise ValueError(f"pass --task: every task has its own head ({names})")
    if task is not None and task not in names:
        raise ValueError(f"unknown task {task!r}; this adapter was trained on {names}")
    return None if task is None else run.tasks[names.index(task)]


def check_finite(run: Run) -> None:
    """Refuse to deploy a diverged adapter: NaN or infinite weights would be folded into the model."""
    tensors = dict(run.adapted.adapter_tensors())
    if run.heads is not None:
        tensors |= {f"heads.{k}": v for k, v in run.heads.state_dict().items()}
    bad = [
        name for name, value in tensors.items() if value.is_floating_point() and not value.isfinite().all()
    ]
    if bad:
        raise ValueError(
            f"the adapter holds non-finite (NaN or infinite) weights in {len(bad)} tensor(s), e.g. {bad[0]}: "
            "its training diverged; train it again (e.g. with a lower train.lr) before merging or exporting"
        )


def save_task_head(run: Run, task: str, folder: Path) -> None:
    """An encoder task's head beside its merged model or exported adapter: the Linear's weights, and how
    to apply it (mean pooling over the attention mask, then the Linear; README: "Exported adapters")."""
    t = [x.name for x in run.tasks].index(task)
    save_tensors(folder / TASK_HEAD_NAME, run.heads[t].state_dict())
    meta = {"task": task, "pooling": "mean", "kind": run.tasks[t].kind.name}
    write_json(folder / TASK_HEAD_CONFIG, meta | {"labels": list(run.tasks[t].labels)})


def merge_task(run: Run, task: str | None, out: Path) -> Path:
    """A plain model for `task` (adapter folded in) with its tokenizer, and the task's head if any."""
    check_task(run, task, with_head=True)
    check_finite(run)
    heads = run.heads
    plain = run.adapted.merge_and_unload(task=task)
    with output_folder(out, "merge") as tmp:  # whole or not at all
        plain.save_pretrained(tmp)
        run.tokenizer.save_pretrained(tmp)
        if heads is not None:  # the task's head travels beside the merged encoder
            save_task_head(run, task, tmp)
    return out


def export_task(run: Run, task: str | None, out: Path) -> Path:
    """`task`'s adapter as a stock PEFT LoRA; for an encoder, with the task's head beside it."""
    check_task(run, task, with_head=True)
    check_finite(run)
    with output_folder(out, "export-lora") as tmp:  # whole or not at all
        run.adapted.export_lora(task=task, path=tmp)
        if run.heads is not None:
            save_task_head(run, task, tmp)
    return out


def export_all_tasks(run: Run, out: Path) -> list[Path]:
    """One stock PEFT adapter (and head) per task, in out/<task>/; `out` whole or not at all."""
    with output_folder(out, "export-lora") as tmp:
        names = [export_task(run, task.name, child(tmp, task.name, "task")).name for task in run.tasks]
    return [out / name for name in names]


def parameters(adapted: RankMixModel, heads: nn.ModuleList | None) -> dict[str, int]:
    """The run's counts, as train, inspect and the quickstart report them: the adapter's, and the task
    heads, where the family has them, which are trainable too."""
    counts = adapted.parameter_counts()
    if heads is not None:
        counts["heads"] = sum(p.numel() for p in heads.parameters())
        counts["trainable"] += sum(p.numel() for p in heads.parameters() if p.requires_grad)
        counts["total"] += counts["heads"]
    return counts


def best_summary(
    run: Run, results: dict[str, dict[str, float]], avg: float, expert_load: dict | None = None
) -> dict[str, Any]:
    """What results.json keeps of the best evaluation: scores, parameter counts, selected ranks and the
    expert load that evaluation counted (token routing), so that reports need not run the dev set again."""
    return {
        "average": avg,
        "tasks": results,
        "parameters": parameters(run.adapted, run.heads),
        "selected_ranks": mean_selected_ranks(run.adapted),
        "expert_load": expert_load,
    }


def results(run: Run, state: TrainState, wall: float, processes: int) -> dict:
    """The content of results.json: the best evaluation and the history of all evaluations."""
    best = state.best or {
        "average": None,
        "tasks": {},
        "parameters": parameters(run.adapted, run.heads),
        "selected_ranks": None,
        "expert_load": None,
    }
    return {
        "model": run.config.model,
        "method": run.config.method,
        "family": run.family.name,
        "steps": state.step,
        "best_step": state.best_step,
        "average": best["average"],
        "tasks": best["tasks"],
        "parameters": best["parameters"],  # of the saved (best) adapter
        "selected_ranks": best["selected_ranks"],
        "expert_load": best.get("expert_load"),  # checkpoints before it: none
        "wall_time_s": round(wall, 1),
        "processes": processes,
        "history": state.history,
    }


def write_results(out: Path, data: dict) -> None:
    write_json(out / RESULTS, data)


def router_report(run: Run, expert_load: dict | None = None) -> dict[str, Any]:
    """The adapter's allocation and router statistics: selected ranks (task routing), and the expert load
    over the dev set (token routing): the one given (what training's evaluation of this adapter counted,
    `stored_expert_load`), or else counted by running the dev set through the routers."""
    adapted = run.adapted
    if adapted.method.token_routed and expert_load is None:
        evaluate_run(run, mode="score")
    report = {"allocation": allocation(adapted), **adapted.router_stats()}
    if adapted.method.token_routed and expert_load is not None:
        report["expert_load"] = expert_load
    return report


def stored_expert_load(adapter_folder: Path) -> dict | None:
    """The expert load that the evaluation which saved this adapter counted, from the results.json beside
    it (None: no results.json there, or one written before the load was kept)."""
    file = adapter_folder.parent / RESULTS
    return json.loads(file.read_text()).get("expert_load") if file.is_file() else None


def plot_run(run: Run, out: Path, expert_load: dict | None = None) -> list[Path]:
    """PNGs of the run's adapter: allocation; selected ranks (task routing); expert load (token routing:
    the one given, or counted again over the dev set)."""
    from ..plots import plot_allocation, plot_expert_load, plot_selected_ranks  # matplotlib: only here

    report = router_report(run, expert_load)
    written = [plot_allocation(report["allocation"], out / "allocation.png")]
    if "selected_ranks" in report:
        written.append(plot_selected_ranks(report["selected_ranks"], out / "selected_ranks.png"))
    if "expert_load" in report:
        written.append(plot_expert_load(report["expert_load"], out / "expert_load.png"))
    mark_output(out, "plot", [p.name for p in written])
    return written


def allocation_by_layer(adapted: RankMixModel) -> dict[int | None, list[list[int]]]:
    """{layer: [expert ranks of each adapted module in it]}."""
    return by_layer(allocation(adapted))


def selected_ranks_by_layer(adapted: RankMixModel) -> dict[str, list[float]]:
    """{task: mean selected rank over each layer's modules, layer by layer}."""
    return {
        task: [sum(v) / len(v) for v in by_layer(ranks).values()]
        for task, ranks in adapted.selected_ranks().items()
    }
