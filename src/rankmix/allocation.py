"""Per-layer profiles: "2468" (one digit per layer group), "2,4,6,8,16", or one integer per layer."""

from __future__ import annotations

import re
from collections.abc import Sequence

Profile = int | str | Sequence[int]
_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|layer|blocks|block|h)\.(\d+)(?:\.|$)")


def layer_index(module_name: str) -> int | None:
    """The block number in a module name (`layers.12.`, `layer.3.`, `block.5.`, `h.7.`), if any."""
    match = _LAYER_INDEX.search(module_name)
    return int(match.group(1)) if match else None


def parse_profile(profile: Profile, what: str) -> list[int]:
    """Turn a profile into its list of positive integers (per group for strings, per layer for lists)."""
    if isinstance(profile, bool):
        raise ValueError(
            f"{what}: expected a profile like '2468', '2,4,6,8' or a list of ints, got {profile!r}"
        )
    if isinstance(profile, int):
        values = [profile]
    elif isinstance(profile, str):
        text = profile.strip()
        parts = text.split(",") if "," in text else list(text)
        try:
            values = [int(p) for p in parts]
        except ValueError:
            raise ValueError(
                f"{what}: cannot read profile {profile!r}; write one digit per layer group ('2468') "
                "or comma-separated integers ('2,4,6,8,16')"
            ) from None
    elif isinstance(profile, Sequence):
        values = list(profile)
        if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise ValueError(f"{what}: a list profile needs one integer per layer, got {profile!r}")
    else:
        raise ValueError(
            f"{what}: expected a profile like '2468', '2,4,6,8' or a list of ints, got {profile!r}"
        )
    if not values:
        raise ValueError(f"{what}: the profile is empty; give at least one value, e.g. '8'")
    if any(v <= 0 for v in values):
        raise ValueError(f"{what}: every value must be a positive integer, got {values} from {profile!r}")
    return values


def group_sizes(n_layers: int, n_groups: int) -> list[int]:
    """Split n_layers into n_groups contiguous groups as evenly as possible; earlier groups take the extra."""
    base, extra = divmod(n_layers, n_groups)
    return [base + (1 if g < extra else 0) for g in range(n_groups)]


def per_layer(profile: Profile, n_layers: int, what: str) -> list[int]:
    """One value per layer: a string or int profile spreads over layer groups; a list gives every layer."""
    values = parse_profile(profile, what)
    if not isinstance(profile, (str, int)):
        if len(values) != n_layers:
            raise ValueError(
                f"{what}: a list profile needs one value per layer; the model has {n_layers} layers "
                f"but the list has {len(values)}. Pass {n_layers} integers, or a group string like '2468'"
            )
        return values
    if len(values) > n_layers:
        raise ValueError(
            f"{what}: profile {profile!r} has {len(values)} groups but the model has only {n_layers} layers; "
            f"use at most {n_layers} groups"
        )
    out: list[int] = []
    for value, size in zip(values, group_sizes(n_layers, len(values)), strict=True):
        out.extend([value] * size)
    return out
