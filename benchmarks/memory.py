"""What a training step costs over quantized bases and with activation checkpointing (issue 22):
SmolLM2-135M, batch 8 x 256 tokens, LoRA, MoRE and HiLo, over a float32, a bf16, a 4-bit NF4 and an
8-bit base, each with and without activation checkpointing, and bf16 autocast (train.mixed_precision)
over the NF4 base with checkpointing (the QLoRA setting).

    python benchmarks/memory.py                    # every configuration (about 45 min on 2 CPU cores)
    python benchmarks/memory.py --methods lora --steps 1
    python benchmarks/memory.py --random-weights   # on a GPU machine: float32 and bf16 rows only

For each configuration, in fresh child processes (one configuration never inherits another's memory):
- resident: the model's tensor bytes, base and adapter (parameters, buffers, quantization constants);
- peak: the working memory of one training step above what is resident before it, after a warm-up
  step, measured as benchmarks/speed.py measures it (peak RSS on the CPU, with glibc's mmap threshold
  pinned low so that freed tensors go back to the kernel; the CUDA allocator's peak on a GPU);
- step: the median wall time of `--steps` training steps after a warm-up, in a child of its own (the
  low mmap threshold slows allocation, so memory and time are never measured in the same process);
- loss: the warm-up step's loss on the same batch, and the adapted model's outputs before training:
  next-token agreement and last-position logit difference against the float32 base.
Every number is also given as a ratio against the float32 base without checkpointing, same method,
same run. Each configuration's result is kept in --work, so an interrupted run resumes where it was.
Writes benchmarks/results/memory.json and its table in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from accuracy import provenance
from rankmix import HiLoConfig, LoRAConfig, MoREConfig, get_model
from rankmix.files import write_json, write_text
from rankmix.model import find_targets
from render import MARKDOWN, replace_section
from speed import ARCHITECTURES, PeakMemory, sync

ROOT = Path(__file__).resolve().parent
SECTION = "memory"
BATCH, SEQ = 8, 256
TASKS = ["t0", "t1", "t2", "t3"]
METHODS = {
    "lora": lambda targets: LoRAConfig(r=8, target_modules=targets),
    "more": lambda targets: MoREConfig(tasks=TASKS, max_rank=8, target_modules=targets),
    "hilo": lambda targets: HiLoConfig(experts="2468", ranks="2468", top_k=2, target_modules=targets),
}


@dataclass(frozen=True)
class Setting:
    base: str  # float32 | bf16 | nf4 | int8
    checkpointing: bool
    autocast: bool = False  # bf16 autocast, as train.mixed_precision: bf16

    @property
    def name(self) -> str:
        return f"{self.base}{'-ckpt' if self.checkpointing else ''}{'-bf16amp' if self.autocast else ''}"


BASELINE = Setting("float32", False)
SETTINGS = [Setting(b, c) for b in ("float32", "bf16", "nf4", "int8") for c in (False, True)]
SETTINGS.append(Setting("nf4", True, autocast=True))
QUANTIZED = ("nf4", "int8")


def load_base(base: str, random_weights: bool) -> nn.Module:
    """SmolLM2 as `base` asks: float32, cast to bf16, or quantized by bitsandbytes from the float weights
    (what `model_quantization` loads); with `random_weights`, its architecture from a config."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if random_weights:
        if base in QUANTIZED:
            raise ValueError("--random-weights builds float models only (no bitsandbytes on the GPU machine)")
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**ARCHITECTURES["smollm2"]))
    else:
        from rankmix.pretrained import load_smollm2
        from rankmix.recipes.loading import quantization_config

        model = load_smollm2(quantization_config(base if base in QUANTIZED else "none"))
    return model.to(torch.bfloat16) if base == "bf16" else model


def resident_bytes(model: nn.Module) -> int:
    """Bytes of every tensor the model holds: parameters and buffers, and bitsandbytes' quantization
    constants (a 4-bit weight's quant_state: absmax, code, nested statistics; an 8-bit weight's SCB)."""
    seen: dict[int, int] = {}

    def add(t: torch.Tensor | None) -> None:
        if isinstance(t, torch.Tensor):
            seen.setdefault(t.data_ptr(), t.numel() * t.element_size())

    for t in [*model.parameters(), *model.buffers()]:
        add(t)
        state = getattr(t, "quant_state", None)
        while state is not None:  # nested (double) quantization keeps a state inside the state
            add(state.absmax)
            add(state.code)
            state = getattr(state, "state2", None)
        add(getattr(t, "SCB", None))
    return sum(seen.values())


# Plain prose, so that the outputs compared across bases are confident predictions, not the near-ties a
# random token sequence gives; its tokens are tiled to fill the batch (each row from its own offset).
PROSE = (
    "The old lighthouse stood at the end of a narrow spit of land, and for most of the year the only "
    "visitors were gulls. Every evening the keeper climbed the hundred and twelve steps, cleaned the "
    "lens, and lit the lamp before the sun touched the water. In winter the storms came from the west, "
    "and waves broke so high against the rocks that spray reached the gallery. The keeper kept a log of "
    "every ship that passed: its name when he could read it, the direction it sailed, and the weather. "
    "Over forty years the log filled eleven books. When the light was finally automated, the books were "
    "given to the museum in town, where children still read the entries aloud and try to guess which "
    "of the ships made it home. Some pages are stained with salt, and some with coffee, and one has a "
    "small drawing of a whale that the keeper said he saw on a calm morning in early spring."
)


def inputs(vocab_size: int, device: torch.device, random_weights: bool) -> torch.Tensor:
    """A batch of BATCH x SEQ token ids: the prose tiled (random ids for a model with random weights)."""
    if random_weights:
        return torch.randint(5, vocab_size, (BATCH, SEQ), generator=torch.Generator().manual_seed(1)).to(
            device
        )
    from transformers import AutoTokenizer

    from rankmix.pretrained import SMOLLM2_GGUF, smollm2_dir

    tokens = AutoTokenizer.from_pretrained(smollm2_dir(), gguf_file=SMOLLM2_GGUF)(PROSE)["input_ids"]
    tiled = tokens * (2 + (SEQ + 8 * BATCH) // len(tokens))
    return torch.tensor([tiled[8 * row : 8 * row + SEQ] for row in range(BATCH)], device=device)


def build(
    method: str, setting: Setting, device: torch.device, random_weights: bool
) -> tuple[nn.Module, dict]:
    """The adapted model (adapter float32, lora_B non-zero so every path does real work; the same
    adapter for every base: same seed) and the batch."""
    base = load_base(setting.base, random_weights)
    if setting.base not in QUANTIZED:
        base.to(device)
    if setting.checkpointing:  # what train.gradient_checkpointing does (recipes/run.py: build_model)
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    torch.manual_seed(0)
    model = get_model(base, METHODS[method](find_targets(base, "all-linear")))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            nn.init.normal_(p, std=0.02)
    ids = inputs(base.config.vocab_size, device, random_weights)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    batch["task_ids"] = torch.arange(BATCH, device=device) % len(TASKS)
    return model.train(), batch


def step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: dict, setting: Setting) -> float:
    optimizer.zero_grad(set_to_none=True)
    device = batch["input_ids"].device.type
    with torch.autocast(device, dtype=torch.bfloat16, enabled=setting.autocast):
        loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    return float(loss)


def optimizer_of(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)


def measure_memory(
    method: str, setting: Setting, device: torch.device, random_weights: bool, out: Path
) -> dict:
    """Resident bytes, the outputs before training (saved to `out`.pt for the parent to compare), the
    warm-up step's loss and the next step's peak."""
    model, batch = build(method, setting, device, random_weights)
    resident = resident_bytes(model)
    with torch.no_grad():
        model.eval()
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
        model.train()
    outputs = {
        "next": logits.argmax(-1).cpu(),
        "last": logits[:, -1].cpu().clone(),
    }  # not a view of all logits
    torch.save(outputs, out.with_suffix(".pt"))
    del logits
    optimizer = optimizer_of(model)
    loss = step(model, optimizer, batch, setting)
    optimizer.zero_grad(set_to_none=True)
    with PeakMemory(device) as mem:
        step(model, optimizer, batch, setting)
        sync(device)
    return {"resident_bytes": resident, "peak_bytes": mem.peak, "loss": loss}


def measure_time(
    method: str, setting: Setting, device: torch.device, random_weights: bool, steps: int
) -> dict:
    model, batch = build(method, setting, device, random_weights)
    optimizer = optimizer_of(model)
    step(model, optimizer, batch, setting)  # warm-up
    seconds = []
    for _ in range(steps):
        sync(device)
        begin = time.perf_counter()
        step(model, optimizer, batch, setting)
        sync(device)
        seconds.append(time.perf_counter() - begin)
    return {"step_s": statistics.median(seconds), "steps_s": seconds}


def child(args: argparse.Namespace, method: str, setting: Setting, what: str, out: Path) -> dict:
    """One measurement in a fresh process (memory: with glibc returning freed memory to the kernel)."""
    env = dict(os.environ)
    if what == "memory":
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    command = [sys.executable, __file__, "--child", what, method, json.dumps(asdict(setting)), str(out)]
    command += ["--steps", str(args.steps)] + ["--random-weights"] * args.random_weights
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{method} {setting.name} ({what}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def outputs_against(reference: Path, other: Path) -> dict:
    """How far a configuration's outputs are from the float32 base's: next-token agreement over every
    position, and the mean and largest absolute difference of the last position's logits."""
    a, b = torch.load(reference), torch.load(other)
    diff = (a["last"] - b["last"]).abs()
    return {
        "next_token_agreement": float((a["next"] == b["next"]).float().mean()),
        "last_logit_mean_abs_diff": float(diff.mean()),
        "last_logit_max_abs_diff": float(diff.max()),
    }


def run_all(args: argparse.Namespace, device: torch.device) -> dict:
    settings = [s for s in SETTINGS if not (args.random_weights and s.base in QUANTIZED)]
    settings = [s for s in settings if not args.settings or s.name in args.settings]
    if BASELINE not in settings:
        settings.insert(0, BASELINE)
    args.work.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, dict]] = {}
    failed: list[str] = []
    for method in args.methods:
        results[method] = {}
        for setting in settings:
            out = args.work / f"{method}-{setting.name}.json"
            if out.is_file():  # measured by an earlier, interrupted invocation
                results[method][setting.name] = json.loads(out.read_text())
                continue
            print(f"{method} {setting.name} ...", flush=True)
            try:
                record = asdict(setting) | child(args, method, setting, "memory", out)
                record |= child(args, method, setting, "time", out)
            except RuntimeError as e:  # the others still run; a rerun measures only what is missing
                failed.append(str(e))
                print(e, flush=True)
                continue
            write_json(out, record)
            results[method][setting.name] = record
    if failed:
        raise SystemExit(f"{len(failed)} configuration(s) failed (above); fix them and run again")
    for method in args.methods:
        baseline = results[method][BASELINE.name]
        reference = args.work / f"{method}-{BASELINE.name}.pt"
        for name, r in results[method].items():
            r["resident_ratio"] = r["resident_bytes"] / baseline["resident_bytes"]
            r["peak_ratio"] = r["peak_bytes"] / baseline["peak_bytes"]
            r["step_ratio"] = r["step_s"] / baseline["step_s"]
            r["loss_diff"] = r["loss"] - baseline["loss"]
            r |= outputs_against(reference, args.work / f"{method}-{name}.pt")
    return results


def table(results: dict) -> str:
    lines = [
        "| method | base | checkpointing | autocast | resident (MiB) | vs float32 | peak step (MiB) "
        "| vs float32 | step (s) | vs float32 | loss - float32's | next token = float32's "
        "| last logits, mean abs diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, rows in results.items():
        for r in rows.values():
            lines.append(
                f"| {method} | {r['base']} | {'yes' if r['checkpointing'] else 'no'} "
                f"| {'bf16' if r['autocast'] else '-'} | {r['resident_bytes'] / 2**20:.0f} "
                f"| {r['resident_ratio']:.2f}x | {r['peak_bytes'] / 2**20:.0f} | {r['peak_ratio']:.2f}x "
                f"| {r['step_s']:.2f} | {r['step_ratio']:.2f}x | {r['loss_diff']:+.4f} "
                f"| {r['next_token_agreement']:.1%} | {r['last_logit_mean_abs_diff']:.3f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--settings", nargs="+", help=f"default: all ({', '.join(s.name for s in SETTINGS)})")
    parser.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up")
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument(
        "--work", type=Path, default=ROOT / "runs" / "memory", help="each configuration's result"
    )
    parser.add_argument("--out", type=Path, help="default: results/memory.json (memory-cuda.json on a GPU)")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)  # what, method, setting, out
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.child:
        what, method, setting, out = args.child
        setting = Setting(**json.loads(setting))
        if what == "memory":
            record = measure_memory(method, setting, device, args.random_weights, Path(out))
        else:
            record = measure_time(method, setting, device, args.random_weights, args.steps)
        print(json.dumps(record))
        return
    cuda = device.type == "cuda"
    results = run_all(args, device)
    command = "python benchmarks/memory.py " + " ".join(sys.argv[1:])
    conditions = {
        "command": command,
        "device": torch.cuda.get_device_name() if cuda else f"CPU, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch": [BATCH, SEQ],
        "steps": args.steps,
        "weights": "random (built from configs)" if args.random_weights else "pretrained",
    }
    out = args.out or ROOT / "results" / ("memory-cuda.json" if cuda else "memory.json")
    write_json(out, {"conditions": conditions, "results": results, "provenance": provenance()})
    body = (
        f"Command: `{command}`  \nDevice: {conditions['device']}, torch {conditions['torch']}, SmolLM2-135M "
        f"({conditions['weights']} weights), batch {BATCH}x{SEQ}, every linear layer of every block adapted, "
        f"median of {args.steps} timed steps after a warm-up; ratios against the float32 base without "
        "checkpointing, same method, same run.\n\n" + table(results)
    )
    section = SECTION + ("-cuda" if cuda else "")
    write_text(
        MARKDOWN,
        replace_section(
            MARKDOWN.read_text(), section, body, heading="Memory: quantized bases and checkpointing"
        ),
    )
    print(table(results))


if __name__ == "__main__":
    main()
