"""PNG plots a person can open: MoRE rank selection per task and module, token-routing expert load per
module, and HiLo/MoLA allocation profiles (experts and rank per layer).

Figures are built with `matplotlib.figure.Figure` (no pyplot, no GUI backend) and written atomically
(temp file in the target folder, then `os.replace`), so a crashed run never leaves half a PNG behind and
a reader polling the file never sees a partial one. PNG metadata carries no software/date stamp, so the
same input gives the same bytes.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import Colormap
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .allocation import layer_index
from .files import atomic_write

__all__ = ["plot_allocation", "plot_expert_load", "plot_selected_ranks"]

_ANNOTATE_MAX_CELLS = 400
_MAX_WIDTH_IN = 30.0
_MAX_HEIGHT_IN = 30.0


def _module_order(names: Iterable[str]) -> list[str]:
    """Modules by layer, then name; names without a layer index (heads, poolers) go last."""
    return sorted(set(names), key=lambda n: (layer_index(n) is None, layer_index(n) or 0, n))


def _short_labels(names: Sequence[str]) -> list[str]:
    """Compact labels like "3.q_proj" (layer + last name part); where two modules would share a label
    (T5 encoder and decoder, self and cross attention) they get their full name minus the prefix they
    share, still starting at the layer number at the latest."""
    short = []
    for name in names:
        idx = layer_index(name)
        last = name.rsplit(".", 1)[-1]
        short.append(last if idx is None else f"{idx}.{last}")
    groups: dict[str, list[int]] = defaultdict(list)
    for i, label in enumerate(short):
        groups[label].append(i)
    for members in groups.values():
        if len(members) > 1:
            parts = [names[i].split(".") for i in members]
            shared = next(
                (k for k, column in enumerate(zip(*parts, strict=False)) if len(set(column)) > 1), 0
            )
            for i, p in zip(members, parts, strict=True):
                # keep the layer number in the label: never cut past the part that holds it
                at = next((k for k in range(len(p)) if layer_index(".".join(p[: k + 1])) is not None), len(p))
                short[i] = ".".join(p[min(shared, at) :])
    return short


def _cmap(name: str) -> Colormap:
    """A copy of colormap `name` that draws NaN (missing cells) as blank."""
    from matplotlib import colormaps

    return colormaps[name].with_extremes(bad=(1.0, 1.0, 1.0, 0.0))


def _heatmap(
    fig: Figure,
    ax: Axes,
    data: np.ndarray,
    rows: Sequence[str],
    cols: Sequence[str],
    *,
    cmap: str,
    vmin: float,
    vmax: float,
    colorbar_label: str,
    fmt: str,
    integer: bool = False,
) -> None:
    """Draw `data` (NaN = blank) with labelled axes, a colorbar and, for small grids, the values in cells."""
    image = ax.imshow(
        np.ma.masked_invalid(data),
        cmap=_cmap(cmap),
        vmin=vmin,
        vmax=vmax,
        aspect="auto",
        interpolation="nearest",
    )
    fontsize = 9 if len(cols) <= 40 else max(4, int(9 * 40 / len(cols)))
    ax.set_xticks(range(len(cols)), labels=list(cols), rotation=90, fontsize=fontsize)
    ax.set_yticks(range(len(rows)), labels=list(rows), fontsize=9 if len(rows) <= 40 else 5)
    bar = fig.colorbar(image, ax=ax, label=colorbar_label, fraction=0.04, pad=0.02)
    if integer:
        bar.locator = MaxNLocator(integer=True)
        bar.update_ticks()
    if data.size <= _ANNOTATE_MAX_CELLS:
        span = (vmax - vmin) or 1.0
        for (r, c), value in np.ndenumerate(data):
            if math.isnan(value):
                continue
            dark = (value - vmin) / span < 0.6  # viridis is dark at the low end: white text there
            ax.text(
                c,
                r,
                format(value, fmt),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if dark else "black",
            )


def _grid_size(n_rows: int, n_cols: int) -> tuple[float, float]:
    """Figure inches that keep cells readable for small grids and stay bounded for big ones."""
    width = min(_MAX_WIDTH_IN, max(6.0, 0.38 * n_cols + 3.0))
    height = min(_MAX_HEIGHT_IN, max(3.0, 0.35 * n_rows + 2.2))
    return width, height


def save_png(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Write `fig` as a PNG at `path`, atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            fig.savefig(f, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})

    return atomic_write(path, write)


def plot_selected_ranks(selected: dict[str, dict[str, int]], path: str | os.PathLike[str]) -> Path:
    """Heatmap of the MoRE rank each task selected in each module (rows: tasks, columns: modules by
    layer), so one can see at a glance which tasks need capacity where. Missing entries are blank."""
    if not selected:
        raise ValueError("nothing to plot: `selected` has no tasks (expected {task: {module: rank}})")
    modules = _module_order(m for ranks in selected.values() for m in ranks)
    if not modules:
        raise ValueError(f"nothing to plot: no modules in `selected` for tasks {sorted(selected)}")
    tasks = list(selected)
    data = np.full((len(tasks), len(modules)), np.nan)
    col = {m: j for j, m in enumerate(modules)}
    for i, task in enumerate(tasks):
        for module, rank in selected[task].items():
            data[i, col[module]] = float(rank)
    fig = Figure(figsize=_grid_size(len(tasks), len(modules)))
    ax = fig.add_subplot()
    _heatmap(
        fig,
        ax,
        data,
        tasks,
        _short_labels(modules),
        cmap="viridis",
        vmin=min(0.0, float(np.nanmin(data))),
        vmax=max(1.0, float(np.nanmax(data))),
        colorbar_label="rank",
        fmt=".0f",
        integer=True,
    )
    ax.set_xlabel("module (layer.name)")
    ax.set_ylabel("task")
    ax.set_title("Selected rank per task and module")
    return save_png(fig, path)


def plot_expert_load(expert_load: dict[str, dict], path: str | os.PathLike[str]) -> Path:
    """Heatmap of the share of routed tokens each expert received, one row per module (modules with fewer
    experts are padded blank), to spot collapsed routers or dead experts. Row labels give the mean number
    of experts per token."""
    if not expert_load:
        raise ValueError(
            "nothing to plot: `expert_load` has no modules "
            "(expected {module: {'share': [...], 'experts_per_token': float}})"
        )
    modules = _module_order(expert_load)
    shares = []
    for module in modules:
        stats = expert_load[module]
        if not isinstance(stats, dict) or "share" not in stats or not len(stats["share"]):
            raise ValueError(f"nothing to plot: module {module!r} in `expert_load` has no 'share' list")
        shares.append([float(s) for s in stats["share"]])
    n_experts = max(len(s) for s in shares)
    data = np.full((len(modules), n_experts), np.nan)
    for i, share in enumerate(shares):
        data[i, : len(share)] = share
    labels = []
    for module, short in zip(modules, _short_labels(modules), strict=True):
        per_token = expert_load[module].get("experts_per_token")
        labels.append(short if per_token is None else f"{short} ({float(per_token):.2f}/tok)")
    fig = Figure(figsize=_grid_size(len(modules), n_experts))
    ax = fig.add_subplot()
    _heatmap(
        fig,
        ax,
        data,
        labels,
        [str(e) for e in range(n_experts)],
        cmap="viridis",
        vmin=0.0,
        vmax=max(float(np.nanmax(data)), 1e-9),
        colorbar_label="share of routed tokens",
        fmt=".2f",
    )
    ax.set_xlabel("expert")
    ax.set_ylabel("module (experts per token)")
    ax.set_title("Expert load per module")
    return save_png(fig, path)


def plot_allocation(allocation: dict[str, list[int]], path: str | os.PathLike[str]) -> Path:
    """Two bar panels over layer index: number of experts and mean expert rank per layer (each a mean over
    the layer's modules), to check that a profile like "2468" landed where intended."""
    if not allocation:
        raise ValueError("nothing to plot: `allocation` has no modules (expected {module: [rank, ...]})")
    by_layer: dict[int, list[list[int]]] = defaultdict(list)
    unplaced = []
    for module, ranks in allocation.items():
        idx = layer_index(module)
        if idx is None:
            unplaced.append(module)
        elif len(ranks):
            by_layer[idx].append([int(r) for r in ranks])
    if not by_layer:
        reason = (
            f"no module name has a layer index (e.g. {unplaced[0]!r})"
            if unplaced
            else "every module has an empty list of experts"
        )
        raise ValueError(f"nothing to plot: {reason} in `allocation`")
    layers = sorted(by_layer)
    experts = [float(np.mean([len(r) for r in by_layer[i]])) for i in layers]
    ranks = [float(np.mean([np.mean(r) for r in by_layer[i]])) for i in layers]

    fig = Figure(figsize=(min(_MAX_WIDTH_IN, max(6.0, 0.3 * len(layers) + 3.0)), 6.0))
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.bar(layers, experts, color="tab:blue")
    top.set_ylabel("experts per module")
    bottom.bar(layers, ranks, color="tab:orange")
    bottom.set_ylabel("mean expert rank")
    bottom.set_xlabel("layer")
    step = max(1, math.ceil(len(layers) / 30))
    bottom.set_xticks(layers[::step])
    for ax in (top, bottom):
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    fig.suptitle("Allocation profile")
    if unplaced:
        fig.text(
            0.01,
            0.005,
            f"{len(unplaced)} module(s) without a layer index not shown, e.g. {unplaced[0]}",
            fontsize=7,
        )
    return save_png(fig, path)
