"""`rankmix train RECIPE --init-from RUN`: a trained run's adapter and task heads, grown to the recipe's
tasks (growth.py), with every check against the recipe made before anything is built. RUN is only
read; the grown run is the recipe's own run folder."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import AdapterConfig, config_from_dict
from ..growth import grown_config, load_grown
from ..persistence import WEIGHTS_NAME, check_base, read_adapter, read_safetensors
from .run import HEADS_NAME, Run, adapter_folder, legacy_kinds, resolve_tasks
from .run_config import RunConfig, load_run_config
from .run_folder import ADAPTER_DIR, RUN_CONFIG

# what may differ between the trained adapter's settings and the recipe's: the tasks, which grow
GROWING = ("tasks", "task_groups")


@dataclass
class Growth:
    """What `plan_growth` read of the trained run, for `apply_growth` to load."""

    folder: Path  # the trained run's adapter folder
    meta: dict[str, Any]  # its adapter_config.json
    trained: AdapterConfig
    tensors: dict[str, torch.Tensor]
    heads: dict[str, torch.Tensor] | None  # encoder task heads, by ModuleList key ("0.weight", ...)
    old_tasks: int
    mode: str
    digest: str  # of the adapter and heads files read: a resumed grown run must find the same


def plan_growth(cfg: RunConfig) -> Growth:
    """Read the run `cfg.init_from` names and check that the recipe grows it: the same base model and
    adapter settings, the run's tasks first (same names, kinds and labels), a new run folder. Sets
    `cfg.method` to the grown adapter's config (and the old tasks' kinds to the ones they were trained
    as), so that the run folder records what it builds."""
    folder = adapter_folder(cfg.init_from)
    run_dir = folder.parent if folder.name == ADAPTER_DIR else folder
    if Path(cfg.output_dir).resolve() in (folder.resolve(), run_dir.resolve()):
        raise ValueError(
            f"output_dir is the run --init-from reads ({run_dir}), which stays as it is: give the grown "
            "run an output_dir of its own"
        )
    trained_cfg = load_run_config(folder / RUN_CONFIG, [], paths_from_file=True)
    meta, tensors = read_adapter(folder)
    trained = config_from_dict(meta["adapter"])
    where = f"--init-from {cfg.init_from}"
    if not _same_model(trained_cfg.model, cfg.model):
        raise ValueError(
            f"{where} was trained on model {trained_cfg.model}, and the recipe names {cfg.model}: a run "
            "grows on the base model it was trained on"
        )
    _check_adapter(trained, cfg, where)
    old = trained_cfg.tasks
    if cfg.tasks[: len(old)] != old:
        missing = [t for t in old if t not in cfg.tasks]
        why = f"it lacks {missing}" if missing else f"it lists {cfg.tasks}"
        raise ValueError(
            f"{where} trained the tasks {old}; the recipe must list them first, in that order, then the new "
            f"ones ({why})"
        )
    _check_task_meaning(trained_cfg, cfg, where)
    cfg.method = grown_config(trained, cfg.tasks, cfg.grow).to_dict()
    heads_file = folder / HEADS_NAME
    heads = read_safetensors(heads_file) if heads_file.is_file() else None
    digest = hashlib.sha256()
    for file in (folder / WEIGHTS_NAME, heads_file):
        digest.update(file.read_bytes() if file.is_file() else b"")
    return Growth(folder, meta, trained, tensors, heads, len(old), cfg.grow, digest.hexdigest()[:16])


def _same_model(a: str, b: str) -> bool:
    """Whether two recipes' `model` name the same model (a path resolved; a packaged name or hub id
    as written)."""
    return a == b or (Path(a).exists() and Path(b).exists() and Path(a).resolve() == Path(b).resolve())


def _check_adapter(trained: AdapterConfig, cfg: RunConfig, where: str) -> None:
    """The recipe's method and its settings are the trained adapter's (tasks aside; an 'auto' field of
    the recipe takes the trained allocation)."""
    recipe = cfg.adapter_config()
    if recipe.method != trained.method:
        raise ValueError(f"{where} trained method {trained.method}, and the recipe names {recipe.method}")
    ours, theirs = recipe.to_dict(), trained.to_dict()
    skip = {*GROWING, *recipe.pending()}
    differ = {k: (theirs.get(k), v) for k, v in ours.items() if k not in skip and theirs.get(k) != v}
    if differ:
        shown = ", ".join(f"{k}: {a!r} in the run, {b!r} in the recipe" for k, (a, b) in differ.items())
        raise ValueError(
            f"the recipe's method settings differ from the adapter of {where} ({shown}): a grown run keeps "
            "the trained adapter's settings; set them as its adapter/adapter_config.json has them"
        )


def _check_task_meaning(trained_cfg: RunConfig, cfg: RunConfig, where: str) -> None:
    """Each old task is what the run trained: the same kind and labels (a task name that now means
    another task is refused). The old tasks keep the kinds they were trained as, unless the recipe
    records others."""
    kinds = trained_cfg.task_kinds if trained_cfg.task_kinds is not None else legacy_kinds(trained_cfg.tasks)
    trained_cfg.task_kinds = kinds
    cfg.task_kinds = {**kinds, **(cfg.task_kinds or {})}
    before = {t.name: t for t in resolve_tasks(trained_cfg)}
    for task in resolve_tasks(cfg):
        old = before.get(task.name)
        if old is not None and (old.kind.name, list(old.labels)) != (task.kind.name, list(task.labels)):
            raise ValueError(
                f"task {task.name} means another task than {where} trained: a {old.kind.name} task with "
                f"labels {list(old.labels)} there, a {task.kind.name} task with labels {list(task.labels)} "
                "in the recipe; give the new task another name"
            )


def apply_growth(run: Run, growth: Growth) -> None:
    """Load the trained adapter and heads into the run built from the grown config; under `frozen`,
    freeze them and train the new tasks only. Refuses a base whose weights are not the trained one's,
    and a frozen growth that leaves nothing to train."""
    check_base(run.adapted, growth.meta, growth.folder, strict=True)
    if run.heads is not None and growth.heads is None:
        raise ValueError(
            f"{growth.folder} holds no {HEADS_NAME}, the trained task heads this encoder needs; copy the "
            "trained run folder again"
        )
    load_grown(run.adapted, growth.trained, growth.tensors, growth.mode)
    run.grown_from = growth.digest
    frozen = growth.mode == "frozen"
    if run.heads is not None:
        for t in range(growth.old_tasks):
            head = run.heads[t]
            try:
                head.load_state_dict({k: growth.heads[f"{t}.{k}"] for k in head.state_dict()})
            except (KeyError, RuntimeError):
                raise ValueError(
                    f"{growth.folder / HEADS_NAME} does not hold the head of task {run.tasks[t].name} as "
                    "this run builds it; copy the trained run folder again"
                ) from None
            head.requires_grad_(not frozen)
    if frozen:
        run.frozen_tasks = growth.old_tasks
        if growth.old_tasks == len(run.tasks):
            raise ValueError("grow: frozen with no new task leaves nothing to train: add tasks to the recipe")
        if not any(p.requires_grad for p in run.model.parameters()):
            raise ValueError(
                f"grow: frozen leaves nothing to train: {run.adapted.adapter_config.method} has one adapter "
                "for every task, and this model has no task heads; grow it joint, or train a task-routed "
                "method (more, multilora, moelora)"
            )
