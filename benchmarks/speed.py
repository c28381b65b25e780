"""Training-step time and peak step memory of rankmix methods against PEFT LoRA, measured in one run,
and the inference latency of a merged MoRE model against its base model.

    python benchmarks/speed.py                      # both models (MiniLM-L6, SmolLM2-135M)
    python benchmarks/speed.py --models minilm --steps 3
    python benchmarks/speed.py --random-weights     # on a GPU machine without the model packages
    python benchmarks/speed.py --decoder-loss       # SmolLM2's loss on answer tokens: labelled rows vs all

Variants are stepped round-robin so machine noise hits all of them alike; every number is reported
as a ratio against PEFT LoRA (training) or the base model (inference) from the same run. Peak memory
is the working memory of a training step above what is resident before it (activations, gradients,
temporaries): `torch.cuda.max_memory_allocated` on a GPU, sampled process RSS on the CPU.
Writes benchmarks/results/speed.json and the speed table in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import torch
from torch import nn

from rankmix import HiLoConfig, LoRAConfig, MoLAConfig, MoREConfig, get_model
from rankmix.data.collate import IGNORE
from rankmix.families import FAMILIES
from rankmix.files import write_json, write_text
from rankmix.model import find_targets
from rankmix.pretrained import load_smollm2, minilm_path
from render import replace_section

ROOT = Path(__file__).resolve().parent
TASKS = ["t0", "t1", "t2", "t3"]
VARIANTS = ["peft-lora", "lora", "more", "hilo", "mola", "hilo-loop"]
DROPOUT = 0.1
# --decoder-loss: each method with transformers' loss over every position, and with rankmix's decoder loss
# on the labelled positions only ("-labelled"), on batches labelled like multiple-choice answers
LABELLED = "-labelled"
DECODER_LOSS_VARIANTS = ["lora", "lora" + LABELLED, "more", "more" + LABELLED]
ANSWER_TOKENS = 6  # labelled tokens per row: an option's text and the end of the row


# The two models' architectures, for --random-weights: same shapes, so the same step cost.
ARCHITECTURES = {
    "minilm": dict(
        model_type="bert", hidden_size=384, intermediate_size=1536, num_hidden_layers=6,
        num_attention_heads=12, vocab_size=30522, num_labels=2,
    ),
    "smollm2": dict(
        model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True,
    ),
}  # fmt: skip
BATCHES = {"minilm": (32, 128), "smollm2": (8, 128)}


def load_base(name: str, random_weights: bool) -> nn.Module:
    """The packaged pretrained model, or (random_weights) one of its architecture built from a config:
    a GPU machine gets only the working tree, not the model packages."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    auto = AutoModelForSequenceClassification if name == "minilm" else AutoModelForCausalLM
    if random_weights:
        return auto.from_config(AutoConfig.for_model(**ARCHITECTURES[name]))
    if name == "minilm":
        return auto.from_pretrained(minilm_path(), num_labels=2)
    return load_smollm2()


def loop_forward(self, x: torch.Tensor) -> torch.Tensor:
    """Per-expert loop in the MoLA/Mixtral reference style: gather each expert's tokens, run that expert,
    scatter back. Same maths as the fused bank; used only as the speed reference."""
    result = self.base_layer(x)
    gates, aux = self.router(x, None, self._context.token_mask_for(x))
    if self._context.collect:
        self._context.aux.extend(aux.items())
    flat_x = self.bank.dropout(x).reshape(-1, x.shape[-1])
    flat_g = gates.reshape(-1, gates.shape[-1])
    out = torch.zeros(flat_x.shape[0], self.bank.lora_B.shape[0], dtype=x.dtype, device=x.device)
    start = 0
    for e, r in enumerate(self.bank.ranks):
        idx = flat_g[:, e].nonzero().squeeze(-1)
        if idx.numel():
            a, b = self.bank.lora_A[start : start + r], self.bank.lora_B[:, start : start + r]
            y = (flat_x[idx] @ a.t()) @ b.t() * self.bank.mix[e, start]
            out = out.index_add(0, idx, y * flat_g[idx, e : e + 1])
        start += r
    return result + out.view(*x.shape[:-1], -1)


def build(variant: str, base: nn.Module, targets: list[str]) -> nn.Module:
    common = {"target_modules": targets, "dropout": DROPOUT}
    if variant == "peft-lora":
        from peft import LoraConfig, get_peft_model

        return get_peft_model(
            base, LoraConfig(r=8, lora_alpha=16, lora_dropout=DROPOUT, target_modules=targets)
        )
    config = {
        "lora": lambda: LoRAConfig(r=8, **common),
        "more": lambda: MoREConfig(tasks=TASKS, max_rank=8, **common),
        "hilo": lambda: HiLoConfig(experts="2468", ranks="2468", top_k=2, **common),
        "mola": lambda: MoLAConfig(experts="2468", rank=8, top_k=2, **common),
        "hilo-loop": lambda: HiLoConfig(experts="2468", ranks="2468", top_k=2, **common),
    }[variant]()
    model = get_model(base, config)
    if variant == "hilo-loop":
        for _, m in model.adapted_modules():
            m.forward = types.MethodType(loop_forward, m)
    return model


class PeakMemory:
    """Peak memory above the level at entry: CUDA allocator statistics, or the kernel's peak-RSS mark
    (VmHWM, reset through /proc/self/clear_refs). On the CPU this is exact only when freed tensors go
    back to the kernel, so `memory_pass` runs in a child with glibc's mmap threshold pinned low."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak = device, 0

    @staticmethod
    def _status(key: str) -> int:
        with open("/proc/self/status") as f:
            line = next(line for line in f if line.startswith(key + ":"))
        return int(line.split()[1]) * 1024

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.start = self._status("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.start
        else:
            self.peak = self._status("VmHWM") - self.start


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def prepare(
    name: str, device: torch.device, random_weights: bool, answers: bool = False
) -> tuple[nn.Module, dict, dict, torch.Tensor]:
    """The base model, one adapted copy per variant (non-zero B, same seed), the batch and task ids.
    `answers` (--decoder-loss): labels on each row's last ANSWER_TOKENS tokens only, and its variants."""
    torch.manual_seed(0)
    base, (batch, seq) = load_base(name, random_weights), BATCHES[name]
    base.to(device)
    targets = find_targets(base, "all-linear")
    input_ids = torch.randint(5, base.config.vocab_size, (batch, seq), device=device)
    labels = torch.randint(0, 2, (batch,), device=device) if name == "minilm" else input_ids
    if answers:
        labels = torch.full_like(input_ids, IGNORE)
        labels[:, -ANSWER_TOKENS:] = input_ids[:, -ANSWER_TOKENS:]
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}
    task_ids = torch.arange(batch, device=device) % len(TASKS)
    variants = DECODER_LOSS_VARIANTS if answers else VARIANTS
    models = {
        v: build(v.removesuffix(LABELLED), copy.deepcopy(base), targets).to(device).train() for v in variants
    }
    for m in models.values():  # non-zero B so every path does real work
        for p_name, p in m.named_parameters():
            if "lora_B" in p_name:
                nn.init.normal_(p, std=0.02)
    return base, models, inputs, task_ids


def train_step(variant: str, model: nn.Module, optim: torch.optim.Optimizer, inputs: dict, task_ids) -> None:
    batch = inputs if variant == "peft-lora" else {**inputs, "task_ids": task_ids}
    optim.zero_grad(set_to_none=True)
    if variant.endswith(LABELLED):  # what rankmix's training loop runs for a decoder
        FAMILIES["decoder"].train_outputs(model, batch).loss.backward()
    else:
        model(**batch).loss.backward()
    optim.step()


def make_optims(models: dict) -> dict:
    return {
        v: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
        for v, m in models.items()
    }


def memory_pass(
    name: str, device: torch.device, random_weights: bool, answers: bool = False
) -> dict[str, int]:
    """Peak working memory of one training step per variant, after a warm-up step (optimizer state exists)."""
    _, models, inputs, task_ids = prepare(name, device, random_weights, answers)
    optims = make_optims(models)
    peaks = {}
    for v, m in models.items():
        train_step(v, m, optims[v], inputs, task_ids)
        optims[v].zero_grad(set_to_none=True)
        with PeakMemory(device) as mem:
            train_step(v, m, optims[v], inputs, task_ids)
            sync(device)
        peaks[v] = mem.peak
    return peaks


def run_memory_pass(
    name: str, device: torch.device, random_weights: bool, answers: bool = False
) -> dict[str, int]:
    if device.type == "cuda":
        return memory_pass(name, device, random_weights, answers)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}  # freed tensors go back to the kernel
    flags = ["--random-weights"] * random_weights + ["--decoder-loss"] * answers
    out = subprocess.run(
        [sys.executable, __file__, "--memory-pass", name, *flags],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def step_times(name: str, models: dict, inputs: dict, task_ids, steps: int, warmup: int, device) -> dict:
    """{variant: median training-step seconds}, the variants stepped round-robin so that machine noise
    hits them alike."""
    optims = make_optims(models)
    times: dict[str, list[float]] = {v: [] for v in models}
    for step in range(warmup + steps):
        for v, m in models.items():
            m.train()
            sync(device)
            t0 = time.perf_counter()
            train_step(v, m, optims[v], inputs, task_ids)
            sync(device)
            if step >= warmup:
                times[v].append(time.perf_counter() - t0)
        print(f"  {name} step {step + 1}/{warmup + steps} done", flush=True)
    return {v: statistics.median(t) for v, t in times.items()}


def bench_decoder_loss(steps: int, warmup: int, device: torch.device, random_weights: bool) -> dict:
    """SmolLM2 steps on answer-labelled batches: each method's step time and peak memory with the loss on
    the labelled positions only, against transformers' loss over every position, measured together."""
    _, models, inputs, task_ids = prepare("smollm2", device, random_weights, answers=True)
    seconds = step_times("smollm2", models, inputs, task_ids, steps, warmup, device)
    del models
    print("  memory pass ...", flush=True)
    peaks = run_memory_pass("smollm2", device, random_weights, answers=True)
    methods = {}
    for method in sorted({v.removesuffix(LABELLED) for v in DECODER_LOSS_VARIANTS}):
        full, fast = method, method + LABELLED
        methods[method] = {
            "full_step_s": seconds[full],
            "labelled_step_s": seconds[fast],
            "step_ratio": seconds[fast] / seconds[full],
            "full_peak_mb": peaks[full] / 2**20,
            "labelled_peak_mb": peaks[fast] / 2**20,
            "peak_ratio": peaks[fast] / peaks[full],
        }
    return {"batch": list(inputs["input_ids"].shape), "answer_tokens": ANSWER_TOKENS, "methods": methods}


def decoder_loss_table(results: dict) -> str:
    r = results["decoder_loss"]
    lines = [
        f"SmolLM2-135M, batch {r['batch'][0]}x{r['batch'][1]}, labels on the last {r['answer_tokens']} "
        "tokens of each row (a multiple-choice answer):",
        "",
        "| method | step, loss over every position (s) | step, labelled positions (s) | ratio "
        "| peak, every position (MiB) | peak, labelled (MiB) | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, m in r["methods"].items():
        lines.append(
            f"| {method} | {m['full_step_s']:.3f} | {m['labelled_step_s']:.3f} | {m['step_ratio']:.2f}x "
            f"| {m['full_peak_mb']:.0f} | {m['labelled_peak_mb']:.0f} | {m['peak_ratio']:.2f}x |"
        )
    return "\n".join(lines)


def bench_model(name: str, steps: int, warmup: int, device: torch.device, random_weights: bool) -> dict:
    base, models, inputs, task_ids = prepare(name, device, random_weights)
    with torch.no_grad():  # the loop reference must compute what the fused bank computes
        models["hilo-loop"].load_state_dict(models["hilo"].state_dict())
        fused, loop = (models[v].eval()(**inputs).logits for v in ("hilo", "hilo-loop"))
        assert torch.allclose(fused, loop, atol=1e-4), "loop reference disagrees with the fused bank"
    seconds = step_times(name, models, inputs, task_ids, steps, warmup, device)
    train = {v: {"step_s": seconds[v]} for v in VARIANTS}
    for v in VARIANTS:
        train[v]["step_ratio"] = train[v]["step_s"] / train["peft-lora"]["step_s"]
        if hasattr(models[v], "parameter_counts"):
            train[v]["params"] = models[v].parameter_counts()

    more = models.pop("more").eval()
    del models
    merged = more.merge_and_unload(task=0).eval()
    plain = base.eval()
    mask = inputs["attention_mask"]
    lat: dict[str, list[float]] = {"base": [], "merged-more": []}
    with torch.no_grad():
        for _ in range(2 + 3 * steps):
            for key, m in (("base", plain), ("merged-more", merged)):
                sync(device)
                t0 = time.perf_counter()
                m(input_ids=inputs["input_ids"], attention_mask=mask)
                sync(device)
                lat[key].append(time.perf_counter() - t0)
    base_lat, merged_lat = (statistics.median(lat[k][2:]) for k in ("base", "merged-more"))
    del base, plain, merged, more

    print(f"  {name} memory pass ...", flush=True)
    peaks = run_memory_pass(name, device, random_weights)
    for v in VARIANTS:
        train[v]["peak_mb"] = peaks[v] / 2**20
        train[v]["peak_ratio"] = peaks[v] / peaks["peft-lora"]
    inference = {"base_s": base_lat, "merged_more_s": merged_lat, "ratio": merged_lat / base_lat}
    batch = list(inputs["input_ids"].shape)
    return {"batch": batch, "train": train, "inference": inference}


TARGETS = {"more": 1.10, "hilo": 1.5, "peak": 1.15, "inference": 1.03}


def table(results: dict) -> str:
    lines = [
        "| model | variant | step time (s) | vs PEFT LoRA | peak step memory (MiB) | vs PEFT LoRA |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results["models"].items():
        for v, t in r["train"].items():
            lines.append(
                f"| {name} {r['batch'][0]}x{r['batch'][1]} | {v} | {t['step_s']:.3f} "
                f"| {t['step_ratio']:.2f}x "
                f"| {t['peak_mb']:.0f} | {t['peak_ratio']:.2f}x |"
            )
    lines += ["", "| model | base forward (s) | merged MoRE forward (s) | ratio |", "|---|---|---|---|"]
    for name, r in results["models"].items():
        i = r["inference"]
        lines.append(f"| {name} | {i['base_s']:.4f} | {i['merged_more_s']:.4f} | {i['ratio']:.3f}x |")
    lines += [
        "",
        "HiLo fused vs per-expert loop (step time): "
        + ", ".join(
            f"{name} {r['train']['hilo-loop']['step_s'] / r['train']['hilo']['step_s']:.2f}x faster"
            for name, r in results["models"].items()
        ),
    ]
    return "\n".join(lines)


def write_markdown(results: dict, path: Path, section: str) -> None:
    c = results["conditions"]
    body = (
        f"Command: `{c['command']}`  \nDevice: {c['device']}, torch {c['torch']}, "
        f"{c['threads']} threads, {c['weights']} weights, {c['steps']} timed steps after {c['warmup']} "
        f"warm-up (medians), dropout {DROPOUT}, all linear layers of every block adapted.\n\n"
    )
    body += decoder_loss_table(results) if "decoder_loss" in results else table(results)
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    write_text(path, replace_section(text, section, body, heading="Speed and memory"))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["minilm", "smollm2"], choices=["minilm", "smollm2"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="models built from their configs: no model packages needed",
    )
    parser.add_argument("--out", type=Path, help="default: results/speed.json (speed-cuda.json on a GPU)")
    parser.add_argument("--markdown", type=Path, default=ROOT.parent / "BENCHMARKS.md")
    parser.add_argument(
        "--decoder-loss",
        action="store_true",
        help="only SmolLM2's training step with the loss on the labelled positions against every position",
    )
    parser.add_argument("--memory-pass", help=argparse.SUPPRESS)  # internal: one model's memory, as JSON
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    section = "speed" if device.type == "cpu" else "speed-cuda"  # a GPU run keeps the CPU table
    section += "-decoder-loss" if args.decoder_loss else ""
    if args.memory_pass:
        print(json.dumps(memory_pass(args.memory_pass, device, args.random_weights, args.decoder_loss)))
        return
    results = {
        "conditions": {
            "command": "python benchmarks/speed.py " + " ".join(sys.argv[1:]),
            "device": torch.cuda.get_device_name()
            if device.type == "cuda"
            else f"CPU ({platform.processor() or platform.machine()})",
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "steps": args.steps,
            "warmup": args.warmup,
            "weights": "random (built from configs)" if args.random_weights else "pretrained",
            "targets": TARGETS,
        },
        "models": {},
    }
    if args.decoder_loss:
        print("benchmarking the decoder loss ...", flush=True)
        results["decoder_loss"] = bench_decoder_loss(args.steps, args.warmup, device, args.random_weights)
    for name in [] if args.decoder_loss else args.models:
        print(f"benchmarking {name} ...", flush=True)
        results["models"][name] = bench_model(name, args.steps, args.warmup, device, args.random_weights)
    write_json(args.out or ROOT / "results" / f"{section}.json", results)
    write_markdown(results, args.markdown, section)
    print(decoder_loss_table(results) if args.decoder_loss else table(results))


if __name__ == "__main__":
    main()
