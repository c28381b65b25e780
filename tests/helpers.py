"""Builders shared by the test modules: tiny random Hugging Face models and offline word-level tokenizers.

Test modules import them with `from helpers import ...` (pytest's default "prepend" import mode puts
this folder on sys.path); tests/conftest.py also exposes them through its `tiny` fixture."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

ARCHS = ("llama", "bert", "t5", "gpt2")
SMALL_RUN_TASKS = ["rte", "stsb"]  # the tasks of the `small_runs` fixture (conftest.py)
VOCAB = 100

# Special tokens in vocabulary order (ids 0, 1, ...) and the role each plays for PreTrainedTokenizerFast.
SPECIALS = ("[PAD]", "</s>", "<s>", "[UNK]", "[CLS]", "[SEP]")
SPECIAL_ROLES = {
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "bos_token": "<s>",
    "eos_token": "</s>",
}
# Post-processors by model family: (single, pair, the special tokens they add).
TEMPLATES = {
    "llama": ("<s> $A", "<s> $A $B:1", ["<s>"]),
    "t5": ("$A </s>", "$A </s> $B:1 </s>:1", ["</s>"]),
    "bert": ("[CLS] $A [SEP]", "[CLS] $A [SEP] $B:1 [SEP]:1", ["[CLS]", "[SEP]"]),
}


def word_tokenizer(
    corpus: Iterable[str],
    *,
    template: str | None = None,
    specials: Iterable[str] = SPECIALS,
    **kwargs,
) -> PreTrainedTokenizerFast:
    """An offline WordLevel tokenizer over the whitespace-split words of `corpus`, `specials` first (ids
    0, 1, ... in that order). `template` picks the special tokens it adds: "llama" prepends <s>, "t5"
    appends </s>, "bert" wraps [CLS] a [SEP] (b [SEP]), None adds none. Each of `specials` plays its role
    of SPECIAL_ROLES (pad [PAD], unk [UNK], cls [CLS], sep [SEP], bos <s>, eos </s>); `kwargs` go to
    PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(specials)
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=specials))
    if template is not None:
        single, pair, added = TEMPLATES[template]
        tok.post_processor = processors.TemplateProcessing(
            single=single, pair=pair, special_tokens=[(s, tok.token_to_id(s)) for s in added]
        )
    roles = {role: token for role, token in SPECIAL_ROLES.items() if token in specials}
    return PreTrainedTokenizerFast(tokenizer_object=tok, **roles, **kwargs)


def build_base(
    arch: str,
    *,
    layers: int = 2,
    hidden: int = 32,
    vocab: int = VOCAB,
    seed: int | None = 0,
    **config,
) -> nn.Module:
    """A tiny randomly initialised model of `arch` (eval mode, float32). `config` overrides fields of its
    configuration (max_position_embeddings, special token ids, dropout, ...). `seed=None` keeps the
    current random state, for several models drawn from one seed."""
    from transformers import (
        BertConfig,
        BertModel,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        T5Config,
        T5ForConditionalGeneration,
    )

    if seed is not None:
        torch.manual_seed(seed)
    if arch == "llama":
        defaults = {
            "hidden_size": hidden,
            "intermediate_size": 2 * hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "vocab_size": vocab,
            "max_position_embeddings": 64,
            "pad_token_id": 0,
            "bos_token_id": 1,
            "eos_token_id": 2,
        }
        model = LlamaForCausalLM(LlamaConfig(**{**defaults, **config}))
    elif arch == "bert":
        defaults = {
            "hidden_size": hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": 4,
            "intermediate_size": 2 * hidden,
            "vocab_size": vocab,
            "max_position_embeddings": 64,
        }
        model = BertModel(BertConfig(**{**defaults, **config}))
    elif arch == "t5":
        defaults = {
            "d_model": hidden,
            "d_ff": 2 * hidden,
            "d_kv": hidden // 4,
            "num_layers": layers,
            "num_heads": 4,
            "vocab_size": vocab,
            "decoder_start_token_id": 0,
            "pad_token_id": 0,
            "eos_token_id": 1,
        }
        model = T5ForConditionalGeneration(T5Config(**{**defaults, **config}))
    elif arch == "gpt2":
        defaults = {
            "n_embd": hidden,
            "n_layer": layers,
            "n_head": 4,
            "vocab_size": vocab,
            "n_positions": 64,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 0,
        }
        model = GPT2LMHeadModel(GPT2Config(**{**defaults, **config}))
    else:
        raise ValueError(arch)
    return model.eval()


def generative_base(arch: str, tok, **config) -> nn.Module:
    """A tiny random "llama" or "t5" whose special token ids are those of the word tokenizer `tok`."""
    ids = {"pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id}
    if arch == "llama":
        ids |= {"bos_token_id": tok.bos_token_id, "max_position_embeddings": 128}
    else:
        ids |= {"decoder_start_token_id": tok.pad_token_id}
    return build_base(arch, vocab=len(tok), **ids, **config)


SMALL_TASKS = ["a", "b", "c"]
METHODS = ("lora", "more", "multilora", "moelora", "hilo", "mola")


def small_config(method: str):
    """A small config of `method` for 3 tasks (SMALL_TASKS), without dropout, so that two paths that must
    compute the same network (checkpointed or not, full or selected logits) do."""
    from rankmix import HiLoConfig, LoRAConfig, MoELoRAConfig, MoLAConfig, MoREConfig, MultiLoRAConfig

    tasks = SMALL_TASKS
    return {
        "lora": lambda: LoRAConfig(r=4, dropout=0.0),
        "more": lambda: MoREConfig(tasks=tasks, max_rank=4, alpha=8, dropout=0.0),
        "multilora": lambda: MultiLoRAConfig(tasks=tasks, r=2, dropout=0.0),
        "moelora": lambda: MoELoRAConfig(tasks=tasks, experts=2, rank=2, task_embedding_dim=4, dropout=0.0),
        "hilo": lambda: HiLoConfig(experts="23", ranks="24", top_k=2, dropout=0.0),
        "mola": lambda: MoLAConfig(experts="22", rank=2, top_k=1, dropout=0.0),
    }[method]()
