"""Plots: valid, non-trivial PNGs written atomically, deterministic, encoding the data; clear errors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.image import imread

from rankmix.plots import (
    _module_order,
    _short_labels,
    plot_allocation,
    plot_expert_load,
    plot_selected_ranks,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MODULES = [f"model.layers.{i}.self_attn.{p}" for i in range(4) for p in ("q_proj", "v_proj")]


def selected(shift: int = 0) -> dict[str, dict[str, int]]:
    return {t: {m: (3 * i + j + shift) % 9 for i, m in enumerate(MODULES)} for j, t in enumerate("abc")}


def expert_load() -> dict[str, dict]:
    load = {}
    for k, m in enumerate(MODULES):
        n = 2 + k // 2  # heterogeneous number of experts per module
        share = np.arange(1, n + 1, dtype=float)
        load[m] = {"share": (share / share.sum()).tolist(), "experts_per_token": 1.5}
    return load


def allocation() -> dict[str, list[int]]:
    return {m: [2 * (1 + i // 2)] * (2 + i // 2) for i, m in enumerate(MODULES)}


CASES = [
    pytest.param(plot_selected_ranks, selected, id="selected_ranks"),
    pytest.param(plot_expert_load, expert_load, id="expert_load"),
    pytest.param(plot_allocation, allocation, id="allocation"),
]


def assert_real_png(path: Path) -> np.ndarray:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = imread(path)
    assert image.shape[0] >= 100 and image.shape[1] >= 100
    rgba = np.ascontiguousarray((image * 255).round().astype(np.uint8)).view(np.uint32)
    assert len(np.unique(rgba)) > 10, "image has (nearly) a single colour"
    assert (rgba != rgba.flat[0]).mean() > 0.05, "image is almost all background"
    return image


@pytest.mark.parametrize(("plot", "data"), CASES)
def test_writes_valid_png_in_new_folder(plot, data, tmp_path):
    target = tmp_path / "new" / "sub" / "figure.png"
    result = plot(data(), target)
    assert Path(result) == target
    assert_real_png(target)
    assert os.listdir(target.parent) == ["figure.png"]


@pytest.mark.parametrize(("plot", "data"), CASES)
def test_replaces_existing_file_without_leftovers(plot, data, tmp_path):
    target = tmp_path / "figure.png"
    target.write_bytes(b"old contents")
    plot(data(), str(target))  # str paths work too
    assert_real_png(target)
    assert os.listdir(tmp_path) == ["figure.png"]


@pytest.mark.parametrize(("plot", "data"), CASES)
def test_failed_write_keeps_old_file_and_cleans_up(plot, data, tmp_path, monkeypatch):
    target = tmp_path / "figure.png"
    target.write_bytes(b"old contents")

    def broken_savefig(self, f, **kwargs):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(OSError, match="disk full"):
        plot(data(), target)
    assert target.read_bytes() == b"old contents"
    assert os.listdir(tmp_path) == ["figure.png"]


@pytest.mark.parametrize(("plot", "data"), CASES)
def test_same_input_same_bytes(plot, data, tmp_path):
    a = plot(data(), tmp_path / "a.png")
    b = plot(data(), tmp_path / "b.png")
    assert a.read_bytes() == b.read_bytes()


def test_selected_ranks_image_depends_on_ranks(tmp_path):
    a = assert_real_png(plot_selected_ranks(selected(0), tmp_path / "a.png"))
    b = assert_real_png(plot_selected_ranks(selected(1), tmp_path / "b.png"))
    assert a.shape == b.shape  # same layout, so a difference comes from the cells
    assert not np.array_equal(a, b)


def test_expert_load_image_depends_on_shares(tmp_path):
    load = expert_load()
    a = assert_real_png(plot_expert_load(load, tmp_path / "a.png"))
    first = MODULES[0]
    load[first] = {"share": load[first]["share"][::-1], "experts_per_token": 1.5}
    b = assert_real_png(plot_expert_load(load, tmp_path / "b.png"))
    assert a.shape == b.shape
    assert not np.array_equal(a, b)


def test_allocation_image_depends_on_ranks(tmp_path):
    alloc = allocation()
    a = assert_real_png(plot_allocation(alloc, tmp_path / "a.png"))
    alloc[MODULES[0]] = [5, 5]
    b = assert_real_png(plot_allocation(alloc, tmp_path / "b.png"))
    assert not np.array_equal(a, b)


def test_large_model_renders_bounded(tmp_path):
    """30 layers x 7 modules x 5 tasks: too many cells to annotate, figure size stays bounded."""
    parts = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    names = [f"model.layers.{i}.mlp.{p}" for i in range(30) for p in parts]
    ranks = {f"t{j}": {n: (i + j) % 9 for i, n in enumerate(names)} for j in range(5)}
    image = assert_real_png(plot_selected_ranks(ranks, tmp_path / "big.png"))
    assert image.shape[1] <= 100 * 32


@pytest.mark.parametrize(
    ("plot", "bad", "match"),
    [
        (plot_selected_ranks, {}, "no tasks"),
        (plot_selected_ranks, {"rte": {}}, "no modules"),
        (plot_expert_load, {}, "no modules"),
        (plot_expert_load, {"model.layers.0.q": {"experts_per_token": 1.0}}, "'share'"),
        (plot_allocation, {}, "no modules"),
        (plot_allocation, {"lm_head": [4, 4]}, "layer index"),
        (plot_allocation, {"model.layers.0.q": []}, "empty"),
    ],
)
def test_empty_input_raises(plot, bad, match, tmp_path):
    with pytest.raises(ValueError, match=f"nothing to plot: .*{match}"):
        plot(bad, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_modules_ordered_by_layer_number_then_name():
    names = ["m.layers.10.q", "m.layers.2.v", "lm_head", "m.layers.2.q", "m.layers.1.q"]
    assert _module_order(names) == [
        "m.layers.1.q",
        "m.layers.2.q",
        "m.layers.2.v",
        "m.layers.10.q",
        "lm_head",
    ]


def test_short_labels_compact_and_unique():
    bert = ["bert.encoder.layer.2.attention.self.query", "bert.encoder.layer.2.attention.self.value"]
    assert _short_labels(bert) == ["2.query", "2.value"]
    t5 = [
        "encoder.block.1.layer.0.SelfAttention.q",
        "decoder.block.1.layer.0.SelfAttention.q",
        "decoder.block.1.layer.1.EncDecAttention.q",
        "decoder.block.0.layer.0.SelfAttention.k",
    ]
    labels = _short_labels(t5)
    assert len(set(labels)) == len(labels)
    assert labels[3] == "0.k"
    assert labels[0].startswith("encoder") and labels[2].endswith("EncDecAttention.q")
    # self vs cross attention in one decoder block: the label keeps the block number
    cross = ["decoder.block.0.layer.0.SelfAttention.q", "decoder.block.0.layer.1.EncDecAttention.q"]
    assert _short_labels(cross) == ["0.layer.0.SelfAttention.q", "0.layer.1.EncDecAttention.q"]
