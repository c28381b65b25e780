"""Adapters saved by earlier rankmix versions keep loading and computing what they computed.

tests/fixtures/adapters/ holds adapters written by rankmix 0.1.0 (format_version 1, commit fc0b0ac): a
MoRE adapter (3 tasks, nested ranks 1..4) and a HiLo adapter (experts "12", ranks "24", top-1) on a tiny
random Llama (`llama-base.safetensors`), each with random non-zero weights, plus the input ids, task ids
and logits that adapter produced when it was saved (`expected.safetensors`). Never regenerate them with
newer code: they are the record of the old behaviour."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import build_base
from rankmix import RankMixModel

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
