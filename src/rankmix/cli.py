"""The `rankmix` command: train | eval | merge | export-lora | inspect | plot | quickstart."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .recipes.run_config import load_run_config


def _adapter_run(folder: str, overrides: list[str], splits: tuple[str, ...] = ()):
    """Rebuild the run an adapter folder came from (its run.yaml) and load the adapter into it."""
    from .recipes.train import load_adapter, prepare

    path = Path(folder)
    if (path / "adapter").is_dir():  # a run folder: use its best adapter
        path = path / "adapter"
    if not (path / "run.yaml").is_file():
        raise FileNotFoundError(f"{path} holds no run.yaml: pass a run folder or its adapter/ folder")
    run = prepare(load_run_config(path / "run.yaml", overrides), splits)
    load_adapter(run, path)
    return run, path


def cmd_train(args: argparse.Namespace) -> None:
    from accelerate import PartialState

    from .recipes.train import format_table, train

    cfg = load_run_config(args.config, args.set)
    results = train(cfg, overwrite=args.overwrite, progress=not args.no_progress)
    if not PartialState().is_main_process:
        return
    print(format_table(results["tasks"]))
    if results["selected_ranks"]:
        print("mean selected rank per task:", {k: round(v, 2) for k, v in results["selected_ranks"].items()})
    print("parameters:", results["parameters"], f"  wall time: {results['wall_time_s']} s")
    print(f"adapter, results.json, metrics.jsonl and tb/ in {cfg.output_dir}")


def cmd_eval(args: argparse.Namespace) -> None:
    from .recipes.train import evaluate_run, format_table, write_json

    run, _ = _adapter_run(args.adapter, args.set, splits=("dev",))
    results = evaluate_run(run, mode=args.mode)
    print(format_table(results))
    if args.out:
        write_json(Path(args.out), results)


def cmd_merge(args: argparse.Namespace) -> None:
    from safetensors.torch import save_file

    from .heads import MultiTaskHeads

    run, _ = _adapter_run(args.adapter, args.set)
    _require_task(run, args.task)
    names = [t.name for t in run.tasks]
    heads = run.model.heads if isinstance(run.model, MultiTaskHeads) else None
    if heads is not None and args.task is None:
        raise ValueError(f"pass --task: every task has its own head ({names})")
    plain = run.adapted.merge_and_unload(task=args.task)
    out = Path(args.out)
    plain.save_pretrained(out)
    run.tokenizer.save_pretrained(out)
    if heads is not None:  # the task's head travels beside the merged encoder
        head = heads[names.index(args.task)]
        save_file(
            {k: v.contiguous() for k, v in head.state_dict().items()}, str(out / "task_head.safetensors")
        )
    print(f"merged model for task {args.task!r} written to {out}")


def cmd_export(args: argparse.Namespace) -> None:
    run, _ = _adapter_run(args.adapter, args.set)
    _require_task(run, args.task)
    path = run.adapted.export_lora(task=args.task, path=args.out)
    print(f"PEFT LoRA adapter for task {args.task!r} written to {path}")


def _require_task(run, task: str | None) -> None:
    names = [t.name for t in run.tasks]
    if task is None and run.adapted.adapter_config.task_names:
        raise ValueError(f"pass --task (one of {names}): each task merges and exports differently")
    if task is not None and task not in names:
        raise ValueError(f"unknown task {task!r}; this adapter was trained on {names}")


def _allocation(adapted) -> dict[str, list[int]]:
    return {name: list(m.bank.ranks) for name, m in adapted.adapted_modules()}


def cmd_inspect(args: argparse.Namespace) -> None:
    from .model import layer_index
    from .recipes.train import build_model, resolve_tasks

    path = Path(args.target)
    if path.is_dir():
        run, _ = _adapter_run(args.target, args.set)
        adapted, tasks = run.adapted, [t.name for t in run.tasks]
    else:
        cfg = load_run_config(path, args.set)
        _, adapted, _, _ = build_model(cfg, resolve_tasks(cfg))
        tasks = cfg.tasks
    print(f"method: {adapted.adapter_config.method}   tasks: {tasks}")
    print("parameters:", adapted.parameter_counts())
    layers: dict[int | None, list[list[int]]] = {}
    for name, ranks in _allocation(adapted).items():
        layers.setdefault(layer_index(name), []).append(ranks)
    print(f"\n{'layer':>5} {'modules':>7} {'experts':>8} {'ranks':<20}")
    for layer, rows in layers.items():
        experts = sorted({len(r) for r in rows})
        ranks = sorted({x for r in rows for x in r})
        print(f"{layer!s:>5} {len(rows):>7} {','.join(map(str, experts)):>8} {','.join(map(str, ranks)):<20}")
    if adapted.adapter_config.task_names:
        print("\nselected rank per task and layer (mean over the layer's modules):")
        for task, ranks in adapted.selected_ranks().items():
            per_layer: dict[int | None, list[int]] = {}
            for name, r in ranks.items():
                per_layer.setdefault(layer_index(name), []).append(r)
            print(f"  {task:<16} " + " ".join(f"{sum(v) / len(v):.1f}" for v in per_layer.values()))


def cmd_plot(args: argparse.Namespace) -> None:
    from .plots import plot_allocation, plot_expert_load, plot_selected_ranks
    from .recipes.train import evaluate_run

    run, path = _adapter_run(args.adapter, args.set, splits=("dev",))
    out = Path(args.out or path.parent / "plots")
    written = [plot_allocation(_allocation(run.adapted), out / "allocation.png")]
    if run.adapted.adapter_config.task_names:
        written.append(plot_selected_ranks(run.adapted.selected_ranks(), out / "selected_ranks.png"))
    if run.adapted.adapter_config.routing == "token":
        evaluate_run(run, mode="score")  # routes the dev set through the routers, which count the load
        written.append(plot_expert_load(run.adapted.router_stats()["expert_load"], out / "expert_load.png"))
    for p in written:
        print(p)


def cmd_quickstart(args: argparse.Namespace) -> None:
    from .quickstart import quickstart

    quickstart(Path(args.out), steps=args.steps)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rankmix", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, fn, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(fn=fn)
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a recipe option, e.g. train.lr=1e-3 or data_dir=../shared/data",
        )
        return p

    p = add("train", cmd_train, "train one adapter set on all tasks of a recipe")
    p.add_argument("config", help="recipe YAML (see configs/)")
    p.add_argument("--overwrite", action="store_true", help="start afresh instead of resuming")
    p.add_argument("--no-progress", action="store_true")
    p = add("eval", cmd_eval, "evaluate a trained adapter on the dev split of its tasks")
    p.add_argument("adapter", help="a run folder or its adapter/ folder")
    p.add_argument("--mode", choices=["score", "generate"])
    p.add_argument("--out", help="write the results to this JSON file")
    for name, fn, what in (
        ("merge", cmd_merge, "merge one task's adapter into a plain model"),
        ("export-lora", cmd_export, "export one task's adapter as a PEFT LoRA"),
    ):
        p = add(name, fn, what)
        p.add_argument("adapter", help="a run folder or its adapter/ folder")
        p.add_argument("--task", help="task name (not needed for LoRA)")
        p.add_argument("--out", required=True, help="output folder")
    p = add("inspect", cmd_inspect, "parameter counts, per-layer allocation, selected ranks")
    p.add_argument("target", help="a recipe YAML or an adapter/run folder")
    p = add(
        "plot", cmd_plot, "PNG plots: allocation, selected ranks (task routing), expert load (token routing)"
    )
    p.add_argument("adapter", help="a run folder or its adapter/ folder")
    p.add_argument("--out", help="folder for the PNG files (default: <run>/plots)")
    p = add("quickstart", cmd_quickstart, "train MoRE and LoRA on MiniLM-L6 with the built-in toy tasks")
    p.add_argument("--out", default="runs/quickstart")
    p.add_argument("--steps", type=int, default=80)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as e:
        print(f"rankmix {args.command}: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
