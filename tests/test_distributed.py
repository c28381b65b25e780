"""Data-parallel training on CPUs: `torchrun` with two processes trains one adapter (gloo backend), on the
generated GLUE data of the `glue_data` fixture (tests/glue_fixture.py), so it needs no benchmark data."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import yaml
from safetensors.torch import load_file

from helpers import build_base, word_tokenizer
from rankmix.layers import AdaptedLinear
from rankmix.recipes.run import evaluate_run, load_adapter, prepare
from rankmix.recipes.run_config import load_run_config
from rankmix.recipes.sharding import shard
from rankmix.recipes.train import routing_log


def _tiny_llama(folder: Path, data_dir: Path) -> None:
    """A tiny random Llama whose word tokenizer knows the prompts' words and those of the RTE and CoLA
    training files of `data_dir`."""
    words = ["yes", "no", "acceptable", "unacceptable", "the", "a", "is", "was", "Answer:", "Question:"]
    words += [f"w{i}" for i in range(200)]
    corpus = [" ".join(words)]
    for rel in ("glue/RTE/train.tsv", "glue/CoLA/train.tsv"):
        corpus += (data_dir / rel).read_text(encoding="utf-8").splitlines()
    fast = word_tokenizer(corpus, specials=["[PAD]", "[UNK]", "<s>", "</s>"])
    model = build_base(
        "llama", vocab=len(fast), max_position_embeddings=256, pad_token_id=0, bos_token_id=2, eos_token_id=3
    )
    model.save_pretrained(folder)
    fast.save_pretrained(folder)


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_processes_train_together(tmp_path, glue_data, launcher):
    """Two gloo workers train together, under torchrun or under `accelerate launch` with the shipped
    configs/accelerate/ddp.yaml, each with a DataLoader worker: results say 2 processes, only the main
    process prints, and the saved adapter loads and was trained (not the zero initialisation)."""
    _tiny_llama(tmp_path / "model", glue_data)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "model": str(tmp_path / "model"),
                "tasks": ["rte", "cola"],
                "data_dir": str(glue_data),
                "output_dir": str(tmp_path / "run"),
                "method": {"method": "more", "max_rank": 4},
                "train": {
                    "steps": 4,
                    "batch_size": 4,
                    "eval_every": 4,
                    "max_train_examples": 16,
                    "max_eval_examples": 8,
                    "max_length": 48,
                    "warmup_steps": 1,
                    "num_workers": 1,  # each process pads its batches in a DataLoader worker
                },
            }
        )
    )
    if launcher == "torchrun":
        command = [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", "2"]
    else:
        config = Path(__file__).parents[1] / "configs" / "accelerate" / "ddp.yaml"
        command = [str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file", str(config)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [*command, "-m", "rankmix.cli", "train", str(recipe), "--no-progress"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("average") == 1  # only the main process prints the table
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["processes"] == 2
    assert set(results["tasks"]) == {"rte", "cola"}
    run = prepare(load_run_config(tmp_path / "run" / "run.yaml"), splits=())
    load_adapter(run, tmp_path / "run" / "adapter")
    banks = [m.bank for m in run.adapted.base_model.modules() if isinstance(m, AdaptedLinear)]
    assert banks and any(b.lora_B.abs().sum() > 0 for b in banks)  # trained, not the zero init


def _tiny_bert(folder: Path, data_dir: Path) -> None:
    """A tiny random BERT without dropout (runs on 1 and 2 processes must compute the same function)."""
    corpus = [(data_dir / f"glue/{t}/train.tsv").read_text(encoding="utf-8") for t in ("RTE", "CoLA")]
    tokenizer = word_tokenizer(corpus, template="bert")
    build_base(  # no dropout in the base either: both runs must compute the same function
        "bert",
        layers=2,
        hidden=32,
        vocab=len(tokenizer),
        max_position_embeddings=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    ).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _torchrun_args(processes: int, recipe: Path) -> list[str]:
    torchrun = Path(sys.executable).with_name("torchrun")
    return [
        str(torchrun),
        f"--nproc_per_node={processes}",
        "-m",
        "rankmix.cli",
        "train",
        str(recipe),
        "--no-progress",
    ]


def _torchrun(processes: int, recipe: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        _torchrun_args(processes, recipe), capture_output=True, text=True, env=ENV, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _trained(run: Path) -> dict[str, torch.Tensor]:
    tensors = load_file(run / "adapter" / "adapter_model.safetensors")
    return tensors | {f"head.{k}": v for k, v in load_file(run / "adapter" / "heads.safetensors").items()}


@pytest.mark.parametrize(
    "method",
    [
        {"method": "lora", "r": 2},
        {"method": "hilo", "experts": "13", "ranks": "22", "top_k": 1},
        {"method": "more", "max_rank": 4},
    ],
    ids=["lora", "hilo", "more"],
)
def test_two_processes_train_as_one_with_the_same_global_batch(tmp_path, glue_data, method):
    """Two gloo processes with batch 4 each and one process with batch 8 draw the same global batches
    (each process its own half) and, with dropout 0, train the same adapter and heads: DDP averages the
    two halves' mean-loss gradients, which is the gradient of the 8-example mean. The learning-rate
    schedule advances once per step whatever the number of processes. LoRA matches to float rounding.
    HiLo does not match exactly: its balance loss is computed per process on its half (the mean of two
    half-batch losses, not the loss of the whole batch), and with top-1 routing a small difference flips
    some tokens to another expert; the two runs stay close (measured: 9% of the largest weight after 6
    steps at lr 1e-2; MoRE, whose contrastive term is also per process: 0.002%), and their logged
    global-batch losses are comparable. It trains under DDP with experts that a process's half leaves
    unused."""
    _tiny_bert(tmp_path / "model", glue_data)
    runs, logs = {}, {}
    for processes, batch in ((1, 8), (2, 4)):
        run = tmp_path / f"run-{processes}"
        recipe = tmp_path / f"recipe-{processes}.yaml"
        recipe.write_text(
            yaml.safe_dump(
                {
                    "model": str(tmp_path / "model"),
                    "tasks": ["rte", "cola"],
                    "data_dir": str(glue_data),
                    "output_dir": str(run),
                    "method": {**method, "dropout": 0.0},
                    "train": {
                        "steps": 6,
                        "batch_size": batch,
                        "lr": 1e-2,
                        "warmup_steps": 2,
                        "eval_every": 6,
                        "max_train_examples": 32,
                        "max_eval_examples": 8,
                        "max_length": 48,
                        "seed": 3,
                        "log_every": 1,
                    },
                }
            )
        )
        _torchrun(processes, recipe)
        runs[processes] = _trained(run)
        logs[processes] = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    one, two = runs[1], runs[2]
    losses = [[r["loss"] for r in logs[n] if "loss" in r] for n in (1, 2)]
    assert len(losses[0]) == len(losses[1]) == 6
    if method["method"] == "hilo":  # the routers' load, summed over both processes' halves
        assert all(0 < r["router/top_expert_share"] <= 1 for r in logs[2] if "loss" in r)
    assert set(one) == set(two)
    moved = max(float((one[k] - two[k]).abs().max()) for k in one)
    scale = max(float(v.abs().max()) for v in one.values())
    if method["method"] == "lora":
        assert moved < 1e-4 * scale, f"2 processes differ from 1 by {moved} (weights up to {scale})"
        # the logged loss is the global batch's mean, whatever the number of processes
        assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    else:
        assert moved < 0.2 * scale, f"2 processes differ from 1 by {moved} (weights up to {scale})"
        # comparable, not equal: measured within 0.2% at every step (HiLo), 1e-6 (MoRE)
        assert losses[1] == pytest.approx(losses[0], rel=1e-2)


def _kill_after_checkpoint(recipe: Path, checkpoint: Path, env: dict, steps: int) -> None:
    """Start a 2-process run and SIGKILL the whole torchrun group once it has written a checkpoint."""
    proc = subprocess.Popen(
        _torchrun_args(2, recipe),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while not checkpoint.is_file():
        assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint before the run ended"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    step = torch.load(checkpoint, weights_only=True)["state"]["step"]
    assert step < steps, "the run finished before the kill; the test proves nothing"


def test_two_process_run_killed_and_resumed_equals_an_uninterrupted_one(tmp_path, glue_data):
    """SIGKILL to the whole torchrun group after a checkpoint, then the same command: the resumed
    2-process run ends with the adapter of an uninterrupted 2-process run (every process resumes its own
    RNG state and its own slice of the same global batches)."""
    _tiny_bert(tmp_path / "model", glue_data)

    def recipe(name: str) -> Path:
        path = tmp_path / f"{name}.yaml"
        train = {"steps": 30, "batch_size": 2, "lr": 1e-2, "warmup_steps": 2, "eval_every": 30, "seed": 5}
        train |= {"checkpoint_every": 3, "max_train_examples": 32, "max_eval_examples": 8, "max_length": 48}
        data = {"model": str(tmp_path / "model"), "tasks": ["rte", "cola"], "data_dir": str(glue_data)}
        data |= {
            "output_dir": str(tmp_path / name),
            "method": {"method": "more", "max_rank": 2},
            "train": train,
        }
        path.write_text(yaml.safe_dump(data))
        return path

    _torchrun(2, recipe("whole"))
    killed = recipe("killed")
    _kill_after_checkpoint(killed, tmp_path / "killed" / "checkpoint.pt", ENV, steps=30)
    _torchrun(2, killed)
    done = [torch.load(tmp_path / n / "checkpoint.pt", weights_only=True) for n in ("whole", "killed")]
    assert done[1]["state"]["step"] == 30 and len(done[1]["rng"]) == 2
    for name, value in done[0]["params"].items():
        assert torch.allclose(done[1]["params"][name], value, atol=1e-6), name


def test_experts_without_tokens_do_not_break_ddp(tmp_path, glue_data):
    """HiLo with 16 experts in the last layer, top-1, and at most 8 tokens per process and step (batch 1,
    max_length 8): by pigeonhole at least 8 experts get no token from each process in every step, and
    an expert may get tokens on one process only. DDP (find_unused_parameters) still trains."""
    _tiny_bert(tmp_path / "model", glue_data)
    recipe = tmp_path / "recipe.yaml"
    train = {"steps": 3, "batch_size": 1, "max_length": 8, "warmup_steps": 1, "eval_every": 3}
    train |= {"max_train_examples": 8, "max_eval_examples": 4}
    data = {"model": str(tmp_path / "model"), "tasks": ["rte", "cola"], "data_dir": str(glue_data)}
    method = {"method": "hilo", "experts": "2,16", "ranks": "1,1", "top_k": 1}
    data |= {"output_dir": str(tmp_path / "run"), "method": method, "train": train}
    recipe.write_text(yaml.safe_dump(data))
    _torchrun(2, recipe)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["processes"] == 2 and results["steps"] == 3


def _evaluate_and_route(recipe: Path) -> dict:
    """Evaluate a HiLo run with fixed random weights; returns the scores, how many examples this process
    predicted, and the routing record that training would log (summed over processes, if any)."""
    run = prepare(load_run_config(recipe))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in run.model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    seen = []
    family = run.family

    class Counting:
        def check(self, tasks, mode):
            family.check(tasks, mode)

        def check_rows(self, *args):
            family.check_rows(*args)

        def predict(self, model, tokenizer, task, ids, chunk, *rest):
            seen.append(len(chunk))
            return family.predict(model, tokenizer, task, ids, chunk, *rest)

    share = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    scores = evaluate_run(dataclasses.replace(run, family=Counting()), share=share)

    def reduce(tensor: torch.Tensor, reduction: str) -> torch.Tensor:
        if dist.is_initialized():
            dist.all_reduce(tensor)
        return tensor

    return {"scores": scores, "seen": sum(seen), "routing": routing_log(run, reduce)}


def _evaluate_share(rank: int, world: int, recipe: Path, init: Path, out: Path) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    try:
        (out / f"{rank}.json").write_text(json.dumps(_evaluate_and_route(recipe)))
    finally:
        dist.destroy_process_group()


def test_evaluation_and_router_load_split_across_processes_equal_one_process(tmp_path, glue_data):
    """Two gloo processes each predict half of every dev set and together score it as one process does;
    the routers' load, summed over the two, is the one process's load (each token counted once)."""
    _tiny_bert(tmp_path / "model", glue_data)
    recipe = tmp_path / "recipe.yaml"
    data = {"model": str(tmp_path / "model"), "tasks": ["rte", "stsb"], "data_dir": str(glue_data)}
    method = {"method": "hilo", "experts": "24", "ranks": "22"}
    data |= {"output_dir": str(tmp_path / "run"), "method": method}
    data |= {"train": {"batch_size": 3, "max_eval_examples": 11, "max_length": 48}}
    recipe.write_text(yaml.safe_dump(data))
    alone = _evaluate_and_route(recipe)
    torch.multiprocessing.spawn(_evaluate_share, args=(2, recipe, tmp_path / "init", tmp_path), nprocs=2)
    shares = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in (0, 1)]
    assert alone["seen"] == 22 and [s["seen"] for s in shares] == [12, 10]
    for share in shares:
        assert share["scores"].keys() == alone["scores"].keys()
        for task, metrics in alone["scores"].items():
            assert share["scores"][task] == pytest.approx(metrics, rel=1e-5)
        assert share["routing"] == pytest.approx(alone["routing"], rel=1e-5)
    assert set(alone["routing"]) == {"router/experts_per_token", "router/top_expert_share"}


def test_fsdp_shards_trains_as_ddp_and_resumes(tmp_path, glue_data):
    """`accelerate launch --config_file configs/accelerate/fsdp.yaml` (2 processes; on this CPU machine
    accelerate's own FSDP would not shard) and `ACCELERATE_USE_FSDP=true` under torchrun: the model is
    sharded with torch's fully_shard on gloo (the checkpoint says so), MoRE trains to the
    parameters of a DDP run of the same recipe (each process's contrastive term is over its own half in
    both; they differ by float summation order, through Adam at lr 1e-2: measured 0.4% of the largest
    weight after 20 steps), and a run SIGKILLed and resumed from its sharded checkpoint ends where an
    uninterrupted one does."""
    _tiny_bert(tmp_path / "model", glue_data)

    def recipe(name: str) -> Path:
        path = tmp_path / f"{name}.yaml"
        train = {"steps": 20, "batch_size": 2, "lr": 1e-2, "warmup_steps": 1, "eval_every": 20, "seed": 2}
        train |= {"checkpoint_every": 2, "max_train_examples": 16, "max_eval_examples": 6, "max_length": 32}
        train |= {"log_every": 5}
        data = {"model": str(tmp_path / "model"), "tasks": ["rte", "cola"], "data_dir": str(glue_data)}
        method = {"method": "more", "max_rank": 2, "dropout": 0.0}
        data |= {"output_dir": str(tmp_path / name), "method": method, "train": train}
        path.write_text(yaml.safe_dump(data))
        return path

    fsdp_env = {**ENV, "ACCELERATE_USE_FSDP": "true"}

    def launch(path: Path, env: dict) -> None:
        proc = subprocess.run(_torchrun_args(2, path), capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]

    launch(recipe("ddp"), ENV)
    accelerate = Path(sys.executable).with_name("accelerate")
    config = Path(__file__).parents[1] / "configs" / "accelerate" / "fsdp.yaml"
    command = [str(accelerate), "launch", "--config_file", str(config), "-m", "rankmix.cli", "train"]
    proc = subprocess.run(
        [*command, str(recipe("fsdp")), "--no-progress"], capture_output=True, text=True, env=ENV, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    _kill_after_checkpoint(recipe("resumed"), tmp_path / "resumed" / "checkpoint.pt", fsdp_env, steps=20)
    launch(recipe("resumed"), fsdp_env)
    ckpt = {
        n: torch.load(tmp_path / n / "checkpoint.pt", weights_only=True) for n in ("ddp", "fsdp", "resumed")
    }
    assert [ckpt[n]["sharded"] for n in ("ddp", "fsdp", "resumed")] == [False, True, True]
    ddp, fsdp, resumed = (ckpt[n]["params"] for n in ("ddp", "fsdp", "resumed"))
    scale = max(float(v.abs().max()) for v in ddp.values())
    moved = max(float((fsdp[k] - v).abs().max()) for k, v in ddp.items())
    assert moved < 1e-2 * scale, f"FSDP differs from DDP by {moved} (weights up to {scale})"
    for name, value in fsdp.items():
        assert torch.allclose(resumed[name], value, atol=1e-6), name
    run = prepare(load_run_config(tmp_path / "fsdp" / "run.yaml"), splits=())
    load_adapter(run, tmp_path / "fsdp" / "adapter")  # whole tensors, loadable in one process
    results = json.loads((tmp_path / "fsdp" / "results.json").read_text())
    assert results["processes"] == 2 and results["steps"] == 20 and results["selected_ranks"]


def _shard_in(rank: int, world: int, recipe: Path, init: Path, out: Path) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    try:
        run = prepare(load_run_config(recipe), splits=())
        shard(run.model)
        local = {
            n: [type(p).__name__, p.to_local().numel(), p.numel()]
            for n, p in run.model.named_parameters()
            if p.requires_grad
        }
        (out / f"shards-{rank}.json").write_text(json.dumps(local))
    finally:
        dist.destroy_process_group()


def test_fsdp_shards_every_trainable_parameter_over_the_processes(tmp_path, glue_data):
    """What FSDP does to the model, seen from each of two processes: every trainable parameter (adapter,
    routers, heads) is a DTensor of which each process holds a part, the parts adding up to the whole."""
    _tiny_bert(tmp_path / "model", glue_data)
    recipe = tmp_path / "recipe.yaml"
    data = {"model": str(tmp_path / "model"), "tasks": ["rte", "cola"], "data_dir": str(glue_data)}
    data |= {"output_dir": str(tmp_path / "run"), "method": {"method": "more", "max_rank": 4}}
    recipe.write_text(yaml.safe_dump(data))
    torch.multiprocessing.spawn(_shard_in, args=(2, recipe, tmp_path / "init", tmp_path), nprocs=2)
    shards = [json.loads((tmp_path / f"shards-{rank}.json").read_text()) for rank in (0, 1)]
    assert shards[0].keys() == shards[1].keys() and any(
        ".heads." in n or n.startswith("heads") for n in shards[0]
    )
    for name, (kind, local, whole) in shards[0].items():
        assert kind == "DTensor" and shards[1][name][0] == "DTensor", name
        assert local + shards[1][name][1] == whole, name
        assert local < whole or whole == 1, name


def test_a_grown_adapter_with_two_task_groups_trains_under_ddp(tmp_path, glue_data):
    """MoRE on rte, grown frozen with cola (two task groups), then grown joint with stsb under torchrun:
    a batch of one task leaves the other group's parameters without gradient, which DDP must expect
    (a decoder's DDP otherwise assumes every parameter is used)."""
    _tiny_llama(tmp_path / "model", glue_data)
    train = {"steps": 2, "batch_size": 2, "max_length": 32, "warmup_steps": 1, "eval_every": 2}
    train |= {"max_train_examples": 8, "max_eval_examples": 4}
    base = {"model": str(tmp_path / "model"), "data_dir": str(glue_data), "train": train}
    base["method"] = {"method": "more", "max_rank": 2}

    def recipe(name: str, tasks: list[str], **extra) -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(base | {"tasks": tasks, "output_dir": str(tmp_path / name)} | extra))
        return path

    for args in (
        [recipe("first", ["rte"])],
        [recipe("frozen", ["rte", "cola"], grow="frozen"), "--init-from", str(tmp_path / "first")],
    ):
        subprocess.run(
            [sys.executable, "-m", "rankmix.cli", "train", *map(str, args), "--no-progress"],
            check=True,
            capture_output=True,
            env=ENV,
            timeout=600,
        )
    joint = recipe("joint", ["rte", "cola", "stsb"], init_from=str(tmp_path / "frozen"))
    _torchrun(2, joint)
    results = json.loads((tmp_path / "joint" / "results.json").read_text())
    assert results["processes"] == 2 and results["steps"] == 2
    saved = json.loads((tmp_path / "joint" / "adapter" / "adapter_config.json").read_text())
    assert saved["adapter"]["task_groups"] == [1, 2]
