"""Tests for quantized bases (layers/base.py's bitsandbytes kinds): a tiny Llama that transformers loads in
4-bit NF4 or 8-bit takes every method; a training step moves the adapter (kept in float32); save and load
over a fresh quantized base give the same logits; a per-task export loads in stock PEFT over that base
with the same logits; merging gives a float model of the base's architecture within 0.05 of the adapter
over the quantized base, and token-routed methods refuse it as over a float base. bitsandbytes runs
these on the CPU; the module is skipped where it is not installed."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from safetensors.torch import load_file

from helpers import METHODS, build_base, small_config
from rankmix import (
    LoRAConfig,
    RankMixModel,
    get_model,
)
from test_cli import _corpus, _tokenizer, fails, ok, read_jsonl, recipe_dict, write_recipe

bnb = pytest.importorskip("bitsandbytes")

MERGEABLE = ("lora", "more", "multilora", "moelora")
BITS = ("nf4", "int8")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny random Llama saved as a folder, as a user's model is."""
    path = tmp_path_factory.mktemp("tiny-llama")
    build_base("llama", hidden=64).save_pretrained(path)
    return path


def quantized(folder, bits: str):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    config = (
        BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
        if bits == "nf4"
        else BitsAndBytesConfig(load_in_8bit=True)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AutoModelForCausalLM.from_pretrained(folder, quantization_config=config)


def trained(folder, bits: str, method: str) -> RankMixModel:
    """The adapted quantized model after two optimizer steps (non-zero experts), in eval mode."""
    torch.manual_seed(0)
    model = get_model(quantized(folder, bits), small_config(method)).train()
    params = [p for p in model.parameters() if p.requires_grad]
    assert params and all(p.dtype == torch.float32 for p in params)  # the adapter's own float dtype
    before = [p.detach().clone() for p in params]
    optim = torch.optim.AdamW(params, lr=1e-2)
    for _ in range(2):
        optim.zero_grad()
        model(**BATCH).loss.backward()
        optim.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, params, strict=True))  # the adapter moved
    return model.eval()


GEN = torch.Generator().manual_seed(1)
IDS = torch.randint(3, 100, (2, 9), generator=GEN)
BATCH = {
    "input_ids": IDS,
    "attention_mask": torch.ones_like(IDS),
    "labels": IDS,
    "task_ids": torch.tensor([0, 1]),
}


def logits(model, task: int | None = None, **kw) -> torch.Tensor:
    ids = {"task_ids": torch.tensor([task, task])} if task is not None else {}
    with torch.no_grad():
        return model(input_ids=IDS, attention_mask=BATCH["attention_mask"], **ids, **kw).logits


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_trains_saves_and_loads_over_a_quantized_base(folder, bits, method, tmp_path):
    model = trained(folder, bits, method)
    assert all(m.kind.name.startswith("bitsandbytes") for _, m in model.adapted_modules())
    model.save_pretrained(tmp_path)
    loaded = RankMixModel.from_pretrained(quantized(folder, bits), tmp_path).eval()
    for task in (0, 1):
        torch.testing.assert_close(logits(loaded, task), logits(model, task), rtol=0, atol=1e-5)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("method", MERGEABLE)
def test_export_loads_in_peft_and_merge_gives_a_float_model(folder, bits, method, tmp_path):
    from peft import PeftModel

    model = trained(folder, bits, method)
    task = 1 if model.adapter_config.task_names else None
    expected = logits(model, task)
    model.export_lora(task=task, path=tmp_path)
    peft = PeftModel.from_pretrained(quantized(folder, bits), tmp_path).eval()
    torch.testing.assert_close(logits(peft), expected, rtol=0, atol=1e-4)

    merged = model.merge_and_unload(task=task)
    assert not any("bitsandbytes" in type(m).__module__ for m in merged.modules())
    assert getattr(merged.config, "quantization_config", None) is None and not merged.is_quantized
    assert all(p.is_floating_point() for p in merged.parameters())
    assert (logits(merged) - expected).abs().max() < 0.05  # dequantized weights: the documented tolerance


@pytest.mark.parametrize("method", ["hilo", "mola"])
def test_token_routed_methods_refuse_to_merge_over_a_quantized_base(folder, method):
    model = get_model(quantized(folder, "nf4"), small_config(method))
    with pytest.raises(ValueError, match="token-routed experts"):
        model.merge_and_unload()
    assert all(m.kind.name == "bitsandbytes Linear4bit" for _, m in model.adapted_modules())  # intact


@pytest.mark.parametrize("bits", BITS)
def test_merge_dequantizes_the_layers_no_adapter_touched(folder, bits):
    """Layers left out of target_modules are dequantized too (after an inference forward, which lets
    bitsandbytes repack 4-bit weights for the CPU), so the merged model holds no quantized layer."""
    torch.manual_seed(0)
    model = get_model(quantized(folder, bits), LoRAConfig(r=4, target_modules=["q_proj", "v_proj"])).eval()
    for _, m in model.adapted_modules():
        torch.nn.init.normal_(m.bank.lora_B, std=0.05)
    expected = logits(model)  # the forward that repacks
    merged = model.merge_and_unload()
    assert not any("bitsandbytes" in type(m).__module__ for m in merged.modules())
    assert (logits(merged) - expected).abs().max() < 0.05


@pytest.fixture(scope="module")
def decoder_dir(tmp_path_factory, glue_data):
    """A tiny Llama with the CLI tests' tokenizer (tests/test_cli.py), 64 wide: bitsandbytes' CPU kernels
    for 4-bit inference need blocks of 64 inputs."""
    tokenizer = _tokenizer(_corpus(glue_data), encoder=False)
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    model = build_base("llama", hidden=64, vocab=len(tokenizer), max_position_embeddings=128, **ids)
    folder = tmp_path_factory.mktemp("decoder")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_a_recipe_loads_its_base_in_4bit_and_its_run_deploys(tmp_path, glue_data, decoder_dir, capsys):
    """`model_quantization: nf4`: training, `rankmix eval` (the saved adapter over a freshly quantized
    base scores as training's evaluation did), export-lora, and merge into a float model folder."""
    from transformers import AutoModelForCausalLM

    data = recipe_dict(decoder_dir, tmp_path / "run", glue_data, tasks=["rte", "cola"], steps=4)
    recipe = write_recipe(tmp_path / "nf4.yaml", data | {"model_quantization": "nf4"})
    ok("train", recipe, "--no-progress")
    trained = json.loads((tmp_path / "run" / "results.json").read_text())["tasks"]
    ok("eval", tmp_path / "run", "--no-progress", "--out", tmp_path / "eval.json")
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    assert {t: r["score"] for t, r in evaluated.items()} == pytest.approx(
        {t: r["score"] for t, r in trained.items()}
    )
    resumed = ["train", recipe, "--no-progress", "--set", "model_quantization=none", "--set", "train.steps=6"]
    assert "model_quantization: 'nf4' there, 'none' here" in fails(capsys, *resumed)  # another base
    ok("export-lora", tmp_path / "run", "--task", "rte", "--out", tmp_path / "lora")
    ok("merge", tmp_path / "run", "--task", "rte", "--out", tmp_path / "merged")
    assert "quantization_config" not in json.loads((tmp_path / "merged" / "config.json").read_text())
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert not any("bitsandbytes" in type(m).__module__ for m in merged.modules())


@pytest.fixture
def fresh_precision():
    """The CLI trains once per process; in the test process, an earlier run fixed accelerate's mixed
    precision to "no": forget it before this test and again after it, for the runs that follow."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    yield
    AcceleratorState._reset_state()


@pytest.mark.parametrize("bits", BITS)
def test_a_quantized_recipe_trains_with_checkpointing_in_bf16(
    tmp_path, glue_data, decoder_dir, bits, fresh_precision
):
    """A quantized base, activation checkpointing and bf16 autocast together (what fits a 7B model on one
    GPU): training runs, its losses finite and its adapter float32."""
    train = {
        "steps": 2,
        "eval_every": 2,
        "log_every": 1,
        "gradient_checkpointing": True,
        "mixed_precision": "bf16",
    }
    data = recipe_dict(decoder_dir, tmp_path / "run", glue_data, tasks=["rte"], **train)
    ok("train", write_recipe(tmp_path / "r.yaml", data | {"model_quantization": bits}), "--no-progress")
    losses = [r["loss"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert len(losses) == 2 and all(map(math.isfinite, losses))
    adapter = load_file(tmp_path / "run" / "adapter" / "adapter_model.safetensors")
    assert {t.dtype for t in adapter.values()} == {torch.float32}
