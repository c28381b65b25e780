"""The share of training-step time spent outside the model, within one run: over steps `--skip`+1 to
`--steps` of the GLUE-CPU recipe, the wall time less the time in the model's forward, backward,
gradient clipping and optimizer step, over the wall time. What is left is data work (drawing,
tokenising, padding, moving batches) and the loop's own bookkeeping (logging, the schedule).

Each `--tree NAME=PATH` is a checkout (e.g. a worktree of the parent commit and this one): its own
rankmix and recipe run, in a fresh process, alternated with the others over rounds. The timing reads
the training loop's hooks (`rankmix.recipes.train.Hooks`), so every tree must have them.

    git worktree add ../rankmix-parent HEAD~1
    python benchmarks/data_share.py --data-dir ../shared/data --tree before=../rankmix-parent --tree after=.

Writes benchmarks/results/data_share.json and its table in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from accuracy import provenance
from rankmix.files import write_json, write_text
from render import MARKDOWN, replace_section

ROOT = Path(__file__).resolve().parent
SECTION = "data-share"
RECIPE = "configs/glue-minilm-more.yaml"


def measure(args: argparse.Namespace) -> dict[str, float]:
    """In this process, with the rankmix on sys.path: one training run, timed from the inside through the
    loop's hooks (the model's part of a step: each micro-batch's forward and backward, then gradient
    clipping and the optimizer step)."""
    from rankmix.recipes.run_config import load_run_config
    from rankmix.recipes.train import Hooks, train

    class Timer(Hooks):
        def __init__(self):
            self.model_s: list[float] = []  # per step: seconds in the model
            self.step_ends: list[float] = []
            self.setup_s: dict[str, float] = {}
            self.mark = 0.0
            self.in_step = 0.0

        def on_batch(self, training, batch):
            self.mark = time.perf_counter()

        def on_backward(self, training):
            now = time.perf_counter()
            self.in_step += now - self.mark
            self.mark = now  # clipping and the optimizer step follow the last backward

        def on_optimizer_step(self, training):
            now = time.perf_counter()
            self.model_s.append(self.in_step + now - self.mark)
            self.step_ends.append(now)
            self.in_step = 0.0
            self.setup_s = training.setup_s

    sets = {
        "data_dir": args.data_dir,
        "output_dir": str(args.out),
        "train.steps": args.steps,
        "train.eval_every": args.steps,
        "train.checkpoint_every": "null",
        "train.max_eval_examples": 16,
    }
    timer = Timer()
    cfg = load_run_config(RECIPE, [f"{k}={v}" for k, v in sets.items()])
    train(cfg, overwrite=True, progress=False, hooks=[timer])
    begin, end = timer.step_ends[args.skip - 1], timer.step_ends[-1]
    model = sum(timer.model_s[args.skip :])
    steps = len(timer.step_ends) - args.skip
    return {
        "step_ms": 1e3 * (end - begin) / steps,
        "outside_ms": 1e3 * (end - begin - model) / steps,
        "tokenise_s": timer.setup_s["data"],
    }


def run_tree(path: Path, args: argparse.Namespace, out: Path) -> dict[str, float]:
    command = [sys.executable, str(Path(__file__).resolve()), "--measure", "--data-dir", args.data_dir]
    command += ["--steps", str(args.steps), "--skip", str(args.skip), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": f"{path / 'src'}{os.pathsep}{ROOT}"}
    done = subprocess.run(command, cwd=path, env=env, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(results: dict) -> str:
    lines = [
        "| tree | commit | step (ms) | outside the model (ms) | share of the step | tokenising once (s) |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results["trees"].items():
        once = f"{r['tokenise_s']:.1f}" if r.get("tokenise_s") is not None else "-"
        lines.append(
            f"| {name} | {r['commit'][:7]} | {r['step_ms']:.0f} | {r['outside_ms']:.1f} | "
            f"{r['share']:.1%} | {once} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--tree", action="append", default=[], metavar="NAME=PATH")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--skip", type=int, default=20, help="warm-up steps left out of the timing")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "data_share.json")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:  # the child process
        print(json.dumps(measure(args)))
        return
    if not args.tree or not all("=" in t for t in args.tree):
        parser.error("give each checkout to measure as --tree NAME=PATH")
    if args.steps <= args.skip:
        parser.error(f"--steps {args.steps} must exceed --skip {args.skip}")
    trees = {name: Path(path).resolve() for name, path in (t.split("=", 1) for t in args.tree)}
    runs: dict[str, list[dict]] = {name: [] for name in trees}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for name, path in trees.items():
                runs[name].append(run_tree(path, args, Path(tmp) / "run"))
    summary = {}
    for name, path in trees.items():
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, check=True
        ).stdout.strip()
        step = statistics.median(r["step_ms"] for r in runs[name])
        outside = statistics.median(r["outside_ms"] for r in runs[name])
        once = [r["tokenise_s"] for r in runs[name] if "tokenise_s" in r]
        summary[name] = {
            "commit": commit,
            "step_ms": step,
            "outside_ms": outside,
            "share": statistics.median(r["outside_ms"] / r["step_ms"] for r in runs[name]),
            "tokenise_s": statistics.median(once) if once else None,
            "runs": runs[name],
        }
    command = "python benchmarks/data_share.py " + " ".join(sys.argv[1:])
    conditions = {k: v for k, v in vars(args).items() if k not in ("out", "data_dir", "measure", "tree")}
    results = {"conditions": conditions | {"command": command}, "trees": summary, "provenance": provenance()}
    write_json(args.out, results)
    body = (
        f"Command: `{command}` ({os.cpu_count()} CPU cores, `{RECIPE}`, one process). Steps "
        f"{args.skip + 1}-{args.steps} of each run; medians of {args.rounds} rounds, trees alternated."
        f"\n\n{table(results)}"
    )
    write_text(MARKDOWN, replace_section(MARKDOWN.read_text(), SECTION, body))
    print(table(results))


if __name__ == "__main__":
    main()
