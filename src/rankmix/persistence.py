"""Adapter folders: `adapter_config.json` (format version, method config, base model name and weight
fingerprint) and `adapter_model.safetensors` (PEFT-style keys), written atomically and read back with
clear errors."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import config_from_dict
from .files import atomic_write, parse_json, write_json
from .version import __version__

if TYPE_CHECKING:
    from .model import RankMixModel

FORMAT_VERSION = 1
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
FINGERPRINT_SAMPLE = 1024  # weight elements sampled per adapted module


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor]) -> Path:
    """A safetensors file of contiguous CPU copies, written atomically."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))


def base_model_name(model: torch.nn.Module) -> str | None:
    return getattr(getattr(model, "config", None), "_name_or_path", None)


@torch.no_grad()
def base_fingerprint(model: torch.nn.Module, names: Iterable[str]) -> str | None:
    """A short hex digest of the base weights an adapter is trained on, so that loading it onto another
    base of the same shapes (another BERT of the same size) can be noticed. It is a sample, cheap for a
    7B model: sha256 over each module of `names` in sorted order, of its name, its weight's shape and a
    fixed strided sample of at most FINGERPRINT_SAMPLE of its elements. Floating-point samples are hashed
    rounded to bfloat16, so a bf16 and an fp32 copy of the same weights match (the adapter fits both);
    fp16 or quantized copies need not. Integer weights (the packed storage of a quantized layer) are
    hashed as stored, with their dtype. None when a weight is on the meta device (not loaded yet)."""
    digest = hashlib.sha256()
    for name in sorted(names):
        weight = model.get_submodule(name).weight.detach()
        if weight.device.type == "meta":
            return None
        flat = weight.reshape(-1)
        step = max(1, flat.numel() // FINGERPRINT_SAMPLE)
        sample = flat[: step * FINGERPRINT_SAMPLE : step]
        if sample.is_floating_point():
            kind, values = "float", sample.to(torch.bfloat16).view(torch.int16).cpu().numpy().astype("<i2")
        else:
            kind, values = str(weight.dtype), sample.to(torch.int64).cpu().numpy().astype("<i8")
        digest.update(f"{name}|{tuple(weight.shape)}|{kind}|".encode())
        digest.update(values.tobytes())
    return digest.hexdigest()[:16]


def check_base(model: RankMixModel, meta: dict[str, Any], path: str | os.PathLike, strict: bool) -> None:
    """Warn in one line (`strict`: raise) when the adapter at `path` was saved from a base whose weights
    differ from `model`'s. Adapters saved before the fingerprint existed, and bases not loaded yet, pass."""
    saved, here = meta.get("base_fingerprint"), model.base_fingerprint
    if saved is None or here is None or saved == here:
        return
    message = (
        f"{path}: the base model's weights differ from the ones this adapter was trained on "
        f"(base_model_name_or_path {meta.get('base_model_name_or_path')!r}; fingerprint {here} here, "
        f"{saved} saved); load the adapter onto that base model"
    )
    if strict:
        raise ValueError(message)
    warnings.warn(message, stacklevel=2)


def save_adapter(
    model: RankMixModel, path: str | os.PathLike, state_dict: dict[str, torch.Tensor] | None = None
) -> None:
    folder = Path(path)
    save_tensors(folder / WEIGHTS_NAME, model.adapter_state_dict() if state_dict is None else state_dict)
    write_json(
        folder / CONFIG_NAME,
        {
            "format_version": FORMAT_VERSION,
            "rankmix_version": __version__,
            "base_model_name_or_path": base_model_name(model.base_model),
            "base_model_class": type(model.base_model).__name__,
            "base_fingerprint": model.base_fingerprint,
            "adapter": model.adapter_config.to_dict(),
        },
    )


def read_adapter_config(path: str | os.PathLike) -> dict[str, Any]:
    """The saved `adapter_config.json` of a rankmix adapter folder (format checked), with clear errors."""
    folder = Path(path)
    config_file = folder / CONFIG_NAME
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} is missing: {folder} is not a rankmix adapter folder")
    try:
        meta = parse_json(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{config_file} is corrupted ({e}); save the adapter again") from None
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if version != FORMAT_VERSION or "adapter" not in meta:
        raise ValueError(
            f"{config_file} has format_version {version!r}; this rankmix reads version {FORMAT_VERSION}"
        )
    if not isinstance(meta["adapter"], dict) or "method" not in meta["adapter"]:
        raise ValueError(
            f"{config_file}: its 'adapter' entry is not the adapter's settings (a mapping with a 'method'); "
            "the file was edited or damaged: save or copy the adapter again"
        )
    return meta


def read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    """The tensors of a saved adapter file, with an error naming the file when it is missing or damaged."""
    if not file.is_file():
        raise FileNotFoundError(f"{file} is missing: {file.parent} is not a complete rankmix adapter folder")
    try:
        return load_file(file)
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{file} is corrupted or truncated ({e}); save or copy the adapter again") from None


def read_adapter(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The saved config (format checked) and tensors of a rankmix adapter folder, with clear errors."""
    return read_adapter_config(path), read_safetensors(Path(path) / WEIGHTS_NAME)


def load_adapter_weights(model: RankMixModel, path: str | os.PathLike, strict: bool = False) -> None:
    """Load an adapter saved with `model`'s very configuration into it (no re-injection); `strict`: a base
    whose weights differ from the adapter's (check_base) is an error, not a warning."""
    meta, tensors = read_adapter(path)
    saved = config_from_dict(
        meta["adapter"]
    ).to_dict()  # options added since it was saved take their defaults
    if json.loads(json.dumps(saved)) != json.loads(json.dumps(model.adapter_config.to_dict())):
        raise ValueError(f"{path} was saved with another adapter configuration than this model's")
    load_tensors(model, tensors, meta, path, strict=strict)


@torch.no_grad()
def load_tensors(
    model: RankMixModel,
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    path: str | os.PathLike,
    strict: bool = False,
) -> None:
    """Copy `tensors` into `model`'s adapter parameters; nothing is copied unless all keys and shapes fit
    (and, `strict`, the base's fingerprint is the saved one: check_base)."""
    source = Path(path) / WEIGHTS_NAME
    base_name = meta.get("base_model_name_or_path")
    expected = model.adapter_tensors()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{source} does not fit this base model: missing {missing[:3]}, unexpected {unexpected[:3]}; "
            f"load it onto the model it was trained on ({base_name})"
        )
    for key, param in expected.items():
        if tensors[key].shape != param.shape:
            raise ValueError(
                f"{key} has shape {tuple(tensors[key].shape)} in {source} but {tuple(param.shape)} here: "
                f"the adapter was trained on a base model with other shapes ({base_name}); "
                "load it onto that model"
            )
    check_base(model, meta, path, strict)
    for key, param in expected.items():
        param.copy_(tensors[key])
