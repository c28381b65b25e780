"""Training checkpoints: trainable parameters, optimizer, scheduler, sampler and RNG state, and the loop's
state (step, best result, history), written atomically; a resumed run must share the configuration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..files import atomic_write
from .run_config import RunConfig


def _trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def resume_key(cfg: RunConfig) -> dict[str, Any]:
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


def save_checkpoint(path: Path, model: nn.Module, optimizer, scheduler, sampler, state: dict) -> None:
    checkpoint = {
        "params": {n: p.detach().cpu() for n, p in _trainable(model).items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "sampler": sampler.state_dict(),
        "rng": torch.get_rng_state(),
        "state": state,
    }
    atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))


def load_checkpoint(
    path: Path, model: nn.Module, optimizer, scheduler, sampler, key: dict[str, Any]
) -> dict[str, Any]:
    """Restore a run's training state; a checkpoint of another configuration is refused, untouched."""
    try:
        # weights_only: tensors and plain containers only, so a planted pickle cannot run code here
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        reason = str(e).splitlines()[0]
        raise ValueError(
            f"checkpoint {path} is unreadable ({reason}); pass --overwrite to train afresh"
        ) from None
    saved = ckpt["state"].get("config", {})
    differ = [
        f"{k}: {saved.get(k)!r} there, {key.get(k)!r} here"
        for k in sorted(set(saved) | set(key))
        if saved.get(k) != key.get(k)
    ]
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
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(ckpt["params"][n])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    sampler.load_state_dict(ckpt["sampler"])
    torch.set_rng_state(ckpt["rng"])
    return ckpt["state"]
