"""lm-evaluation-harness as a referee for rankmix's multiple-choice scoring.

rankmix scores each option of a multiple-choice row the way lm-eval does (summed log-likelihood of the
continuation; acc_norm divides it by a length in characters). To check that claim row by row, this
script scores a recipe's dev draw with rankmix, hands the very same (context, continuation) pairs to
lm-eval itself, and compares their acc, acc_norm and per-option log-likelihoods: once for the recipe's
base model (zero-shot) and, given a run folder of the recipe, once for its adapter exported as a stock
PEFT LoRA (`--model hf --model_args pretrained=BASE,peft=ADAPTER`). lm-eval runs in a virtual
environment of its own (`python -m venv /work/lmeval/venv && /work/lmeval/venv/bin/pip install lm-eval
peft torch==2.13.0`; it pins its own datasets and evaluate), called through subprocess.

    python benchmarks/lm_eval_referee.py --recipe configs/commonsense-smollm2-lora.yaml --run RUN \
        --data-dir ../shared/data --set "tasks=[arc_easy,piqa,winogrande]" --out /tmp/referee

Rows whose contexts are all equal become an ordinary lm-eval multiple-choice task (the options are the
continuations); rows with differing contexts and one shared continuation become a "multiple input"
task, as WinoGrande is (the options are the contexts). lm-eval's acc_norm divides by the length of its
options: the continuation without its space in the first form, the whole context in the second; rows
whose rankmix norms differ from those are listed in `norm_mismatch`.

Writes benchmarks/results/lm_eval_referee.json and its table in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

Row = dict[str, Any]
DELIMITER = " "  # lm-eval's target_delimiter: what it puts between context and option
FORMS = ("choices", "contexts")  # ordinary multiple choice; multiple input (WinoGrande's form)
TASK_YAML = """\
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: {text}
doc_to_choice: {choice}
doc_to_target: {target}
target_delimiter: "{delimiter}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""
# doc fields that lm-eval reads as they are (a field name, not a template): text, choice, target
FIELDS = {"choices": ("context", "choices", "gold"), "contexts": ("gold", "contexts", "continuation")}


def rows_of(task, examples) -> list[Row]:
    """The rows of a rankmix multiple-choice task, as rankmix itself builds its loglikelihood requests:
    each option's context and, after the space a decoder puts between them, its text."""
    rows = []
    for e in examples:
        options = task.kind.options(task, e)
        rows.append(
            {
                "contexts": [o.context for o in options],
                "continuations": [DELIMITER + o.text for o in options],
                "norm": list(task.kind.norm_lengths(task, e)),
                "gold": int(e.label),
            }
        )
    return rows


@torch.no_grad()
def rankmix_verdict(run, t: int) -> dict[str, Any]:
    """rankmix's own scores of task `t`'s dev rows: acc, acc_norm and each row's log-likelihoods."""
    task, examples = run.tasks[t], run.dev_sets[t]
    model, size = run.model.eval(), run.config.train.batch_size
    scores: list[torch.Tensor] = []
    for start in range(0, len(examples), size):
        chunk = examples[start : start + size]
        ids = torch.full((len(chunk),), t, dtype=torch.long)
        scores += run.family.scores(model, run.tokenizer, task, ids, chunk, run.config.train.max_length)
    picks = [run.family.read(task, e, s) for e, s in zip(examples, scores, strict=True)]
    return task.score(picks, [e.label for e in examples]) | {"per_row": [s.tolist() for s in scores]}


def form_of(row: Row) -> str:
    """Which lm-eval form expresses the row; an error for a row neither can."""
    contexts, continuations = row["contexts"], row["continuations"]
    if len(contexts) != len(continuations) or not contexts:
        raise ValueError(f"a row needs one context per continuation, at least one: {row}")
    if not all(c.startswith(DELIMITER) for c in continuations):
        raise ValueError(f"every continuation must start with {DELIMITER!r}, as lm-eval's do: {row}")
    if len(set(contexts)) == 1:
        return "choices"
    if len(set(continuations)) == 1:
        return "contexts"
    raise ValueError(f"contexts differ and so do continuations: lm-eval has no form for this row: {row}")


def lm_eval_norms(row: Row, form: str) -> list[int]:
    """What lm-eval's acc_norm divides each option's log-likelihood by: len() of its option string."""
    if form == "choices":
        return [len(c) - len(DELIMITER) for c in row["continuations"]]
    return [len(c) for c in row["contexts"]]


def write_tasks(rows: list[Row], folder: Path) -> dict[str, list[int]]:
    """One lm-eval task (JSON-lines file and YAML) per form present; {task name: its rows' indices}.
    lm-eval decides a task's form from its first document only, hence one task per form."""
    folder.mkdir(parents=True, exist_ok=True)
    forms = [form_of(row) for row in rows]
    tasks: dict[str, list[int]] = {}
    for form in FORMS:
        indices = [i for i, row_form in enumerate(forms) if row_form == form]
        if not indices:
            continue
        name = f"rankmix_referee_{form}"
        data = folder / f"{name}.jsonl"
        with data.open("w") as f:
            for i in indices:
                row = rows[i]
                if form == "choices":
                    doc = {"context": row["contexts"][0], "choices": lm_options(row["continuations"])}
                else:
                    doc = {"contexts": row["contexts"], "continuation": lm_options(row["continuations"])[0]}
                f.write(json.dumps({"row": i, "gold": int(row["gold"]), **doc}) + "\n")
        text, choice, target = FIELDS[form]
        yaml = TASK_YAML.format(
            name=name,
            data=json.dumps(str(data)),
            text=text,
            choice=choice,
            target=target,
            delimiter=DELIMITER,
        )
        (folder / f"{name}.yaml").write_text(yaml)
        tasks[name] = indices
    return tasks


def lm_options(continuations: list[str]) -> list[str]:
    """The continuations without the delimiter lm-eval puts back in front of them."""
    return [c[len(DELIMITER) :] for c in continuations]


def run_lm_eval(python: str, model_args: str, folder: Path, tasks: list[str]) -> Path:
    """Run lm-eval, offline, on the tasks in `folder`/tasks; the folder its results and samples are under
    (the log is `folder`/lm_eval.log)."""
    out = folder / "results"
    command = [
        python, "-m", "lm_eval", "--model", "hf", "--model_args", model_args,
        "--include_path", str(folder / "tasks"), "--tasks", ",".join(tasks), "--device", "cpu",
        "--batch_size", "1", "--log_samples", "--output_path", str(out),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    # no hub here; the json dataset's cache stays in the run's folder, never stale from an earlier one
    env |= {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env["HF_DATASETS_CACHE"] = str(folder / "datasets-cache")
    log = folder / "lm_eval.log"
    with log.open("w") as f:
        done = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, env=env, check=False)
    if done.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
        raise RuntimeError(f"lm-eval failed ({done.returncode}); {log} ends:\n{tail}")
    return out


def read_samples(out: Path, task: str) -> list[dict[str, Any]]:
    """lm-eval's per-document records of `task` (--log_samples), in document order."""
    files = sorted(out.glob(f"**/samples_{task}_*.jsonl"))
    if not files:
        raise FileNotFoundError(f"lm-eval wrote no samples for {task} under {out}")
    samples = [json.loads(line) for line in files[-1].read_text().splitlines() if line.strip()]
    return sorted(samples, key=lambda s: s["doc_id"])


def requests_of(sample: dict[str, Any]) -> list[tuple[str, str]]:
    """The (context, continuation) pairs lm-eval scored for one document, in option order."""
    args = sorted(sample["arguments"].items(), key=lambda item: int(item[0].rsplit("_", 1)[1]))
    return [(a["arg_0"], a["arg_1"]) for _, a in args]


def argmax(values: list[float]) -> int:
    """The first index of the largest value, as numpy's argmax (lm-eval's) breaks ties."""
    return max(range(len(values)), key=lambda i: (values[i], -i))


def referee(
    rows: list[Row],
    model: str,
    out: Path,
    *,
    adapter: str | None = None,
    python: str = "/work/lmeval/venv/bin/python",
) -> dict[str, Any]:
    """lm-eval's verdict on `rows` with the transformers folder `model` (and a PEFT adapter): acc,
    acc_norm, and per row its options' log-likelihoods, lm-eval's picks and the norms it divided by."""
    out.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="lm_eval_", dir=out))
    tasks = write_tasks(rows, folder / "tasks")
    model_args = ",".join(a for a in (f"pretrained={model}", f"peft={adapter}" if adapter else "") if a)
    results = run_lm_eval(python, model_args, folder, list(tasks))
    verdict: list[dict[str, Any]] = [{} for _ in rows]
    for task, indices in tasks.items():
        samples = read_samples(results, task)
        if [s["doc"]["row"] for s in samples] != indices:
            raise RuntimeError(f"lm-eval's samples of {task} are not the rows it was given")
        for sample in samples:
            i = sample["doc"]["row"]
            if requests_of(sample) != list(zip(rows[i]["contexts"], rows[i]["continuations"], strict=True)):
                raise RuntimeError(
                    f"lm-eval's requests for row {i} are not its (context, continuation) pairs"
                )
            form = task.removeprefix("rankmix_referee_")
            lls = [float(ll) for ll, _greedy in sample["filtered_resps"]]
            pick_norm = argmax([ll / n for ll, n in zip(lls, rows[i]["norm"], strict=True)])
            verdict[i] = {
                "form": form,
                "loglikelihoods": lls,
                "acc": float(sample["acc"]),
                "acc_norm": float(sample["acc_norm"]),
                "lm_eval_norm": lm_eval_norms(rows[i], form),
                "acc_norm_by_row_norm": float(pick_norm == rows[i]["gold"]),
            }
    n = len(rows)
    return {
        "rows": n,
        "acc": sum(v["acc"] for v in verdict) / n,
        "acc_norm": sum(v["acc_norm"] for v in verdict) / n,
        "acc_norm_by_row_norm": sum(v["acc_norm_by_row_norm"] for v in verdict) / n,
        "norm_mismatch": [i for i, v in enumerate(verdict) if v["lm_eval_norm"] != list(rows[i]["norm"])],
        "model_args": model_args,
        "lm_eval_folder": str(folder),
        "per_row": verdict,
    }


def hf_folder(model: str, out: Path) -> str:
    """A transformers folder lm-eval can load: `model` itself when it is one, else rankmix's model of
    that name (e.g. smollm2, dequantized from its GGUF file) saved once under `out`."""
    if Path(model).is_dir():
        return str(Path(model).resolve())
    folder = out / f"{model}-hf"
    if not (folder / "config.json").exists():
        from rankmix.recipes.loading import load_model

        base, tokenizer, _family = load_model(model)
        base.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return str(folder.resolve())


def compare(run, out: Path, python: str, trained: bool) -> dict[str, Any]:
    """Per multiple-choice task of `run`: rankmix's and lm-eval's acc and acc_norm on the same rows, the
    rows where their picks differ, and the largest log-likelihood difference. `trained`: lm-eval gets
    the task's adapter, exported as a stock PEFT LoRA (one per task for a task-routed method)."""
    from rankmix.recipes.run import export_task

    model = hf_folder(run.config.model, out)
    tasks = {}
    for t, task in enumerate(run.tasks):
        start = time.perf_counter()
        ours = rankmix_verdict(run, t)
        seconds = time.perf_counter() - start
        adapter = None
        if trained:
            routed = run.adapted.method.task_routed
            adapter = out / "adapters" / (task.name if routed else "all")
            if not adapter.exists():
                export_task(run, task.name if routed else None, adapter)
        rows = rows_of(task, run.dev_sets[t])
        theirs = referee(rows, model, out / task.name, adapter=adapter and str(adapter), python=python)
        pairs = list(zip(theirs["per_row"], ours["per_row"], strict=True))
        differ = [i for i, (row, mine) in enumerate(pairs) if argmax(row["loglikelihoods"]) != argmax(mine)]
        gap = max(abs(a - b) for row, mine in pairs for a, b in zip(row["loglikelihoods"], mine, strict=True))
        tasks[task.name] = {
            "rows": theirs["rows"],
            "rankmix": {"acc": ours["acc"], "acc_norm": ours["acc_norm"], "seconds": round(seconds, 1)},
            "lm_eval": {"acc": theirs["acc"], "acc_norm": theirs["acc_norm"]},
            "rows_picked_differently": differ,
            "max_loglikelihood_difference": gap,
            "norm_mismatch": theirs["norm_mismatch"],
        }
        print(task.name, tasks[task.name], flush=True)
    return tasks


def table(data: dict[str, Any]) -> str:
    lines = [
        f"Command: `{data['command']}` (commit {data['provenance']['git_commit'][:7]}; lm-eval "
        f"{data['lm_eval_version']}, `--model hf`, batch size 1, on the CPU).",
        "",
        "| model | task | rows | acc rankmix | acc lm-eval | acc_norm rankmix | acc_norm lm-eval | "
        "rows picked differently | largest log-lik. difference |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for model, tasks in data["models"].items():
        for name, r in tasks.items():
            ours, theirs = r["rankmix"], r["lm_eval"]
            lines.append(
                f"| {model} | {name} | {r['rows']} | {ours['acc']:.3f} | {theirs['acc']:.3f} | "
                f"{ours['acc_norm']:.3f} | {theirs['acc_norm']:.3f} | {len(r['rows_picked_differently'])} | "
                f"{r['max_loglikelihood_difference']:.1e} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    import sys

    from accuracy import provenance
    from rankmix.files import write_json, write_text
    from rankmix.recipes.run import open_run, zero_shot_run
    from render import MARKDOWN, replace_section

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--recipe", required=True, help="its base model, zero-shot, on its tasks and dev draw"
    )
    parser.add_argument("--run", help="also a run folder of that recipe: its adapter, exported for PEFT")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, required=True, help="where lm-eval's files go")
    parser.add_argument(
        "--results", type=Path, default=Path(__file__).parent / "results" / "lm_eval_referee.json"
    )
    parser.add_argument("--lm-eval-python", default="/work/lmeval/venv/bin/python")
    args = parser.parse_args(argv)

    overrides = [f"data_dir={args.data_dir}", *args.set]
    models = {
        "base (zero-shot)": compare(
            zero_shot_run(args.recipe, overrides), args.out / "base", args.lm_eval_python, trained=False
        )
    }
    if args.run:
        run, _ = open_run(args.run, [f"data_dir={args.data_dir}"], splits=("dev",))
        models[f"adapter ({Path(args.run).name})"] = compare(
            run, args.out / "run", args.lm_eval_python, trained=True
        )
    version = subprocess.run(
        [args.lm_eval_python, "-c", "import importlib.metadata as m; print(m.version('lm_eval'))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    data = {
        "command": "python benchmarks/lm_eval_referee.py " + " ".join(sys.argv[1:]),
        "models": models,
        "lm_eval_version": version,
        "provenance": provenance(),
    }
    write_json(args.results, data)
    write_text(MARKDOWN, replace_section(MARKDOWN.read_text(), "lm-eval-referee", table(data), HEADING))
    print(table(data))


HEADING = "Accuracy: lm-evaluation-harness as the referee"

if __name__ == "__main__":
    main()
