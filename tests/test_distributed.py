"""Data-parallel training on CPUs: `torchrun` with two processes trains one adapter (gloo backend), on the
generated GLUE data of the `glue_data` fixture (tests/glue_fixture.py), so it needs no benchmark data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from helpers import build_base, word_tokenizer
from rankmix.layers import AdaptedLinear
from rankmix.recipes.run import load_adapter, prepare
from rankmix.recipes.run_config import load_run_config


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


def test_torchrun_two_processes(tmp_path, glue_data):
    """Two gloo workers train together: results say 2 processes, only the main process prints, and the
    saved adapter loads and was trained (not the zero initialisation)."""
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
                },
            }
        )
    )
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", "-m", "rankmix.cli", "train", str(recipe), "--no-progress"],
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
