"""Adapters saved by earlier rankmix versions keep loading and computing what they computed.

tests/fixtures/adapters/ holds adapters written by rankmix 0.1.0 (format_version 1, commit fc0b0ac): a
MoRE adapter (3 tasks, nested ranks 1..4) and a HiLo adapter (experts "12", ranks "24", top-1) on a tiny
random Llama (`llama-base.safetensors`), each with random non-zero weights, plus the input ids, task ids
and logits that adapter produced when it was saved (`expected.safetensors`). Never regenerate them with
newer code: they are the record of the old behaviour.

The base fingerprint (adapter_config.json `base_fingerprint`, added after format_version 1 without a
new version) tells a base of the same shapes but other weights: it warns, or raises under strict."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import build_base
from rankmix import LoRAConfig, RankMixModel, get_model
from rankmix.layers import AdaptedLinear

FIXTURES = Path(__file__).parent / "fixtures" / "adapters"


def _base() -> torch.nn.Module:
    base = build_base("llama", seed=0)
    base.load_state_dict(load_file(FIXTURES / "llama-base.safetensors"))
    return base


@pytest.mark.parametrize("name", ["more-v1", "hilo-v1"])
def test_adapter_saved_by_version_1_loads_and_behaves_as_it_did(name):
    folder = FIXTURES / name
    assert json.loads((folder / "adapter_config.json").read_text())["format_version"] == 1
    expected = load_file(folder / "expected.safetensors")
    model = RankMixModel.from_pretrained(_base(), folder).eval()
    with torch.no_grad():
        logits = model(input_ids=expected["input_ids"], task_ids=expected.get("task_ids")).logits
    torch.testing.assert_close(logits, expected["logits"], rtol=1e-5, atol=1e-5)


def test_version_1_more_adapter_keeps_its_saved_options():
    """Options the old file names explicitly (linear scaling on, first-token pooling) stay in force even
    where today's defaults differ."""
    model = RankMixModel.from_pretrained(_base(), FIXTURES / "more-v1")
    saved = json.loads((FIXTURES / "more-v1" / "adapter_config.json").read_text())["adapter"]
    config = model.adapter_config
    for key, value in saved.items():
        if key != "method":
            assert getattr(config, key) == value, key


# ---------------------------------------------------------------- the base fingerprint

OTHER_BASE = r"the base model's weights differ from the ones this adapter was trained on"


def saved_adapter(tiny, folder: Path) -> RankMixModel:
    """A LoRA adapter (random, non-zero lora_B) on the tiny BERT of seed 0, saved in `folder`."""
    torch.manual_seed(7)
    model = get_model(build_base("bert", seed=0), LoRAConfig(r=4))
    tiny.randomize(model)
    model.save_pretrained(folder)
    return model


def test_the_same_base_rebuilt_from_its_seed_loads_silently(tiny, tmp_path):
    model = saved_adapter(tiny, tmp_path)
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    assert re.fullmatch(r"[0-9a-f]{16}", meta["base_fingerprint"]) and meta["base_fingerprint"] == (
        model.base_fingerprint
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RankMixModel.from_pretrained(build_base("bert", seed=0), tmp_path, strict=True)
        get_model(build_base("bert", seed=0), LoRAConfig(r=4)).load_adapter_weights(tmp_path, strict=True)


def test_a_base_of_the_same_shapes_but_other_weights_warns_once_and_strict_raises(tiny, tmp_path):
    saved_adapter(tiny, tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        RankMixModel.from_pretrained(build_base("bert", seed=1), tmp_path)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "\n" not in message and str(tmp_path) in message and re.search(OTHER_BASE, message)
    assert "base_model_name_or_path" in message

    base = build_base("bert", seed=1)
    with pytest.raises(ValueError, match=OTHER_BASE):
        RankMixModel.from_pretrained(base, tmp_path, strict=True)
    assert not any(isinstance(m, AdaptedLinear) for m in base.modules())  # left as it was given

    model = get_model(build_base("bert", seed=1), LoRAConfig(r=4))
    before = {k: v.clone() for k, v in model.adapter_state_dict().items()}
    with pytest.raises(ValueError, match=OTHER_BASE):
        model.load_adapter_weights(tmp_path, strict=True)
    assert all(torch.equal(before[k], v) for k, v in model.adapter_state_dict().items())  # nothing copied
    with pytest.warns(UserWarning, match=OTHER_BASE):
        model.load_adapter_weights(tmp_path)


def test_a_base_with_the_adapter_merged_in_is_another_base(tiny, tmp_path):
    """The fingerprint is taken at injection, so merging does not change the saved one, and loading the
    adapter again onto the merged base (it would apply twice) warns."""
    model = saved_adapter(tiny, tmp_path)
    fingerprint = model.base_fingerprint
    merged = model.merge_and_unload()
    assert model.base_fingerprint == fingerprint
    with pytest.warns(UserWarning, match=OTHER_BASE):
        RankMixModel.from_pretrained(merged, tmp_path)


def test_bf16_and_fp32_copies_of_the_same_base_match(tiny, tmp_path):
    """Samples are hashed rounded to bfloat16: the adapter fits both copies, so neither warns."""
    saved_adapter(tiny, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RankMixModel.from_pretrained(build_base("bert", seed=0).to(torch.bfloat16), tmp_path, strict=True)


@pytest.mark.parametrize("name", ["more-v1", "hilo-v1"])
def test_adapter_saved_without_a_fingerprint_loads_silently(name):
    assert "base_fingerprint" not in json.loads((FIXTURES / name / "adapter_config.json").read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RankMixModel.from_pretrained(build_base("llama", seed=1), FIXTURES / name, strict=True)


def test_identical_builds_write_identical_adapter_configs(tiny, tmp_path):
    saved_adapter(tiny, tmp_path / "a")
    saved_adapter(tiny, tmp_path / "b")
    config = (tmp_path / "a" / "adapter_config.json").read_bytes()
    assert config == (tmp_path / "b" / "adapter_config.json").read_bytes()
    assert json.loads(config)["base_fingerprint"]


def test_a_base_on_the_meta_device_has_no_fingerprint():
    with torch.device("meta"):
        base = build_base("bert", seed=0)
    assert get_model(base, LoRAConfig(r=4)).base_fingerprint is None
