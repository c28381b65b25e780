"""The training recipe, top to bottom: one adapter set for all tasks, trained jointly with accelerate,
evaluated on every task, the best adapter kept by the average task metric (never by a loss with aux
terms). The run (run.py) and its checkpoints (checkpoint.py) live beside it."""

from __future__ import annotations

import dataclasses
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch

from ..data.collate import Features, compact, pad_id
from ..data.loader import training_batches
from ..data.sampling import ConsumedBatches, TaskSampler
from ..files import parse_json, read_utf8, write_text
from ..stats import mean_selected_ranks
from .checkpoint import (
    TrainState,
    has_checkpoint,
    load_checkpoint,
    resume_key,
    save_checkpoint,
    saved_adapter,
)
from .evaluate import average
from .grow import apply_growth, plan_growth
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
        routers = {
            id(p)
            for _, m in run.adapted.adapted_modules()
            for part in m.parts()
            for p in part.router.parameters()
        }
        groups = [
            {"params": [p for p in adapter if id(p) not in routers]},
            {"params": [p for p in adapter if id(p) in routers], "lr": t.router_lr},
        ]
    if run.heads is not None:
        groups.append(
            {"params": [p for p in run.heads.parameters() if p.requires_grad], "lr": t.head_lr or t.lr}
        )
    return groups


def tokenised(run: Run) -> list[list[Features]]:
    """Every training example of every task that trains as the model's features, computed once before
    training (a frozen growth's old tasks do not train)."""
    t = run.config.train
    return [
        [compact(run.family.features(run.tokenizer, i, task, e, t.max_length)) for e in examples]
        for i, (task, examples) in enumerate(zip(run.tasks, run.train_sets, strict=True))
        if i >= run.frozen_tasks
    ]


class Hooks:
    """Where a test or a benchmark observes the loop without patching it: subclass, override what you
    need, and pass instances to `train(hooks=...)`. Each method gets the `Training` (its `state`,
    `model`, `optimizer`, `setup_s`, ...), to read, not to change."""

    def on_batch(self, training: Training, batch: dict[str, torch.Tensor]) -> None:
        """A micro-batch is on the device, before its forward."""

    def on_backward(self, training: Training) -> None:
        """A micro-batch's backward is done."""

    def on_optimizer_step(self, training: Training) -> None:
        """The step's gradients (clipped, where train.max_grad_norm is set) were applied."""


def train(
    cfg: RunConfig,
    overwrite: bool = False,
    progress: bool = True,
    device: str = "auto",
    hooks: Sequence[Hooks] = (),
) -> dict:
    """Train, evaluate every `eval_every` steps and at the end, keep the best adapter; returns results.
    `device`: auto (CUDA when present), cpu, cuda or mps; `hooks`: observers of every step."""
    from accelerate import Accelerator, DistributedDataParallelKwargs

    start_time = time.time()
    cfg = dataclasses.replace(cfg, output_dir=str(Path(cfg.output_dir).resolve()))
    cfg.resolve_paths(Path.cwd())  # the run folder then works from any working directory
    out = Path(cfg.output_dir)
    check_output_dir(out, overwrite)
    growth = plan_growth(cfg) if cfg.init_from else None  # cfg.method becomes the grown adapter's
    target = resolve_device(device)
    check_run_size(cfg, target)  # in seconds, before anything is allocated
    on_cpu = target.type == "cpu"
    # a resumed run builds the allocation its checkpoint was built with (an "auto" one is not recomputed)
    auto = bool(cfg.adapter_config().pending())  # only then is the checkpoint read here as well
    allocated = saved_adapter(out / CHECKPOINT) if auto and not overwrite else None
    run = prepare(cfg, allocated=allocated)  # bad input fails here, before anything on disk changes
    if growth is not None:
        apply_growth(run, growth)
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
        training = Training(run, accelerator, fsdp, start_time, progress, hooks)
        training.setup()
        return training.fit()


class MetricsLog:
    """The loop's log: metrics.jsonl (one JSON record per line) and TensorBoard, on the main process."""

    def __init__(self, out: Path, step: int):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(out / TENSORBOARD), purge_step=step + 1)
        self.file = (out / METRICS).open("a")

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        for key, value in record.items():
            if isinstance(value, (int, float)) and key != "step":
                self.writer.add_scalar(key, value, record["step"])

    def close(self) -> None:
        self.file.close()
        self.writer.close()


class Training:
    """One training run in a run folder this process owns (or shares, as a non-main process of a
    distributed job): `setup()` builds it in named steps, `fit()` is the loop."""

    def __init__(
        self,
        run: Run,
        accelerator: Any,
        fsdp: bool,
        start_time: float,
        progress: bool = True,
        hooks: Sequence[Hooks] = (),
    ):
        self.run, self.config, self.accelerator, self.hooks = run, run.config, accelerator, list(hooks)
        self.out = Path(run.config.output_dir)
        self.main = accelerator.is_main_process
        self.fsdp = fsdp and accelerator.num_processes > 1  # one process has nothing to shard over
        self.start_time, self.progress = start_time, progress
        # a grown run resumes only over the very adapter it grew from (its frozen part is read from there)
        self.key = resume_key(run.config) | ({"grown_from": run.grown_from} if run.grown_from else {})
        self.state = TrainState(config=self.key, adapter=run.adapted.adapter_config.to_dict())
        self.setup_s: dict[str, float] = {}  # seconds each setup step took
        self.log: MetricsLog | None = None

    # -- setup, step by step ----------------------------------------------------------------------------
    def setup(self) -> None:
        steps = (
            ("model", self._setup_model),
            ("optimizer", self._setup_optimizer),
            ("data", self._setup_data),
            ("resume", self._resume),
            ("accelerator", self._setup_accelerator),
        )
        for name, step in steps:
            begin = time.perf_counter()
            step()
            self.setup_s[name] = time.perf_counter() - begin

    def _setup_model(self) -> None:
        """The run's model; under FSDP sharded now, before the optimizer sees its parameters."""
        self.model = self.run.model
        if self.fsdp:
            shard(self.model.to(self.accelerator.device))

    def _setup_optimizer(self) -> None:
        from transformers import get_linear_schedule_with_warmup

        t = self.config.train
        self.optimizer = torch.optim.AdamW(param_groups(self.run), lr=t.lr, weight_decay=t.weight_decay)
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, t.warmup_steps, t.steps)

    def _setup_data(self) -> None:
        """The task sampler (this process's share of each global batch) over the tasks that train, and
        their training examples' features, tokenised once."""
        t, acc = self.config.train, self.accelerator
        self.sampler = ConsumedBatches(
            TaskSampler(
                [len(s) for s in self.run.train_sets[self.run.frozen_tasks :]],
                t.batch_size,
                t.sampling,
                t.temperature,
                t.batch_mode,
                seed=t.seed,
                rank=acc.process_index,
                world=acc.num_processes,
            )
        )
        self.features = tokenised(self.run)

    def _resume(self) -> None:
        """From the run folder's checkpoint, where there is one: parameters, optimizer, schedule, sampler,
        RNG and the loop's state. Then the run's config is written beside it."""
        acc, checkpoint = self.accelerator, self.out / CHECKPOINT
        if has_checkpoint(checkpoint):
            self.state, passed_over = load_checkpoint(
                checkpoint,
                self.model,
                self.optimizer,
                self.scheduler,
                self.sampler,
                self.key,
                acc.process_index,
                acc.num_processes,
            )
            for problem in passed_over:
                acc.print(f"{problem}: using the checkpoint kept before it")
            acc.print(f"resuming {self.out} from step {self.state.step}")
            self.state.adapter = self.run.adapted.adapter_config.to_dict()  # older checkpoints: none kept
            if self.main:  # the log reads as one run: drop what was logged after that step
                trim_log(self.out / METRICS, self.state.step)
        self.earlier_s = self.state.wall_time_s  # the run's attempts before this one
        if self.main:
            self.config.save(self.out / RUN_CONFIG)

    def _setup_accelerator(self) -> None:
        """accelerate's wrappers (DDP, mixed precision) around the model, optimizer and schedule."""
        acc = self.accelerator
        if self.fsdp:  # sharded already
            self.optimizer, self.scheduler = acc.prepare(self.optimizer, self.scheduler)
        else:
            self.model, self.optimizer, self.scheduler = acc.prepare(
                self.model, self.optimizer, self.scheduler
            )

    # -- the loop -------------------------------------------------------------------------------------
    def fit(self) -> dict:
        """Step until train.steps: log every log_every steps, evaluate (and keep the best adapter) every
        eval_every steps and at the end, checkpoint every checkpoint_every steps; returns results."""
        from tqdm.auto import tqdm

        t, state, run = self.config.train, self.state, self.run
        pin = self.accelerator.device.type == "cuda"
        batches = iter(
            training_batches(self.features, self.sampler, pad_id(run.tokenizer), t.num_workers, pin)
        )
        self.model.train()
        bar = tqdm(
            total=t.steps, initial=state.step, disable=not self.progress or not self.main, desc="train"
        )
        with ExitStack() as cleanup:
            stop = cleanup.enter_context(stop_requests())
            cleanup.callback(bar.close)
            if self.main:
                self.log = MetricsLog(self.out, state.step)
                cleanup.callback(self.log.close)
            while state.step < t.steps:
                outputs, (step_loss, stopping), task_ids = self._forward_backward(
                    batches, stop["signal"], pin
                )
                if not torch.isfinite(step_loss):
                    tasks = sorted({run.tasks[i].name for i in torch.cat(task_ids).unique().tolist()})
                    raise TrainingDiverged(
                        f"training diverged at step {state.step + 1} (task {', '.join(tasks)}): the loss is "
                        f"NaN or infinite; nothing of that step was applied, and {kept(self.out)}; train "
                        "again with a lower train.lr (or train.max_grad_norm) in another output_dir"
                    )
                self._optimizer_step()
                state.step += 1
                bar.update(1)
                step = state.step
                if step % t.log_every == 0:
                    loss = self._log_step(outputs, step_loss)
                    bar.set_postfix(loss=f"{loss:.3f}")
                if step % t.eval_every == 0 or step == t.steps:
                    self._evaluate()
                elif stopping or (t.checkpoint_every and step % t.checkpoint_every == 0):
                    self._checkpoint()
                if stopping and step < t.steps:
                    raise TrainingInterrupted(
                        f"interrupted at step {step} of {t.steps}; {self.out / CHECKPOINT} holds it: run "
                        "the same command again to resume",
                        stop["signal"] or signal.SIGTERM,  # a process stopped because another was signalled
                    )
        return self._results()

    def _forward_backward(
        self, batches: Iterator[dict], stop_signal: int, pin: bool
    ) -> tuple[Any, torch.Tensor, list[torch.Tensor]]:
        """One optimizer step's micro-batches, back-propagated; returns the last outputs, the summed loss
        and stop request (summed over processes, so that every process stops together) and the micro-
        batches' task ids (read only if the step diverged)."""
        t, acc = self.config.train, self.accelerator
        task_ids, loss = [], torch.zeros((), device=acc.device)
        for micro in range(t.grad_accum):
            batch = next(batches)
            self.sampler.consumed()
            task_ids.append(batch["task_ids"])
            batch = {k: v.to(acc.device, non_blocking=pin) for k, v in batch.items()}
            for hook in self.hooks:
                hook.on_batch(self, batch)
            with nullcontext() if micro == t.grad_accum - 1 else acc.no_sync(self.model):
                outputs = self.run.family.train_outputs(self.model, batch)
                acc.backward(outputs.loss / t.grad_accum)
            for hook in self.hooks:
                hook.on_backward(self)
            loss += outputs.loss.detach()
        status = torch.stack([loss, torch.tensor(float(stop_signal), device=loss.device)])
        if acc.num_processes > 1:
            status = acc.reduce(status, reduction="sum")
        return outputs, status, task_ids

    def _optimizer_step(self) -> None:
        t = self.config.train
        if (
            t.max_grad_norm is not None
        ):  # one bad batch (an unscaled regression target) must not wreck the run
            self.accelerator.clip_grad_norm_(self.model.parameters(), t.max_grad_norm)
        self.optimizer.step()
        for hook in self.hooks:
            hook.on_optimizer_step(self)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _log_step(self, outputs: Any, step_loss: torch.Tensor) -> float:
        """Log the step's loss (the global batch's), aux losses and routing; returns the loss."""
        t, acc = self.config.train, self.accelerator
        loss = float(step_loss) / (t.grad_accum * acc.num_processes)
        aux = {f"aux/{k}": v.detach() for k, v in outputs.get("aux_losses", {}).items()}
        aux = {k: float(acc.reduce(v, reduction="mean")) for k, v in aux.items()}
        record = {"step": self.state.step, "loss": loss, "lr": self.scheduler.get_last_lr()[0], **aux}
        self._emit(record | routing_log(self.run, acc.reduce))
        return loss

    def _emit(self, record: dict) -> None:
        if self.log:
            self.log.write(record)

    def _evaluate(self) -> None:
        """Score every task's dev set; a new best is kept as the run's adapter; then results and a
        checkpoint are written. Under DDP each process scores its share of the dev sets; an FSDP forward
        is a collective, so there every process runs every example."""
        run, acc, state = self.run, self.accelerator, self.state
        for router in token_routers(run):  # count the evaluation's tokens only
            router.reset_stats()
        share = (0, 1) if self.fsdp else (acc.process_index, acc.num_processes)
        scores = evaluate_run(run, acc.unwrap_model(self.model), share=share, progress=self.progress)
        load = evaluation_load(run, acc.reduce)
        avg = average(scores)
        self._emit(
            {"step": state.step, "eval/average": avg, **{f"eval/{k}": r["score"] for k, r in scores.items()}}
        )
        state.history.append({"step": state.step, "average": avg, "tasks": scores})
        if state.best is None or avg > state.best["average"]:
            state.best_step = state.step
            with full_parameters(run.model):  # FSDP: statistics read whole parameters
                state.best = best_summary(run, scores, avg, load)
            save_adapter(run, self.out / ADAPTER_DIR, write=self.main)
        if self.main:
            write_results(self.out, self._results())
        self._checkpoint()

    def _checkpoint(self) -> None:
        """Every process calls it: each one's RNG state is gathered, the main process writes, and no
        process goes on (or exits) before the checkpoint is on disk."""
        from accelerate.utils import gather_object

        acc = self.accelerator
        rng = gather_object([torch.get_rng_state()])
        self.state.wall_time_s = self.wall_time()
        model = acc.unwrap_model(self.model)
        args = (self.optimizer, self.scheduler, self.sampler, rng, self.state)
        save_checkpoint(self.out / CHECKPOINT, model, *args, write=self.main)
        acc.wait_for_everyone()

    def wall_time(self) -> float:
        """Seconds, over every attempt of this run."""
        return self.earlier_s + time.time() - self.start_time

    def _results(self) -> dict:
        return results(self.run, self.state, self.wall_time(), self.accelerator.num_processes)
