"""The `rankmix` command: train | eval | merge | export-lora | inspect | plot | quickstart."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

from .recipes.run_config import load_run_config
from .version import __version__


def cmd_train(args: argparse.Namespace) -> None:
    from accelerate import PartialState

    from .recipes.evaluate import format_table
    from .recipes.run_folder import is_run_file
    from .recipes.train import train

    # a run folder's run.yaml names the run folder and its files relative to itself
    cfg = load_run_config(args.config, recipe_overrides(args), paths_from_file=is_run_file(Path(args.config)))
    results = train(cfg, overwrite=args.overwrite, progress=not args.no_progress, device=args.device)
    if not PartialState().is_main_process:
        return
    print(format_table(results["tasks"]))
    if results["selected_ranks"]:
        print("mean selected rank per task:", {k: round(v, 2) for k, v in results["selected_ranks"].items()})
    print("parameters:", results["parameters"], f"  wall time: {results['wall_time_s']} s")
    print(f"adapter, results.json, metrics.jsonl and tb/ in {cfg.output_dir}")


def recipe_overrides(args: argparse.Namespace) -> list[str]:
    """The --set overrides, with --init-from RUN as the recipe key init_from (in JSON: a YAML string,
    whatever the path holds)."""
    return args.set + ([f"init_from={json.dumps(args.init_from)}"] if args.init_from else [])


def init_from_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--init-from",
        metavar="RUN",
        help="start from a trained run, grown to the recipe's tasks (recipe key grow: joint | frozen)",
    )


def cmd_eval(args: argparse.Namespace) -> None:
    from .files import write_json
    from .recipes.evaluate import check_mode, format_table
    from .recipes.outputs import check_file_out
    from .recipes.run import evaluate_run, open_run, resolve_device, zero_shot_run
    from .recipes.run_folder import is_run_file
    from .recipes.task_free import task_inferrer

    device = resolve_device(args.device)
    if args.out:
        check_file_out(args.out, [args.adapter], args.force)
    path = Path(args.adapter)
    if path.is_file() and not is_run_file(path):  # a recipe: its base model, zero-shot
        if args.task_free:
            raise ValueError("--task-free evaluates a trained run: pass its folder, not a recipe")
        run = zero_shot_run(path, args.set)
    else:  # a run folder, its adapter folder, or the run.yaml of either
        run, _ = open_run(path.parent if path.is_file() else path, args.set, splits=("dev",))
    check_mode(run.tasks, args.mode)
    model = run.model.to(device)
    infer = task_inferrer(run) if args.task_free else None
    results = evaluate_run(run, model, mode=args.mode, progress=not args.no_progress, infer=infer)
    print(format_table(results))
    if args.out:
        write_json(args.out, results)


def cmd_predict(args: argparse.Namespace) -> None:
    from .files import write_text
    from .recipes.evaluate import check_mode
    from .recipes.outputs import check_file_out
    from .recipes.predict import predict_inferred, predict_records, read_rows, text_example
    from .recipes.run import check_task, open_run, resolve_device
    from .recipes.task_free import task_inferrer

    if (args.input is None) == (args.text is None):
        raise ValueError("pass either --input FILE.jsonl or --text TEXT")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be a positive integer, got {args.batch_size}")
    if args.out:
        check_file_out(args.out, [args.adapter, *([args.input] if args.input else [])], args.force)
    device = resolve_device(args.device)
    run, _ = open_run(args.adapter, args.set)
    if args.task == "auto":  # each row's task inferred
        examples = read_rows(Path(args.input), None) if args.input else [text_example(None, args.text)]
        run.model.to(device)
        records = predict_inferred(run, task_inferrer(run), examples, args.mode, args.batch_size)
    else:
        task = check_task(run, args.task, with_head=True)
        check_mode([task], args.mode)
        examples = read_rows(Path(args.input), task) if args.input else [text_example(task, args.text)]
        run.model.to(device)
        mode = args.mode or run.config.eval_mode
        records = predict_records(run, args.task, examples, mode, args.batch_size)
    lines = "".join(json.dumps(r) + "\n" for r in records)
    if args.out:
        write_text(args.out, lines)
    else:
        sys.stdout.write(lines)


def cmd_merge(args: argparse.Namespace) -> None:
    from .recipes.outputs import check_folder_out
    from .recipes.run import merge_task, open_run

    check_folder_out(args.out, "merge")
    run, _ = open_run(args.adapter, args.set)
    out = merge_task(run, args.task, Path(args.out))
    print(f"merged model for task {args.task!r} written to {out}")


def cmd_export(args: argparse.Namespace) -> None:
    from .recipes.outputs import check_folder_out
    from .recipes.run import export_all_tasks, export_task, open_run

    if args.all_tasks and args.task:
        raise ValueError("pass --task T or --all-tasks, not both")
    check_folder_out(args.out, "export-lora")
    run, _ = open_run(args.adapter, args.set)
    if args.all_tasks:
        for path in export_all_tasks(run, Path(args.out)):
            print(f"PEFT LoRA adapter for task {path.name!r} written to {path}")
        return
    path = export_task(run, args.task, Path(args.out))
    print(f"PEFT LoRA adapter for task {args.task!r} written to {path}")


def cmd_inspect(args: argparse.Namespace) -> None:
    from .recipes.grow import apply_growth, plan_growth
    from .recipes.run import (
        allocation_by_layer,
        open_run,
        parameters,
        prepare,
        resolve_device,
        selected_ranks_by_layer,
    )
    from .recipes.sizes import check_run_size

    path = Path(args.target)
    trained = path.is_dir()
    if trained:
        if args.init_from:
            raise ValueError("--init-from grows a recipe: pass the recipe to inspect, not a run folder")
        run, _ = open_run(args.target, args.set)
        adapted, heads, tasks = run.adapted, run.heads, [t.name for t in run.tasks]
    else:
        cfg = load_run_config(path, recipe_overrides(args))
        growth = plan_growth(cfg) if cfg.init_from else None  # the adapter as --init-from grows it
        size = check_run_size(cfg, resolve_device("auto"))  # before building what cannot fit
        run = prepare(cfg, splits=())  # no data, but what the probe allocator trains on
        if growth is not None:
            apply_growth(run, growth)
        adapted, heads, tasks = run.adapted, run.heads, cfg.tasks
    print(f"method: {adapted.adapter_config.method}   tasks: {tasks}")
    print("parameters:", parameters(adapted, heads))
    if not trained:
        print(size.summary())
        if pending := cfg.adapter_config().pending():
            config = adapted.adapter_config
            how = f"allocated by {config.allocator} under budget {config.budget}"
            print(f"{' and '.join(pending)} {how} (the layers below)")
    print(f"\n{'layer':>5} {'modules':>7} {'experts':>8} {'ranks':<20}")
    for layer, rows in allocation_by_layer(adapted).items():
        experts = sorted({len(r) for r in rows})
        ranks = sorted({x for r in rows for x in r})
        print(f"{layer!s:>5} {len(rows):>7} {','.join(map(str, experts)):>8} {','.join(map(str, ranks)):<20}")
    if adapted.method.task_routed:
        grown = not trained and cfg.init_from  # the trained tasks' selections as the run left them
        when = "" if trained or grown else ", at initialisation (an untrained recipe: training moves them)"
        print(f"\nselected rank per task and layer (mean over the layer's modules{when}):")
        for task, ranks in selected_ranks_by_layer(adapted).items():
            print(f"  {task:<16} " + " ".join(f"{r:.1f}" for r in ranks))


def cmd_tasks(args: argparse.Namespace) -> None:
    from .tasks import get_task, task_names

    rows = [("task", "kind", "metrics", "local files (under data_dir)", "hub")]
    for name in task_names():
        task = get_task(name)
        kind = task.kind.name + (f" ({len(task.labels)} classes)" if task.labels else "")
        hub = "-" if task.hub in (None, task.reader) else getattr(task.hub, "source", "?")
        rows.append((name, kind, ", ".join(task.metrics), getattr(task.reader, "source", "?"), hub))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1])


def cmd_plot(args: argparse.Namespace) -> None:
    from .recipes.outputs import check_folder_out
    from .recipes.run import open_run, plot_run, stored_expert_load
    from .recipes.run_folder import PLOTS

    if args.out:
        check_folder_out(args.out, "plot")
    run, path = open_run(args.adapter, args.set, splits=("dev",))
    load = None if args.set else stored_expert_load(path)  # --set may change the dev rows: count again
    for p in plot_run(run, Path(args.out or path.parent / PLOTS), load):
        print(p)


def cmd_quickstart(args: argparse.Namespace) -> None:
    from .quickstart import quickstart

    quickstart(Path(args.out), steps=args.steps)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rankmix", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show an error's full traceback")
    parser.add_argument("--version", action="version", version=f"rankmix {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def device(p: argparse.ArgumentParser) -> None:
        p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or mps")

    def force(p: argparse.ArgumentParser) -> None:
        p.add_argument("--force", action="store_true", help="let --out replace an existing file of yours")

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
    init_from_option(p)
    p.add_argument("--no-progress", action="store_true")
    device(p)
    p = add("eval", cmd_eval, "evaluate a trained adapter (or, given a recipe, its base model zero-shot)")
    p.add_argument(
        "adapter", help="a run folder or its adapter/ folder; or a recipe YAML: its base model, untouched"
    )
    p.add_argument("--mode", choices=["score", "generate"])
    p.add_argument(
        "--task-free",
        action="store_true",
        help="route each row by the task inferred from its texts (task-routed methods); adds each task's "
        "task_accuracy",
    )
    p.add_argument("--out", help="write the results to this JSON file (a new one, unless --force)")
    p.add_argument("--no-progress", action="store_true")
    force(p)
    device(p)
    p = add("predict", cmd_predict, "predict one task's labels (or text) for new inputs, as JSON lines")
    p.add_argument("adapter", help="a run folder or its adapter/ folder")
    p.add_argument(
        "--task", required=True, help="the task to predict, or auto: each row's, inferred from its texts"
    )
    p.add_argument("--input", help="a JSON-lines file, one row per input with the task's text fields")
    p.add_argument("--text", help="one input text (for a task that takes one text)")
    p.add_argument("--out", help="write the JSON lines to this file (a new one, unless --force), not stdout")
    force(p)
    p.add_argument("--mode", choices=["score", "generate"], help="default: the run's eval_mode")
    p.add_argument("--batch-size", type=int, default=16)
    device(p)
    for name, fn, what in (
        ("merge", cmd_merge, "merge one task's adapter into a plain model"),
        ("export-lora", cmd_export, "export one task's adapter as a PEFT LoRA"),
    ):
        p = add(name, fn, what)
        p.add_argument("adapter", help="a run folder or its adapter/ folder")
        p.add_argument("--task", help="task name (not needed for LoRA)")
        p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--all-tasks", action="store_true", help="one adapter per task, in OUT/<task>/")
    p = add("inspect", cmd_inspect, "parameter counts, per-layer allocation, selected ranks")
    p.add_argument("target", help="a recipe YAML or an adapter/run folder")
    init_from_option(p)
    p = add(
        "plot", cmd_plot, "PNG plots: allocation, selected ranks (task routing), expert load (token routing)"
    )
    p.add_argument("adapter", help="a run folder or its adapter/ folder")
    p.add_argument("--out", help="folder for the PNG files (default: <run>/plots)")
    add("tasks", cmd_tasks, "list the built-in tasks: kind, metrics, where their data is read from")
    p = add("quickstart", cmd_quickstart, "train MoRE and LoRA on MiniLM-L6 with the built-in toy tasks")
    p.add_argument("--out", default="runs/quickstart")
    p.add_argument("--steps", type=int, help="training steps per method (default: 150)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    code = 0
    formatwarning = warnings.formatwarning
    if not args.debug:  # a warning is one line, like an error, without Python's source line
        warnings.formatwarning = lambda message, *_, **__: f"rankmix {args.command}: warning: {message}\n"
    try:
        args.fn(args)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as e:
        if args.debug:
            raise
        print(f"rankmix {args.command}: error: {e}", file=sys.stderr)
        code = 2
    except OSError as e:  # a path given cannot be read or written as asked (checked early where possible)
        if args.debug:
            raise
        message = " ".join(str(e.strerror or e).split())  # one line, whatever a library wrote
        if e.filename:  # an OS call on a path: name it and what to check
            message += f": {e.filename}; check that path (a folder where a file goes, or the reverse, "
            message += "its permissions, the free space)"
        print(f"rankmix {args.command}: error: {message}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:  # a second Ctrl-C in training, or one while loading
        print(f"rankmix {args.command}: interrupted", file=sys.stderr)
        code = 130
    except RuntimeError as e:
        from .recipes.train import RunStopped  # already imported wherever it can be raised

        if not isinstance(e, RunStopped):
            raise
        print(f"rankmix {args.command}: {e}", file=sys.stderr)
        code = e.exit_code
    finally:
        warnings.formatwarning = formatwarning
    leave(code)


def leave(code: int) -> None:
    """Exit with `code`. A process of a torch.distributed job (torchrun, accelerate launch) exits at once,
    once its output is flushed: tearing down gloo's process group at interpreter exit can deadlock or
    abort (its worker thread waits for the GIL that the main thread holds while joining it), which
    would turn a finished run into a failed one. Everything a run writes is on disk by then."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
