"""Training checkpoints: trainable parameters, optimizer, scheduler, sampler and RNG state, and the loop's
state (step, best result, history), written atomically; a resumed run must share the configuration. The
checkpoint before the latest is kept beside it, so a damaged latest one falls back to it."""

from __future__ import annotations

import dataclasses
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..files import atomic_write
from .run_config import RunConfig
from .sharding import full_tensor, is_sharded, load_full, load_optimizer_state, optimizer_state


def _trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


# The options a resumed run must share with the run that wrote its checkpoint: what the training so far
# depended on. Opt in: an option added later (or one that only says how long, how often or where to
# write) never stops an older checkpoint from resuming.
RESUME_KEYS = (
    "model",
    "model_quantization",
    "init_from",
    "grow",
    "tasks",
    "method",
    "data_dir",
    "custom_tasks",
    "strict",
    "eval_mode",
    "train.batch_size",
    "train.lr",
    "train.head_lr",
    "train.router_lr",
    "train.weight_decay",
    "train.max_grad_norm",
    "train.warmup_steps",
    "train.grad_accum",
    "train.mixed_precision",
    "train.seed",
    "train.data_seed",
    "train.sampling",
    "train.temperature",
    "train.batch_mode",
    "train.max_length",
    "train.max_train_examples",
    "train.max_eval_examples",
)


# Options added to RESUME_KEYS after checkpoints were written without them, with the value they had then
ADDED_KEYS = {"model_quantization": "none", "init_from": None, "grow": "joint"}


def resume_key(cfg: RunConfig) -> dict[str, Any]:
    """The values of RESUME_KEYS in `cfg`."""
    data = cfg.to_dict()
    return {k: data["train"][k[6:]] if k.startswith("train.") else data[k] for k in RESUME_KEYS}


@dataclass
class TrainState:
    """The loop's own state, saved in every checkpoint (as a plain dict: checkpoints load weights-only)."""

    config: dict[str, Any]  # resume_key of the run: what a resumed run must share
    step: int = 0  # optimizer steps taken
    best: dict[str, Any] | None = None  # the best evaluation so far (run.best_summary)
    best_step: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # every evaluation: step, average, tasks
    wall_time_s: float = 0.0  # the run's wall time up to the checkpoint, summed over its attempts
    adapter: dict[str, Any] | None = None  # the adapter config as built: an "auto" allocation, resolved

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> TrainState:
        """A checkpoint's state; older checkpoints lack later fields (wall_time_s) and keep the default."""
        return cls(**{f.name: saved[f.name] for f in dataclasses.fields(cls) if f.name in saved})


def previous(path: Path) -> Path:
    """Where the checkpoint before the latest is kept."""
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def has_checkpoint(path: Path) -> bool:
    return path.is_file() or previous(path).is_file()


def save_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer,
    scheduler,
    sampler,
    rng: list[torch.Tensor],
    state: TrainState,
    write: bool = True,
) -> None:
    """Write the training state; `rng` holds every process's RNG state, by rank (dropout differs). Under
    FSDP every process calls it (the shards are gathered) and the one told to `write` writes."""
    checkpoint = {
        "params": {n: full_tensor(p).detach().cpu() for n, p in _trainable(model).items()},
        "optimizer": optimizer_state(optimizer),
        "sharded": is_sharded(model),
        "scheduler": scheduler.state_dict(),
        "sampler": sampler.state_dict(),  # the same on every process: they slice one global batch
        "rng": rng,
        "state": dataclasses.asdict(state),
    }
    if not write:
        return
    if path.is_file():  # a crash from here on leaves the previous checkpoint to resume from
        os.replace(path, previous(path))
    atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))


def _read(path: Path) -> dict[str, Any]:
    """A checkpoint's contents; ValueError when it is damaged or holds anything but tensors and plain data."""
    try:
        # weights_only: tensors and plain containers only, so a planted pickle cannot run code here
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's own message suggests weights_only=False: never for this file
        raise ValueError(
            f"checkpoint {path} is unreadable: it holds objects other than tensors and plain data, so "
            "rankmix did not write it (or it is damaged), and rankmix will not unpickle it"
        ) from None
    except Exception as e:
        why = str(e).splitlines()[0]
        raise ValueError(f"checkpoint {path} is unreadable (damaged or truncated: {why})") from None
    if not isinstance(ckpt, dict) or not {"params", "state", "optimizer"} <= set(ckpt):
        raise ValueError(f"checkpoint {path} is not a rankmix checkpoint")
    return ckpt


def saved_adapter(path: Path) -> dict[str, Any] | None:
    """The adapter config a run's checkpoint was built with (its resolved "auto" allocation), from the
    latest readable checkpoint; None where there is none or it predates the record."""
    for candidate in (path, previous(path)):
        if candidate.is_file():
            try:
                return _read(candidate)["state"].get("adapter")
            except ValueError:
                continue  # damaged: load_checkpoint says so, and falls back the same way
    return None


def load_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer,
    scheduler,
    sampler,
    key: dict[str, Any],
    rank: int = 0,
    world: int = 1,
) -> tuple[TrainState, list[str]]:
    """Restore a run's training state from the latest readable checkpoint (the latest, or the one kept
    before it); returns the loop's state and why a damaged latest one was passed over. A checkpoint of
    another configuration is refused, untouched."""
    problems = []
    for candidate in (path, previous(path)):
        if not candidate.is_file():
            continue
        try:
            ckpt = _read(candidate)
            break
        except ValueError as e:
            problems.append(str(e))
    else:
        raise ValueError(f"{'; '.join(problems)}; pass --overwrite to train afresh")
    saved = ckpt["state"].get("config", {})  # may hold more options (older checkpoints held every option)
    saved = {k: saved.get(k, ADDED_KEYS.get(k)) for k in key}
    differ = [f"{k}: {saved[k]!r} there, {v!r} here" for k, v in sorted(key.items()) if saved[k] != v]
    rng = ckpt["rng"] if isinstance(ckpt["rng"], list) else [ckpt["rng"]]  # one process, before 0.2
    if len(rng) != world:
        differ.append(f"processes: {len(rng)} there, {world} here (each process slices the global batch)")
    if ckpt.get("sharded", False) != is_sharded(model):
        differ.append(f"FSDP: {ckpt.get('sharded', False)} there, {is_sharded(model)} here")
    params = _trainable(model)
    if not differ and (
        set(ckpt["params"]) != set(params)
        or any(ckpt["params"][n].shape != p.shape for n, p in params.items())
    ):
        differ = ["parameter shapes"]
    if differ:
        raise ValueError(
            f"{path} belongs to a run with another configuration (the checkpoint's value, then this "
            f"recipe's: {'; '.join(differ)}); pass --set to match the checkpoint, --overwrite to start "
            "afresh, or choose another output_dir"
        )
    for n, p in params.items():
        load_full(p, ckpt["params"][n])
    load_optimizer_state(optimizer, ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    sampler.load_state_dict(ckpt["sampler"])
    torch.set_rng_state(rng[rank])
    return TrainState.from_dict(ckpt["state"]), problems
