"""The training recipe, top to bottom: one adapter set for all tasks, trained jointly with accelerate,
evaluated on every task, the best adapter kept by the average task metric (never by a loss with aux
terms). The run (run.py) and its checkpoints (checkpoint.py) live beside it."""

from __future__ import annotations

import dataclasses
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch

from ..data.collate import Features, compact, pad_id
from ..data.loader import training_batches
from ..data.sampling import ConsumedBatches, TaskSampler
from ..files import parse_json, read_utf8, write_text
from ..stats import mean_selected_ranks
from .checkpoint import has_checkpoint, load_checkpoint, resume_key, save_checkpoint
from .evaluate import average
from .run import (
    Run,
    best_summary,
    evaluate_run,
    prepare,
    resolve_device,
    results,
    save_adapter,
    write_results,
)
from .run_config import RunConfig
from .run_folder import ADAPTER_DIR, CHECKPOINT, METRICS, RUN_CONFIG, TENSORBOARD, check_output_dir, claimed
from .sharding import full_parameters, shard, take_fsdp_request
from .sizes import check_run_size


class RunStopped(RuntimeError):
    """Training stopped early on purpose; the message says why and what to do, `exit_code` is the CLI's."""

    exit_code = 1


class TrainingDiverged(RunStopped):
    """The loss became NaN or infinite; nothing of that step was applied or saved."""


class TrainingInterrupted(RunStopped):
    """SIGINT or SIGTERM: the current step finished and a checkpoint was written."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum  # the shell's convention for a signalled process


@contextmanager
def stop_requests() -> Iterator[dict]:
    """While training, SIGINT (Ctrl-C) and SIGTERM ask the loop to stop after the current step; a second
    Ctrl-C stops at once. Yields {"signal": the first signal received, or 0}."""
    requested = {"signal": 0}
    if threading.current_thread() is not threading.main_thread():  # only the main thread gets signals
        yield requested
        return

    def handle(signum, frame):
        if requested["signal"] and signum == signal.SIGINT:
            raise KeyboardInterrupt
        requested["signal"] = signum

    previous = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield requested
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def trim_log(path: Path, step: int) -> None:
    """Keep the records of metrics.jsonl up to `step`, where a resumed run takes over."""
    if not path.is_file():
        return
    lines = read_utf8(path, "training log").splitlines(keepends=True)
    kept = []
    for number, line in enumerate(lines, 1):
        try:
            if parse_json(line)["step"] <= step:
                kept.append(line)
        except (ValueError, TypeError, KeyError):
            raise ValueError(
                f"training log {path} is damaged at line {number}; move it aside and run again"
            ) from None
    if len(kept) != len(lines):
        write_text(path, "".join(kept))


def kept(out: Path) -> str:
    """What a stopped run leaves to resume from or to use, as it is on disk."""
    things = (("checkpoint", CHECKPOINT), ("best adapter", ADAPTER_DIR))
    saved = [what for what, name in things if (out / name).exists()]
    return f"{out} keeps the last {' and the '.join(saved)}" if saved else f"{out} holds no checkpoint yet"


def token_routers(run: Run) -> list:
    return [m.router for _, m in run.adapted.adapted_modules()] if run.adapted.method.token_routed else []


def routing_log(run: Run, reduce: Callable[..., torch.Tensor]) -> dict[str, float]:
    """What the routers did since the last log, over every process: for token routing, the mean over
    modules of the experts a token uses and of the busiest expert's share of the assignments; for task
    routing, each task's mean selected rank (the same on every process: it follows the parameters)."""
    record: dict[str, float] = {}
    routers = token_routers(run)
    if routers:
        used = [(r.load, r.tokens) for r in sum_router_counts(routers, reduce) if r.tokens > 0]
        if used:
            record["router/experts_per_token"] = sum(float(n.sum() / t) for n, t in used) / len(used)
            record["router/top_expert_share"] = sum(float(n.max() / n.sum()) for n, _ in used) / len(used)
        for r in routers:
            r.reset_stats()
    if run.adapted.method.task_routed:  # only then gather the whole model under FSDP
        with full_parameters(run.model):  # the selected ranks read whole parameters
            ranks = mean_selected_ranks(run.adapted)
        record.update({f"router/mean_rank/{task}": rank for task, rank in ranks.items()})
    return record


def sum_router_counts(routers: list, reduce: Callable[..., torch.Tensor]) -> list:
    """Each token router's counts (assignments per expert, tokens) summed over every process, in place,
    in one collective; returns the routers."""
    counts = torch.cat([torch.cat([r.load, r.tokens[None]]) for r in routers])
    summed = reduce(counts, reduction="sum").split([r.load.numel() + 1 for r in routers])
    for r, c in zip(routers, summed, strict=True):
        r.load.copy_(c[:-1])
        r.tokens.copy_(c[-1])
    return routers


def evaluation_load(run: Run, reduce: Callable[..., torch.Tensor]) -> dict | None:
    """The expert load of the evaluation that just ran (token routing; None otherwise), over every
    process; the counts are reset, since the evaluation's tokens are not training's routing."""
    routers = token_routers(run)
    if not routers:
        return None
    sum_router_counts(routers, reduce)
    return run.adapted.router_stats(reset=True).get("expert_load")


def param_groups(run: Run) -> list[dict]:
    """Adapter parameters at train.lr; routers (gates, task embeddings) at train.router_lr if set; task
    heads, where the family has them, at train.head_lr (fresh heads learn faster)."""
    t = run.config.train
    adapter = [p for p in run.adapted.parameters() if p.requires_grad]
    groups = [{"params": adapter}]
    if t.router_lr is not None:
        routers = {id(p) for _, m in run.adapted.adapted_modules() for p in m.router.parameters()}
        groups = [
            {"params": [p for p in adapter if id(p) not in routers]},
            {"params": [p for p in adapter if id(p) in routers], "lr": t.router_lr},
        ]
    if run.heads is not None:
        groups.append({"params": list(run.heads.parameters()), "lr": t.head_lr or t.lr})
    return groups


def tokenised(run: Run) -> list[list[Features]]:
    """Every training example of every task as the model's features, computed once before training."""
    t = run.config.train
    return [
        [compact(run.family.features(run.tokenizer, i, task, e, t.max_length)) for e in examples]
        for i, (task, examples) in enumerate(zip(run.tasks, run.train_sets, strict=True))
    ]


def train(cfg: RunConfig, overwrite: bool = False, progress: bool = True, device: str = "auto") -> dict:
    """Train, evaluate every `eval_every` steps and at the end, keep the best adapter; returns results.
    `device`: auto (CUDA when present), cpu, cuda or mps."""
    from accelerate import Accelerator, DistributedDataParallelKwargs

    start_time = time.time()
    cfg = dataclasses.replace(cfg, output_dir=str(Path(cfg.output_dir).resolve()))
    cfg.resolve_paths(Path.cwd())  # the run folder then works from any working directory
    out = Path(cfg.output_dir)
    check_output_dir(out, overwrite)
    target = resolve_device(device)
    check_run_size(cfg, target)  # in seconds, before anything is allocated
    on_cpu = target.type == "cpu"
    run = prepare(cfg)  # bad input fails here, before anything on disk changes
    t = cfg.train

    # broadcast_buffers=False: every process loads the same base, and the routers' load counters are
    # each process's own (summed over processes when logged), not rank 0's copied into the others
    ddp = DistributedDataParallelKwargs(
        find_unused_parameters=run.family.find_unused_parameters, broadcast_buffers=False
    )
    fsdp = take_fsdp_request()  # before accelerate reads it
    # cpu=True on CPUs (no GPU present, or --device cpu), so that torchrun / accelerate launch run
    # data-parallel there (gloo). step_scheduler_with_optimizer=False: accelerate would otherwise step
    # the schedule once per process per step, so 2 processes would warm up and decay twice as fast
    accelerator = Accelerator(
        mixed_precision=t.mixed_precision,
        cpu=on_cpu,
        kwargs_handlers=[ddp],
        step_scheduler_with_optimizer=False,
    )
    main = accelerator.is_main_process
    with claimed(out, overwrite) if main else nullcontext():  # one writer per run folder
        accelerator.wait_for_everyone()
        return _fit(run, accelerator, fsdp, progress, start_time)


def _fit(run: Run, accelerator: Any, fsdp: bool, progress: bool, start_time: float) -> dict:
    """The loop of `train`, in a run folder this process owns (or shares as a non-main process)."""
    from accelerate.utils import gather_object
    from torch.utils.tensorboard import SummaryWriter
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    cfg, t = run.config, run.config.train
    out = Path(cfg.output_dir)
    checkpoint = out / CHECKPOINT
    main = accelerator.is_main_process
    fsdp = fsdp and accelerator.num_processes > 1  # one process has nothing to shard over
    if fsdp:  # sharded before the optimizer sees the parameters
        shard(run.model.to(accelerator.device))

    optimizer = torch.optim.AdamW(param_groups(run), lr=t.lr, weight_decay=t.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, t.warmup_steps, t.steps)
    sampler = ConsumedBatches(
        TaskSampler(
            [len(s) for s in run.train_sets],
            t.batch_size,
            t.sampling,
            t.temperature,
            t.batch_mode,
            seed=t.seed,
            rank=accelerator.process_index,
            world=accelerator.num_processes,
        )
    )
    state = {"step": 0, "best": None, "best_step": None, "history": [], "config": resume_key(cfg)}
    if has_checkpoint(checkpoint):
        state, passed_over = load_checkpoint(
            checkpoint,
            run.model,
            optimizer,
            scheduler,
            sampler,
            resume_key(cfg),
            accelerator.process_index,
            accelerator.num_processes,
        )
        for problem in passed_over:
            accelerator.print(f"{problem}: using the checkpoint kept before it")
        accelerator.print(f"resuming {out} from step {state['step']}")
        if main:  # the log reads as one run: drop what was logged after that step
            trim_log(out / METRICS, state["step"])
    earlier = state.get("wall_time_s", 0.0)  # the segments before this one (older checkpoints: none)

    def wall_time() -> float:
        return earlier + time.time() - start_time

    if main:
        cfg.save(out / RUN_CONFIG)
    if fsdp:
        model = run.model
        optimizer, scheduler = accelerator.prepare(optimizer, scheduler)
    else:
        model, optimizer, scheduler = accelerator.prepare(run.model, optimizer, scheduler)
    # under DDP each process evaluates its share of the dev sets; an FSDP forward is a collective, so
    # there every process runs every example
    share = (0, 1) if fsdp else (accelerator.process_index, accelerator.num_processes)
    pin = accelerator.device.type == "cuda"
    batches = iter(training_batches(tokenised(run), sampler, pad_id(run.tokenizer), t.num_workers, pin))

    # the loop's own logging: metrics.jsonl and TensorBoard, on the main process
    writer = SummaryWriter(str(out / TENSORBOARD), purge_step=state["step"] + 1) if main else None
    log = (out / METRICS).open("a") if main else None

    def emit(record: dict) -> None:
        if log:
            log.write(json.dumps(record) + "\n")
            log.flush()
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    writer.add_scalar(key, value, record["step"])

    def write_checkpoint() -> None:
        """Every process calls it: each one's RNG state is gathered, the main process writes, and no
        process goes on (or exits) before the checkpoint is on disk."""
        rng = gather_object([torch.get_rng_state()])
        state["wall_time_s"] = wall_time()
        unwrapped = accelerator.unwrap_model(model)
        save_checkpoint(checkpoint, unwrapped, optimizer, scheduler, sampler, rng, state, write=main)
        accelerator.wait_for_everyone()

    def run_eval(step: int) -> None:
        for router in token_routers(run):  # count the evaluation's tokens only
            router.reset_stats()
        scores = evaluate_run(run, accelerator.unwrap_model(model), share=share, progress=progress)
        load = evaluation_load(run, accelerator.reduce)
        avg = average(scores)
        emit({"step": step, "eval/average": avg, **{f"eval/{k}": r["score"] for k, r in scores.items()}})
        state["history"].append({"step": step, "average": avg, "tasks": scores})
        if state["best"] is None or avg > state["best"]["average"]:
            state["best_step"] = step
            with full_parameters(run.model):  # FSDP: statistics read whole parameters
                state["best"] = best_summary(run, scores, avg, load)
            save_adapter(run, out / ADAPTER_DIR, write=main)
        if main:
            write_results(out, results(run, state, wall_time(), accelerator.num_processes))
        write_checkpoint()

    def forward_backward(stop_signal: int) -> tuple[Any, torch.Tensor, list[torch.Tensor]]:
        """One optimizer step's micro-batches, back-propagated; returns the last outputs, the summed loss
        and stop request (summed over processes, so that every process stops together) and the micro-
        batches' task ids (read only if the step diverged)."""
        task_ids, loss = [], torch.zeros((), device=accelerator.device)
        for micro in range(t.grad_accum):
            batch = next(batches)
            sampler.consumed()
            task_ids.append(batch["task_ids"])
            batch = {k: v.to(accelerator.device, non_blocking=pin) for k, v in batch.items()}
            with nullcontext() if micro == t.grad_accum - 1 else accelerator.no_sync(model):
                outputs = run.family.train_outputs(model, batch)
                accelerator.backward(outputs.loss / t.grad_accum)
            loss += outputs.loss.detach()
        status = torch.stack([loss, torch.tensor(float(stop_signal), device=loss.device)])
        if accelerator.num_processes > 1:
            status = accelerator.reduce(status, reduction="sum")
        return outputs, status, task_ids

    model.train()
    bar = tqdm(total=t.steps, initial=state["step"], disable=not progress or not main, desc="train")
    with ExitStack() as cleanup:
        stop = cleanup.enter_context(stop_requests())
        cleanup.callback(bar.close)
        if log:
            cleanup.callback(log.close)
            cleanup.callback(writer.close)
        while state["step"] < t.steps:
            outputs, (step_loss, stopping), task_ids = forward_backward(stop["signal"])
            if not torch.isfinite(step_loss):
                tasks = sorted({run.tasks[i].name for i in torch.cat(task_ids).unique().tolist()})
                raise TrainingDiverged(
                    f"training diverged at step {state['step'] + 1} (task {', '.join(tasks)}): the "
                    f"loss is NaN or infinite; nothing of that step was applied, and {kept(out)}; train "
                    "again with a lower train.lr (or train.max_grad_norm) in another output_dir"
                )
            if t.max_grad_norm is not None:  # one bad batch (e.g. an unscaled regression target) must not
                accelerator.clip_grad_norm_(model.parameters(), t.max_grad_norm)  # wreck the run
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state["step"] += 1
            bar.update(1)
            step = state["step"]
            if step % t.log_every == 0:
                loss = float(step_loss) / (t.grad_accum * accelerator.num_processes)  # the global batch's
                aux = {f"aux/{k}": v.detach() for k, v in outputs.get("aux_losses", {}).items()}
                aux = {k: float(accelerator.reduce(v, reduction="mean")) for k, v in aux.items()}
                record = {"step": step, "loss": loss, "lr": scheduler.get_last_lr()[0], **aux}
                emit(record | routing_log(run, accelerator.reduce))
                bar.set_postfix(loss=f"{loss:.3f}")
            if step % t.eval_every == 0 or step == t.steps:
                run_eval(step)
            elif stopping or (t.checkpoint_every and step % t.checkpoint_every == 0):
                write_checkpoint()
            if stopping and step < t.steps:
                raise TrainingInterrupted(
                    f"interrupted at step {step} of {t.steps}; {checkpoint} holds it: run the same command "
                    "again to resume",
                    stop["signal"] or signal.SIGTERM,  # a process stopped because another one was signalled
                )
    return results(run, state, wall_time(), accelerator.num_processes)
