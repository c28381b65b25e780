"""The size check a recipe runs before it loads or builds anything: a run that cannot fit in memory fails
in seconds, with a hint, instead of in an allocation error or the kernel's OOM killer minutes later."""

from __future__ import annotations

import os

import torch

from ..allocators import resolve
from ..sizing import SizeEstimate, available_memory, check_size, estimate_size
from .loading import model_skeleton
from .run_config import RunConfig


def check_run_size(cfg: RunConfig, device: torch.device) -> SizeEstimate:
    """Estimate what training `cfg` on `device` needs (from the model's configuration, no weights read);
    raise ValueError, naming the largest part and the fix, where that exceeds what the process can use
    there ($RANKMIX_MEMORY_LIMIT overrides it); else return the estimate."""
    if device.type == "cuda" and device.index is None:  # each process of a launch sizes its own GPU
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    t = cfg.train
    mixed = t.mixed_precision != "no"
    skeleton = model_skeleton(cfg.model)
    # an "auto" allocation is sized as spread evenly over the layers, at its budget (which this refuses
    # before any weight is read where it cannot be met)
    config = resolve(skeleton, cfg.adapter_config(), scores="uniform")
    estimate = estimate_size(skeleton, config, t.batch_size, t.max_length, mixed)
    check_size(estimate, available_memory(device))
    return estimate
