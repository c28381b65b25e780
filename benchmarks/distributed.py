"""Data-parallel wall time: the same training (recipe, global batch, steps) in 1 process and in N
processes under torchrun (gloo on CPUs), alternated over rounds so that machine noise hits both alike;
reported as the N-process time over the 1-process time of the same round. The cores are split evenly:
1 process gets them all as threads, N processes 1/N each.

    python benchmarks/distributed.py --data-dir ../shared/data
    python benchmarks/distributed.py --data-dir ../shared/data --methods lora --steps 20 --rounds 1

Writes benchmarks/results/distributed.json and its table in BENCHMARKS.md.
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
SECTION = "distributed"


def train_once(method: str, processes: int, args: argparse.Namespace, out: Path) -> dict[str, float]:
    """One `rankmix train` under torchrun; its wall time, and the time train() itself reports."""
    torchrun = Path(sys.executable).with_name("torchrun")
    recipe = ROOT.parent / "configs" / f"glue-minilm-{method}.yaml"
    sets = {
        "data_dir": args.data_dir,
        "output_dir": out,
        "train.steps": args.steps,
        "train.eval_every": args.steps,
        "train.warmup_steps": 1,
        "train.batch_size": args.batch // processes,
        "train.max_eval_examples": args.eval_examples,
    }
    command = [str(torchrun), f"--nproc_per_node={processes}", "-m", "rankmix.cli", "train", str(recipe)]
    command += ["--no-progress", "--overwrite", *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")]]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // processes))}
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    return {"wall_s": wall, "train_s": json.loads((out / "results.json").read_text())["wall_time_s"]}


def table(results: dict) -> str:
    n = results["conditions"]["processes"]
    lines = [
        f"| method | 1 process (s) | {n} processes (s) | {n} processes / 1 |",
        "|---|---|---|---|",
    ]
    for method, r in results["methods"].items():
        lines.append(f"| {method} | {r['one_s']:.1f} | {r['many_s']:.1f} | {r['ratio']:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--methods", nargs="+", default=["lora", "more"])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=16, help="the global batch")
    parser.add_argument("--eval-examples", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "distributed.json")
    args = parser.parse_args()
    if args.batch % args.processes:
        parser.error(f"--batch {args.batch} must split evenly over {args.processes} processes")
    times: dict[str, dict[int, list[dict]]] = {m: {1: [], args.processes: []} for m in args.methods}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for method in args.methods:
                for processes in (1, args.processes):
                    times[method][processes].append(train_once(method, processes, args, Path(tmp) / "run"))
    methods = {}
    for method, by_count in times.items():
        one = statistics.median(t["train_s"] for t in by_count[1])
        many = statistics.median(t["train_s"] for t in by_count[args.processes])
        methods[method] = {"one_s": one, "many_s": many, "ratio": many / one, "runs": by_count}
    command = "python benchmarks/distributed.py " + " ".join(sys.argv[1:])
    conditions = {k: v for k, v in vars(args).items() if k not in ("out", "data_dir")}
    results = {
        "conditions": conditions | {"command": command},
        "methods": methods,
        "provenance": provenance(),
    }
    write_json(args.out, results)
    body = (
        f"Command: `{command}` (commit {results['provenance']['git_commit'][:7]}, "
        f"{os.cpu_count()} CPU cores, torchrun with gloo). Each run: {args.steps} steps of a global "
        f"batch of {args.batch} on the GLUE-CPU recipe, then one evaluation of {args.eval_examples} "
        "examples per task; "
        "the time `train()` reports (loading, training, evaluation, checkpoint), median of "
        f"{args.rounds} rounds.\n\n{table(results)}"
    )
    write_text(MARKDOWN, replace_section(MARKDOWN.read_text(), SECTION, body))
    print(table(results))


if __name__ == "__main__":
    main()
