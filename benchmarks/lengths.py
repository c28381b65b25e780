"""How many rows a max_length cuts: for each task, the share of training rows whose sequence (prompt and
answer, as the decoder trains on it) and of dev rows whose longest option's sequence (as it is scored)
is longer than max_length tokens; cut rows lose the start of their prompt.

    python benchmarks/lengths.py --tasks boolq piqa --max-length 128 256     # SmolLM2's tokenizer
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rankmix.data.collate import continuation_ids
from rankmix.recipes.loading import _source
from rankmix.tasks import get_task

ROOT = Path(__file__).resolve().parent
COMMONSENSE = "boolq piqa social_i_qa arc_easy arc_challenge openbookqa winogrande hellaswag commonsenseqa"


def lengths(tokenizer, task_name: str, split: str, data_dir: str) -> list[int]:
    """Each row's sequence length: its training target (train) or its longest option (dev)."""
    task = get_task(task_name)
    examples, _ = task.load(split, data_dir)
    kind, eos = task.kind, task.kind.ends_with_eos
    rows = []
    for example in examples:
        options = [kind.target(task, example)] if split == "train" else kind.options(task, example)
        rows.append(max(sum(map(len, continuation_ids(tokenizer, o.context, o.text, eos))) for o in options))
    return rows


def main() -> None:
    from transformers import AutoTokenizer

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", nargs="+", default=COMMONSENSE.split())
    parser.add_argument("--max-length", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--data-dir", default=str(ROOT.parent.parent / "shared" / "data"))
    args = parser.parse_args()
    path, options = _source(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path, **options)
    cuts = " | ".join(f"{split} cut at {n}" for n in args.max_length for split in ("train", "dev"))
    print(f"| task | rows (train, dev) | median tokens (train, dev) | {cuts} |")
    print("|---|---|---|" + "---|" * 2 * len(args.max_length))
    for name in args.tasks:
        by_split = {
            split: sorted(lengths(tokenizer, name, split, args.data_dir)) for split in ("train", "dev")
        }
        rows = ", ".join(str(len(v)) for v in by_split.values())
        medians = ", ".join(str(v[len(v) // 2]) for v in by_split.values())
        shares = [f"{sum(x > n for x in v) / len(v):.1%}" for n in args.max_length for v in by_split.values()]
        print(f"| {name} | {rows} | {medians} | {' | '.join(shares)} |")


if __name__ == "__main__":
    main()
