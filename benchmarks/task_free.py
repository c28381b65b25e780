"""Routing without task ids on GLUE-CPU (issue 24). For each run of the `task-free` suite of accuracy.py
(MoRE, Multi-LoRA and MoELoRA trained by the shipped GLUE-CPU recipes): each task's task-identification
accuracy on its dev rows and its score with the task inferred against given (the run's own final
evaluation), for every rule the method has (MoRE: its task embeddings, and task prototypes; the others:
prototypes); and for dev rows of tasks the adapter never saw (SuperGLUE CB, GLUE WNLI), which task they
are routed to and how often the routed task's predicted label is right, read in the unseen task's labels
(UNSEEN_LABELS: a label of the same name, and for WNLI entailment as 1).

    python benchmarks/accuracy.py task-free --data-dir ../shared/data   # trains the runs (resumable)
    python benchmarks/task_free.py --data-dir ../shared/data           # evaluates them

Writes benchmarks/results/task-free-routing/<method>-s<seed>.json, one per run (finished ones skipped),
and the table in BENCHMARKS.md. `--run DIR` evaluates one run folder and prints the record (a smoke test).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import Counter
from pathlib import Path

import torch

from accuracy import SUITES, provenance
from rankmix.files import write_json, write_text
from rankmix.recipes.predict import predict_inferred
from rankmix.recipes.run import evaluate_run, open_run
from rankmix.recipes.task_free import task_inferrer
from rankmix.task_inference import needs_prototypes
from rankmix.tasks import get_task
from render import MARKDOWN, replace_section

ROOT = Path(__file__).resolve().parent
SUITE = "task-free"
RESULTS = ROOT / "results" / "task-free-routing"
SECTION = "task-free-routing"
UNSEEN = ("cb", "wnli")
# how a routed task's label reads in an unseen task's labels: the same name, or as given here
UNSEEN_LABELS = {"wnli": {"entailment": "1", "not_entailment": "0"}}


def measure(run_dir: Path, data_dir: str) -> dict:
    run, _ = open_run(run_dir, [f"data_dir={data_dir}"], splits=("train", "dev"))
    run.model.eval()
    given = json.loads((run_dir / "results.json").read_text())["tasks"]
    names = [t.name for t in run.tasks]
    # embeddings first: the prototypes, once fit, would be what the model reads
    rules = ["prototypes"] if needs_prototypes(run.adapted) else ["embeddings", "prototypes"]
    record = {"run": str(run_dir), "method": run.adapted.adapter_config.method, "given": given, "rules": {}}
    for rule in rules:
        infer = task_inferrer(run, prototypes=rule == "prototypes")
        inferred: dict[int, torch.Tensor] = {}  # each dev set's, as evaluation inferred them

        def remembered(rows, infer=infer, inferred=inferred):
            return inferred.setdefault(id(rows), infer(rows))

        scores = evaluate_run(run, progress=True, infer=remembered)
        routed = {}
        for task, rows in zip(run.tasks, run.dev_sets, strict=True):
            ids = inferred[id(rows)]
            counts = Counter(names[i] for i in ids.tolist())
            routed[task.name] = {name: counts[name] / len(ids) for name in names}
        unseen = {}
        for name in UNSEEN:
            task = get_task(name)
            rows, _ = task.load("dev", data_dir)
            records = predict_inferred(run, infer, rows, "score", run.config.train.batch_size)
            reading = UNSEEN_LABELS.get(name, {})
            right = [
                reading.get(r.get("label"), r.get("label")) == task.labels[e.label]
                for r, e in zip(records, rows, strict=True)
            ]
            counts = Counter(r["task"] for r in records)
            unseen[name] = {
                "rows": len(rows),
                "routed": {n: counts[n] / len(rows) for n in names},
                "accuracy": sum(right) / len(right),
            }
        record["rules"][rule] = {"tasks": scores, "routed": routed, "unseen": unseen}
        print(
            f"{run_dir.name} {rule}: " + ", ".join(f"{k} {v['task_accuracy']:.3f}" for k, v in scores.items())
        )
    return record


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", default=str(ROOT.parent.parent / "shared" / "data"))
    parser.add_argument("--runs", type=Path, default=ROOT / "runs", help="where accuracy.py trained them")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SUITES[SUITE].seeds))
    parser.add_argument("--run", type=Path, help="evaluate this run folder only, print the record")
    args = parser.parse_args()
    if args.run:
        print(json.dumps(measure(args.run, args.data_dir), indent=1))
        return
    for seed in args.seeds:
        for variant in SUITES[SUITE].variants:
            out = RESULTS / f"{variant.name}-s{seed}.json"
            run_dir = args.runs / SUITE / f"{variant.name}-s{seed}"
            if out.exists():
                print(f"{out.name}: done, skipped")
                continue
            if not (run_dir / "results.json").is_file():
                raise SystemExit(f"{run_dir} is not trained yet: python benchmarks/accuracy.py {SUITE} first")
            write_json(out, {"seed": seed, "provenance": provenance(), **measure(run_dir, args.data_dir)})
    records = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))]
    if records:
        body = table(records)
        write_text(MARKDOWN, replace_section(MARKDOWN.read_text(), SECTION, body, "Routing without task ids"))
        print(body)


def table(records: list[dict]) -> str:
    """One row per run and rule: each task's task-identification accuracy, the headline average with the
    tasks inferred and given, and where the unseen tasks' rows go."""
    headline = SUITES[SUITE].headline_tasks
    tasks = list(records[0]["given"])
    head = ["run", "method", "rule", *tasks, "average: inferred / given"]
    head += [f"{u}: routed to, accuracy" for u in UNSEEN]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for record in records:
        given = statistics.mean(record["given"][t]["score"] for t in headline)
        for rule, result in record["rules"].items():
            scores = result["tasks"]
            cells = [Path(record["run"]).name, record["method"], rule]
            cells += [f"{scores[t]['task_accuracy']:.3f}" for t in tasks]
            cells.append(f"{statistics.mean(scores[t]['score'] for t in headline):.3f} / {given:.3f}")
            for name in UNSEEN:
                unseen = result["unseen"][name]
                top = max(unseen["routed"], key=unseen["routed"].get)
                cells.append(f"{top} {unseen['routed'][top]:.0%}, {unseen['accuracy']:.3f}")
            lines.append("| " + " | ".join(cells) + " |")
    commits = sorted({r["provenance"]["git_commit"][:10] for r in records})
    lines += [
        "",
        f"Commands: `python benchmarks/accuracy.py {SUITE}` (training), `python benchmarks/task_free.py` "
        f"(commit {', '.join(commits)}). Task columns: the share of the task's dev rows inferred to be of "
        "it; average: over the headline tasks, each row routed by its inferred task (and scored as a row "
        "of its own), against the run's own evaluation with the task given; unseen: the task most of its "
        "dev rows are routed to, and the accuracy of the routed task's predicted labels read in the unseen "
        "task's labels (for WNLI, entailment as 1).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
