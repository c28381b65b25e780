"""How long an automatic allocation takes, and what it allocates (issue 23): HiLo with experts and ranks
"auto", at the trainable budget of HiLo "2468"/"2468" on the same model, by each allocator, on the
GLUE-CPU recipe (MiniLM-L6) and the commonsense-CPU recipe (SmolLM2-135M). The time is `resolve` alone
(spectral: the spectra and the budget solver; probe: its first pass of training on the recipe's data,
batches tokenised as drawn, then the solver), after the model and the data are loaded.

    python benchmarks/allocation_time.py --data-dir ../shared/data

Writes benchmarks/results/allocation_time.json and its table in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

from accuracy import provenance
from rankmix.allocators import resolve
from rankmix.files import write_json, write_text
from rankmix.recipes.loading import load_model
from rankmix.recipes.run import load_data, probe_pass, resolve_tasks
from rankmix.recipes.run_config import load_run_config
from rankmix.sizing import parameter_counts
from render import MARKDOWN, replace_section

ROOT = Path(__file__).resolve().parent
SECTION = "allocation-time"
PLOTS = ROOT / "results" / "allocation" / "plots"
RECIPES = {"minilm": "configs/glue-minilm-hilo.yaml", "smollm2": "configs/commonsense-smollm2-hilo.yaml"}
ALLOCATORS = ("spectral", "probe")


def measure(recipe: str, data_dir: str) -> dict:
    cfg = load_run_config(ROOT.parent / recipe, [f"data_dir={data_dir}"])
    tasks = resolve_tasks(cfg)
    train_sets = load_data(cfg, tasks, ("train",))["train"]
    base, tokenizer, family = load_model(cfg.model, cfg.model_quantization)
    hand = cfg.adapter_config()  # the recipe's "2468"/"2468"
    budget = parameter_counts(base, hand)["trainable"]
    auto = dataclasses.replace(hand, experts="auto", ranks="auto", budget=budget)
    record = {"recipe": recipe, "budget": budget, "allocators": {}}
    for allocator in ALLOCATORS:
        config = dataclasses.replace(auto, allocator=allocator)
        begin = time.perf_counter()
        probe = probe_pass(cfg, tasks, train_sets, tokenizer, family) if config.probing else None
        resolved = resolve(base, config, probe=probe)
        seconds = time.perf_counter() - begin
        trainable = parameter_counts(base, resolved)["trainable"]
        record["allocators"][allocator] = {
            "seconds": seconds,
            "experts": resolved.experts,
            "ranks": resolved.ranks,
            "trainable": trainable,
            "of_budget": trainable / budget,
        }
        print(f"{recipe} {allocator}: {seconds:.1f} s, experts {resolved.experts}, ranks {resolved.ranks}")
    return record


def plot(results: dict, folder: Path) -> list[Path]:
    """Per model, the experts and the rank of every layer, by hand ("2468"/"2468") and by each allocator,
    side by side; PNGs in `folder`."""
    import numpy as np
    from matplotlib.figure import Figure

    from rankmix.allocation import per_layer
    from rankmix.plots import save_png

    written = []
    for model, r in results.items():
        rows = {name: (a["experts"], a["ranks"]) for name, a in r["allocators"].items()}
        n = len(next(iter(rows.values()))[0])
        rows = {'hand "2468"': (per_layer("2468", n, "experts"), per_layer("2468", n, "ranks")), **rows}
        fig = Figure(figsize=(max(6.0, 0.3 * n + 3.0), 5.5))
        panels = fig.subplots(2, 1, sharex=True)
        width = 0.8 / len(rows)
        for i, (name, values) in enumerate(rows.items()):
            for panel, series in zip(panels, values, strict=True):
                panel.bar(np.arange(n) + (i - (len(rows) - 1) / 2) * width, series, width, label=name)
        panels[0].set_ylabel("experts")
        panels[1].set_ylabel("rank of each expert")
        panels[1].set_xlabel("layer")
        panels[0].legend(fontsize="small")
        panels[0].set_title(
            f"{model}: HiLo allocations at the budget of {r['budget']:,} trainable parameters"
        )
        written.append(save_png(fig, folder / f"{model}.png"))
    return written


def table(results: dict) -> str:
    lines = [
        "| model | allocator | time (s) | experts per layer | ranks per layer | trainable | of budget |",
        "|---|---|---|---|---|---|---|",
    ]
    for model, r in results.items():
        for allocator, a in r["allocators"].items():
            lines.append(
                f"| {model} | {allocator} | {a['seconds']:.1f} | {','.join(map(str, a['experts']))} "
                f"| {','.join(map(str, a['ranks']))} | {a['trainable']:,} | {a['of_budget']:.1%} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--models", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "allocation_time.json")
    args = parser.parse_args()
    results = {model: measure(RECIPES[model], args.data_dir) for model in args.models}
    command = "python benchmarks/allocation_time.py " + " ".join(sys.argv[1:])
    write_json(args.out, {"command": command, "results": results, "provenance": provenance()})
    body = (
        f"Command: `{command}` ({os.cpu_count()} CPU cores, one process, nothing else running). HiLo "
        'with experts and ranks `auto` at the trainable budget of the recipe\'s own "2468"/"2468"; '
        "the time is the allocation alone, the model and data loaded.\n\n" + table(results)
    )
    pictures = plot(results, PLOTS)
    body += "\n\n" + "\n".join(f"![{p.stem}]({p.relative_to(ROOT.parent)})" for p in pictures)
    write_text(MARKDOWN, replace_section(MARKDOWN.read_text(), SECTION, body, heading="Automatic allocation"))
    print(table(results))


if __name__ == "__main__":
    main()
