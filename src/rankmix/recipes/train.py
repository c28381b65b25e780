"""The training recipe: one adapter set for all tasks, trained jointly with accelerate, evaluated on every
task, the best adapter kept by the average task metric (never by a loss with aux terms)."""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..data.collate import collate
from ..data.sampling import TaskSampler
from ..heads import MultiTaskHeads
from ..model import RankMixModel, get_model
from ..tasks import get_task, load_custom_task
from ..tasks.base import Example, Task
from .evaluate import average, evaluate
from .loading import load_model
from .run_config import RunConfig

HEADS_NAME = "heads.safetensors"


@dataclass
class Run:
    """What a recipe builds before it trains or evaluates."""

    config: RunConfig
    tasks: list[Task]
    train_sets: list[list[Example]]
    dev_sets: list[list[Example]]
    model: nn.Module  # the trainable module: RankMixModel, or MultiTaskHeads around it for encoders
    adapted: RankMixModel
    tokenizer: Any
    family: str


def resolve_tasks(cfg: RunConfig) -> list[Task]:
    for path in cfg.custom_tasks:
        load_custom_task(path)
    return [get_task(name) for name in cfg.tasks]


def _subset(examples: list[Example], cap: int | None, seed: int) -> list[Example]:
    if cap is None or len(examples) <= cap:
        return examples
    return random.Random(seed).sample(examples, cap)


def load_data(cfg: RunConfig, tasks: list[Task], splits: tuple[str, ...] = ("train", "dev")) -> dict:
    """Every split of every task, capped per task with the seed."""
    data: dict[str, list[list[Example]]] = {s: [] for s in splits}
    caps = {"train": cfg.train.max_train_examples, "dev": cfg.train.max_eval_examples}
    for task in tasks:
        for split in splits:
            examples, _ = task.load(
                split, cfg.data_dir, strict=cfg.strict
            )  # the reader warns of skipped rows
            if not examples:
                raise ValueError(f"{task.name}/{split} has no examples; check data_dir={cfg.data_dir!r}")
            data[split].append(_subset(examples, caps[split], cfg.train.seed))
    return data


def build_model(cfg: RunConfig, tasks: list[Task]) -> tuple[nn.Module, RankMixModel, Any, str]:
    torch.manual_seed(cfg.train.seed)
    base, tokenizer, family = load_model(cfg.model)
    adapted = get_model(base, cfg.adapter_config())
    if family == "encoder":
        heads = MultiTaskHeads(adapted, [t.num_labels for t in tasks], [t.regression for t in tasks])
        return heads, adapted, tokenizer, family
    return adapted, adapted, tokenizer, family


def prepare(cfg: RunConfig, splits: tuple[str, ...] = ("train", "dev")) -> Run:
    """Tasks and data first (quick, and where bad input shows), then the model."""
    tasks = resolve_tasks(cfg)
    data = load_data(cfg, tasks, splits)
    model, adapted, tokenizer, family = build_model(cfg, tasks)
    return Run(cfg, tasks, data.get("train", []), data.get("dev", []), model, adapted, tokenizer, family)


# -- files --------------------------------------------------------------------------------------------
def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


@contextmanager
def _swap_folder(folder: Path) -> Iterator[Path]:
    """Write a whole folder beside `folder`, then swap it in, so a crash leaves the old one intact."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        yield tmp
        old = folder.with_name(f".{folder.name}.old")
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save_adapter(run: Run, folder: Path) -> None:
    """The adapter (rankmix format) plus, for encoders, the task heads."""
    with _swap_folder(folder) as tmp:
        run.adapted.save_pretrained(tmp)
        if isinstance(run.model, MultiTaskHeads):
            heads = {k: v.detach().contiguous().cpu() for k, v in run.model.heads.state_dict().items()}
            save_file(heads, str(tmp / HEADS_NAME))
        run.config.save(tmp / "run.yaml")


def load_adapter(run: Run, folder: Path) -> None:
    """Load a saved adapter (and heads) into a freshly prepared run."""
    run.adapted.load_adapter_weights(folder)
    if isinstance(run.model, MultiTaskHeads):
        run.model.heads.load_state_dict(load_file(str(folder / HEADS_NAME)))


def _param_groups(run: Run) -> list[dict]:
    """Adapter parameters at train.lr; encoder task heads at train.head_lr (fresh heads learn faster)."""
    adapter = [p for p in run.adapted.parameters() if p.requires_grad]
    if not isinstance(run.model, MultiTaskHeads):
        return [{"params": adapter}]
    head_lr = run.config.train.head_lr or run.config.train.lr
    return [{"params": adapter}, {"params": list(run.model.heads.parameters()), "lr": head_lr}]


def _trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(path: Path, model, optimizer, scheduler, sampler, state: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(
        {
            "params": {n: p.detach().cpu() for n, p in _trainable(model).items()},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "sampler": sampler.state_dict(),
            "rng": torch.get_rng_state(),
            "state": state,
        },
        tmp,
    )
    os.replace(tmp, path)


def _resume_key(cfg: RunConfig) -> dict[str, Any]:
    """The options a resumed run must share with the run that wrote the checkpoint (it may train longer)."""
    flat = {}
    for key, value in cfg.to_dict().items():
        if key == "train":
            flat.update({f"train.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    for key in ("output_dir", "train.steps", "train.eval_every", "train.log_every"):
        flat.pop(key)
    return flat


def load_checkpoint(path: Path, model, optimizer, scheduler, sampler, resume_key: dict[str, Any]) -> dict:
    """Restore a run's training state; a checkpoint of another configuration is refused, untouched."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ValueError(f"checkpoint {path} is unreadable ({e}); delete it or pass --overwrite") from None
    saved = ckpt["state"].get("config", {})
    differ = sorted(k for k in set(saved) | set(resume_key) if saved.get(k) != resume_key.get(k))
    params = _trainable(model)
    if not differ and (
        set(ckpt["params"]) != set(params)
        or any(ckpt["params"][n].shape != p.shape for n, p in params.items())
    ):
        differ = ["parameter shapes"]
    if differ:
        raise ValueError(
            f"{path} belongs to a run with another configuration (it differs in {differ}); "
            "pass --overwrite to start afresh, or choose another output_dir"
        )
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(ckpt["params"][n])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    sampler.load_state_dict(ckpt["sampler"])
    torch.set_rng_state(ckpt["rng"])
    return ckpt["state"]


def evaluate_run(run: Run, model: nn.Module | None = None, mode: str | None = None) -> dict:
    """Dev metrics of every task of `run` (with `model`, e.g. an unwrapped DDP replica, if given)."""
    t = run.config.train
    model = run.model if model is None else model
    mode = mode or run.config.eval_mode
    return evaluate(
        model, run.family, run.tokenizer, run.tasks, run.dev_sets, t.batch_size, t.max_length, mode
    )


# -- the loop -----------------------------------------------------------------------------------------
def format_table(results: dict[str, dict[str, float]]) -> str:
    lines = [f"{'task':<16} {'metrics':<40} {'score':>6}"]
    for name, r in results.items():
        metrics = ", ".join(f"{k}={v:.3f}" for k, v in r.items() if k != "score")
        lines.append(f"{name:<16} {metrics:<40} {r['score']:6.3f}")
    lines.append(f"{'average':<16} {'':<40} {average(results):6.3f}")
    return "\n".join(lines)


def train(cfg: RunConfig, overwrite: bool = False, progress: bool = True) -> dict:
    """Train, evaluate every `eval_every` steps and at the end, keep the best adapter; returns results."""
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from torch.utils.tensorboard import SummaryWriter
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    start_time = time.time()
    out = Path(cfg.output_dir)

    def elapsed() -> float:
        return time.time() - start_time

    checkpoint = out / "checkpoint.pt"
    run = prepare(cfg)  # bad input fails here, before anything on disk changes
    t = cfg.train
    # cpu=True when no GPU is present, so that torchrun / accelerate launch on CPUs run data-parallel (gloo)
    # encoder heads: a single-task batch leaves the other tasks' heads unused, which DDP must be told
    ddp = DistributedDataParallelKwargs(find_unused_parameters=run.family == "encoder")
    accelerator = Accelerator(
        mixed_precision=t.mixed_precision, cpu=not torch.cuda.is_available(), kwargs_handlers=[ddp]
    )
    if overwrite and out.exists() and accelerator.is_main_process:
        shutil.rmtree(out)
    accelerator.wait_for_everyone()
    optimizer = torch.optim.AdamW(_param_groups(run), lr=t.lr, weight_decay=t.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, t.warmup_steps, t.steps)
    sampler = TaskSampler(
        [len(s) for s in run.train_sets],
        t.batch_size,
        t.sampling,
        t.temperature,
        t.batch_mode,
        seed=t.seed,
        rank=accelerator.process_index,
    )
    state = {"step": 0, "best": None, "best_step": None, "history": [], "config": _resume_key(cfg)}
    if checkpoint.exists():
        state = load_checkpoint(checkpoint, run.model, optimizer, scheduler, sampler, _resume_key(cfg))
        accelerator.print(f"resuming {out} from step {state['step']}")
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        cfg.save(out / "run.yaml")
    model, optimizer, scheduler = accelerator.prepare(run.model, optimizer, scheduler)
    writer = SummaryWriter(str(out / "tb")) if accelerator.is_main_process else None
    log = (out / "metrics.jsonl").open("a") if accelerator.is_main_process else None

    def emit(record: dict) -> None:
        if log:
            log.write(json.dumps(record) + "\n")
            log.flush()
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    writer.add_scalar(key, value, record["step"])

    def run_eval(step: int) -> None:
        results = evaluate_run(run, accelerator.unwrap_model(model))
        avg = average(results)
        emit({"step": step, "eval/average": avg, **{f"eval/{k}": r["score"] for k, r in results.items()}})
        state["history"].append({"step": step, "average": avg, "tasks": results})
        if state["best"] is None or avg > state["best"]["average"]:
            state["best_step"] = step
            state["best"] = {
                "average": avg,
                "tasks": results,
                "parameters": _parameters(run),
                "selected_ranks": _mean_ranks(run.adapted),
            }
            if accelerator.is_main_process:
                save_adapter(run, out / "adapter")
        if accelerator.is_main_process:
            write_json(out / "results.json", _results(run, state, elapsed(), accelerator.num_processes))
            save_checkpoint(checkpoint, accelerator.unwrap_model(model), optimizer, scheduler, sampler, state)

    model.train()
    bar = tqdm(
        total=t.steps,
        initial=state["step"],
        disable=not progress or not accelerator.is_main_process,
        desc="train",
    )
    try:
        while state["step"] < t.steps:
            for micro in range(t.grad_accum):
                pairs = sampler.next_batch()
                batch = collate(
                    run.family,
                    run.tokenizer,
                    run.tasks,
                    [(task, run.train_sets[task][i]) for task, i in pairs],
                    t.max_length,
                )
                batch = {k: v.to(accelerator.device) for k, v in batch.items()}
                sync = nullcontext() if micro == t.grad_accum - 1 else accelerator.no_sync(model)
                with sync:
                    outputs = model(**batch)
                    accelerator.backward(outputs.loss / t.grad_accum)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state["step"] += 1
            bar.update(1)
            step = state["step"]
            if step % t.log_every == 0:
                aux = {f"aux/{k}": float(v) for k, v in outputs.get("aux_losses", {}).items()}
                loss = outputs.loss.detach().item()
                emit({"step": step, "loss": loss, "lr": scheduler.get_last_lr()[0], **aux})
                bar.set_postfix(loss=f"{loss:.3f}")
            if step % t.eval_every == 0 or step == t.steps:
                run_eval(step)
    finally:
        bar.close()
        if log:
            log.close()
            writer.close()
    return _results(run, state, elapsed(), accelerator.num_processes)


def _results(run: Run, state: dict, wall: float, processes: int) -> dict:
    best = state["best"] or {
        "average": None,
        "tasks": {},
        "parameters": _parameters(run),
        "selected_ranks": None,
    }
    return {
        "model": run.config.model,
        "method": run.config.method,
        "family": run.family,
        "steps": state["step"],
        "best_step": state["best_step"],
        "average": best["average"],
        "tasks": best["tasks"],
        "parameters": best["parameters"],  # of the saved (best) adapter
        "selected_ranks": best["selected_ranks"],
        "wall_time_s": round(wall, 1),
        "processes": processes,
        "history": state["history"],
    }


def _parameters(run: Run) -> dict[str, int]:
    """The adapter's counts; for encoders the task heads are trainable too and counted as such."""
    counts = run.adapted.parameter_counts()
    if isinstance(run.model, MultiTaskHeads):
        counts["heads"] = sum(p.numel() for p in run.model.heads.parameters())
        counts["trainable"] += counts["heads"]
        counts["total"] += counts["heads"]
    return counts


def _mean_ranks(adapted: RankMixModel) -> dict[str, float] | None:
    """Mean selected rank over modules for each task (task-routed methods)."""
    if not adapted.adapter_config.task_names:
        return None
    return {task: sum(r.values()) / len(r) for task, r in adapted.selected_ranks().items()}
