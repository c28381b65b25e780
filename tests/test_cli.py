"""End-to-end tests of the `rankmix` command line: train | eval | merge | export-lora | inspect | plot on
tiny random Llama, T5 and BERT models saved to folders (as a user would point `model:` at them), trained
for a few steps on small GLUE-format tasks the tests generate (tests/glue_fixture.py, the `glue_data`
fixture), so that they run on any clone; resume after an interruption; task metrics against
hand-computed values; bad input that must fail early with a clear message. Only the tests of the real
files' quirks read the benchmark data folder ../shared/data, and skip without it."""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import math
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from helpers import build_base, word_tokenizer
from rankmix import MoREConfig, RankMixModel
from rankmix.cli import main
from rankmix.families import FAMILIES as FAMILY_OF
from rankmix.model import layer_index
from rankmix.recipes.run import open_run, router_report
from rankmix.sizing import parameter_counts
from rankmix.tasks import Example, get_task

# The real benchmark data (../shared/data from the project root), read only by the tests of its quirks.
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TASKS = ["rte", "stsb", "cola"]
FAMILIES = ("decoder", "seq2seq", "encoder")
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "<s>", "</s>"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ATOL = 1e-5

needs_real_data = pytest.mark.skipif(
    not (DATA / "glue" / "QQP").is_dir(), reason=f"checks the published QQP files, not found in {DATA}"
)


# -- helpers --------------------------------------------------------------------------------------------
def cli(*args: object) -> tuple[int, str, str]:
    """Run `rankmix ARGS` in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def interrupt_at_batch(monkeypatch, n: int, delay: float = 0.0) -> None:
    """Make training's `n`-th batch draw raise KeyboardInterrupt (a Ctrl-C mid-step), each draw taking
    `delay` seconds more; monkeypatch.undo() lifts it."""
    from rankmix.recipes import train as train_mod

    original, calls = train_mod.TaskSampler.next_batch, {"n": 0}

    def interrupting(self):
        calls["n"] += 1
        time.sleep(delay)
        if calls["n"] == n:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(train_mod.TaskSampler, "next_batch", interrupting)


def ok(*args: object) -> str:
    """Run `rankmix ARGS` in-process, require success, return stdout."""
    code, out, err = cli(*args)
    assert code == 0, f"rankmix {' '.join(map(str, args))} exited {code}: {err}"
    return out


def fails(capsys, *args: object) -> str:
    """Run `rankmix ARGS`, require exit code 2 (a user error), return its stderr message."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    assert info.value.code == 2
    err = capsys.readouterr().err
    prefix = f"rankmix {args[0]}: error: "
    messages = [line for line in err.splitlines() if line.startswith(prefix)]
    assert len(messages) == 1, err  # one message, not a traceback
    return messages[0][len(prefix) :]


def recipe_dict(
    model: Path, out: Path, data_dir: Path, tasks=TASKS, method: dict | None = None, **train
) -> dict:
    """A tiny recipe on the data folder `data_dir`: each training run takes seconds."""
    return {
        "model": str(model),
        "tasks": list(tasks),
        "data_dir": str(data_dir),
        "output_dir": str(out),
        "method": method or {"method": "more", "max_rank": 4, "target_modules": "all-linear"},
        "train": {
            "steps": 8,
            "batch_size": 4,
            "lr": 1.0e-2,
            "warmup_steps": 1,
            "eval_every": 4,
            "log_every": 2,
            "max_train_examples": 32,
            "max_eval_examples": 12,
            "max_length": 64,
            "seed": 0,
            **train,
        },
    }


def write_recipe(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_SIGNATURE


def auto_class(family: str):
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    return {"decoder": AutoModelForCausalLM, "seq2seq": AutoModelForSeq2SeqLM, "encoder": AutoModel}[family]


def output_of(out) -> torch.Tensor:
    logits = out.get("logits") if hasattr(out, "get") else None
    return logits if logits is not None else out["last_hidden_state"]


def model_inputs(family: str, tokenizer, task: str, data_dir: Path) -> dict[str, torch.Tensor]:
    """Two dev examples of `task` as the family reads them (prompt + answer for T5's decoder)."""
    t = get_task(task)
    examples, _ = t.load("dev", data_dir)
    examples = examples[:2]
    if family == "encoder":
        return dict(
            tokenizer(
                [e.text_a for e in examples],
                [e.text_b or "" for e in examples] if examples[0].text_b else None,
                padding=True,
                return_tensors="pt",
            )
        )
    enc = dict(tokenizer([t.prompt(e) for e in examples], padding=True, return_tensors="pt"))
    if family == "seq2seq":
        answers = [tokenizer(t.kind.target(t, e).text)["input_ids"] for e in examples]
        width = max(len(a) for a in answers)
        rows = [[0, *a] + [0] * (width - len(a)) for a in answers]  # decoder_start_token_id = pad = 0
        enc["decoder_input_ids"] = torch.tensor(rows)
    return enc


# -- tiny models a user could point `model:` at ------------------------------------------------------
def _corpus(data_dir: Path) -> list[str]:
    """A few hundred lines of each task's training file, the prompts and the answer words."""
    lines: list[str] = []
    for rel in ("glue/RTE/train.tsv", "glue/CoLA/train.tsv", "glue/STS-B/train.tsv"):
        with (data_dir / rel).open(encoding="utf-8") as f:
            lines += list(itertools.islice(f, 300))
    for name in TASKS:
        task = get_task(name)
        lines += [task.template, " ".join(task.label_words)]
    lines.append("0 1 2 3 4 5 6 7 8 9 . yes no")
    return lines


def _tokenizer(corpus: list[str], encoder: bool):
    if encoder:  # BERT-style: [CLS] a [SEP] b [SEP], with token type ids
        names = ["input_ids", "token_type_ids", "attention_mask"]
        return word_tokenizer(corpus, template="bert", specials=SPECIALS, model_input_names=names)
    return word_tokenizer(corpus, specials=SPECIALS)


def save_tiny_models(root: Path, text_tok, enc_tok, t5_tok=None) -> dict[str, Path]:
    """{family: folder} of a tiny random Llama, T5 (with `t5_tok`, else `text_tok`) and BERT (with
    `enc_tok`), saved with their tokenizers; one seed for the three models, drawn in turn."""
    vocab, eos, bos = len(text_tok), text_tok.eos_token_id, text_tok.bos_token_id
    torch.manual_seed(0)
    built = {
        "decoder": (
            build_base(
                "llama",
                vocab=vocab,
                seed=None,
                max_position_embeddings=128,
                bos_token_id=bos,
                eos_token_id=eos,
            ),
            text_tok,
        ),
        "seq2seq": (build_base("t5", vocab=vocab, seed=None, eos_token_id=eos), t5_tok or text_tok),
        "encoder": (
            build_base("bert", vocab=vocab, seed=None, max_position_embeddings=128, pad_token_id=0),
            enc_tok,
        ),
    }
    dirs = {}
    for family, (model, tokenizer) in built.items():
        dirs[family] = root / family
        model.save_pretrained(dirs[family])
        tokenizer.save_pretrained(dirs[family])
    return dirs


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory, glue_data) -> dict[str, Path]:
    """{family: folder} of tiny random models with their tokenizers, plus a ViT (non-text) config."""
    from transformers import ViTConfig

    root = tmp_path_factory.mktemp("models")
    corpus = _corpus(glue_data)
    text_tok, enc_tok = _tokenizer(corpus, encoder=False), _tokenizer(corpus, encoder=True)
    assert text_tok.pad_token_id == 0
    dirs = save_tiny_models(root, text_tok, enc_tok)
    dirs["vit"] = root / "vit"
    ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    ).save_pretrained(dirs["vit"])
    return dirs


class Runs:
    """Training runs shared by the tests of this module, trained on first use."""

    def __init__(self, models: dict[str, Path], root: Path, data_dir: Path) -> None:
        self.models, self.root, self.data_dir = models, root, data_dir
        self.done: dict[str, tuple[Path, str]] = {}

    def recipe(self, name: str, family: str, **kw) -> Path:
        data = recipe_dict(self.models[family], self.root / name, self.data_dir, **kw)
        return write_recipe(self.root / f"{name}.yaml", data)

    def get(self, family: str, method: str = "more") -> tuple[Path, str]:
        """(run folder, stdout of `rankmix train`)."""
        name = f"{family}-{method}"
        if name not in self.done:
            if method == "more":
                path = self.recipe(name, family)
            else:  # token routing: HiLo, 1 expert of rank 2 in layer 0, 2 of rank 4 in layer 1
                hilo = {"method": "hilo", "experts": "12", "ranks": "24", "top_k": 1}
                path = self.recipe(name, family, tasks=["rte", "cola"], method=hilo)
            stdout = ok("train", path, "--no-progress")
            self.done[name] = (self.root / name, stdout)
        return self.done[name]


@pytest.fixture(scope="module")
def runs(model_dirs, tmp_path_factory, glue_data) -> Runs:
    return Runs(model_dirs, tmp_path_factory.mktemp("runs"), glue_data)


def reference_model(model_dirs, family: str, run: Path) -> RankMixModel:
    """The best adapter of `run` on a freshly loaded base, in eval mode."""
    base = auto_class(family).from_pretrained(model_dirs[family])
    return RankMixModel.from_pretrained(base, run / "adapter").eval()


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- 1. train / eval / merge / export-lora / inspect / plot on each model family -----------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_train_writes_results_metrics_and_adapter(runs, model_dirs, family):
    run, stdout = runs.get(family)
    results = json.loads((run / "results.json").read_text())
    assert results["family"] == family
    assert results["steps"] == 8
    assert results["best_step"] in (4, 8)
    assert set(results["tasks"]) == set(TASKS)
    expected_metrics = {"rte": {"accuracy"}, "stsb": {"pearson", "spearman"}, "cola": {"mcc"}}
    for task, metrics in results["tasks"].items():
        assert set(metrics) == expected_metrics[task] | {"score"}
        names = expected_metrics[task]
        assert metrics["score"] == pytest.approx(sum(metrics[m] for m in names) / len(names))
        for m in expected_metrics[task]:
            assert -1.0 <= metrics[m] <= 1.0
    assert results["average"] == pytest.approx(sum(r["score"] for r in results["tasks"].values()) / 3)
    # the best result is the best of the evaluations in the history
    history = results["history"]
    assert [h["step"] for h in history] == [4, 8]
    best = max(history, key=lambda h: h["average"])
    assert results["best_step"] == best["step"] and results["tasks"] == best["tasks"]

    # parameter counts, checked against the saved adapter and the base model
    adapter = run / "adapter"
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    n_adapter = sum(t.numel() for t in tensors.values())
    counts = results["parameters"]
    assert counts["adapter"] + counts["router"] == n_adapter
    assert counts["router"] > 0  # MoRE's rank selector
    base = auto_class(family).from_pretrained(model_dirs[family])
    n_base = sum(p.numel() for p in base.parameters())
    n_heads = 0
    if family == "encoder":
        heads = load_file(str(adapter / "heads.safetensors"))
        n_heads = sum(t.numel() for t in heads.values())
        assert n_heads == (32 + 1) * (2 + 1 + 2)  # rte: 2 labels, stsb: 1 score, cola: 2 labels
        assert counts["heads"] == n_heads
    assert counts["trainable"] == n_adapter + n_heads
    assert counts["total"] == n_base + n_adapter + n_heads
    assert 0 < counts["active_per_token"] <= counts["adapter"]

    # selected ranks: a mean rank in 1..max_rank per task
    ranks = results["selected_ranks"]
    assert set(ranks) == set(TASKS)
    assert all(1 <= r <= 4 for r in ranks.values())

    # metrics.jsonl: a loss every log_every (2) steps, an evaluation every eval_every (4) steps
    records = read_jsonl(run / "metrics.jsonl")
    losses = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval/average" in r]
    assert [r["step"] for r in losses] == [2, 4, 6, 8]
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 and r["lr"] >= 0 for r in losses)
    assert all("aux/contrastive" in r for r in losses)
    assert [r["step"] for r in evals] == [4, 8]
    for r, h in zip(evals, history, strict=True):
        assert r["eval/average"] == pytest.approx(h["average"])
        assert {k: r[f"eval/{k}"] for k in TASKS} == pytest.approx({k: h["tasks"][k]["score"] for k in TASKS})
    assert list((run / "tb").glob("events.out.tfevents.*"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = EventAccumulator(str(run / "tb"))
    tb.Reload()
    assert [e.step for e in tb.Scalars("loss")] == [2, 4, 6, 8]
    assert [e.step for e in tb.Scalars("eval/average")] == [4, 8]
    assert [e.value for e in tb.Scalars("eval/average")] == pytest.approx([h["average"] for h in history])
    assert {"lr", "aux/contrastive", "eval/rte", "eval/stsb", "eval/cola"} <= set(tb.Tags()["scalars"])

    # the adapter folder
    files = {p.name for p in adapter.iterdir()}
    expected = {"adapter_config.json", "adapter_model.safetensors", "run.yaml"}
    if family == "encoder":
        expected.add("heads.safetensors")
    assert files == expected
    assert json.loads((adapter / "adapter_config.json").read_text())["adapter"]["method"] == "more"
    assert yaml.safe_load((adapter / "run.yaml").read_text())["tasks"] == TASKS
    assert (run / "checkpoint.pt").is_file()

    # the printed table: one row per task and the average, with the best scores
    rows = {line.split()[0]: line for line in stdout.splitlines() if line.split()}
    for task in TASKS:
        assert rows[task].rstrip().endswith(f"{results['tasks'][task]['score']:.3f}")
    assert rows["average"].rstrip().endswith(f"{results['average']:.3f}")
    assert "mean selected rank per task" in stdout


@pytest.mark.parametrize("family", FAMILIES)
def test_results_describe_the_saved_best_adapter(runs, model_dirs, family):
    """results.json reports the best evaluation and the adapter saved then: its selected ranks and its
    active parameter count must be those of that adapter, not of the model at the last step."""
    run, _ = runs.get(family)
    results = json.loads((run / "results.json").read_text())
    saved = reference_model(model_dirs, family, run)
    mean_ranks = {t: sum(r.values()) / len(r) for t, r in saved.selected_ranks().items()}
    assert results["selected_ranks"] == pytest.approx(mean_ranks), f"best step {results['best_step']}"
    assert results["parameters"]["active_per_token"] == saved.parameter_counts()["active_per_token"]


@pytest.mark.parametrize("family", FAMILIES)
def test_eval_reproduces_best_results(runs, family, tmp_path):
    run, _ = runs.get(family)
    results = json.loads((run / "results.json").read_text())
    stdout = ok("eval", run, "--out", tmp_path / "eval.json")
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    assert set(evaluated) == set(TASKS)
    for task in TASKS:
        assert evaluated[task] == pytest.approx(results["tasks"][task], abs=1e-6)
        assert f"{results['tasks'][task]['score']:.3f}" in stdout
    # the adapter/ folder itself is accepted too
    assert ok("eval", run / "adapter") == stdout


def test_run_folder_of_an_older_rankmix_still_evaluates(runs, tmp_path):
    """A run folder written before options were added (its adapter_config.json lacks them, and its
    run.yaml names only what the user wrote) is evaluated with the adapter it holds: the options it
    saved, the defaults of its time for the rest."""
    run = copy_run(runs.get("decoder")[0], tmp_path / "old")
    config_file = run / "adapter" / "adapter_config.json"
    meta = json.loads(config_file.read_text())
    for added in ("task_embedding_std", "zero_gate_bias", "learn_selection", "start_at_max_rank"):
        meta["adapter"].pop(added)
    config_file.write_text(json.dumps(meta))
    recipe = yaml.safe_load((run / "adapter" / "run.yaml").read_text())
    recipe["method"] = {"method": "more", "max_rank": 4, "target_modules": "all-linear"}
    recipe["method"]["linear_scaling"] = not meta["adapter"]["linear_scaling"]  # a default that moved
    (run / "adapter" / "run.yaml").write_text(yaml.safe_dump(recipe))
    assert ok("eval", run) == ok("eval", runs.get("decoder")[0])


@pytest.mark.parametrize("family", FAMILIES)
def test_merge_gives_plain_model_with_same_outputs(runs, model_dirs, family, tmp_path):
    from transformers import AutoTokenizer

    run, _ = runs.get(family)
    out = tmp_path / "merged"
    stdout = ok("merge", run, "--task", "rte", "--out", out)
    assert str(out) in stdout
    merged = auto_class(family).from_pretrained(out).eval()
    assert not any("bank" in n or "router" in n for n, _ in merged.named_parameters())
    tokenizer = AutoTokenizer.from_pretrained(out)
    inputs = model_inputs(family, tokenizer, "rte", runs.data_dir)
    reference = reference_model(model_dirs, family, run)
    with torch.no_grad():
        want = output_of(reference(**inputs, task_ids=torch.tensor([0, 0])))  # rte is task 0
        got = output_of(merged(**inputs))
        other = output_of(reference(**inputs, task_ids=torch.tensor([2, 2])))  # cola
    assert torch.allclose(got, want, atol=ATOL)
    base = auto_class(family).from_pretrained(model_dirs[family]).eval()
    with torch.no_grad():
        assert not torch.allclose(output_of(base(**inputs)), want, atol=ATOL)  # the merge changed it
    if not torch.equal(want, other):  # tasks with other selected ranks give other outputs
        assert not torch.allclose(got, other, atol=ATOL)
    if family == "encoder":  # the task head travels beside the encoder
        head = load_file(str(out / "task_head.safetensors"))
        heads = load_file(str(run / "adapter" / "heads.safetensors"))
        assert set(head) == {"weight", "bias"}
        assert torch.equal(head["weight"], heads["0.weight"]) and torch.equal(head["bias"], heads["0.bias"])


@pytest.mark.parametrize("family", FAMILIES)
def test_export_lora_loads_in_peft_with_same_outputs(runs, model_dirs, family, tmp_path):
    from peft import PeftModel
    from transformers import AutoTokenizer

    run, _ = runs.get(family)
    out = tmp_path / "cola-lora"
    stdout = ok("export-lora", run, "--task", "cola", "--out", out)
    assert str(out) in stdout
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"
    base = auto_class(family).from_pretrained(model_dirs[family])
    peft_model = PeftModel.from_pretrained(base, out).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dirs[family])
    inputs = model_inputs(family, tokenizer, "cola", runs.data_dir)
    reference = reference_model(model_dirs, family, run)
    with torch.no_grad():
        want = output_of(reference(**inputs, task_ids=torch.tensor([2, 2])))  # cola is task 2
        got = output_of(peft_model(**inputs))
    assert torch.allclose(got, want, atol=ATOL)
    # each module holds the rank cola selected, zero-padded to the largest
    selected = reference.selected_ranks()["cola"]
    tensors = load_file(str(out / "adapter_model.safetensors"))
    used = {
        k.removeprefix("base_model.model.").removesuffix(".lora_A.weight"): int(a.any(1).sum())
        for k, a in tensors.items()
        if k.endswith("lora_A.weight")
    }
    assert used == selected


@pytest.mark.parametrize("family", FAMILIES)
def test_inspect_prints_layers_and_selected_ranks(runs, model_dirs, family):
    run, _ = runs.get(family)
    stdout = ok("inspect", run)
    assert "method: more" in stdout and f"tasks: {TASKS}" in stdout
    assert "at initialisation" not in stdout  # a trained run's ranks are the trained ones
    reference = reference_model(model_dirs, family, run)
    counts = reference.parameter_counts()
    counts["trainable"] = counts["adapter"] + counts["router"]  # loaded for inspection as trained
    if family == "encoder":  # the task heads train too, and count as train counts them
        counts["heads"] = sum(p.numel() for p in load_file(run / "adapter" / "heads.safetensors").values())
        counts["trainable"] += counts["heads"]
        counts["total"] += counts["heads"]
    assert f"parameters: {counts}" in stdout
    assert counts == json.loads((run / "results.json").read_text())["parameters"]  # one definition
    lines = stdout.splitlines()
    header = next(
        i for i, line in enumerate(lines) if line.split()[:4] == ["layer", "modules", "experts", "ranks"]
    )
    modules = [name for name, _ in reference.adapted_modules()]
    layer_rows = {line.split()[0]: line.split() for line in lines[header + 1 : header + 3]}
    for layer in ("0", "1"):
        n = sum(layer_index(m) == int(layer) for m in modules)
        assert layer_rows[layer] == [layer, str(n), "4", "1,2,3,4"]  # 4 nested experts of ranks 1..4
    selected = reference.selected_ranks()
    start = next(i for i, line in enumerate(lines) if line.startswith("selected rank per task"))
    task_rows = {line.split()[0]: line.split()[1:] for line in lines[start + 1 : start + 4]}
    assert set(task_rows) == set(TASKS)
    for task, values in task_rows.items():
        for layer, value in zip((0, 1), values, strict=True):
            ranks = [r for m, r in selected[task].items() if layer_index(m) == layer]
            assert float(value) == pytest.approx(sum(ranks) / len(ranks), abs=0.05)


def test_inspect_recipe_before_training(runs):
    recipe = runs.recipe("inspect-only", "decoder")
    stdout = ok("inspect", recipe)
    assert "method: more" in stdout and "selected rank per task" in stdout
    assert "at initialisation" in stdout  # an untrained recipe's ranks say so
    assert not (runs.root / "inspect-only").exists()  # nothing trained, nothing written


def test_version_and_tasks(capsys):
    """--version prints the package version; `tasks` lists every registered task with its kind, its
    metrics and where its data comes from (a local folder, the hub, or generated)."""
    from rankmix.tasks import get_task, task_names
    from rankmix.version import __version__

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"rankmix {__version__}"
    lines = ok("tasks").splitlines()
    rows = {line.split()[0]: line for line in lines[1:]}
    assert sorted(rows) == task_names()
    for name, line in rows.items():
        task = get_task(name)
        assert ", ".join(task.metrics) in line
        assert task.kind.name in line and (not task.labels or f"{len(task.labels)} classes" in line)
    assert "glue/STS-B/ (TSV)" in rows["stsb"] and "nyu-mll/glue (stsb)" in rows["stsb"]
    assert "generated by rankmix" in rows["negation"]


@pytest.mark.parametrize("family", FAMILIES)
def test_plot_writes_pngs(runs, family, tmp_path):
    run, _ = runs.get(family)
    stdout = ok("plot", run, "--out", tmp_path / "plots")
    written = {Path(line).name for line in stdout.split()}
    assert written == {"allocation.png", "selected_ranks.png"}
    for name in written:
        assert is_png(tmp_path / "plots" / name)
    if family == "decoder":  # by default beside the adapter, in <run>/plots
        stdout = ok("plot", run / "adapter")
        assert {Path(line) for line in stdout.split()} == {run / "plots" / name for name in written}
        assert all(is_png(run / "plots" / name) for name in written)


@pytest.mark.parametrize("family", ["decoder", "seq2seq"])
def test_eval_generate_mode(runs, family, tmp_path):
    run, _ = runs.get(family)
    ok("eval", run, "--mode", "generate", "--out", tmp_path / "gen.json")
    results = json.loads((tmp_path / "gen.json").read_text())
    assert set(results) == set(TASKS)
    for r in results.values():
        assert all(-1.0 <= v <= 1.0 for v in r.values())


@pytest.mark.parametrize(
    ("family", "args", "expected"),
    [
        ("encoder", ("merge",), ["--task", "rte", "stsb", "cola"]),
        ("decoder", ("merge",), ["--task", "rte", "stsb", "cola"]),
        ("decoder", ("export-lora",), ["--task", "rte", "stsb", "cola"]),
        ("decoder", ("merge", "--task", "mrpc"), ["unknown task 'mrpc'", "rte", "stsb", "cola"]),
    ],
    ids=["encoder-merge", "decoder-merge", "decoder-export", "unknown-task"],
)
def test_merge_and_export_need_a_task_of_the_run(runs, capsys, tmp_path, family, args, expected):
    run, _ = runs.get(family)
    err = fails(capsys, args[0], run, *args[1:], "--out", tmp_path / "out")
    for word in expected:  # a CLI user passes --task, not the Python API's task=...
        assert word in err
    assert not (tmp_path / "out").exists()


# -- 2. a token-routed method ------------------------------------------------------------------------
def test_hilo_trains_plots_expert_load_and_refuses_merge(runs, capsys, tmp_path):
    run, _ = runs.get("decoder", "hilo")
    results = json.loads((run / "results.json").read_text())
    assert set(results["tasks"]) == {"rte", "cola"}
    assert results["selected_ranks"] is None
    losses = [r for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]
    assert losses and all("aux/balance" in r for r in losses)
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())["adapter"]
    assert config["method"] == "hilo" and config["top_k"] == 1

    # the expert load kept from the evaluation that saved the adapter: what the dev set gives again
    recounted = router_report(open_run(run, [], splits=("dev",))[0])["expert_load"]
    assert results["expert_load"].keys() == recounted.keys()
    for name, load in recounted.items():
        assert results["expert_load"][name]["share"] == pytest.approx(load["share"])
        assert results["expert_load"][name]["experts_per_token"] == pytest.approx(load["experts_per_token"])

    out = ok("plot", run, "--out", tmp_path / "plots")
    assert {Path(p).name for p in out.split()} == {"allocation.png", "expert_load.png"}
    assert is_png(tmp_path / "plots" / "expert_load.png") and is_png(tmp_path / "plots" / "allocation.png")

    for command in ("merge", "export-lora"):
        err = fails(capsys, command, run, "--task", "rte", "--out", tmp_path / command)
        assert "token" in err
        assert not (tmp_path / command).exists()


# -- 3. metrics against values computed by hand ------------------------------------------------------
def test_task_scores_match_hand_computed_values():
    # classification, 6 examples:  pred 1 1 0 0 1 0 / gold 1 0 0 1 1 0
    #   tp = 2 (ex. 0, 4), fp = 1 (ex. 1), fn = 1 (ex. 3), tn = 2 (ex. 2, 5)
    #   accuracy = 4/6;  MCC = (tp*tn - fp*fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = (4-1)/sqrt(81) = 1/3
    pred, gold = [1, 1, 0, 0, 1, 0], [1, 0, 0, 1, 1, 0]
    assert get_task("rte").score(pred, gold) == pytest.approx({"accuracy": 4 / 6, "score": 4 / 6})
    assert get_task("cola").score(pred, gold) == pytest.approx({"mcc": 1 / 3, "score": 1 / 3})
    # F1 (MRPC): pred 1 1 1 0 1 0 / gold 1 0 0 1 1 0: tp = 2, fp = 2, fn = 1, tn = 1
    #   accuracy = 3/6;  F1 = 2tp / (2tp + fp + fn) = 4/7;  score = (4/7 + 1/2) / 2
    mrpc = get_task("mrpc").score([1, 1, 1, 0, 1, 0], gold)
    assert mrpc == pytest.approx({"f1": 4 / 7, "accuracy": 0.5, "score": (4 / 7 + 0.5) / 2})
    # regression (STS-B): pred 0 1 2 3 4 10 / gold 0 1 2 3 4 5
    #   mean pred = 20/6 = 10/3, mean gold = 2.5
    #   dp = -10/3 -7/3 -4/3 -1/3 2/3 20/3;  dg = -2.5 -1.5 -0.5 0.5 1.5 2.5
    #   sum dp*dg = (25 + 10.5 + 2 - 0.5 + 3 + 50)/3 = 30
    #   sum dp^2 = (100 + 49 + 16 + 1 + 4 + 400)/9 = 570/9;  sum dg^2 = 17.5
    #   pearson = 30 / sqrt(570/9 * 17.5) = 0.9011...;  spearman = 1 (the same order)
    pearson = 30 / math.sqrt(570 / 9 * 17.5)
    stsb = get_task("stsb").score([0, 1, 2, 3, 4, 10], [0, 1, 2, 3, 4, 5])
    assert stsb == pytest.approx({"pearson": pearson, "spearman": 1.0, "score": (pearson + 1) / 2})
    assert pearson == pytest.approx(0.90112, abs=1e-5)
    # a constant prediction has no correlation: 0, not NaN
    assert get_task("cola").score([1] * 6, gold)["mcc"] == 0.0


def test_evaluate_scores_predictions_against_dev_labels(monkeypatch):
    """evaluate() pairs each task's predictions with that task's dev labels, and averages task scores."""
    from rankmix.recipes import evaluate as ev
    from rankmix.recipes.evaluate import format_table

    gold = [1, 0, 0, 1, 1, 0]
    preds = {"rte": [1, 1, 0, 0, 1, 0], "cola": [1, 1, 0, 0, 1, 0], "stsb": [0, 1, 2, 3, 4, 10]}
    dev = {
        "rte": [Example("a", "b", g) for g in gold],
        "cola": [Example("a", None, g) for g in gold],
        "stsb": [Example("a", "b", float(g)) for g in range(5)] + [Example("a", "b", 5.0)],
    }

    def fake_predict(model, family, tokenizer, task, task_index, examples, *args, **kw):
        assert examples == dev[task.name] and TASKS[task_index] == task.name
        return preds[task.name]

    monkeypatch.setattr(ev, "predict", fake_predict)
    model = torch.nn.Linear(1, 1)
    tasks = [get_task(t) for t in TASKS]
    results = ev.evaluate(model, FAMILY_OF["decoder"], None, tasks, [dev[t] for t in TASKS], 4, 64)
    pearson = 30 / math.sqrt(570 / 9 * 17.5)
    assert results["rte"]["score"] == pytest.approx(4 / 6)
    assert results["cola"]["score"] == pytest.approx(1 / 3)
    assert results["stsb"]["score"] == pytest.approx((pearson + 1) / 2)
    average = (4 / 6 + 1 / 3 + (pearson + 1) / 2) / 3
    assert ev.average(results) == pytest.approx(average)
    assert model.training  # evaluate restores the training mode
    assert format_table(results).splitlines()[-1].endswith(f"{average:.3f}")


# -- 4. resume after an interruption -----------------------------------------------------------------
@pytest.mark.parametrize("workers", [0, 2])
def test_interrupted_run_resumes_to_the_same_adapter(runs, monkeypatch, workers):
    """With DataLoader workers too, whose prefetching draws batches ahead of the step: the checkpoint
    records the batches consumed, and the run (workers or not) ends as the uninterrupted one."""

    run_a, _ = runs.get("decoder")  # 8 steps without interruption, no workers
    recipe = runs.recipe(f"decoder-resumed-{workers}", "decoder", num_workers=workers)
    run_b = runs.root / f"decoder-resumed-{workers}"

    ahead = 2 * workers  # batches a DataLoader draws before the first step (2 per worker)
    interrupt_at_batch(monkeypatch, 5 + ahead)  # step 5, just after the evaluation (and checkpoint) of step 4
    with pytest.raises(SystemExit) as stopped:  # an interrupt raised mid-step (e.g. a second Ctrl-C)
        main(["train", str(recipe), "--no-progress"])
    assert stopped.value.code == 130
    monkeypatch.undo()

    # the interrupted run kept what it had: results of step 4, a checkpoint, the best adapter so far
    partial = json.loads((run_b / "results.json").read_text())
    assert partial["steps"] == 4 and [h["step"] for h in partial["history"]] == [4]
    assert (run_b / "checkpoint.pt").is_file()
    assert torch.load(run_b / "checkpoint.pt", weights_only=True)["state"]["step"] == 4
    assert (run_b / "adapter" / "adapter_model.safetensors").is_file()

    stdout = ok("train", recipe, "--no-progress")  # resumes from step 4
    assert "average" in stdout
    results_a = json.loads((run_a / "results.json").read_text())
    results_b = json.loads((run_b / "results.json").read_text())
    for r in (results_a, results_b):
        r.pop("wall_time_s")
    assert results_b == results_a

    ckpt_a = torch.load(run_a / "checkpoint.pt", weights_only=True)
    ckpt_b = torch.load(run_b / "checkpoint.pt", weights_only=True)
    assert ckpt_b["state"]["step"] == 8
    assert set(ckpt_a["params"]) == set(ckpt_b["params"])
    for name, value in ckpt_a["params"].items():
        assert torch.allclose(ckpt_b["params"][name], value, atol=1e-6), name
    best_a = load_file(str(run_a / "adapter" / "adapter_model.safetensors"))
    best_b = load_file(str(run_b / "adapter" / "adapter_model.safetensors"))
    assert set(best_a) == set(best_b)
    for name, value in best_a.items():
        assert torch.allclose(best_b[name], value, atol=1e-6), name
    # the log reads as one run: the same steps and values as the uninterrupted one
    log_a, log_b = read_jsonl(run_a / "metrics.jsonl"), read_jsonl(run_b / "metrics.jsonl")
    assert [r["step"] for r in log_b] == [r["step"] for r in log_a]
    for a, b in zip(log_a, log_b, strict=True):
        assert a == pytest.approx(b, abs=1e-6)


def _wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended before {what}: {proc.communicate()[1]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_signalled_run_resumes_to_the_same_adapter(runs, sig):
    """`rankmix train` as a real process, stopped by a signal, then the same command again: the final
    adapter and checkpoint equal an uninterrupted run's. Ctrl-C and SIGTERM finish the step, write a
    checkpoint and exit 128+signal with one line saying how to resume; SIGKILL resumes from the last
    evaluation's checkpoint."""
    settings = {"steps": 40, "eval_every": 20, "log_every": 1}
    whole = runs.root / "whole"
    if not (whole / "checkpoint.pt").is_file():  # one uninterrupted run serves every signal
        ok("train", runs.recipe("whole", "decoder", **settings), "--no-progress")
    recipe = runs.recipe(f"stopped-{sig.name}", "decoder", **settings)
    out = runs.root / f"stopped-{sig.name}"

    def logged_steps() -> int:
        log = out / "metrics.jsonl"
        return len(log.read_text().splitlines()) if log.is_file() else 0

    proc = subprocess.Popen(
        [sys.executable, "-m", "rankmix.cli", "train", str(recipe), "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},  # as in this process (conftest): the same float sums
    )
    if sig == signal.SIGKILL:  # after the checkpoint of step 20
        _wait_for(lambda: (out / "checkpoint.pt").is_file(), proc, "the first checkpoint")
    else:
        _wait_for(lambda: logged_steps() >= 3, proc, "step 3")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 128 + sig, err
        assert "Traceback" not in err
        last = err.strip().splitlines()[-1]
        step = torch.load(out / "checkpoint.pt", weights_only=True)["state"]["step"]
        assert 3 <= step < 40
        assert last == (
            f"rankmix train: interrupted at step {step} of 40; {out / 'checkpoint.pt'} holds it: run the "
            "same command again to resume"
        )
    ok("train", recipe, "--no-progress")
    done = {
        name: torch.load(run / "checkpoint.pt", weights_only=True)
        for name, run in (("whole", whole), ("stopped", out))
    }
    assert done["stopped"]["state"]["step"] == 40
    for name, value in done["whole"]["params"].items():
        assert torch.allclose(done["stopped"]["params"][name], value, atol=1e-6), name
    best = [load_file(run / "adapter" / "adapter_model.safetensors") for run in (whole, out)]
    assert set(best[0]) == set(best[1])
    for name, value in best[0].items():
        assert torch.allclose(best[1][name], value, atol=1e-6), name


def test_damaged_latest_checkpoint_falls_back_to_the_one_before(runs, monkeypatch):
    """Checkpoints every 2 steps, interrupted at step 7 (checkpoints of steps 6 and 4 on disk), the
    latest then truncated: the same command resumes from step 4 and ends as the uninterrupted run,
    its log included (what was logged after step 4 is dropped, then logged again)."""

    whole, _ = runs.get("decoder")  # 8 steps, evaluations at 4 and 8, log every 2
    recipe = runs.recipe("decoder-fallback", "decoder", checkpoint_every=2)
    run = runs.root / "decoder-fallback"
    interrupt_at_batch(monkeypatch, 7)
    assert cli("train", recipe, "--no-progress")[0] == 130
    monkeypatch.undo()
    steps = {
        n: torch.load(run / n, weights_only=True)["state"]["step"]
        for n in ("checkpoint.pt", "checkpoint.prev.pt")
    }
    assert steps == {"checkpoint.pt": 6, "checkpoint.prev.pt": 4}
    data = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(data[: len(data) // 3])

    stdout = ok("train", recipe, "--no-progress")
    assert "using the checkpoint kept before it" in stdout and "from step 4" in stdout
    done = [torch.load(r / "checkpoint.pt", weights_only=True) for r in (whole, run)]
    assert done[1]["state"]["step"] == 8
    for name, value in done[0]["params"].items():
        assert torch.allclose(done[1]["params"][name], value, atol=1e-6), name
    log_a, log_b = read_jsonl(whole / "metrics.jsonl"), read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in log_b] == [r["step"] for r in log_a]
    for a, b in zip(log_a, log_b, strict=True):
        assert a == pytest.approx(b, abs=1e-6)


def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


@pytest.mark.parametrize(
    "change", ["method.max_rank=2", "tasks=[rte, cola, mrpc]"], ids=["other-shapes", "other-tasks"]
)
def test_resume_with_another_configuration_is_refused(runs, capsys, tmp_path, change):
    """A run folder's checkpoint only resumes the configuration that wrote it; anything else is a clear
    error that points at --overwrite, and the finished run's files stay as they were."""
    run = copy_run(runs.get("decoder")[0], tmp_path / "run")
    before = {name: (run / name).read_bytes() for name in ("results.json", "run.yaml", "metrics.jsonl")}
    recipe = runs.root / "decoder-more.yaml"  # the recipe of runs.get("decoder")
    err = fails(capsys, "train", recipe, "--no-progress", "--set", f"output_dir={run}", "--set", change)
    assert "checkpoint" in err and "--overwrite" in err
    for name, data in before.items():
        assert (run / name).read_bytes() == data, f"{name} changed by a refused resume"


@pytest.mark.parametrize("command", ["merge", "export-lora"])
def test_diverged_adapter_is_not_deployed(runs, capsys, tmp_path, command):
    """merge and export-lora refuse an adapter with a NaN weight (a diverged run) and write nothing."""
    run = copy_run(runs.get("decoder")[0], tmp_path / "run")
    weights = run / "adapter" / "adapter_model.safetensors"
    tensors = load_file(weights)
    name = sorted(tensors)[0]
    tensors[name] = (
        tensors[name].clone().view(-1).index_fill(0, torch.tensor([0]), float("nan")).view_as(tensors[name])
    )
    save_file(tensors, weights)
    out = tmp_path / "out"
    err = fails(capsys, command, run, "--task", "rte", "--out", out)
    assert "non-finite" in err and "diverged" in err
    assert not out.exists()


class _Planted:
    """Pickles to a call that creates `marker` when unpickled by a loader that runs code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_planted_pickle_checkpoint_is_refused_without_running(runs, capsys, tmp_path):
    """checkpoint.pt is read with weights_only: a pickle that would run code is refused with an error
    naming the file and the fix, and its code never runs."""
    run = copy_run(runs.get("decoder")[0], tmp_path / "run")
    marker = tmp_path / "pwned"
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):  # the latest and the one kept before it
        (run / name).write_bytes(pickle.dumps({"state": _Planted(marker)}))
    recipe = runs.root / "decoder-more.yaml"  # the recipe of runs.get("decoder")
    err = fails(capsys, "train", recipe, "--no-progress", "--set", f"output_dir={run}")
    assert "checkpoint.pt is unreadable" in err and "--overwrite" in err
    assert not marker.exists()


RUN_FILES = [
    "checkpoint.pt",
    "run.yaml",
    "results.json",
    "metrics.jsonl",
    "adapter/adapter_config.json",
    "adapter/adapter_model.safetensors",
    "adapter/run.yaml",
]


@pytest.mark.parametrize("command", ["train", "eval", "merge", "export-lora"])
@pytest.mark.parametrize("name", RUN_FILES)
def test_planted_pickle_runs_nowhere(runs, capsys, tmp_path, command, name):
    """A pickle that would create a file, planted under each file name a run folder holds: every command
    that reads the run either ignores that file or refuses it with one line (exit 2), creates no output,
    and never runs the pickle's code."""
    run = copy_run(runs.get("decoder")[0], tmp_path / "run")
    marker = tmp_path / "pwned"
    (run / name).write_bytes(pickle.dumps({"state": _Planted(marker)}))
    out = tmp_path / "out"
    args = {
        "train": [runs.root / "decoder-more.yaml", "--no-progress", "--set", f"output_dir={run}"],
        "eval": [run],
        "merge": [run, "--task", "rte", "--out", out],
        "export-lora": [run, "--task", "rte", "--out", out],
    }[command]
    code, _, err = cli(command, *args)
    assert not marker.exists()
    if code:
        assert code == 2 and "Traceback" not in err, err
        assert not out.exists()
        assert Path(name).name in err.strip().splitlines()[-1], err


@pytest.mark.parametrize("command", ["train", "eval", "merge"])
@pytest.mark.parametrize(
    "name",
    [
        "checkpoint.pt",
        "adapter/adapter_model.safetensors",
        "adapter/heads.safetensors",
        "adapter/adapter_config.json",
    ],
)
def test_truncated_file_is_named_with_the_fix(runs, capsys, tmp_path, command, name):
    """A file of an encoder run cut in half (a full disk, a copy stopped midway): every command that reads
    it stops with one line naming the file (exit 2) and creates no output."""
    run = copy_run(runs.get("encoder")[0], tmp_path / "run")
    data = (run / name).read_bytes()
    (run / name).write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    args = {
        "train": [runs.root / "encoder-more.yaml", "--no-progress", "--set", f"output_dir={run}"],
        "eval": [run],
        "merge": [run, "--task", "rte", "--out", out],
    }[command]
    code, stdout, err = cli(command, *args)
    if command == "train" and name == "checkpoint.pt":  # the checkpoint kept before it takes over
        assert code == 0 and "truncated" not in err
        assert "checkpoint.pt is unreadable" in stdout and "using the checkpoint kept before it" in stdout
    elif code or (command != "train" and name != "checkpoint.pt"):  # eval and merge read the adapter
        assert code == 2 and "Traceback" not in err, err
        assert Path(name).name in err.strip().splitlines()[-1], err
        assert not out.exists()


def test_train_again_resumes_finished_run_and_overwrite_restarts(runs, tmp_path):
    run, _ = runs.get("decoder")
    results = json.loads((run / "results.json").read_text())
    log = (run / "metrics.jsonl").read_text()
    recipe = runs.root / "decoder-more.yaml"  # the recipe of runs.get("decoder")
    stdout = ok("train", recipe, "--no-progress")  # finished: nothing left to do
    assert "resuming" in stdout and "from step 8" in stdout
    assert (run / "metrics.jsonl").read_text() == log
    assert json.loads((run / "results.json").read_text()) == results
    # --overwrite trains afresh in a copy: the same seed gives the same run, and a fresh log
    copy = copy_run(run, tmp_path / "copy")
    stdout = ok("train", recipe, "--no-progress", "--overwrite", "--set", f"output_dir={copy}")
    assert "resuming" not in stdout
    again = json.loads((copy / "results.json").read_text())
    again.pop("wall_time_s")
    assert again == {k: v for k, v in results.items() if k != "wall_time_s"}
    fresh, first = read_jsonl(copy / "metrics.jsonl"), read_jsonl(run / "metrics.jsonl")
    assert len(fresh) == len(first)
    for a, b in zip(fresh, first, strict=True):
        assert a == pytest.approx(b, abs=1e-6)


# -- 5. bad input: exit code 2 and a message naming the problem and the fix, before any work ----------
@pytest.fixture
def bad(model_dirs, glue_data, tmp_path):
    """Write a recipe with `change` applied to a good one; returns (recipe path, its output folder)."""

    def make(change=None, family: str = "decoder", **kw) -> tuple[Path, Path]:
        data = recipe_dict(model_dirs[family], tmp_path / "out", glue_data, **kw)
        if change:
            change(data)
        return write_recipe(tmp_path / "recipe.yaml", data), tmp_path / "out"

    return make


def test_unknown_task_lists_known_tasks_and_suggests(bad, capsys):
    recipe, out = bad(tasks=["rte", "stsbb"])
    err = fails(capsys, "train", recipe)
    assert "unknown task 'stsbb'" in err and "did you mean 'stsb'" in err
    for known in ("cola", "mrpc", "qqp", "rte", "sst2"):
        assert known in err
    assert not out.exists()


def test_overwrite_with_bad_input_keeps_the_old_run(runs, bad, capsys, tmp_path):
    """--overwrite deletes the old run only once the new input is valid: a typo loses nothing."""
    run, _ = runs.get("decoder")
    copy = copy_run(run, tmp_path / "kept")
    before = sorted(p.relative_to(copy) for p in copy.rglob("*"))
    recipe, _ = bad(tasks=["rte", "stsbb"])
    err = fails(capsys, "train", recipe, "--overwrite", "--set", f"output_dir={copy}")
    assert "unknown task 'stsbb'" in err
    assert sorted(p.relative_to(copy) for p in copy.rglob("*")) == before


def test_overwrite_removes_only_a_run_folder(bad, capsys, tmp_path):
    """--overwrite on a folder that holds no rankmix run (a home folder, say) refuses and deletes nothing;
    an output_dir that is a file is refused too."""
    recipe, _ = bad()
    home = tmp_path / "home"
    (home / "thesis").mkdir(parents=True)
    (home / "thesis" / "draft.tex").write_text("precious")
    err = fails(capsys, "train", recipe, "--overwrite", "--set", f"output_dir={home}")
    assert "--overwrite" in err and "no rankmix run" in err and "choose another output_dir" in err
    assert (home / "thesis" / "draft.tex").read_text() == "precious"
    (tmp_path / "a-file").write_text("x")
    err = fails(capsys, "train", recipe, "--set", f"output_dir={tmp_path / 'a-file'}")
    assert "is a file" in err
    assert (tmp_path / "a-file").read_text() == "x"


def test_fresh_run_never_replaces_an_adapter_it_cannot_resume(runs, capsys, tmp_path):
    """A finished run whose checkpoints were deleted: training there again is refused (its best adapter
    would be overwritten by a fresh run's), until --overwrite says so."""
    run = copy_run(runs.get("decoder")[0], tmp_path / "run")
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        (run / name).unlink()
    adapter = (run / "adapter" / "adapter_model.safetensors").read_bytes()
    recipe = runs.root / "decoder-more.yaml"  # the recipe of runs.get("decoder")
    err = fails(capsys, "train", recipe, "--no-progress", "--set", f"output_dir={run}")
    assert "no checkpoint.pt to resume from" in err and "--overwrite" in err
    assert (run / "adapter" / "adapter_model.safetensors").read_bytes() == adapter
    ok("train", recipe, "--no-progress", "--overwrite", "--set", f"output_dir={run}")
    assert (run / "checkpoint.pt").is_file()


@pytest.mark.parametrize(
    "override, message",
    [
        ("tasks=[rte", r"--set 'tasks=\[rte' is not valid YAML \(.* at line 1, column \d+\)"),
        ("train=5", r"train must be a mapping of options, got 5"),
    ],
)
def test_malformed_override_is_one_line(bad, capsys, override, message):
    recipe, out = bad()
    err = fails(capsys, "train", recipe, "--set", override)
    assert re.search(message, err)
    assert not out.exists()


def test_debug_shows_the_traceback_of_a_user_error(bad):
    """--debug: the same bad input raises its ValueError (with the same message) instead of one line."""
    recipe, out = bad()
    with pytest.raises(ValueError, match="train must be a mapping of options"):
        main(["--debug", "train", str(recipe), "--set", "train=5"])
    assert not out.exists()


def test_malformed_yaml_files_name_the_file_and_the_line(bad, capsys, runs, tmp_path):
    """A recipe, a run's run.yaml and a custom task file with broken YAML: one line naming the file and
    where, never a yaml traceback."""
    recipe, out = bad()
    recipe.write_text(recipe.read_text().replace("tasks:", "tasks: [rte\nfoo:", 1))
    err = fails(capsys, "train", recipe)
    assert f"recipe {recipe} is not valid YAML" in err and "at line" in err
    assert not out.exists()

    run = copy_run(runs.get("decoder")[0], tmp_path / "run")
    (run / "adapter" / "run.yaml").write_text("model: [unclosed\n")  # what eval reads
    err = fails(capsys, "eval", run)
    assert "run.yaml is not valid YAML" in err and "at line" in err

    task_file = tmp_path / "task.yaml"
    task_file.write_text("name: mine\nprompt: {unclosed\n")
    recipe, _ = bad(tasks=["rte"])
    data = yaml.safe_load(recipe.read_text())
    data["custom_tasks"] = [str(task_file)]
    recipe.write_text(yaml.safe_dump(data))
    err = fails(capsys, "train", recipe)
    assert f"custom task file {task_file} is not valid YAML" in err


def test_data_folder_without_files_names_expected_path(bad, capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    recipe, out = bad(lambda d: d.update(data_dir=str(tmp_path / "empty")))
    err = fails(capsys, "train", recipe)
    assert str(tmp_path / "empty" / "glue" / "RTE" / "train.tsv") in err
    assert "not found" in err and "data_dir" in err
    assert not out.exists()


def test_unknown_train_key_suggests_the_right_one(bad, capsys):
    recipe, out = bad(lambda d: d["train"].update(stepz=3))
    err = fails(capsys, "train", recipe)
    assert "stepz" in err and "did you mean" in err
    # the suggestion names the option as it is written, train.steps (not train.'steps')
    assert "'train.steps'" in err, err
    assert not out.exists()


def test_unknown_top_level_key_suggests_the_right_one(bad, capsys):
    recipe, out = bad(lambda d: d.update(tasx=d.pop("tasks")))
    err = fails(capsys, "train", recipe)
    assert "'tasx'" in err and "did you mean 'tasks'" in err
    assert not out.exists()


def test_unknown_method_key_suggests_the_right_one(bad, capsys):
    recipe, out = bad(method={"method": "more", "max_rnk": 4})
    err = fails(capsys, "train", recipe)
    assert "MoREConfig has no option 'max_rnk'" in err and "did you mean 'max_rank'" in err
    assert not out.exists()


def test_unknown_method_lists_methods(bad, capsys):
    recipe, out = bad(method={"method": "moar"})
    err = fails(capsys, "train", recipe)
    assert "unknown method 'moar'" in err and "more" in err and "hilo" in err
    assert not out.exists()


def test_malformed_set_override(bad, capsys):
    recipe, out = bad()
    err = fails(capsys, "train", recipe, "--set", "train.steps")
    assert "--set expects key=value" in err and "'train.steps'" in err
    assert not out.exists()


def test_set_override_is_validated_like_the_recipe(bad, capsys):
    recipe, out = bad()
    err = fails(capsys, "train", recipe, "--set", "train.steps=0")
    assert "train.steps must be a positive integer" in err
    assert not out.exists()


def test_non_text_model_is_refused(bad, capsys, model_dirs):
    recipe, out = bad(lambda d: d.update(model=str(model_dirs["vit"])))
    err = fails(capsys, "train", recipe)
    assert "'vit'" in err and "text model" in err
    assert not out.exists()


def test_missing_recipe_and_missing_run(capsys, tmp_path):
    err = fails(capsys, "train", tmp_path / "nope.yaml")
    assert "nope.yaml" in err and "configs/" in err
    err = fails(capsys, "eval", tmp_path)
    assert "run.yaml" in err


def qqp_malformed_lines() -> list[int]:
    """Line numbers of QQP train rows that do not have the 6 tab-separated fields of the format."""
    with (DATA / "glue" / "QQP" / "train.tsv").open(encoding="utf-8", newline="") as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [rows.line_num for cells in rows if cells and len(cells) != 6]


@needs_real_data
def test_strict_qqp_names_the_malformed_line(bad, capsys):
    lines = qqp_malformed_lines()
    assert len(lines) == 1  # the known quirk of the shared data (see its README)
    recipe, out = bad(lambda d: d.update(strict=True, data_dir=str(DATA)), tasks=["qqp"])
    err = fails(capsys, "train", recipe)
    assert f"QQP/train.tsv, line {lines[0]}: malformed row" in err
    assert "strict=False" in err
    assert not out.exists()


@needs_real_data
def test_non_strict_qqp_skips_the_malformed_row_with_a_warning():
    from rankmix.recipes.run import load_data
    from rankmix.recipes.run_config import RunConfig

    line = qqp_malformed_lines()[0]
    with (DATA / "glue" / "QQP" / "train.tsv").open(encoding="utf-8") as f:
        n_rows = sum(1 for row in f if row.strip())
    task = get_task("qqp")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        examples, skipped = task.load("train", DATA)
    assert skipped == 1 and len(examples) == n_rows - 1
    expected = rf"skipped 1 malformed row\(s\) in .*QQP/train.tsv \(first: line {line}, "
    assert any(re.search(expected, str(w.message)) for w in caught), [str(w.message) for w in caught]
    cfg = RunConfig(model="unused", tasks=["qqp"], method={"method": "lora"}, data_dir=str(DATA))
    cfg.train.max_train_examples, cfg.train.max_eval_examples = 16, 8
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_data(cfg, [task])
    assert sum("skipped 1 malformed row" in str(w.message) for w in caught) == 1  # warned once, by the reader
    assert [len(s) for s in data["train"]] == [16] and [len(s) for s in data["dev"]] == [8]


# -- 6. the installed command ------------------------------------------------------------------------
def test_console_script_help_lists_every_subcommand():
    script = Path(sys.executable).with_name("rankmix")
    assert script.is_file(), f"{script}: the package is not installed with its console script"
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    for command in ("train", "eval", "merge", "export-lora", "inspect", "plot", "quickstart"):
        assert command in proc.stdout
    proc = subprocess.run([str(script), "fly"], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and "invalid choice: 'fly'" in proc.stderr


def test_help_in_process(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("train", "eval", "merge", "export-lora", "inspect", "plot", "quickstart"):
        assert command in out


def test_copied_run_folder_evaluates_merges_and_exports_from_elsewhere(runs, tmp_path, monkeypatch):
    """A run trained with a model, data and output_dir typed relative to the working directory, then
    copied to another place and used from another working directory: eval, merge and export-lora work
    there (run.yaml holds the run folder relative to itself, the rest resolved when training started)."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(runs.models["encoder"], work / "model")
    shutil.copytree(runs.data_dir, work / "data")
    monkeypatch.chdir(work)
    recipe = write_recipe(work / "recipe.yaml", recipe_dict(Path("model"), Path("run"), Path("data")))
    ok("train", recipe, "--no-progress")
    moved = copy_run(work / "run", tmp_path / "copies" / "run")
    shutil.rmtree(work / "run")  # the original is gone: only the copy remains
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert "average" in ok("eval", "../copies/run")
    ok("merge", "../copies/run", "--task", TASKS[0], "--out", "merged")
    ok("export-lora", "../copies/run", "--task", TASKS[0], "--out", "lora")
    assert (elsewhere / "merged").is_dir() and (elsewhere / "lora" / "adapter_config.json").is_file()
    ok("plot", "../copies/run")
    assert (moved / "plots").is_dir()
    (work / "data").rename(tmp_path / "data-moved")  # the data moved: --set says where, as typed here
    assert "average" in ok("eval", "../copies/run", "--set", "data_dir=../data-moved")


@pytest.mark.parametrize("family", FAMILIES)
def test_predict_matches_evaluation_and_writes_one_record_per_row(runs, family, tmp_path):
    """`rankmix predict` on rows of a JSON-lines file: one record per row, in order; the labels are the
    ones evaluation predicts for the same examples, with their probability; regression gives the value
    evaluation computes. --text serves a one-text task; a decoder can also return generated text."""
    from rankmix.recipes.evaluate import predict
    from rankmix.recipes.run import open_run

    run_dir, _ = runs.get(family)
    run, _ = open_run(run_dir, [], splits=("dev",))
    run.model.eval()
    for t, task in enumerate(run.tasks):
        examples = run.dev_sets[t][:5]
        rows = tmp_path / f"{task.name}.jsonl"
        lines = [json.dumps({"text_a": e.text_a, "text_b": e.text_b}) + "\n" for e in examples]
        rows.write_text("".join(lines))
        out = tmp_path / f"{task.name}-out.jsonl"
        ok("predict", run_dir, "--task", task.name, "--input", rows, "--out", out, "--batch-size", 2)
        records = read_jsonl(out)
        cfg = run.config.train
        expected = predict(run.model, run.family, run.tokenizer, task, t, examples, 4, cfg.max_length)
        assert len(records) == len(examples)
        for record, value in zip(records, expected, strict=True):
            if task.kind.name == "regression":
                assert record["score"] == pytest.approx(value, abs=1e-4)
            else:
                assert record["label"] == task.labels[int(value)] and 0 < record["score"] <= 1
    line = ok("predict", run_dir, "--task", "cola", "--text", run.dev_sets[2][0].text_a, "--device", "cpu")
    assert json.loads(line)["label"] in get_task("cola").labels
    if family == "decoder":
        text = json.loads(ok("predict", run_dir, "--task", "cola", "--text", "a b", "--mode", "generate"))
        assert isinstance(text["text"], str)


def test_predict_and_device_errors_are_one_line(runs, capsys, tmp_path):
    run_dir, _ = runs.get("encoder")
    assert "takes two texts" in fails(capsys, "predict", run_dir, "--task", "rte", "--text", "hi")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text_a": "only one"}\n')
    assert "line 1" in fails(capsys, "predict", run_dir, "--task", "rte", "--input", bad)
    assert "unknown task" in fails(capsys, "predict", run_dir, "--task", "nope", "--text", "hi")
    if not torch.cuda.is_available():
        cuda = ("--device", "cuda")
        assert "no cuda device" in fails(capsys, "predict", run_dir, "--task", "cola", "--text", "x", *cuda)
        assert "no cuda device" in fails(capsys, "train", runs.recipe("nocuda", "encoder"), *cuda)
        assert not (runs.root / "nocuda").exists()


def stock_encoder_logits(base_dir: Path, exported: Path, texts: list[tuple[str, str | None]]) -> torch.Tensor:
    """The README's lines ("Exported adapters"): base + PEFT adapter in stock transformers and PEFT, then
    the task head (mean pooling over the attention mask, then the Linear)."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = PeftModel.from_pretrained(AutoModel.from_pretrained(base_dir), exported).eval()
    head = load_file(exported / "task_head.safetensors")
    firsts, seconds = [a for a, _ in texts], [b for _, b in texts]
    enc = tokenizer(firsts, seconds if seconds[0] is not None else None, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return pooled @ head["weight"].T + head["bias"]


@pytest.mark.parametrize("family", ["encoder", "decoder"])
def test_export_all_tasks_reproduces_the_run_in_stock_peft(runs, model_dirs, family, tmp_path):
    """`export-lora --all-tasks`: one adapter per task (and, for an encoder, its head and how to apply
    it); each reproduces the run's own logits for its task in stock transformers + PEFT. The configs
    hold one lora_alpha equal to r and no rank or alpha pattern, so readers that ignore those patterns
    (vLLM) compute the same."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    run_dir, _ = runs.get(family)
    ok("export-lora", run_dir, "--all-tasks", "--out", tmp_path / "all")
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == [".rankmix-output", *sorted(TASKS)]
    reference = reference_model(model_dirs, family, run_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dirs[family])
    heads = load_file(str(run_dir / "adapter" / "heads.safetensors")) if family == "encoder" else None
    for t, task in enumerate(TASKS):
        folder = tmp_path / "all" / task
        config = json.loads((folder / "adapter_config.json").read_text())
        assert config["lora_alpha"] == config["r"] and not config.get("alpha_pattern")
        assert not config.get("rank_pattern")
        inputs = model_inputs(family, tokenizer, task, runs.data_dir)
        with torch.no_grad():
            native = output_of(reference(**inputs, task_ids=torch.tensor([t, t])))
        if family == "encoder":
            examples = get_task(task).load("dev", runs.data_dir)[0][:2]
            got = stock_encoder_logits(model_dirs[family], folder, [(e.text_a, e.text_b) for e in examples])
            mask = inputs["attention_mask"].unsqueeze(-1).to(native.dtype)
            pooled = (native * mask).sum(1) / mask.sum(1)
            want = pooled @ heads[f"{t}.weight"].T + heads[f"{t}.bias"]
            meta = json.loads((folder / "task_head.json").read_text())
            assert meta == {
                "task": task,
                "pooling": "mean",
                "kind": get_task(task).kind.name,
                "labels": list(get_task(task).labels),
            }
        else:
            base = auto_class(family).from_pretrained(model_dirs[family])
            with torch.no_grad():
                got = output_of(PeftModel.from_pretrained(base, folder).eval()(**inputs))
            want = native
        assert torch.allclose(got, want, atol=ATOL), (task, (got - want).abs().max())


# -- 7. the user's files: rankmix touches only what it wrote -----------------------------------------
def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_training_a_runs_own_run_yaml_never_touches_the_working_directory(runs, tmp_path, monkeypatch):
    """`rankmix train RUN/run.yaml` resumes RUN itself (its paths are relative to it), from any working
    directory, and `--overwrite` retrains RUN: a working directory with a user's file is left alone."""
    run = copy_run(runs.get("decoder")[0], tmp_path / "run")
    work = tmp_path / "w"
    work.mkdir()
    (work / "notes.txt").write_text("notes")
    monkeypatch.chdir(work)
    stdout = ok("train", run / "run.yaml", "--no-progress", "--set", "train.steps=12")
    assert f"resuming {run} from step 8" in stdout
    assert json.loads((run / "results.json").read_text())["steps"] == 12
    ok("train", run / "run.yaml", "--no-progress", "--set", "train.steps=12", "--overwrite")
    assert _tree(work) == {"notes.txt": b"notes"}
    assert json.loads((run / "results.json").read_text())["steps"] == 12
    assert (run / ".rankmix-run").is_file()


def test_overwrite_never_clears_the_working_directory_or_a_checkout(runs, bad, capsys, tmp_path, monkeypatch):
    """A run folder that is the working directory (or holds it), or holds a .git, is never cleared."""
    recipe, _ = bad()
    run = copy_run(runs.get("decoder")[0], tmp_path / "run")
    monkeypatch.chdir(run)
    before = _tree(run)
    err = fails(capsys, "train", recipe, "--overwrite", "--set", "output_dir=.")
    assert "working directory" in err and "leaves it alone" in err
    (run / "adapter").mkdir(exist_ok=True)
    monkeypatch.chdir(run / "adapter")
    assert "working directory" in fails(capsys, "train", recipe, "--overwrite", "--set", f"output_dir={run}")
    monkeypatch.chdir(tmp_path)
    (run / ".git").mkdir()
    assert ".git" in fails(capsys, "train", recipe, "--overwrite", "--set", f"output_dir={run}")
    (run / ".git").rmdir()
    assert _tree(run) == before


@pytest.mark.parametrize("overwrite", [False, True], ids=["fresh", "overwrite"])
def test_a_folder_that_is_not_a_run_is_refused_and_kept(bad, capsys, tmp_path, overwrite):
    """A non-empty folder rankmix did not write is neither trained into (no file replaced, no log
    appended to) nor deleted, with or without --overwrite; the message names what it found."""
    recipe, _ = bad()
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "results.json").write_text('{"my": 1}')
    (folder / "metrics.jsonl").write_text('{"mine": true}\n')
    err = fails(capsys, "train", recipe, "--set", f"output_dir={folder}", *["--overwrite"] * overwrite)
    assert "metrics.jsonl, results.json" in err and "no rankmix run" in err
    assert _tree(folder) == {"metrics.jsonl": b'{"mine": true}\n', "results.json": b'{"my": 1}'}


def test_overwrite_refuses_a_run_folder_holding_a_users_file(runs, bad, capsys, tmp_path):
    """A user's file inside a run folder: resuming leaves it alone, --overwrite refuses and names it."""
    run = copy_run(runs.get("decoder")[0], tmp_path / "run")
    (run / "notes.txt").write_text("mine")
    ok("train", runs.root / "decoder-more.yaml", "--no-progress", "--set", f"output_dir={run}")
    err = fails(capsys, "train", runs.root / "decoder-more.yaml", "--overwrite", "--set", f"output_dir={run}")
    assert "notes.txt" in err
    assert (run / "notes.txt").read_text() == "mine" and (run / "adapter").is_dir()


def test_run_folder_of_an_earlier_version_is_overwritten(runs, tmp_path):
    """A run folder without the marker (earlier versions) that holds only rankmix's files is a run."""
    run = copy_run(runs.get("decoder")[0], tmp_path / "run")
    (run / ".rankmix-run").unlink()
    (run / ".rankmix-lock").unlink()
    ok("train", runs.root / "decoder-more.yaml", "--no-progress", "--overwrite", "--set", f"output_dir={run}")
    assert (run / ".rankmix-run").is_file() and (run / "adapter").is_dir()


@pytest.mark.parametrize("name", ["metrics.jsonl", "tb"])
def test_a_symlink_in_a_run_folder_is_refused(runs, capsys, tmp_path, name):
    """A run's log or TensorBoard folder that points elsewhere is refused, and what it points to is kept."""
    run = copy_run(runs.get("decoder")[0], tmp_path / "run")
    elsewhere = tmp_path / "elsewhere"
    shutil.move(run / name, elsewhere)
    (run / name).symlink_to(elsewhere)
    before = elsewhere.read_bytes() if elsewhere.is_file() else sorted(elsewhere.iterdir())
    err = fails(capsys, "train", runs.root / "decoder-more.yaml", "--set", f"output_dir={run}")
    assert "symbolic link" in err and name in err
    assert before == (elsewhere.read_bytes() if elsewhere.is_file() else sorted(elsewhere.iterdir()))


def test_one_writer_per_run_folder_and_a_killed_run_resumes(model_dirs, glue_data, capsys, tmp_path):
    """Two real processes: while one trains, a second `rankmix train` on its folder exits 2 with one line
    naming the process, and eval and inspect read the run; once the first is SIGKILLed, the lock is gone
    with it and the run resumes."""
    out = tmp_path / "run"
    data = recipe_dict(model_dirs["decoder"], out, glue_data, steps=100_000, eval_every=2, checkpoint_every=2)
    recipe = write_recipe(tmp_path / "long.yaml", data)
    first = subprocess.Popen(
        [sys.executable, "-m", "rankmix.cli", "train", str(recipe), "--no-progress"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 120
        while not (out / "checkpoint.pt").is_file() or not (out / "adapter").is_dir():
            assert first.poll() is None and time.time() < deadline, "the first run did not start"
            time.sleep(0.2)
        assert "average" in ok("eval", out) and "method: more" in ok("inspect", out)
        err = fails(capsys, "train", recipe, "--no-progress")
        assert f"in use: process {first.pid}" in err and "rankmix train" in err
        err = fails(capsys, "train", recipe, "--no-progress", "--overwrite")  # --overwrite neither
        assert f"in use: process {first.pid}" in err
    finally:
        first.kill()
        first.wait()
    step = torch.load(out / "checkpoint.pt", weights_only=True)["state"]["step"]
    stdout = ok("train", recipe, "--no-progress", "--set", f"train.steps={step + 2}")
    assert f"from step {step}" in stdout
    assert json.loads((out / "results.json").read_text())["steps"] == step + 2


@pytest.mark.parametrize(
    "command",
    [
        "eval-folder",
        "predict-folder",
        "predict-under-file",
        "merge-file",
        "export-file",
        "plot-file",
        "train-under-file",
    ],
)
def test_output_paths_that_cannot_be_written_are_one_line(runs, capsys, tmp_path, command):
    """Every output path that is a folder where a file goes (or the reverse), or under a file: exit 2
    with one line naming the path, before any work, and nothing written."""
    run = runs.get("decoder")[0]
    folder, file = tmp_path / "folder", tmp_path / "existing_file.txt"
    folder.mkdir()
    file.write_text("mine")
    args = {
        "eval-folder": ["eval", run, "--out", folder],
        "predict-folder": ["predict", run, "--task", "rte", "--input", file, "--out", folder],
        "predict-under-file": ["predict", run, "--task", "cola", "--text", "a b", "--out", file / "p.jsonl"],
        "merge-file": ["merge", run, "--task", "rte", "--out", file],
        "export-file": ["export-lora", run, "--task", "rte", "--out", file],
        "plot-file": ["plot", run, "--out", file],
        "train-under-file": ["train", runs.root / "decoder-more.yaml", "--set", f"output_dir={file}/sub"],
    }[command]
    before = _tree(tmp_path)
    err = fails(capsys, *args)
    assert str(folder if "folder" in command else file) in err
    assert _tree(tmp_path) == before


def test_merge_into_a_folder_that_holds_files_is_refused(runs, capsys, tmp_path):
    """merge and export write a new or empty folder as a whole; one that holds files is refused."""
    run = runs.get("decoder")[0]
    out = tmp_path / "merged"
    out.mkdir()
    (out / "config.json").write_text("mine")
    for command in ("merge", "export-lora"):
        err = fails(capsys, command, run, "--task", "rte", "--out", out)
        assert "already holds config.json" in err
    assert _tree(out) == {"config.json": b"mine"}


def test_written_files_follow_the_umask(runs, tmp_path):
    """Adapters, heads, merged models and exports are as readable as the umask allows (not 0600)."""
    run = runs.get("encoder")[0]
    ok("merge", run, "--task", "rte", "--out", tmp_path / "merged")
    ok("export-lora", run, "--task", "rte", "--out", tmp_path / "lora")
    mask = os.umask(0)
    os.umask(mask)
    files = [*run.rglob("*.safetensors"), *(tmp_path / "merged").iterdir(), *(tmp_path / "lora").iterdir()]
    assert any(f.name == "model.safetensors" for f in files)
    for f in files:
        assert f.stat().st_mode & 0o777 == 0o666 & ~mask, f


def test_diverged_run_says_truthfully_what_it_keeps(bad, capsys):
    """A loss that diverges before the first evaluation: the message says there is no checkpoint yet."""
    recipe, out = bad(lr=1.0e30, max_grad_norm=None, checkpoint_every=None)
    capsys.readouterr()
    code, _, err = cli("train", recipe, "--no-progress")
    assert code == 1 and "diverged" in err
    assert "holds no checkpoint yet" in err and "best adapter" not in err
    assert not (out / "checkpoint.pt").exists()


def test_planted_checkpoint_message_never_suggests_unpickling(runs, capsys, tmp_path):
    run = copy_run(runs.get("decoder")[0], tmp_path / "run")
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        (run / name).write_bytes(pickle.dumps({"state": _Planted(tmp_path / "pwned")}))
    err = fails(
        capsys, "train", runs.root / "decoder-more.yaml", "--no-progress", "--set", f"output_dir={run}"
    )
    assert "weights_only" not in err and "will not unpickle" in err


def test_predict_refuses_a_zero_batch_and_an_empty_text(runs, capsys):
    run = runs.get("decoder")[0]
    assert "--batch-size must be a positive" in fails(
        capsys, "predict", run, "--task", "cola", "--text", "a", "--batch-size", "0"
    )
    assert "--text is empty" in fails(capsys, "predict", run, "--task", "cola", "--text", " ")


def test_warnings_print_as_one_line(monkeypatch, capsys):
    """A warning raised while a command runs prints as one line `rankmix CMD: warning: ...`, without
    Python's file, line number and source line (as Python's default showwarning prints it)."""
    import rankmix.cli as cli_module

    def show(message, category, filename, lineno, file=None, line=None):
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    monkeypatch.setattr(cli_module, "cmd_tasks", lambda args: warnings.warn("skipped 1 row", stacklevel=1))
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        monkeypatch.setattr(warnings, "showwarning", show)
        cli_module.main(["tasks"])
    assert capsys.readouterr().err == "rankmix tasks: warning: skipped 1 row\n"


def test_wall_time_adds_up_over_resumes(runs, monkeypatch):
    """results.json's wall time is the run's, over every segment, not the last one's."""

    recipe = runs.recipe("decoder-wall", "decoder", checkpoint_every=2)
    run = runs.root / "decoder-wall"
    interrupt_at_batch(monkeypatch, 7, delay=0.3)
    assert cli("train", recipe, "--no-progress")[0] == 130
    monkeypatch.undo()
    first = torch.load(run / "checkpoint.pt", weights_only=True)["state"]["wall_time_s"]
    assert first >= 6 * 0.3
    ok("train", recipe, "--no-progress")
    assert json.loads((run / "results.json").read_text())["wall_time_s"] >= first


def test_checkpoint_of_the_earlier_format_resumes(runs, capsys, tmp_path):
    """Checkpoints before the opt-in resume key stored every option but six; one of them (and one that
    holds an option added later) resumes, and only a listed option that differs is refused."""
    from rankmix.recipes.run_config import load_run_config

    run = copy_run(runs.get("decoder")[0], tmp_path / "run")
    recipe = runs.root / "decoder-more.yaml"
    data = load_run_config(recipe, [f"output_dir={run}"])
    data.resolve_paths(Path.cwd())
    flat = {k: v for k, v in data.to_dict().items() if k != "train"}
    flat |= {f"train.{k}": v for k, v in data.to_dict()["train"].items()}
    skipped = ("output_dir", "train.steps", "train.eval_every", "train.checkpoint_every", "train.log_every")
    earlier = {k: v for k, v in flat.items() if k not in (*skipped, "train.num_workers")}
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        ckpt = torch.load(run / name, weights_only=True)
        ckpt["state"]["config"] = earlier | {"train.some_later_option": 3}
        torch.save(ckpt, run / name)
    stdout = ok("train", recipe, "--no-progress", "--set", f"output_dir={run}", "--set", "train.log_every=3")
    assert "resuming" in stdout
    err = fails(capsys, "train", recipe, "--set", f"output_dir={run}", "--set", "train.lr=0.5")
    assert "train.lr: 0.01 there, 0.5 here" in err and "some_later_option" not in err


def test_an_adapter_on_another_base_of_the_same_shapes_warns_and_strict_refuses(
    runs, model_dirs, capsys, tmp_path
):
    """Another model of the same shapes (`--set model=...`): eval warns in one line naming the adapter,
    and `strict: true` refuses; the model it was trained on loads silently."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = runs.get("decoder")[0]
    other = AutoModelForCausalLM.from_pretrained(model_dirs["decoder"])
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    other.save_pretrained(tmp_path / "other")
    AutoTokenizer.from_pretrained(model_dirs["decoder"]).save_pretrained(tmp_path / "other")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ok("eval", run)
        assert not [w for w in caught if "differ from the ones" in str(w.message)]
        ok("eval", run, "--set", f"model={tmp_path / 'other'}")
    assert [w for w in caught if "differ from the ones this adapter was trained on" in str(w.message)]
    err = fails(capsys, "eval", run, "--set", f"model={tmp_path / 'other'}", "--set", "strict=true")
    assert "differ from the ones this adapter was trained on" in err


@pytest.mark.parametrize("case", ["unquoted-profile", "huge-batch"])
def test_sizes_that_cannot_fit_are_refused_before_anything_is_built(bad, capsys, monkeypatch, case):
    """Against a stated limit (24 GB): an unquoted `experts: 2468` (2468 experts in every layer) and a
    batch of 100,000 are refused in seconds with the estimate and the fix, and nothing is written."""
    from rankmix.recipes import run as run_module

    monkeypatch.setenv("RANKMIX_MEMORY_LIMIT", "24GB")
    monkeypatch.setattr(run_module, "load_model", lambda name: pytest.fail("the model was loaded"))
    hilo = {"method": "hilo", "experts": 2468, "ranks": 2468, "target_modules": "all-linear"}
    recipe, out = bad(method=hilo) if case == "unquoted-profile" else bad(max_length=128)
    sets = [] if case == "unquoted-profile" else ["--set", "train.batch_size=100000"]
    sets += ["--set", "train.max_train_examples=null"]
    err = fails(capsys, "train", recipe, *sets)
    assert "more than the 24.00 GB" in err
    if case == "unquoted-profile":
        assert 'quote them: experts: "2468", ranks: "2468"' in err
    else:
        assert "train.batch_size (100000)" in err and "train.grad_accum" in err
    assert not out.exists()
    if case == "unquoted-profile":  # inspect would build the model too
        assert 'quote them: experts: "2468"' in fails(capsys, "inspect", recipe)


class _BaseOnly(torch.nn.Module):
    """The untouched base model, called as evaluation calls a RankMixModel (task ids dropped)."""

    def __init__(self, base):
        super().__init__()
        self.base = base

    def forward(self, task_ids=None, **inputs):
        return self.base(**inputs)

    def generate(self, *args, task_ids=None, **kwargs):
        return self.base.generate(*args, **kwargs)


@pytest.mark.parametrize("family", ["decoder", "seq2seq"])
def test_eval_of_a_recipe_scores_the_untouched_base_model(runs, model_dirs, family, tmp_path):
    """`rankmix eval RECIPE --out F`: the recipe's tasks and dev draw on its base model, as the base
    model itself scores them, in the JSON `eval RUN --out` writes; nothing else is written."""
    from rankmix.recipes.evaluate import evaluate
    from rankmix.recipes.loading import load_model
    from rankmix.recipes.run import load_data, resolve_tasks
    from rankmix.recipes.run_config import load_run_config

    recipe = runs.recipe(f"zero-{family}", family)
    out = tmp_path / "zero.json"
    stdout = ok("eval", recipe, "--out", out)
    assert "average" in stdout
    assert not (runs.root / f"zero-{family}").exists()  # the recipe's output_dir
    cfg = load_run_config(recipe)
    tasks = resolve_tasks(cfg)
    base, tokenizer, fam = load_model(cfg.model)
    t = cfg.train
    dev = load_data(cfg, tasks, splits=("dev",))["dev"]
    expected = evaluate(_BaseOnly(base), fam, tokenizer, tasks, dev, t.batch_size, t.max_length)
    got = json.loads(out.read_text())
    assert got.keys() == expected.keys()
    for name, metrics in expected.items():  # equal up to float rounding of the attention kernels
        assert got[name] == pytest.approx(metrics, abs=1e-5), name
    ok("eval", runs.get(family)[0], "--out", tmp_path / "run.json")  # the same JSON as a run's
    assert set(json.loads(out.read_text())) == set(json.loads((tmp_path / "run.json").read_text()))


def test_eval_of_an_encoder_recipe_is_refused(runs, capsys):
    recipe = runs.recipe("zero-encoder", "encoder")
    err = fails(capsys, "eval", recipe)
    assert "encoder whose task heads would be untrained" in err
    assert not (runs.root / "zero-encoder").exists()


def test_eval_of_a_runs_own_run_yaml_evaluates_the_run(runs):
    run = runs.get("decoder")[0]
    assert ok("eval", run / "run.yaml") == ok("eval", run)


# -- names that become paths, and what --out may replace (README: what rankmix guarantees) --------------
def _custom_task(folder: Path, name: object, rows: list[str] | None = None) -> Path:
    """A classification task file named `name` over a few JSON-lines rows (written as given, if given)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = rows or [json.dumps({"text": f"a b {i}", "label": "yes" if i % 2 else "no"}) for i in range(8)]
    (folder / "rows.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    spec = {
        "name": name,
        "data": {"train": "rows.jsonl", "dev": "rows.jsonl"},
        "text_fields": ["text"],
        "label_field": "label",
        "labels": ["no", "yes"],
    }
    return write_recipe(folder / "task.yaml", spec)


@pytest.mark.parametrize("name", ["../../escape", "/abs/victim", "a/b", ".hidden", "x" * 65, "tab\tname"])
def test_a_task_name_that_is_not_a_name_is_refused_before_any_work(bad, capsys, tmp_path, name):
    """Task names become folder names (export-lora --all-tasks): '/', '..', hidden and overlong names are
    refused when the task file is loaded, with the rule, before anything is written."""
    task_file = _custom_task(tmp_path / "task", name)

    def custom(data):
        data.update(tasks=[name], custom_tasks=[str(task_file)])

    recipe, out = bad(custom)
    err = fails(capsys, "train", recipe, "--no-progress")
    assert "not a usable name" in err and "letters, digits" in err
    assert not out.exists()


def test_names_become_paths_only_inside_their_folder(tmp_path):
    """The one place that turns a name into a path: the rule, and a link of that name is refused."""
    from rankmix.files import child

    assert child(tmp_path, "rte.v2-x_1", "task") == tmp_path / "rte.v2-x_1"
    for name in ("..", "../x", "/x", "", "-x", "é"):
        with pytest.raises(ValueError, match="not a usable name"):
            child(tmp_path, name, "task")
    (tmp_path / "rte").symlink_to(tmp_path.parent)
    with pytest.raises(ValueError, match="symbolic link"):
        child(tmp_path, "rte", "task")


def test_plot_merge_and_export_replace_only_a_folder_they_wrote(runs, capsys, tmp_path):
    """A folder output is new, empty, or one the same command wrote and nothing else wrote into: a user's
    files in it are never replaced, and another command's folder is refused."""
    run = runs.get("decoder")[0]
    users = tmp_path / "users"
    users.mkdir()
    (users / "notes.txt").write_text("mine")
    (users / "allocation.png").write_text("my picture")
    for args in (["plot", run], ["merge", run, "--task", "rte"], ["export-lora", run, "--task", "rte"]):
        err = fails(capsys, *args, "--out", users)
        assert "already holds allocation.png, notes.txt" in err
    assert _tree(users) == {"notes.txt": b"mine", "allocation.png": b"my picture"}

    plots = tmp_path / "plots"
    first = ok("plot", run, "--out", plots)
    assert ok("plot", run, "--out", plots) == first  # its own folder: written again
    lora = tmp_path / "lora"
    ok("export-lora", run, "--all-tasks", "--out", lora)
    ok("export-lora", run, "--task", "rte", "--out", lora)  # the same command, replaced whole
    assert sorted(p.name for p in lora.iterdir() if not p.name.startswith(".")) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    err = fails(capsys, "merge", run, "--task", "rte", "--out", plots)  # another command's folder
    assert "already holds" in err and "rankmix merge" in err
    (plots / "notes.txt").write_text("mine")
    err = fails(capsys, "plot", run, "--out", plots)
    assert "already holds notes.txt" in err
    assert (plots / "notes.txt").read_text() == "mine"


def test_a_file_output_never_replaces_an_input_a_recipe_or_a_runs_file(runs, capsys, tmp_path):
    """--out is refused where it would replace the command's input (even with --force), a recipe it reads,
    or a file in a run folder; an existing file of the user's only with --force."""
    run = runs.get("decoder")[0]
    rows = tmp_path / "in.jsonl"
    rows.write_text(json.dumps({"text_a": "a b"}) + "\n")
    config = run / "adapter" / "adapter_config.json"
    recipe = runs.root / "decoder-more.yaml"
    before = {p: p.read_bytes() for p in (rows, config, recipe)}
    for args, expected in (
        (["predict", run, "--task", "cola", "--input", rows, "--out", rows], "input"),
        (["predict", run, "--task", "cola", "--input", rows, "--out", rows, "--force"], "input"),
        (["eval", run, "--out", config, "--force"], "inside the run folder"),
        (["eval", recipe, "--out", recipe, "--force"], "input"),
    ):
        assert expected in fails(capsys, *args)
    assert {p: p.read_bytes() for p in before} == before

    mine = tmp_path / "results.json"
    mine.write_text("mine")
    assert "--force" in fails(capsys, "eval", run, "--out", mine)
    assert mine.read_text() == "mine"
    ok("eval", run, "--out", mine, "--force")
    assert "rte" in json.loads(mine.read_text())


@pytest.mark.parametrize("name", [".rankmix-lock", "metrics.jsonl"])
def test_a_hard_link_in_a_run_folder_is_refused(runs, capsys, tmp_path, name):
    """A run file that is a hard link to a user's file would be written into: refused, the file kept."""
    run = copy_run(runs.get("decoder")[0], tmp_path / "run")
    users = tmp_path / "users.txt"
    users.write_text("mine\n")
    (run / name).unlink(missing_ok=True)
    os.link(users, run / name)
    err = fails(capsys, "train", runs.root / "decoder-more.yaml", "--set", f"output_dir={run}")
    assert "hard link" in err and name in err
    assert users.read_text() == "mine\n"


def test_a_runs_adapter_that_is_a_file_is_refused(runs, capsys, tmp_path):
    """RUN/adapter replaced by a file: training refuses to resume there, and eval says what is wrong."""
    run = copy_run(runs.get("decoder")[0], tmp_path / "run")
    shutil.rmtree(run / "adapter")
    (run / "adapter").write_text("mine")
    err = fails(capsys, "train", runs.root / "decoder-more.yaml", "--set", f"output_dir={run}")
    assert "adapter is a file where a run keeps its folder" in err
    assert "adapter" in fails(capsys, "eval", run) and (run / "adapter").read_text() == "mine"


def test_deeply_nested_json_is_a_one_line_error(runs, bad, capsys, tmp_path):
    """A JSON line nested 100,000 levels deep, in predict's input or a task's data: exit 2, one line."""
    nested = "[" * 100_000 + "]" * 100_000
    rows = tmp_path / "rows.jsonl"
    rows.write_text(nested + "\n")
    err = fails(capsys, "predict", runs.get("decoder")[0], "--task", "cola", "--input", rows)
    assert "line 1" in err and "nested too deeply" in err
    task_file = _custom_task(tmp_path / "task", "deep", rows=[nested])
    recipe, _ = bad(lambda d: d.update(tasks=["deep"], custom_tasks=[str(task_file)], strict=True))
    assert "nested too deeply" in fails(capsys, "train", recipe, "--no-progress")


def test_an_adapter_config_without_settings_is_a_one_line_error(runs, capsys, tmp_path):
    """`"adapter": null` in adapter_config.json: a clear error naming the file, not a TypeError."""
    run = copy_run(runs.get("decoder")[0], tmp_path / "run")
    config = run / "adapter" / "adapter_config.json"
    config.write_text(json.dumps(json.loads(config.read_text()) | {"adapter": None}))
    err = fails(capsys, "eval", run)
    assert str(config) in err and "'adapter' entry" in err


def test_missing_inputs_are_named_with_the_fix(bad, capsys, tmp_path):
    """A missing custom-task file, a missing model folder, a data file that is a folder, a run before its
    first adapter: each message names the thing and what to do."""
    missing = tmp_path / "nowhere" / "task.yaml"
    recipe, _ = bad(lambda d: d.update(tasks=["t_missing"], custom_tasks=[str(missing)]))
    err = fails(capsys, "train", recipe, "--no-progress")
    assert str(missing) in err and "custom_tasks" in err and "Errno" not in err

    recipe, _ = bad(lambda d: d.update(model=str(tmp_path / "models" / "tiny")))
    err = fails(capsys, "train", recipe, "--no-progress")
    assert "model folder" in err and "does not exist" in err and "Repo id" not in err

    task_file = _custom_task(tmp_path / "task", "t_folder")
    (tmp_path / "task" / "rows.jsonl").unlink()
    (tmp_path / "task" / "rows.jsonl").mkdir()
    recipe, _ = bad(lambda d: d.update(tasks=["t_folder"], custom_tasks=[str(task_file)]))
    assert "is a folder" in fails(capsys, "train", recipe, "--no-progress")

    run = tmp_path / "run"
    run.mkdir()
    (run / ".rankmix-run").write_text("{}")
    (run / "run.yaml").write_text("{}")
    err = fails(capsys, "eval", run)
    assert "no adapter" in err and "first" in err


def test_memory_sizes_in_messages_have_a_readable_unit():
    """RANKMIX_MEMORY_LIMIT=1 once read "0.00 GB, more than the 0.00 GB": each size keeps its digits."""
    from rankmix.sizing import _size

    sizes = [_size(n) for n in (1, 999, 1500, 12_500_000, 3e9)]
    assert sizes == ["1 B", "999 B", "1.50 kB", "12.50 MB", "3.00 GB"]


def test_a_byte_order_mark_is_not_part_of_the_first_row(runs, bad, tmp_path):
    """A JSON-lines file saved with a UTF-8 BOM: training reads every row, predict reads the file."""
    from rankmix.tasks.custom import load_custom_task

    task_file = _custom_task(tmp_path / "task", "bom")
    rows = tmp_path / "task" / "rows.jsonl"
    rows.write_bytes(b"\xef\xbb\xbf" + rows.read_bytes())
    examples, _ = load_custom_task(task_file).load("train", None, strict=True)
    assert len(examples) == 8
    predict_rows = tmp_path / "in.jsonl"
    predict_rows.write_bytes(b"\xef\xbb\xbf" + json.dumps({"text_a": "a b"}).encode() + b"\n")
    out = ok("predict", runs.get("decoder")[0], "--task", "cola", "--input", predict_rows)
    assert len(out.splitlines()) == 1


def test_generate_mode_on_an_encoder_reads_as_english(runs, capsys):
    err = fails(capsys, "eval", runs.get("encoder")[0], "--mode", "generate")
    assert "an encoder model can only score" in err


def test_evaluation_shows_the_rows_it_scores(runs):
    """`rankmix eval` and training's evaluations show a bar of the rows scored, naming each task in turn
    (--no-progress: none)."""
    run = runs.get("decoder")[0]
    rows = sum(len(d) for d in open_run(run, [], splits=("dev",))[0].dev_sets)
    code, _, err = cli("eval", run)
    assert code == 0 and f"{rows}/{rows}" in err
    assert all(f"eval {task}" in err for task in TASKS)
    code, _, err = cli("eval", run, "--no-progress")
    assert code == 0 and "eval rte" not in err
    code, _, err = cli("train", runs.recipe("progress", "decoder", steps=4, eval_every=4))  # and in training
    assert code == 0 and f"{rows}/{rows}" in err and "eval stsb" in err


def test_a_recipe_with_an_automatic_allocation_inspects_trains_and_loads(runs, model_dirs):
    """`method.max_rank: auto`: inspect names the allocation before training; the run's adapter keeps it
    as a per-layer list, within the budget, and evaluating the run rebuilds it from that list. (The
    budget is MoRE max_rank 7's: this 2-layer model's steps of one rank cost 10% of a LoRA budget.)"""
    base = auto_class("decoder").from_pretrained(model_dirs["decoder"])
    budget = parameter_counts(base, MoREConfig(tasks=TASKS, max_rank=7))["trainable"]
    method = {"method": "more", "max_rank": "auto", "budget": budget}
    recipe = runs.recipe("auto-more", "decoder", method=method)
    assert f"max_rank allocated by spectral under budget {budget}" in ok("inspect", recipe)
    ok("train", recipe, "--no-progress")
    run = runs.root / "auto-more"
    saved = json.loads((run / "adapter" / "adapter_config.json").read_text())
    section = saved.get("adapter", saved)
    assert isinstance(section["max_rank"], list) and len(section["max_rank"]) == 2
    model = reference_model(model_dirs, "decoder", run)
    assert model.adapter_config.max_rank == section["max_rank"]
    counts = model.parameter_counts()  # loaded for inference: nothing trainable, the sizes as trained
    assert 0.95 * budget <= counts["adapter"] + counts["router"] <= budget
    assert json.loads((run / "results.json").read_text())["average"] is not None


def test_the_probe_allocator_trains_its_first_pass_on_the_recipes_data(runs, model_dirs):
    """`allocator: probe` on an encoder: inspect (which loads no data otherwise) and train both run the
    probe's first pass on the recipe's training data, with the task heads, and agree on the allocation."""
    from rankmix import MoLAConfig

    base = auto_class("encoder").from_pretrained(model_dirs["encoder"])
    budget = parameter_counts(base, MoLAConfig(experts=3, rank=2, top_k=1))["trainable"]
    method = {
        "method": "mola",
        "experts": "auto",
        "rank": 2,
        "top_k": 1,
        "allocator": "probe",
        "budget": budget,
    }
    recipe = runs.recipe("auto-probe", "encoder", method=method)
    shown = ok("inspect", recipe)
    assert f"experts allocated by probe under budget {budget}" in shown
    ok("train", recipe, "--no-progress")
    saved = json.loads((runs.root / "auto-probe" / "adapter" / "adapter_config.json").read_text())
    experts = saved.get("adapter", saved)["experts"]
    assert isinstance(experts, list) and len(experts) == 2
    rows = [line.split() for line in shown.splitlines() if line.split()[:1] in (["0"], ["1"])]
    assert [int(row[2]) for row in rows] == experts  # inspect's table: layer, modules, experts, ranks


def test_a_resumed_run_keeps_the_allocation_its_checkpoint_was_built_with(runs, model_dirs, monkeypatch):
    """The checkpoint records the resolved "auto" allocation, and resuming builds that one: here the
    spectral scores are made to say otherwise before the resume (a fresh allocation would differ), and
    the run still resumes and ends with the allocation it started with."""
    from rankmix import allocators
    from rankmix.allocators import resolve

    base = auto_class("decoder").from_pretrained(model_dirs["decoder"])
    budget = parameter_counts(base, MoREConfig(tasks=TASKS, max_rank=7))["trainable"]
    method = {"method": "more", "max_rank": "auto", "budget": budget}
    recipe = runs.recipe("auto-resume", "decoder", method=method, steps=4, eval_every=4)
    ok("train", recipe, "--no-progress")
    run = runs.root / "auto-resume"
    first = json.loads((run / "adapter" / "adapter_config.json").read_text())
    first = first.get("adapter", first)["max_rank"]
    assert torch.load(run / "checkpoint.pt", weights_only=True)["state"]["adapter"]["max_rank"] == first

    monkeypatch.setattr(allocators, "spectral_scores", lambda model, targets: {0: 1.0, 1: 50.0})
    config = MoREConfig(tasks=TASKS, max_rank="auto", budget=budget, auto_max=12)
    assert resolve(base, config).max_rank != first  # what allocating again would now give
    ok("train", recipe, "--no-progress", "--set", "train.steps=8")
    assert json.loads((run / "results.json").read_text())["steps"] == 8
    saved = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert saved.get("adapter", saved)["max_rank"] == first
