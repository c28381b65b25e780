"""Render the accuracy suites: tables in BENCHMARKS.md (between `<!-- <suite>:start/end -->` markers) and
PNG plots in benchmarks/results/<suite>/plots/, from the JSON files benchmarks/accuracy.py wrote.

    python benchmarks/render.py              # every suite that has results
    python benchmarks/render.py glue
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from accuracy import ROOT, SUITES
from rankmix.files import write_text
from rankmix.methods import method_named
from rankmix.plots import plot_expert_load, plot_selected_ranks, save_png

MARKDOWN = ROOT.parent / "BENCHMARKS.md"


def load(suite: str, results_dir: Path) -> dict[str, dict[int, dict]]:
    """{variant: {seed: record}} in the suite's variant order, then the suite's references."""
    spec = SUITES[suite]
    records: dict[str, dict[int, dict]] = defaultdict(dict)
    for path in sorted((results_dir / (spec.folder or suite)).glob("*.json")):
        record = json.loads(path.read_text())
        if not spec.folder or record.get("suite") == suite:  # a shared folder holds other records too
            records[record["variant"]][record["seed"]] = record
    rows = {name: records[name] for name in [v.name for v in spec.variants] if name in records}
    for reference in spec.references:  # rows of another suite, for comparison
        other, variant = reference.split("/")
        found = load(other, results_dir).get(variant) if other != suite else None
        if found:
            rows[reference] = found
    return rows


def mean_std(values: list[float], sign: str = "") -> str:
    """'0.812 ± 0.004' (mean and sample standard deviation); `sign="+"` writes the sign of the mean."""
    if not values:
        return "-"
    text = format(statistics.mean(values), f"{sign}.3f")
    return text if len(values) == 1 else f"{text} ± {statistics.stdev(values):.3f}"


def headline(record: dict, tasks: Iterable[str] | None) -> float:
    """The mean score over `tasks` (all of the record's where None) that the record ran."""
    scores = {t: r["score"] for t, r in record["results"]["tasks"].items()}
    chosen = [scores[t] for t in (tasks or scores) if t in scores]
    return sum(chosen) / len(chosen)


def paired_difference(record: dict, base: dict, tasks: tuple[str, ...] | None) -> float:
    """The headline average of `record` less `base`'s, over the same tasks: the headline tasks both ran
    (a run before tasks were added to it has fewer), or else every task both ran (a calibration run may
    train fewer tasks than the zero-shot row scores)."""
    both = record["results"]["tasks"].keys() & base["results"]["tasks"].keys()
    common = [t for t in tasks if t in both] if tasks else sorted(both)
    return headline(record, common) - headline(base, common)


def differing_modules(selected: dict[str, dict[str, int]]) -> float:
    """Share of adapted modules in which two or more tasks select different ranks."""
    modules = next(iter(selected.values())).keys()
    differ = sum(len({ranks[m] for ranks in selected.values()}) > 1 for m in modules)
    return differ / len(modules)


def moved(record: dict) -> float:
    """Share of (task, module) pairs whose selected rank changed during training."""
    before, after = record["details"]["initial_selected_ranks"], record["details"]["selected_ranks"]
    pairs = [(t, m) for t in after for m in after[t]]
    return sum(before[t][m] != after[t][m] for t, m in pairs) / len(pairs)


def old_tasks_change(grown: dict[int, dict], parent: dict[int, dict]) -> str:
    """How a grown run's scores on the tasks of the run it grew from (same seed) moved: the paired change
    of their average, and the largest change of one task's score over every seed."""
    pairs = [(r, parent[s]) for s, r in grown.items() if s in parent]
    if not pairs:
        return "-"
    averages = [paired_difference(r, p, None) for r, p in pairs]
    scores = [(r["results"]["tasks"], p["results"]["tasks"]) for r, p in pairs]
    largest = max(abs(now[t]["score"] - before[t]["score"]) for now, before in scores for t in before)
    return f"{mean_std(averages, '+')} ({largest:.4f})"


def table(suite: str, records: dict[str, dict[int, dict]]) -> str:
    spec = SUITES[suite]
    tasks = list(
        dict.fromkeys(t for v in records.values() for r in v.values() for t in r["results"]["tasks"])
    )
    base = records.get(spec.baseline, {})
    head = [
        "variant",
        "seeds",
        *tasks,
        "average",
        f"paired Δ vs {spec.baseline}",
        "trainable",
        "active/token",
    ]
    head += ["tasks differ", "moved", "wall (s)"]
    parents = {v.name: v.init_from for v in spec.variants if v.init_from}
    if parents:
        head.append("old tasks: Δ vs parent (max |Δ|)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, by_seed in records.items():
        runs = list(by_seed.values())
        cells = [name, ",".join(str(s) for s in sorted(by_seed))]
        cells += [
            mean_std([r["results"]["tasks"][t]["score"] for r in runs if t in r["results"]["tasks"]])
            for t in tasks
        ]
        cells.append(mean_std([headline(r, spec.headline_tasks) for r in runs]))
        # zero-shot is the same for every seed: it pairs with each of the baseline's
        pairs = {s: by_seed[min(by_seed)] for s in base} if "method" not in runs[0]["results"] else by_seed
        paired = [paired_difference(r, base[s], spec.headline_tasks) for s, r in pairs.items() if s in base]
        cells.append("-" if name == spec.baseline else mean_std(paired, "+"))
        trainable = runs[0]["results"]["parameters"]["trainable"]
        # MoRE's active parameters follow the ranks its tasks select, so they vary by seed
        active = statistics.mean(r["results"]["parameters"]["active_per_token"] for r in runs)
        cells += [f"{trainable:,}", f"{active:,.0f}"]
        method = runs[0]["results"].get("method")  # none: the base model, zero-shot
        selects = method is not None and method_named(method["method"]).nested  # MoRE: a rank per task
        selected = [
            r["details"]["selected_ranks"] for r in runs if selects and "selected_ranks" in r["details"]
        ]
        cells.append(mean_std([differing_modules(s) for s in selected]) if selected else "-")
        tracked = [r for r in runs if selects and "initial_selected_ranks" in r["details"]]
        cells.append(mean_std([moved(r) for r in tracked]) if tracked else "-")
        cells.append(f"{statistics.mean(r['wall_time_s_total'] for r in runs):.0f}")
        if parents:
            cells.append(old_tasks_change(by_seed, records.get(parents.get(name), {})))
        lines.append("| " + " | ".join(cells) + " |")
    commits = sorted({r["provenance"]["git_commit"][:10] for v in records.values() for r in v.values()})
    lines.append("")
    lines.append(
        f"Command: `python benchmarks/accuracy.py {suite}` (commit {', '.join(commits)}); "
        "scores are fractions "
        "(metric means per task), mean ± standard deviation over seeds; "
        "paired Δ: per-seed difference of the average; tasks differ: share of adapted modules in which "
        "two or more tasks select different ranks; moved: share of (task, module) selections that changed "
        "during training."
        + (
            " Old tasks: a grown run's scores on the tasks of the run it grew from, against that run's "
            "(same seed)."
            if parents
            else ""
        )
    )
    if spec.headline_tasks:
        lines.append(f"The average counts {', '.join(spec.headline_tasks)} only (see the protocol).")
    return "\n".join(lines)


def plot_tasks(suite: str, records: dict[str, dict[int, dict]], path: Path) -> Path:
    """Grouped bars: each task's score per variant, error bars = standard deviation over seeds."""
    tasks = list(next(iter(next(iter(records.values())).values()))["results"]["tasks"])
    fig = Figure(figsize=(max(8, 1.3 * len(tasks)), 4.5))
    ax = fig.subplots()
    width = 0.8 / len(records)
    for i, (name, by_seed) in enumerate(records.items()):
        values = [[r["results"]["tasks"][t]["score"] for r in by_seed.values()] for t in tasks]
        means = [np.mean(v) for v in values]
        errs = [np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in values]
        ax.bar(np.arange(len(tasks)) + i * width, means, width, yerr=errs, label=name, capsize=2)
    ax.set_xticks(np.arange(len(tasks)) + 0.4 - width / 2, labels=tasks)
    ax.set_ylabel("score")
    ax.set_title(f"{suite}: score per task (mean and sd over seeds)")
    ax.legend(fontsize=7, ncols=4)

    return save_png(fig, path)


def plots(suite: str, records: dict[str, dict[int, dict]], folder: Path) -> list[Path]:
    written = [plot_tasks(suite, records, folder / "tasks.png")]
    for name, by_seed in records.items():
        first = by_seed[min(by_seed)]["details"]
        if "selected_ranks" in first:
            written.append(
                plot_selected_ranks(first["selected_ranks"], folder / f"{name}-selected-ranks.png")
            )
        if "expert_load" in first:
            written.append(plot_expert_load(first["expert_load"], folder / f"{name}-expert-load.png"))
    return written


def replace_section(text: str, suite: str, body: str, heading: str | None = None) -> str:
    """`text` with the block between the suite's markers replaced, or appended under `heading`."""
    start, end = f"<!-- {suite}:start -->", f"<!-- {suite}:end -->"
    block = f"{start}\n{body}\n{end}"
    if start in text:
        return re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    return text.rstrip() + f"\n\n## {heading or f'Accuracy: {suite}'}\n\n{block}\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("suites", nargs="*", default=sorted(SUITES))
    parser.add_argument("--results", type=Path, default=ROOT / "results")
    args = parser.parse_args()
    text = MARKDOWN.read_text()
    for suite in args.suites:
        records = load(suite, args.results)
        if not records:
            continue
        body = table(suite, records)
        if not SUITES[suite].folder:  # a calibration's table needs no plots
            for path in plots(suite, records, args.results / suite / "plots"):
                body += f"\n\n![{path.stem}]({path.relative_to(MARKDOWN.parent)})"
        text = replace_section(text, suite, body)
        print(body)
    write_text(MARKDOWN, text)


if __name__ == "__main__":
    main()
