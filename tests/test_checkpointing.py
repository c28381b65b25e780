"""Tests for activation checkpointing under every method: transformers recomputes each block's forward
during the backward pass, and the routing must survive it. MoRE's task ids, the token routing of HiLo and
MoLA, the aux losses (counted in the real forward only) and the routers' load statistics (counted once per
real forward, not again in the recomputation) must equal a run without checkpointing, on a tiny decoder
and a tiny encoder. The reentrant variant drops the aux losses' gradients: refused where there are any."""

from __future__ import annotations

import copy

import pytest
import torch

from helpers import METHODS, build_base, small_config
from rankmix import get_model
from test_cli import _corpus, _tokenizer, ok, read_jsonl, recipe_dict, write_recipe

NO_DROPOUT = {
    "llama": {},
    "bert": {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
}


def batch(arch: str) -> dict[str, torch.Tensor]:
    """Padded rows of three tasks; a decoder's labels are its tokens."""
    ids = torch.randint(3, 100, (4, 10), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, 7:], mask[3, 4:] = 0, 0
    rows = {"input_ids": ids, "attention_mask": mask, "task_ids": torch.tensor([0, 1, 2, 0])}
    return rows | ({"labels": ids.masked_fill(mask == 0, -100)} if arch == "llama" else {})


def step(model, arch: str) -> dict:
    """One forward and backward: the loss, the aux losses, the gradients and the routers' counts."""
    model.zero_grad(set_to_none=True)
    for _, m in model.adapted_modules():
        m.router.reset_stats()
    out = model(**batch(arch))
    loss = out.loss if arch == "llama" else out.last_hidden_state.pow(2).mean() + out.get("aux_loss", 0.0)
    loss.backward()
    return {
        "loss": loss.detach(),
        "aux": {k: v for k, v in out.get("aux_losses", {}).items()},
        "grads": {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad},
        "load": {
            n: (m.router.load.clone(), m.router.tokens.clone())
            for n, m in model.adapted_modules()
            if hasattr(m.router, "load")
        },
    }


@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
@pytest.mark.parametrize("arch", ["llama", "bert"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_checkpointing_gives_the_same_loss_gradients_and_counts(method, arch, reentrant):
    torch.manual_seed(0)
    model = get_model(build_base(arch, **NO_DROPOUT[arch]), small_config(method)).train()
    for name, p in model.named_parameters():  # non-zero experts: every path does real work
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    checkpointed = copy.deepcopy(model)
    checkpointed.base_model.gradient_checkpointing_enable(
        gradient_checkpointing_kwargs={"use_reentrant": reentrant}
    )
    assert checkpointed.base_model.is_activation_checkpointing
    want = step(model, arch)
    if reentrant and any(model.adapter_config.aux_weights().values()):  # its aux losses would train nothing
        with pytest.raises(ValueError, match="reentrant activation checkpointing drops the gradients"):
            step(checkpointed, arch)
        return
    got = step(checkpointed, arch)
    torch.testing.assert_close(got["loss"], want["loss"])
    assert got["aux"].keys() == want["aux"].keys()
    for kind, value in want["aux"].items():
        torch.testing.assert_close(got["aux"][kind], value)
    assert got["grads"].keys() == want["grads"].keys()
    for name, grad in want["grads"].items():
        torch.testing.assert_close(got["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)
    for name, (load, tokens) in want["load"].items():  # each token counted once, not again on recompute
        assert torch.equal(got["load"][name][0], load) and torch.equal(got["load"][name][1], tokens), name


def test_a_recipe_trains_the_same_with_checkpointing(tmp_path, glue_data):
    """`train.gradient_checkpointing: true`: a MoRE run logs the same losses and scores as without it."""
    tokenizer = _tokenizer(_corpus(glue_data), encoder=False)
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    build_base("llama", vocab=len(tokenizer), max_position_embeddings=128, **ids).save_pretrained(
        tmp_path / "m"
    )
    tokenizer.save_pretrained(tmp_path / "m")
    logs = {}
    for flag in (False, True):
        out = tmp_path / f"run-{flag}"
        data = recipe_dict(tmp_path / "m", out, glue_data, tasks=["rte", "cola"], gradient_checkpointing=flag)
        ok("train", write_recipe(tmp_path / f"{flag}.yaml", data), "--no-progress")
        logs[flag] = [r for r in read_jsonl(out / "metrics.jsonl")]
    assert [r.keys() for r in logs[True]] == [r.keys() for r in logs[False]]
    for with_it, without in zip(logs[True], logs[False], strict=True):
        assert with_it == pytest.approx(without, rel=1e-4), with_it
