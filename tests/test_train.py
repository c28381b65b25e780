"""The training recipe's optimizer set-up: encoder task heads get their own learning rate."""

from __future__ import annotations

import pytest
import yaml

from helpers import build_base, word_tokenizer
from rankmix.recipes.run import Run, build_model, resolve_tasks
from rankmix.recipes.run_config import load_run_config
from rankmix.recipes.train import param_groups


def _recipe(tmp_path, arch: str, **train):
    folder = tmp_path / arch
    tokenizer = word_tokenizer(["good bad fine yes no"], template="bert" if arch == "bert" else "llama")
    build_base(arch, layers=2, hidden=32, vocab=len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    path = tmp_path / f"{arch}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "model": str(folder),
                "tasks": ["sentiment", "topic"],
                "method": {"method": "lora", "r": 2},
                "train": train,
            }
        )
    )
    return load_run_config(path)


def _groups(cfg):
    tasks = resolve_tasks(cfg)
    model, adapted, tokenizer, family = build_model(cfg, tasks)
    return model, param_groups(Run(cfg, tasks, [], [], model, adapted, tokenizer, family))


@pytest.mark.parametrize("head_lr", [None, 0.05])
def test_encoder_heads_get_head_lr(tmp_path, head_lr):
    """Heads form their own group at head_lr (train.lr when unset); the groups hold every trainable
    parameter exactly once."""
    cfg = _recipe(tmp_path, "bert", lr=0.001, head_lr=head_lr)
    model, groups = _groups(cfg)
    assert len(groups) == 2
    heads = {id(p) for p in model.heads.parameters()}
    assert {id(p) for p in groups[1]["params"]} == heads
    assert groups[1]["lr"] == (head_lr or 0.001)
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters() if p.requires_grad)


def test_decoder_has_one_group(tmp_path):
    """Decoders have no heads: one group of all adapter parameters at train.lr."""
    model, groups = _groups(_recipe(tmp_path, "llama", lr=0.001))
    assert len(groups) == 1
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in model.parameters() if p.requires_grad}


def test_head_lr_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match=r"train\.head_lr"):
        _recipe(tmp_path, "llama", head_lr=0)
