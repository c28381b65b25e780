"""`rankmix quickstart`: MoRE against LoRA on the real MiniLM-L6 encoder and three built-in toy tasks of
different difficulty (no network, no data folder), in a few minutes on a laptop CPU."""

from __future__ import annotations

from pathlib import Path

from .recipes.evaluate import format_table
from .recipes.run import open_run, plot_run, stored_expert_load
from .recipes.run_config import RunConfig, TrainConfig
from .recipes.run_folder import PLOTS
from .recipes.train import train

TASKS = ["sentiment", "topic", "negation"]
# 150 steps: long enough for MoRE's selection to settle (at 80, MoRE trailed LoRA; BENCHMARKS.md, toy tasks)
STEPS = 150
METHODS = {
    "more": {"method": "more", "max_rank": 8, "dropout": 0.1, "target_modules": "all-linear"},
    "lora": {"method": "lora", "r": 8, "alpha": 16, "dropout": 0.1, "target_modules": "all-linear"},
}


def quickstart(out: Path, steps: int | None = None) -> dict[str, dict]:
    """Train each method (`steps`, default STEPS), print the per-task comparison and MoRE's selected
    ranks, keep adapters and plots."""
    steps = steps or STEPS
    results = {}
    for name, method in METHODS.items():
        cfg = RunConfig(
            model="minilm",
            tasks=TASKS,
            method=method,
            output_dir=str(out / name),
            train=TrainConfig(
                steps=steps,
                batch_size=16,
                lr=2e-3,
                warmup_steps=steps // 10,
                eval_every=steps,
                log_every=10,
                max_length=48,
                sampling="uniform",
                seed=0,
            ),
        )
        print(f"\n== {name}: training {steps} steps on {TASKS} with MiniLM-L6 ==")
        results[name] = train(cfg, overwrite=True)
        print(format_table(results[name]["tasks"]))
    print(f"\n{'task':<12} " + " ".join(f"{m:>8}" for m in METHODS) + "   MoRE mean selected rank")
    for task in TASKS:
        scores = " ".join(f"{results[m]['tasks'][task]['score']:8.3f}" for m in METHODS)
        print(f"{task:<12} {scores}   {results['more']['selected_ranks'][task]:.2f}")
    for m in METHODS:
        p = results[m]["parameters"]
        print(
            f"{m}: average {results[m]['average']:.3f}, trainable {p['trainable']:,}, "
            f"active per token {p['active_per_token']:,}, {results[m]['wall_time_s']} s"
        )
    for m in METHODS:
        run, adapter = open_run(out / m, [], splits=("dev",))
        for path in plot_run(run, out / m / PLOTS, stored_expert_load(adapter)):
            print(path)
    print(f"adapters, results.json and plots in {out}/<method>/")
    return results
