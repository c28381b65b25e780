"""Scoring time of a decoder recipe's dev draw: each context run once with its options continued from its
key-value cache (what rankmix does), against encoding every (context, option) sequence in full, once per
option (what it did before). Both in the same process, on the same rows and batches, tasks alternated
in their order, so that machine noise falls on both; both give the same log-likelihoods (the largest
difference is recorded) and so the same acc and acc_norm.

    python benchmarks/eval_speed.py --data-dir ../shared/data

Writes benchmarks/results/eval_speed.json and its table in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from accuracy import provenance
from rankmix.data.collate import IGNORE, continuation_ids, cut_context, pad_features, pad_id
from rankmix.families import answer_logprob
from rankmix.files import write_json, write_text
from rankmix.recipes.run import zero_shot_run
from render import MARKDOWN, replace_section

ROOT = Path(__file__).resolve().parent
SECTION = "eval-speed"
RECIPE = "configs/commonsense-smollm2-lora.yaml"
HEADING = "Speed: scoring multiple-choice rows"


@torch.no_grad()
def per_option(run, task, ids: torch.Tensor, examples) -> list[torch.Tensor]:
    """The summed log-likelihood of each option, every option's context encoded again with it: one
    right-padded batch of all (example, option) sequences, as rankmix scored before."""
    kind, tokenizer, max_length = task.kind, run.tokenizer, run.config.train.max_length
    rows, owners, sizes = [], [], []
    for i, example in enumerate(examples):
        options = kind.options(task, example)
        pairs = [continuation_ids(tokenizer, o.context, o.text, kind.ends_with_eos) for o in options]
        sizes.append(len(options))
        for option, (head, cont) in zip(options, pairs, strict=True):
            longest = max(
                len(c) for o, (_, c) in zip(options, pairs, strict=True) if o.context == option.context
            )
            head = cut_context(head, longest, max_length)  # the cut rankmix makes, per context
            rows.append({"input_ids": head + cont, "labels": [IGNORE] * len(head) + cont})
            owners.append(i)
    batch = pad_features(rows, pad_id(tokenizer))
    labels = batch.pop("labels")
    logits = run.model(**batch, task_ids=ids[torch.tensor(owners)]).logits
    return list(answer_logprob(logits, labels, shift=True).split(sizes))


@torch.no_grad()
def time_task(run, t: int, scorer, batch_size: int) -> tuple[float, list[torch.Tensor]]:
    task, examples = run.tasks[t], run.dev_sets[t]
    start, scores = time.perf_counter(), []
    for first in range(0, len(examples), batch_size):
        chunk = examples[first : first + batch_size]
        ids = torch.full((len(chunk),), t, dtype=torch.long)
        scores += scorer(run, task, ids, chunk)
    return time.perf_counter() - start, scores


def shared(run, task, ids, chunk):
    return run.family.scores(run.model, run.tokenizer, task, ids, chunk, run.config.train.max_length)


def measure(args: argparse.Namespace) -> dict:
    overrides = [f"data_dir={args.data_dir}", *args.set]
    run = zero_shot_run(args.recipe, overrides)
    run.model.eval()
    batch_size = run.config.train.batch_size
    tasks = {}
    for t, task in enumerate(run.tasks):
        order = [("per_option", per_option), ("shared", shared)]
        timings, scores = {}, {}
        for name, scorer in order if t % 2 else order[::-1]:
            timings[name], scores[name] = time_task(run, t, scorer, batch_size)
        examples = run.dev_sets[t]
        picks = {
            name: [run.family.read(task, e, s) for e, s in zip(examples, values, strict=True)]
            for name, values in scores.items()
        }
        results = {name: task.score(p, [e.label for e in examples]) for name, p in picks.items()}
        diff = max(
            (a - b).abs().max().item() for a, b in zip(scores["shared"], scores["per_option"], strict=True)
        )
        tasks[task.name] = {
            "rows": len(examples),
            "seconds": {k: round(v, 2) for k, v in timings.items()},
            "speedup": round(timings["per_option"] / timings["shared"], 2),
            "results": results,
            "same_picks": picks["shared"] == picks["per_option"],
            "max_logprob_difference": diff,
        }
        print(task.name, tasks[task.name], flush=True)
    total = {k: sum(r["seconds"][k] for r in tasks.values()) for k in ("per_option", "shared")}
    return {
        "recipe": args.recipe,
        "overrides": overrides,
        "batch_size": batch_size,
        "max_length": run.config.train.max_length,
        "tasks": tasks,
        "total_seconds": {k: round(v, 1) for k, v in total.items()},
        "speedup": round(total["per_option"] / total["shared"], 2),
        "torch_threads": torch.get_num_threads(),
        "provenance": provenance(),
    }


def table(data: dict) -> str:
    lines = [
        "Command: `python benchmarks/eval_speed.py "
        + " ".join(["--data-dir DATA", *(f"--set {o}" for o in data["overrides"][1:])])
        + f"` ({data['recipe']}, its dev draw, batches of {data['batch_size']} rows, "
        f"max_length {data['max_length']}, "
        f"{data['torch_threads']} threads; commit {data['provenance']['git_commit'][:7]}).",
        "",
        "| task | rows | per option (s) | shared prefix (s) | speed-up | acc | acc_norm | same picks | "
        "largest log-lik. difference |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in data["tasks"].items():
        res = r["results"]["shared"]
        lines.append(
            f"| {name} | {r['rows']} | {r['seconds']['per_option']:.1f} | {r['seconds']['shared']:.1f} | "
            f"{r['speedup']:.2f}x | {res.get('acc', float('nan')):.3f} | "
            f"{res.get('acc_norm', float('nan')):.3f} | {'yes' if r['same_picks'] else 'no'} | "
            f"{r['max_logprob_difference']:.1e} |"
        )
    total = data["total_seconds"]
    lines.append(
        f"| all | | {total['per_option']:.1f} | {total['shared']:.1f} | {data['speedup']:.2f}x | | | | |"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--recipe", default=RECIPE)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default=str(ROOT / "results" / "eval_speed.json"))
    args = parser.parse_args()
    data = measure(args)
    write_json(args.out, data)
    write_text(MARKDOWN, replace_section(MARKDOWN.read_text(), SECTION, table(data), HEADING))
    print(table(data))


if __name__ == "__main__":
    main()
